"""x86 AVX2 int8 convs on 7-bit weights (issue 16): ``vpmaddubsw`` where every weight is within +-64, never beyond.

``vpmaddubsw`` sums two u8 x s8 products in saturating int16: exact while |w| <= 64 (2 x 255 x 64 = 32640), clipped
above. The family takes that step only for such convs (targets/isa/x86_avx2.SMALL_LIMIT); the tests put the extreme
codes in (255 activations against +-64 and +-65 weights, where a saturated sum lands steps away from the QDQ
semantics) and check what the library executes and computes.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")
from compress_graph.targets.int8 import lower_qdq  # noqa: E402
from compress_graph.targets.int8.testing import (  # noqa: E402
    import_relax,
    ort_session,
    output_scales,
    quantize_qdq,
    random_input,
)
from tvm import relax  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "models"
HASWELL = {"kind": "llvm", "mcpu": "haswell", "num-cores": 1}
STEP = 12.0  # the extreme conv's output step per tap: 2 x 255 x 65 - 2 x 255 x 64 = 510 per group of 4 channels


def _runs_avx2() -> bool:
    from compress_graph.targets import host

    return platform.machine() == "x86_64" and not host.missing_features("avx2")


needs_avx2 = pytest.mark.skipif(not _runs_avx2(), reason="needs an x86 CPU with AVX2 to run the library")


def _build(model: onnx.ModelProto):
    """The int8 build path with its hand schedules (targets/int8/build.compile_module)."""
    from compress_graph.targets.int8.build import compile_module, preprocess

    target = tvm.target.Target(HASWELL)
    low, stats = lower_qdq(import_relax(model), target)
    assert stats["by_op"].get("conv2d_packed", 0) > 0, stats
    return compile_module(preprocess(low, target), target)


def _run(ex, feeds: dict[str, np.ndarray]) -> np.ndarray:
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()]).numpy()


def _extreme_conv(code: int, k: int) -> onnx.ModelProto:
    """x (float, 8 channels) -> Q (scale 1, zp 0: the codes are the values) -> DQ -> k x k conv -> Q -> DQ. Of
    every 4 input channels the first two weigh ``code`` and the last two -64 (odd output channels negated): with
    activations near 255 the first pair's products sum to 2 x 255 x ``code`` (beyond int16 for |code| > 64) while
    the second pair takes most of it back, so the output is small and a clipped pair sum shows as many steps."""
    w = np.empty((16, 8, k, k), np.int8)
    w[:, 0::4] = w[:, 1::4] = code
    w[:, 2::4] = w[:, 3::4] = -64
    w[1::2] = -w[1::2]
    inits = [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.ones(16, np.float32), "w_s"),
             numpy_helper.from_array(np.float32(1.0), "x_s"), numpy_helper.from_array(np.uint8(0), "x_zp"),
             numpy_helper.from_array(np.float32(STEP * k * k), "y_s"),
             numpy_helper.from_array(np.uint8(128), "y_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_zp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[k // 2] * 4),
             helper.make_node("QuantizeLinear", ["c", "y_s", "y_zp"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "y_s", "y_zp"], ["y"])]
    graph = helper.make_graph(nodes, "extreme", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@needs_avx2
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("code,small", [(64, True), (65, False)])
def test_extreme_codes_take_vpmaddubsw_only_within_64_and_stay_exact(tmp_path, code, small, k):
    model = _extreme_conv(code, k)
    ex = _build(model)
    asm = ex.mod.imports[0].inspect_source("asm")
    assert ("vpmaddubsw" in asm) == small, f"code {code}: vpmaddubsw {'absent' if small else 'used'}"
    assert "vpmaddwd" in asm
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(code + k).integers(254, 256, (1, 8, 6, 6)).astype(np.float32)
    got = _run(ex, {"x": x})
    want = ort_session(path).run(None, {"x": x})[0]
    step = STEP * k * k
    if not small:  # outputs far from 0 (~85 steps), which clipped pair sums (32767 for 2 x 255 x 65) would halve
        assert np.abs(want).max() > 40 * step
    assert np.max(np.abs(got - want)) <= step * 1.001, np.max(np.abs(got - want)) / step


@needs_avx2
def test_resnet_reduced_range_weights_run_on_vpmaddubsw_and_match(tmp_path):
    """onnxruntime's 7-bit weights (reduce_range: codes in [-64, 64]) on the small step in every packed conv;
    its 8-bit weights keep the vpmaddwd step (no vpmaddubsw anywhere); both within one step of the QDQ semantics."""
    for reduce_range in (True, False):
        path = quantize_qdq(MODELS / "resnet_s.onnx", tmp_path / f"q{int(reduce_range)}.onnx",
                            reduce_range=reduce_range)
        model = onnx.load(str(path))
        ex = _build(model)
        asm = ex.mod.imports[0].inspect_source("asm")
        assert ("vpmaddubsw" in asm) == reduce_range
        feeds = random_input(model)
        got = _run(ex, feeds)
        want = ort_session(path).run(None, feeds)[0]
        assert np.max(np.abs(got - want)) <= output_scales(model)[0] * 1.001, reduce_range

