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
    run_host_library,
    save_float_model,
)


def _steps_under_qemu(section: dict, model: onnx.ModelProto, path: Path, tmp_path: Path) -> float:
    """How many output steps the aarch64 library lands from the QDQ semantics under qemu (skips without qemu)."""
    from compress_graph.targets.runners import qemu_available, run_qemu

    reason = qemu_available("aarch64")
    if reason:
        pytest.skip(reason)
    feeds = random_input(model, 3)
    got = run_qemu(Path(section["library"]), [list(feeds.values())], workdir=tmp_path)["outputs"][0][0]
    want = ort_session(path).run(None, feeds)[0]
    return float(np.max(np.abs(np.asarray(got).reshape(want.shape) - want))) / output_scales(model)[0]


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
    assert _steps_under_qemu(section, model, path, tmp_path) <= 1.001


def test_c2f_on_this_host_matches_the_qdq_semantics(tmp_path):
    """The same lowering on the host's x86 int8 family (VNNI, AVX2 or generic): re-blocked pieces, exact."""
    path = quantize_qdq(_c2f(tmp_path / "c2f.onnx", channels=48, size=8), tmp_path / "qdq.onnx")
    model = onnx.load(str(path))
    section = build_for_target(model, "host{cores=1}", tmp_path / "out")
    feeds = random_input(model, 5)
    got = run_host_library(section["library"], feeds)
    want = ort_session(path).run(None, feeds)[0]
    assert np.max(np.abs(got - want)) <= output_scales(model)[0] * 1.001


def _padded_shortcut(path: Path, channels: int = 16, wider: int = 24, size: int = 12, value: float = 0.0) -> Path:
    """BlazeFace's down-sampling block: x -> 1x1 conv + Relu (packed) -> [3x3/2 depthwise conv -> 1x1 conv to
    ``wider`` channels] + [2x2/2 max pool -> Pad of the channels to ``wider`` with ``value``] -> Add -> PRelu
    -> 1x1 conv -> y."""
    rng = np.random.default_rng(5)
    nodes, inits = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def weight(name, *shape):
        return const(name, rng.standard_normal(shape) / np.sqrt(int(np.prod(shape[1:]))))

    nodes.append(helper.make_node("Conv", ["x", weight("w0", channels, channels, 1, 1), weight("b0", channels)],
                                  ["c0"]))
    nodes.append(helper.make_node("Relu", ["c0"], ["r0"]))
    nodes.append(helper.make_node("Conv", ["r0", weight("wd", channels, 1, 3, 3), weight("bd", channels)], ["d"],
                                  group=channels, pads=[1] * 4, strides=[2, 2]))
    nodes.append(helper.make_node("Conv", ["d", weight("wp", wider, channels, 1, 1), weight("bp", wider)], ["p"]))
    nodes.append(helper.make_node("MaxPool", ["r0"], ["m"], kernel_shape=[2, 2], strides=[2, 2]))
    inits.append(numpy_helper.from_array(np.array([0, 0, 0, 0, 0, wider - channels, 0, 0], np.int64), "pads"))
    nodes.append(helper.make_node("Pad", ["m", "pads", const("value", value)], ["mp"]))
    nodes.append(helper.make_node("Add", ["p", "mp"], ["s"]))
    nodes.append(helper.make_node("PRelu", ["s", const("slope", rng.uniform(0.05, 0.3, (wider, 1, 1)))], ["a"]))
    nodes.append(helper.make_node("Conv", ["a", weight("w1", wider, wider, 1, 1), weight("b1", wider)], ["y"]))
    half = size // 2
    return save_float_model(path, nodes, [1, channels, size, size], [1, wider, half, half], inits, "shortcut")


@pytest.mark.parametrize(("wider", "value", "packed"), [(24, 0.0, True), (32, 0.25, True), (17, 0.0, False)])
def test_channel_pad_of_a_packed_tensor_stays_packed(tmp_path, wider, value, packed):
    """The shortcut's channel Pad on the 8-bit codes, packed (pad value -> its code), and the Add and PRelu after
    it packed; 17 channels (15 padding channels in 2 blocks of 16) keep the float Pad. Exact on this host's x86
    int8 family against the QDQ semantics."""
    path = quantize_qdq(_padded_shortcut(tmp_path / "f.onnx", wider=wider, value=value), tmp_path / "qdq.onnx")
    model = onnx.load(str(path))
    section = build_for_target(model, "host{cores=1}", tmp_path / "out")
    kernels = section["kernel_schedules"]
    assert bool(section["int8"]["by_op"].get("pad")) == packed, section["int8"]
    assert any(k.startswith("pad_packed") for k in kernels) == packed, kernels
    if packed:  # only the float input is packed; the pad, the add and the PRelu lookup on packed codes
        assert sum(k.startswith(("te_layout_transform", "pack_input")) for k in kernels) <= 1, kernels
    feeds = random_input(model, 5)
    got = run_host_library(section["library"], feeds)
    want = ort_session(path).run(None, feeds)[0]
    assert np.max(np.abs(got - want)) <= output_scales(model)[0] * 1.001


@pytest.mark.slow
def test_channel_pad_stays_packed_on_aarch64(tmp_path):
    path = quantize_qdq(_padded_shortcut(tmp_path / "f.onnx", value=0.5), tmp_path / "qdq.onnx")
    model = onnx.load(str(path))
    section = build_for_target(model, "arm{cpu=cortex-a76,cores=1}", tmp_path / "out")
    kernels = section["kernel_schedules"]
    assert any(k.startswith("pad_packed") for k in kernels), kernels
    assert sum(k.startswith(("te_layout_transform", "pack_input")) for k in kernels) <= 1, kernels
    assert _steps_under_qemu(section, model, path, tmp_path) <= 1.001
