"""fp32 kxk convs with output channels as the vector dimension (targets/fp32_schedule.schedule_conv_channels).

The weights are re-laid out (O/C)IHW[C] by a layout-rewrite block that is split out of the kernel and folded into
the constant at build time: no transform may be left to run per inference. Seeded nets with the shapes that
stress the tile (widths off the pixel tile, stride 2, dilation, padding, residual adds, no epilogue) are run and
compared with onnxruntime: natively on the host (AVX2 everywhere, AVX-512 where the CPU has it) and under
qemu-aarch64 for the ARM build.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")
from compress_graph.targets import build_for_target  # noqa: E402


def _net(seed: int, channels: int, hw: tuple[int, int], k: int, stride: int, dilation: int,
         residual: bool) -> onnx.ModelProto:
    """x -> conv kxk (bias, relu) [-> conv kxk stride 1 + residual] -> y."""
    rng = np.random.default_rng(seed)
    c_in = 8
    pad = dilation * (k // 2)
    inits = [numpy_helper.from_array(rng.standard_normal((channels, c_in, k, k)).astype(np.float32) * 0.2, "w1"),
             numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b1")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], strides=[stride] * 2, pads=[pad] * 4,
                              dilations=[dilation] * 2),
             helper.make_node("Relu", ["c1"], ["r1"])]
    out = "r1"
    if residual:
        inits.append(numpy_helper.from_array(
            rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.1, "w2"))
        nodes += [helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1] * 4),
                  helper.make_node("Add", ["c2", "r1"], ["a2"])]
        out = "a2"
    nodes.append(helper.make_node("Identity", [out], ["y"]))
    h, w = hw
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


CASES = [  # seed, output channels, (H, W), k, stride, dilation, residual
    (0, 16, (9, 13), 3, 1, 1, True),
    (1, 32, (12, 7), 3, 2, 1, False),
    (2, 16, (10, 12), 5, 1, 2, False),
    (3, 48, (6, 6), 3, 1, 1, True),
    (4, 8, (8, 10), 3, 1, 1, False),  # 8 channels: AVX2's second tile (8 channels x 8 pixels), not (16, 4)
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"c{c[1]}-{c[2][0]}x{c[2][1]}-k{c[3]}s{c[4]}d{c[5]}"
                         + ("-res" if c[6] else ""))
@pytest.mark.parametrize("target", ["host{isa=avx2}", "host{isa=avx512}", "arm{cpu=cortex-a72,cores=1}"])
def test_channel_vector_convs_match_onnxruntime(tmp_path, case, target):
    from compress_graph.targets.runners import qemu_available

    if target.startswith("arm") and qemu_available("aarch64"):
        pytest.skip(qemu_available("aarch64"))
    model = _net(*case)
    section = build_for_target(model, target, tmp_path / "out", verify_target=True)
    sched = section["schedule"]
    convs = 2 if case[6] else 1
    assert sched["fp32_hand_scheduled"] == convs, sched
    if target == "host{isa=avx512}" and case[1] % 16:  # no 16-lane channel vector: the pixel-vector schedule
        assert "weights_prepacked" not in sched, sched
    else:
        assert sched["weights_prepacked"] == convs and sched["weight_transforms_at_runtime"] == 0, sched
    check = section["verification"]
    if check["status"] == "skipped":  # a build for an x86 level this CPU lacks: built, not run
        assert "lacks" in check["reason"] and target == "host{isa=avx512}", check
    else:
        assert check["status"] == "passed", check


def test_no_channel_tile_keeps_the_pixel_schedule(tmp_path, monkeypatch):
    """``COMPRESS_GRAPH_FP32_CHANNEL_TILE=off``: the same conv gets the pixel-vector schedule, no prepacked weights
    (what the measurements in targets/isa.float_channel_tiles compare against)."""
    monkeypatch.setenv("COMPRESS_GRAPH_FP32_CHANNEL_TILE", "off")
    section = build_for_target(_net(*CASES[0]), "host{isa=avx2}", tmp_path / "out", verify_target=True)
    assert section["schedule"]["fp32_hand_scheduled"] == 2 and "weights_prepacked" not in section["schedule"]
    assert section["verification"]["status"] == "passed"


@pytest.mark.slow
@pytest.mark.parametrize("target", ["arm{cpu=cortex-a72,cores=1}", "host{isa=avx2}"])
def test_pixel_vector_convs_prepack_their_weights_on_aarch64_only(tmp_path, target):
    """1x1 convs keep the pixel-vector schedule; on aarch64 its weights are prepacked per output-channel tile too
    (paired loads instead of strided scalar ones), on x86 they stay OIHW (the FMA's embedded broadcast). The 1x1
    conv at 7x9 (a width off the vector) runs over the flat H*W row."""
    from compress_graph.targets.runners import qemu_available

    if target.startswith("arm") and qemu_available("aarch64"):
        pytest.skip(qemu_available("aarch64"))
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.standard_normal((24, 8, 1, 1)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "pw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 7, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    section = build_for_target(model, target, tmp_path / "out", verify_target=True)
    sched = section["schedule"]
    assert sched["fp32_hand_scheduled"] == 1, sched
    if target.startswith("arm"):
        assert sched["weights_prepacked"] == 1 and sched["weight_transforms_at_runtime"] == 0, sched
    else:
        assert "weights_prepacked" not in sched, sched
    assert section["verification"]["status"] == "passed", section["verification"]
