"""fp32 MaxPool as two separable maxima (targets/float_rewrites._separable_max_pool) under its hand schedule
(targets/fp32_schedule.schedule_max_pool).

Seeded nets with the pools users bring (resnet's 3x3/2 with padding, a 2x2/2 followed by a channel pad and a
residual add as in face detectors, YOLO's SPPF 5x5/1, ceil mode, asymmetric kernels and pads) are built, the pool
kernel must be hand-scheduled (not the sampled default), and the library's outputs are compared with onnxruntime:
max is exact, so the comparison is equality, and the inputs are negative as often as positive (a padded element
read as 0 instead of skipped would show).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")
from compress_graph.targets import build_for_target  # noqa: E402


def _net(channels: int, hw: tuple[int, int], kernel: list[int], strides: list[int], pads: list[int],
         ceil: int = 0, residual_pad: int = 0) -> onnx.ModelProto:
    """x -> MaxPool [-> channel Pad + Add of a strided 1x1 conv of x] -> Relu -> y."""
    rng = np.random.default_rng(len(hw) + sum(kernel) + sum(pads))
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=kernel, strides=strides, pads=pads,
                              ceil_mode=ceil)]
    inits = []
    out = "p"
    if residual_pad:  # the pool's channels zero-padded to a wider block, added to a conv of the input (the
        # shortcut of a face detector's stage): pool, pad, add and relu are one kernel
        wide = channels + residual_pad
        inits += [numpy_helper.from_array(np.array([0, 0, 0, 0, 0, residual_pad, 0, 0], np.int64), "pads"),
                  numpy_helper.from_array(rng.standard_normal((wide, channels, 1, 1)).astype(np.float32), "w")]
        nodes += [helper.make_node("Pad", ["p", "pads"], ["pp"]),
                  helper.make_node("Conv", ["x", "w"], ["c"], strides=strides),
                  helper.make_node("Add", ["pp", "c"], ["a"])]
        out = "a"
    nodes.append(helper.make_node("Relu", [out], ["y"]))
    h, w = hw
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [1, channels, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


CASES = {  # id: (channels, (H, W), kernel, strides, pads (top, left, bottom, right), ceil_mode, residual channel pad)
    "3x3s2p1-odd": (16, (15, 17), [3, 3], [2, 2], [1, 1, 1, 1], 0, 0),
    "2x2s2-pad-add": (16, (16, 20), [2, 2], [2, 2], [0, 0, 0, 0], 0, 8),
    "5x5s1p2-sppf": (8, (6, 6), [5, 5], [1, 1], [2, 2, 2, 2], 0, 0),
    "3x3s2-ceil": (4, (16, 16), [3, 3], [2, 2], [0, 0, 0, 0], 1, 0),
    "3x2-s1x2-asym": (4, (9, 11), [3, 2], [1, 2], [1, 0, 0, 1], 0, 0),
}


def _outputs(lib: str, x: np.ndarray) -> np.ndarray:
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(lib), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    return (out[0] if type(out).__name__ == "Array" or isinstance(out, (list, tuple)) else out).numpy()


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_max_pool_is_hand_scheduled_and_exact(tmp_path, case):
    import onnxruntime as ort

    model = _net(*case)
    section = build_for_target(model, "host{isa=avx2,cores=1}", tmp_path / "out")
    sched = section["schedule"]
    assert not sched.get("fp32_hand_failed"), sched
    # the pool kernel (and the 1x1 conv of the residual case) hand-scheduled: nothing sampled but what is no pool
    assert sched["fp32_hand_scheduled"] == (2 if case[-1] else 1), sched
    x = np.random.default_rng(7).standard_normal((1, case[0], *case[1])).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = _outputs(section["library"], x)
    assert got.shape == want.shape
    if case[-1]:  # through a conv: float sums in another order
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(got, want)


def test_max_pool_on_aarch64_matches_onnxruntime(tmp_path):
    """The same schedule built for cortex-a72 (NEON vectors of 4), run under qemu-aarch64 by the verifier."""
    from compress_graph.targets.runners import qemu_available

    if qemu_available("aarch64"):
        pytest.skip(qemu_available("aarch64"))
    section = build_for_target(_net(*CASES["3x3s2p1-odd"]), "arm{cpu=cortex-a72,cores=1}", tmp_path / "out",
                               verify_target=True)
    assert section["schedule"]["fp32_hand_scheduled"] == 1, section["schedule"]
    check = section["verification"]
    assert check["status"] == "passed", check


def test_host_symbols_keep_names_the_kernels(tmp_path):
    """``host{symbols=keep}`` (what bench/x86 builds for its per-kernel counts) keeps the static symbol table; the
    default strips it (byte-identical libraries across build folders)."""
    import shutil
    import subprocess

    if shutil.which("nm") is None:
        pytest.skip("nm not installed")
    model = _net(*CASES["3x3s2p1-odd"])
    names = {}
    for symbols in ("keep", "strip"):
        section = build_for_target(model, f"host{{isa=avx2,cores=1,symbols={symbols}}}", tmp_path / symbols)
        out = subprocess.run(["nm", "--defined-only", section["library"]], capture_output=True, text=True).stdout
        names[symbols] = {line.split()[-1] for line in out.splitlines() if len(line.split()) == 3}
    assert any(n.startswith("fused_max_pool2d") and n.endswith("compute_") for n in names["keep"]), names["keep"]
    assert not any("max_pool2d" in n for n in names["strip"]), names["strip"]
