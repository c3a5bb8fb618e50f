"""Packed/dot-product code generation for the int8 path: VNNI on x86, sdot on ARM (issue 8)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

tvm = pytest.importorskip("tvm")
from compress_graph.targets.int8 import lower_qdq, options_for_target  # noqa: E402
from compress_graph.targets.int8.packed import has_vnni, host_has_vnni, pack_kernel  # noqa: E402
from compress_graph.targets.int8.testing import (  # noqa: E402
    import_relax,
    layout_moves,
    ort_session,
    output_scales,
    quantize_qdq,
    random_input,
    vnni_target,
)
from tvm import relax  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "models"
VNNI_HOST = vnni_target()
A76 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"],
       "num-cores": 1}
A53 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a53", "mattr": ["+neon"], "num-cores": 1}


@pytest.fixture(scope="module")
def resnet_qdq(tmp_path_factory):
    return quantize_qdq(MODELS / "resnet_s.onnx", tmp_path_factory.mktemp("qdq") / "resnet_s.onnx")


def _asm(ex) -> str:
    return ex.mod.imports[0].inspect_source("asm")


def test_target_options():
    assert has_vnni(tvm.target.Target(VNNI_HOST))
    assert not has_vnni(tvm.target.Target({"kind": "llvm", "mcpu": "skylake"}))
    assert not has_vnni(tvm.target.Target(A76))
    from compress_graph.targets import isa

    assert isa.int8_dot(tvm.target.Target(A76)).NAME == "arm-sdot"
    assert isa.int8_dot(tvm.target.Target({**A53, "mcpu": "cortex-a55"})).NAME == "arm-sdot"  # dotprod by mcpu
    assert isa.int8_dot(tvm.target.Target(A53)).NAME == "arm-neon"  # no dot product: smull / sadalp
    assert isa.int8_dot(tvm.target.Target(VNNI_HOST)).NAME == "x86-vnni"
    assert isa.int8_dot(tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})).NAME == "x86-avx2"  # vpmaddwd
    assert isa.int8_dot(tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})).NAME == "x86-avx2"
    assert isa.int8_dot(tvm.target.Target({"kind": "llvm", "mcpu": "nehalem"})) is None  # no AVX2
    assert options_for_target(tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})).conv_emitter.family \
        .WEIGHT_DTYPE == "int16"
    assert options_for_target(tvm.target.Target(A76)).conv_emitter.family.INPUT_OFFSET == 128
    assert options_for_target(tvm.target.Target(A53)).conv_emitter.family.PAIRS == 2
    assert options_for_target(tvm.target.Target(VNNI_HOST)).conv_emitter is not None


def test_kernel_packing_layout():
    w = np.arange(32 * 16 * 3 * 3).reshape(32, 16, 3, 3).astype(np.int8)
    p = pack_kernel(w, 16)
    assert p.shape == (2, 1, 3, 3, 4, 16, 4)
    # packed[oc_chunk, ic_chunk, kh, kw, ic4, oc_block, i4] == w[oc_chunk*16+oc_block, ic4*4+i4, kh, kw]
    assert p[1, 0, 2, 1, 3, 5, 2] == w[16 + 5, 3 * 4 + 2, 2, 1]


@pytest.mark.skipif(not host_has_vnni(), reason="this CPU has no AVX-512 VNNI: cannot run VNNI code")
def test_vnni_packed_model_emits_vpdpbusd_and_matches(resnet_qdq):
    target = tvm.target.Target(VNNI_HOST)
    low, stats = lower_qdq(import_relax(onnx.load(str(resnet_qdq))), target)
    assert stats["by_op"]["conv2d_packed"] == 13 and stats["float"] == 0
    text = low.script()
    assert "conv2d_NCHWc_int8" in text
    # packed end to end: one pack after the input quantize, one unpack before global pooling
    assert layout_moves(low) == 2
    ex = relax.build(low, target=target)
    assert "vpdpbusd" in _asm(ex)
    feeds = random_input(onnx.load(str(resnet_qdq)))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()]).numpy()
    want = ort_session(resnet_qdq).run(None, feeds)[0]
    assert np.max(np.abs(got - want)) <= output_scales(onnx.load(str(resnet_qdq)))[0] * 1.001


def test_arm_cortex_a76_packed_convs_are_tensorized_to_sdot(resnet_qdq, tmp_path):
    """The packed path of x86 VNNI on aarch64: every conv packed (NCHW16c, uint8 activations), packed from the
    first conv to the pool, the 16x4 step of each hand-scheduled conv one group of 4 ``sdot`` (what executes is
    counted by bench/arm and tests/bench/test_arm_insn.py)."""
    from compress_graph.targets.int8.build import compile_module, preprocess
    from compress_graph.targets.int8.schedule import schedule_int8_kernels

    target = tvm.target.Target(A76)
    low, stats = lower_qdq(import_relax(onnx.load(str(resnet_qdq))), target)
    assert stats["by_op"]["conv2d_packed"] == 13 and stats["float"] == 0
    assert layout_moves(low) == 2
    _, hand = schedule_int8_kernels(preprocess(low, target), target)
    assert hand["isa"] == "arm-sdot" and len(hand["scheduled"]) >= 11 and not hand["failed"]
    ex = compile_module(preprocess(low, target), target)
    assert "sdot" in _asm(ex)
    cxx = shutil.which("aarch64-linux-gnu-g++")
    if cxx is None:
        pytest.skip("aarch64-linux-gnu-g++ not installed: asm checked, cross link skipped")
    lib = tmp_path / "resnet_int8_a76.so"
    ex.export_library(str(lib), fcompile=tvm.support.cc.cross_compiler(cxx))
    header = subprocess.run(["readelf", "-h", str(lib)], capture_output=True, text=True).stdout
    assert "AArch64" in header


@pytest.mark.slow
def test_arm_cortex_a53_packed_convs_use_smull_sadalp_without_dotprod(resnet_qdq):
    from compress_graph.targets.int8.build import compile_module, preprocess
    from compress_graph.targets.int8.schedule import schedule_int8_kernels

    target = tvm.target.Target(A53)
    low, stats = lower_qdq(import_relax(onnx.load(str(resnet_qdq))), target)
    assert stats["by_op"]["conv2d_packed"] == 13 and layout_moves(low) == 2
    _, hand = schedule_int8_kernels(preprocess(low, target), target)
    assert hand["isa"] == "arm-neon" and len(hand["scheduled"]) >= 11 and not hand["failed"]
    asm = _asm(compile_module(preprocess(low, target), target))
    assert "sdot" not in asm and "sadalp" in asm and "smull" in asm


@pytest.mark.slow
def test_arm_int8_library_under_qemu_matches_onnxruntime(resnet_qdq, tmp_path):
    """The sdot library, run by the aarch64 TVM runtime under qemu-user, agrees with onnxruntime."""
    from compress_graph.targets.runners import qemu_available, run_qemu

    reason = qemu_available("aarch64")
    cxx = shutil.which("aarch64-linux-gnu-g++")
    if reason or cxx is None:
        pytest.skip(reason or "aarch64-linux-gnu-g++ not installed")
    target = tvm.target.Target(A76)
    low, _ = lower_qdq(import_relax(onnx.load(str(resnet_qdq))), target)
    lib = tmp_path / "resnet_int8_a76.so"
    relax.build(low, target=target).export_library(str(lib), fcompile=tvm.support.cc.cross_compiler(cxx))
    feeds = random_input(onnx.load(str(resnet_qdq)), seed=3)
    got = run_qemu(lib, [list(feeds.values())], workdir=tmp_path)["outputs"][0][0]
    want = ort_session(resnet_qdq).run(None, feeds)[0]
    assert np.max(np.abs(got - want)) <= output_scales(onnx.load(str(resnet_qdq)))[0] * 1.001


@pytest.mark.slow
def test_arm_int8_pose_with_conv_transpose_builds_and_matches_under_qemu(tmp_path):
    """The project's own `fold-bn,quant` output of pose_s for cortex-a76: its ConvTranspose lowers to a
    dilated integer conv, and one sampled MetaSchedule schedule there fails TVM's lowering ("VectorizeLoop
    before LiftStorageAlloc"); the build drops that schedule, keeps the kernel's plain loops and verifies."""
    from compress_graph import load, run_pipeline
    from compress_graph.targets import build_for_target
    from compress_graph.targets.runners import qemu_available

    reason = qemu_available("aarch64")
    if reason or shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip(reason or "aarch64-linux-gnu-g++ not installed")
    model, _ = run_pipeline(load(MODELS / "pose_s.onnx"), "fold-bn,quant", verify=False, seed=0)
    section = build_for_target(model.to_onnx(), "arm{cpu=cortex-a76}", tmp_path, verify_target=True)
    assert section["int8"]["by_op"].get("conv2d_transpose_phases_packed") == 1
    assert section["verification"]["status"] == "passed", section["verification"]
