"""Packed tensors cut inside their channel blocks stay packed (targets/int8/packed.reblock_data).

YOLOv8's C2f splits a conv's output in halves, runs bottlenecks on one half and concatenates the halves with
the result: at 16 channels the halves are 8 channels, inside one 16-channel block. The lowering re-blocks such
tensors to blocks of 8 (the split, the bottleneck's residual add of an 8-channel half and a conv output padded to
16, the concat, the next conv's input) instead of unpacking to NCHW and packing again. Checked on the kernels the
library holds and against the QDQ semantics (under qemu for aarch64, in the VM on this host).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

tvm = pytest.importorskip("tvm")
from compress_graph.targets import build_for_target  # noqa: E402
from compress_graph.targets.int8.testing import (  # noqa: E402
    ort_session,
    output_scales,
    quantize_qdq,
    random_input,
    save_float_model,
)


def _c2f(path: Path, channels: int = 16, size: int = 10) -> Path:
    """x -> 1x1 conv + SiLU -> Split in halves -> (half 2: 3x3 conv + SiLU twice, + half 2) -> Concat of the two
    halves and the bottleneck -> 1x1 conv + SiLU -> y."""
    rng = np.random.default_rng(11)
    nodes, inits = [], []
    half = channels // 2

    def weight(name, *shape):
        fan_in = int(np.prod(shape[1:]))
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32),
                                             name))
        return name

    def conv_silu(src, dst, c_in, c_out, k):
        nodes.append(helper.make_node("Conv", [src, weight(f"{dst}_w", c_out, c_in, k, k), weight(f"{dst}_b", c_out)],
                                      [f"{dst}_c"], pads=[k // 2] * 4))
        nodes.append(helper.make_node("Sigmoid", [f"{dst}_c"], [f"{dst}_s"]))
        nodes.append(helper.make_node("Mul", [f"{dst}_c", f"{dst}_s"], [dst]))

    conv_silu("x", "cv1", channels, channels, 1)
    inits.append(numpy_helper.from_array(np.array([half, half], np.int64), "halves"))
    nodes.append(helper.make_node("Split", ["cv1", "halves"], ["a", "b"], axis=1))
    conv_silu("b", "m1", half, half, 3)
    conv_silu("m1", "m2", half, half, 3)
    nodes.append(helper.make_node("Add", ["m2", "b"], ["m"]))
    nodes.append(helper.make_node("Concat", ["a", "b", "m"], ["cat"], axis=1))
    conv_silu("cat", "y", 3 * half, channels, 1)
    return save_float_model(path, nodes, [1, channels, size, size], [1, channels, size, size], inits, "c2f")


@pytest.mark.slow
@pytest.mark.parametrize("cpu", ["cortex-a76", "cortex-a72"])
def test_c2f_halves_stay_packed_in_blocks_of_8(tmp_path, cpu):
    from compress_graph.targets.runners import qemu_available, run_qemu

    path = quantize_qdq(_c2f(tmp_path / "c2f.onnx"), tmp_path / "qdq.onnx")
    model = onnx.load(str(path))
    section = build_for_target(model, f"arm{{cpu={cpu},cores=1}}", tmp_path / "out")
    kernels = section["kernel_schedules"]
    assert section["int8"]["by_op"].get("split") and section["int8"]["by_op"].get("concat"), section["int8"]
    assert any("reblock" in k for k in kernels), kernels
    # one layout transform: the float input's pack (before: the split's and the bottleneck's unpacks, and packs
    # for the bottleneck conv, the add and the concat)
    assert sum(k.startswith(("te_layout_transform", "pack_input")) for k in kernels) <= 1, kernels
    assert not section["schedule"].get("int8_hand_failed"), section["schedule"]
    reason = qemu_available("aarch64")
    if reason:
        pytest.skip(reason)
    feeds = random_input(model, 3)
    got = run_qemu(Path(section["library"]), [list(feeds.values())], workdir=tmp_path)["outputs"][0][0]
    want = ort_session(path).run(None, feeds)[0]
    step = output_scales(model)[0]
    assert np.max(np.abs(np.asarray(got).reshape(want.shape) - want)) <= step * 1.001


def test_c2f_on_this_host_matches_the_qdq_semantics(tmp_path):
    """The same lowering on the host's x86 int8 family (VNNI, AVX2 or generic): re-blocked pieces, exact."""
    from tvm import relax

    path = quantize_qdq(_c2f(tmp_path / "c2f.onnx", channels=48, size=8), tmp_path / "qdq.onnx")
    model = onnx.load(str(path))
    section = build_for_target(model, "host{cores=1}", tmp_path / "out")
    lib = tvm.runtime.load_module(section["library"])
    feeds = random_input(model, 5)
    got = relax.VirtualMachine(lib, tvm.cpu())["main"](*[tvm.runtime.tensor(v) for v in feeds.values()]).numpy()
    want = ort_session(path).run(None, feeds)[0]
    assert np.max(np.abs(got - want)) <= output_scales(model)[0] * 1.001
