"""Hand-written schedules of the packed int8 kernels, packed depthwise, padded channels (issue 8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

tvm = pytest.importorskip("tvm")
from compress_graph.targets.int8 import lower_qdq  # noqa: E402
from compress_graph.targets.int8.build import TUNED_OPS, compile_module, preprocess, tunable_tasks  # noqa: E402
from compress_graph.targets.int8.packed import host_has_vnni  # noqa: E402
from compress_graph.targets.int8.schedule import schedule_int8_kernels  # noqa: E402
from compress_graph.targets.int8.testing import (  # noqa: E402
    import_relax,
    layout_moves,
    ort_session,
    output_scales,
    quantize_qdq,
    random_input,
    save_float_model,
    vnni_target,
)
from tvm import relax  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "models"
VNNI = vnni_target()
needs_vnni = pytest.mark.skipif(not host_has_vnni(), reason="this CPU has no AVX-512 VNNI: cannot run VNNI code")


@pytest.fixture(scope="module")
def qdq(tmp_path_factory):
    out = tmp_path_factory.mktemp("qdq")
    return {name: quantize_qdq(MODELS / f"{name}.onnx", out / f"{name}.onnx")
            for name in ("resnet_s", "mobilenetv2_s")}


def _lowered(path: Path):
    target = tvm.target.Target(VNNI)
    low, stats = lower_qdq(import_relax(onnx.load(str(path))), target)
    return preprocess(low, target), stats, target


def _run(ex, feeds) -> np.ndarray:
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()]).numpy()


def test_every_packed_conv_gets_the_hand_schedule(qdq):
    mod, stats, target = _lowered(qdq["resnet_s"])
    scheduled, hs = schedule_int8_kernels(mod, target)
    assert hs["failed"] == {}
    assert len(hs["scheduled"]) == 12  # 13 packed convs (two pairs share a kernel) and the stem's max pool
    assert sum("conv2d_NCHWc_int8" in name for name in hs["scheduled"]) == 11
    assert sum("max_pool2d" in name for name in hs["scheduled"]) == 1  # on the packed codes
    # the input module is left as it was; the new one carries the vpdpbusd tensorization
    script = scheduled.script()
    assert "vpdpbusd" in script and "vpdpbusd" not in mod.script()


def test_tuning_leaves_hand_scheduled_kernels_alone(qdq):
    mod, _, target = _lowered(qdq["resnet_s"])
    before = [t.task_name for t in tunable_tasks(mod, target, TUNED_OPS)]
    after = [t.task_name for t in tunable_tasks(schedule_int8_kernels(mod, target)[0], target, TUNED_OPS)]
    assert sum("conv2d_NCHWc_int8" in n for n in before) == 11
    assert not any("conv2d_NCHWc_int8" in n for n in after)
    assert any("matmul" in n for n in after)  # the classifier is still tuned


def test_mobilenet_depthwise_and_24_channel_convs_stay_packed(qdq):
    low, stats = lower_qdq(import_relax(onnx.load(str(qdq["mobilenetv2_s"]))), tvm.target.Target(VNNI))
    text = low.script()
    assert stats["float"] == 0
    assert "R.nn.conv2d(" not in text  # no plain NCHW conv left: depthwise and 24-channel convs are packed
    assert "depthwise_conv2d_nchwc_int8" in text
    assert layout_moves(low) == 2  # packed from the first conv to the global pool
    mod = preprocess(low, tvm.target.Target(VNNI))
    _, hs = schedule_int8_kernels(mod, tvm.target.Target(VNNI))
    assert hs["failed"] == {}
    assert sum("depthwise" in n for n in hs["scheduled"]) >= 6


@needs_vnni
@pytest.mark.parametrize("name", ["resnet_s", "mobilenetv2_s"])
def test_hand_scheduled_library_is_bit_identical_and_matches_onnxruntime(qdq, name):
    mod, _, target = _lowered(qdq[name])
    model = onnx.load(str(qdq[name]))
    feeds = random_input(model, seed=3)
    fast = compile_module(mod, target)
    plain = compile_module(mod, target, hand_schedules=False)
    assert "vpdpbusd" in fast.mod.imports[0].inspect_source("asm")
    got, ref = _run(fast, feeds), _run(plain, feeds)
    np.testing.assert_array_equal(got, ref)  # integer kernels: the schedule must not change one bit
    want = ort_session(qdq[name]).run(None, feeds)[0]
    assert np.max(np.abs(got - want)) <= output_scales(model)[0] * 1.001


def _padded_channels_model(path: Path) -> Path:
    """Conv 16->24, residual add of two 24-channel tensors, Conv 24->8: channels not a multiple of 16."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a"]),
        helper.make_node("Conv", ["a", "w3", "b3"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1]),
    ]
    inits = [w("w1", 24, 16, 3, 3), w("b1", 24), w("w2", 24, 24, 3, 3), w("w3", 8, 24, 3, 3), w("b3", 8)]
    return save_float_model(path, nodes, [1, 16, 12, 12], [1, 8, 6, 6], inits, "padded")


def test_padded_channels_lower_packed_and_match(tmp_path):
    path = quantize_qdq(_padded_channels_model(tmp_path / "fp32.onnx"), tmp_path / "qdq.onnx")
    target = tvm.target.Target(VNNI)
    low, stats = lower_qdq(import_relax(onnx.load(str(path))), target)
    assert stats["by_op"]["conv2d_packed"] == 3 and stats["float"] == 0
    text = low.script()
    assert "R.nn.conv2d(" not in text
    # packed from the first conv to the last: one pack of the input, one unpack of the output, whose 8 real
    # channels are sliced from the 16-channel block
    assert layout_moves(low) == 2 and "R.strided_slice(" in text
    if not host_has_vnni():
        pytest.skip("this CPU has no AVX-512 VNNI: cannot run VNNI code")
    _assert_within_one_step(path, preprocess(low, target), target, seed=5)


def test_output_step_of_a_float_head_bounds_one_step_per_input():
    """A float Gemm on a dequantized input (the `quant` pass leaves classifier heads float): one input step
    moves output j by at most scale * sum_i |W[i, j]|, the tolerance `--verify-target` then uses."""
    from compress_graph.targets.build import _output_scales
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[1.0, -2.0, 0.5], [3.0, 0.25, -1.0]], np.float32)  # (N=2, K=3), used with transB
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z"), numpy_helper.from_array(w, "w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Flatten", ["xd"], ["xf"]),
             helper.make_node("Gemm", ["xf", "w"], ["y"], transB=1),
             helper.make_node("Relu", ["y"], ["y2"]), helper.make_node("Exp", ["y"], ["y3"])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in ("y", "y2", "y3")]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              outs, inits)
    scales = _output_scales(helper.make_model(graph))
    assert scales[0] == pytest.approx(0.1 * 4.25)  # row 1 of W: 3 + 0.25 + 1
    assert scales[1] == scales[0]  # Relu never widens a difference
    assert np.isnan(scales[2])  # Exp may: unknown


def test_cli_quant_to_host_uses_hand_schedules_and_verifies(tmp_path):
    """The `--target host` build of the project's own quant output: hand-scheduled int8 kernels, and the
    compiled library passes `--verify-target` (it used to fail by 0.007 on the float classifier head)."""
    import json
    import subprocess
    import sys

    code = "import sys; from compress_graph.cli import main; sys.exit(main(sys.argv[1:]))"
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", code, str(MODELS / "mobilenetv2_s.onnx"), "--passes",
                        "fold-bn,quant", "--target", "host", "--verify-target", "-o", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())["target"]
    assert report["verification"]["status"] == "passed"
    assert report["int8"]["by_op"]["conv2d_packed"] >= 10 or not host_has_vnni()
    if host_has_vnni():
        assert report["schedule"]["int8_hand_scheduled"] >= 10 and report["schedule"]["int8_hand_failed"] == {}


@needs_vnni
@pytest.mark.slow
def test_yolo_packed_silu_matches_onnxruntime(tmp_path):
    """yolo_s on the VNNI path: SiLU's sigmoid table and multiply, the C2f channel splits and concats and the
    nearest upsampling run on packed data (44 layout transforms before those became packed, 19 after)."""
    path = quantize_qdq(MODELS / "yolo_s.onnx", tmp_path / "yolo_s.onnx")
    target = tvm.target.Target(VNNI)
    low, stats = lower_qdq(import_relax(onnx.load(str(path))), target)
    assert stats["float_ops"] == {}
    assert layout_moves(low) <= 19
    _assert_within_one_step(path, preprocess(low, target), target, seed=4)


@needs_vnni
def test_pose_conv_transpose_runs_packed_and_matches(tmp_path):
    path = quantize_qdq(MODELS / "pose_s.onnx", tmp_path / "pose_s.onnx")
    mod, stats, target = _lowered(path)
    assert stats["by_op"]["conv2d_transpose_phases_packed"] == 1 and stats["float"] == 0
    _assert_within_one_step(path, mod, target, seed=6)


def _assert_within_one_step(path: Path, mod, target, seed: int) -> None:
    """The compiled (hand-scheduled) library of the preprocessed ``mod`` is within one output step of
    onnxruntime's run of the QDQ model at ``path``."""
    model = onnx.load(str(path))
    feeds = random_input(model, seed=seed)
    got = _run(compile_module(mod, target), feeds)
    want = ort_session(path).run(None, feeds)[0]
    assert np.max(np.abs(got - want)) <= output_scales(model)[0] * 1.001


@needs_vnni
@pytest.mark.slow
def test_tuning_an_int8_model_skips_the_hand_scheduled_convs(tmp_path):
    """`--tune` on a QDQ model: the hand-scheduled convs are not tuning tasks, the rest is tuned and its records
    are applied, and the library still verifies against onnxruntime."""
    pytest.importorskip("xgboost")  # MetaSchedule imports it even for random search
    from compress_graph.targets import build_for_target

    path = quantize_qdq(MODELS / "resnet_s.onnx", tmp_path / "resnet_s.onnx")
    section = build_for_target(onnx.load(str(path)), "host{cores=2}", tmp_path / "out", tune_trials=1,
                               verify_target=True)
    sched = section["schedule"]
    assert sched["int8_hand_scheduled"] == 12 and sched["int8_hand_failed"] == {}  # 11 convs and the max pool
    # every kernel but the 12 hand-scheduled ones is a task; each ran its one trial and left a record
    assert section["tuning"]["tasks"] == sched["kernels"] - 12 == section["tuning"]["trials"]
    assert sched["from_tuning_records"] == section["tuning"]["tasks"]
    assert section["verification"]["status"] == "passed"
