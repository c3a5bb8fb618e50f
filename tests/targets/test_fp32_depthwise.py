"""fp32 depthwise and grouped convs under the pixel-vector schedule (targets/fp32_schedule.schedule_conv_nchw).

A depthwise conv is one channel per tile with its rows serial inside the parallel channel loop (the KxK weight
broadcasts stay in registers); a grouped conv with several input channels per group keeps the usual output-channel
tile. Stride-2 grouped convs are left to the sampled default (the phase-split input costs more than one group's
MACs carry), stride-2 depthwise ones become float_rewrites._depthwise_phases (padded rows, an even/odd column
deinterleave, a conv over the phases) under schedule_depthwise_phases. Seeded nets with odd sizes, dilation, a
channel multiplier and a Clip epilogue are built for AVX2 on the host and for aarch64 under qemu, and compared with
onnxruntime (the build's own verification).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")
from compress_graph.targets import build_for_target  # noqa: E402


def _net(seed: int, channels: int, hw: tuple[int, int], k: int, stride: int, dilation: int, groups: int,
         multiplier: int = 1) -> onnx.ModelProto:
    """x -> Conv (groups, bias) -> Clip(0, 6) -> y: a MobileNet block's depthwise step."""
    rng = np.random.default_rng(seed)
    pad = dilation * (k // 2)
    out = channels * multiplier
    inits = [numpy_helper.from_array(rng.standard_normal((out, channels // groups, k, k)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(out).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], group=groups, strides=[stride] * 2, pads=[pad] * 4,
                              dilations=[dilation] * 2),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    h, w = hw
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


CASES = {  # id: (seed, channels, (H, W), k, stride, dilation, groups, channel multiplier), hand-scheduled
    "dw3x3-32x32": ((0, 16, (32, 32), 3, 1, 1, 16), True),
    "dw3x3-odd": ((1, 12, (15, 12), 3, 1, 1, 12), True),
    "dw3x3-w17": ((6, 8, (6, 17), 3, 1, 1, 8), False),  # a prime width: no pixel tile, the sampled default
    "dw5x5-dil2": ((2, 8, (9, 12), 5, 1, 2, 8), True),
    "dw3x3-mult2": ((3, 8, (7, 7), 3, 1, 1, 8, 2), True),
    "grouped4": ((4, 16, (10, 10), 3, 1, 1, 4), True),
    "dw3x3-s2": ((5, 24, (16, 16), 3, 2, 1, 24), True),
    "dw3x3-s2-odd": ((7, 12, (15, 17), 3, 2, 1, 12), True),
    "dw5x5-s2": ((8, 8, (20, 12), 5, 2, 1, 8), True),
    "grouped4-s2": ((9, 16, (10, 10), 3, 2, 1, 4), False),  # the phase split outweighs a 4-channel group's MACs
}


@pytest.mark.parametrize("target", ["host{isa=avx2}", "arm{cpu=cortex-a72,cores=1}"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_grouped_convs_match_onnxruntime(tmp_path, case, target):
    from compress_graph.targets.runners import qemu_available

    if target.startswith("arm") and qemu_available("aarch64"):
        pytest.skip(qemu_available("aarch64"))
    args, hand = case
    section = build_for_target(_net(*args), target, tmp_path / "out", verify_target=True)
    sched = section["schedule"]
    assert not sched.get("fp32_hand_failed"), sched
    assert sched.get("fp32_hand_scheduled", 0) == (1 if hand else 0), sched
    kinds = list(section["kernel_schedules"].values())
    assert kinds == ["hand-scheduled fp32" if hand else "default (sampled)"], section["kernel_schedules"]
    assert section["verification"]["status"] == "passed", section["verification"]
