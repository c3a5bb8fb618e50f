"""256-entry activation tables on x86 with AVX-512 VBMI: 64 codes per ``vpermi2b`` pair (targets/int8/lookup.py).

The table of a SiLU / hard-swish / sigmoid between two quantizations had been a Relax ``take`` on x86: a gather, one
scalar load per code. On CPUs with VBMI (Ice Lake and later, Zen 4) it is a kernel of 64-lane lookups; checked on
the generated code for a VBMI CPU model on any machine, and run where this CPU has VBMI.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")
from compress_graph.targets import build_for_target  # noqa: E402
from compress_graph.targets.int8.lookup import lookup_func  # noqa: E402
from compress_graph.targets.int8.testing import (  # noqa: E402
    ort_session,
    output_scales,
    random_input,
    run_host_library,
)
from compress_graph.targets.isa import features, x86_vnni  # noqa: E402

VBMI_CPU = {"kind": "llvm", "mcpu": "icelake-server", "num-cores": 1}
HOST_VBMI = features.host_has("avx512vbmi", "avx512vbmi")


def _asm(lib) -> str:
    for mod in [lib.mod if hasattr(lib, "mod") else lib, *getattr(lib.mod if hasattr(lib, "mod") else lib,
                                                                  "imports", [])]:
        try:
            return mod.inspect_source("asm")
        except Exception:  # noqa: BLE001, S112 - modules without assembly
            continue
    return ""


@pytest.mark.parametrize(("in_dtype", "out_dtype"), [("uint8", "uint8"), ("int8", "uint8"), ("uint8", "int8"),
                                                     ("int8", "int8")])
def test_vbmi_lookup_kernel_is_vpermi2b_and_exact(in_dtype, out_dtype):
    """Two ``vpermi2b`` (entries 0-127, 128-255) and a byte blend on the code's sign per 64 codes; the 1000 - 960
    codes past the last whole register take the scalar tail. Run and compared with numpy where this CPU has
    VBMI."""
    n = 1000
    func = lookup_func(n, in_dtype, out_dtype, "vbmi").with_attr("global_symbol", "table_lookup")
    lib = tvm.compile(tvm.IRModule({"table_lookup": func}), target=tvm.target.Target(VBMI_CPU))
    asm = _asm(lib)
    perms = len(re.findall(r"\bvperm[it]2b\b", asm))
    assert perms >= 2 and re.search(r"\bvpmovb2m\b", asm), asm[:2000]
    if not HOST_VBMI:
        pytest.skip("this CPU has no AVX-512 VBMI: the kernel was built and inspected, not run")
    rng = np.random.default_rng(0)
    lo, hi = (-128, 128) if in_dtype == "int8" else (0, 256)
    x = rng.integers(lo, hi, n).astype(in_dtype)
    x[:4] = [lo, hi - 1, lo + 64, lo + 127]
    table = rng.integers(*((-128, 128) if out_dtype == "int8" else (0, 256)), 256).astype(out_dtype)
    y = tvm.runtime.tensor(np.zeros(n, out_dtype))
    lib["table_lookup"](tvm.runtime.tensor(x), tvm.runtime.tensor(table), y)
    assert np.array_equal(y.numpy(), table[x.astype(np.int32) - lo])


def _qdq_conv_silu(path: Path) -> Path:
    """x (uint8 QDQ, 16 channels) -> 3x3 conv 16 -> 32 -> QDQ -> x * Sigmoid(x) (SiLU, the sigmoid quantized
    between) -> QDQ, at 9x11 (3168 codes: 49 registers of 64 and a tail of 32)."""
    rng = np.random.default_rng(7)
    q = [("s_x", 0.05, "z_x", 120), ("s_c", 0.3, "z_c", 128), ("s_s", 1 / 255, "z_s", 0), ("s_y", 0.25, "z_y", 20)]
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (32, 16, 3, 3)).astype(np.int8), "w_q"),
             numpy_helper.from_array(rng.uniform(0.002, 0.004, 32).astype(np.float32), "w_s")]
    for s, sv, z, zv in q:
        inits += [numpy_helper.from_array(np.array(sv, np.float32), s), numpy_helper.from_array(np.array(zv, np.uint8),
                                                                                                 z)]

    def qdq(src, dst, s, z):
        return [helper.make_node("QuantizeLinear", [src, s, z], [f"{dst}_q"]),
                helper.make_node("DequantizeLinear", [f"{dst}_q", s, z], [dst])]

    nodes = [*qdq("x", "xd", "s_x", "z_x"), helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], axis=0),
             helper.make_node("Conv", ["xd", "w"], ["c"], pads=[1, 1, 1, 1]), *qdq("c", "cd", "s_c", "z_c"),
             helper.make_node("Sigmoid", ["cd"], ["s"]), *qdq("s", "sd", "s_s", "z_s"),
             helper.make_node("Mul", ["cd", "sd"], ["m"]), *qdq("m", "y", "s_y", "z_y")]
    graph = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 9, 11])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 9, 11])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("isa", ["auto", "vnni"])
def test_host_tables_are_vbmi_lookups_where_the_cpu_has_vbmi(tmp_path, isa):
    """``host`` (this CPU) with VBMI: the SiLU's table is a table_lookup kernel, no ``take``; ``host{isa=vnni}``
    (Cascade Lake: no VBMI) keeps ``take``. Within one output step of the QDQ semantics where this CPU runs it."""
    from compress_graph.targets.host import OPTIONS, missing_features, tvm_target

    path = _qdq_conv_silu(tmp_path / "silu.onnx")
    model = onnx.load(str(path))
    section = build_for_target(model, f"host{{cores=1,isa={isa}}}", tmp_path / "out")
    kernels = list(section["kernel_schedules"])
    vbmi = x86_vnni.has_vbmi(tvm_target({**{k: o.default for k, o in OPTIONS.items()}, "isa": isa}))
    assert vbmi == (isa == "auto" and HOST_VBMI)
    assert any(k.startswith("table_lookup") for k in kernels) == vbmi, kernels
    assert any(k.startswith("take") for k in kernels) == (not vbmi), kernels
    if missing_features(isa):
        pytest.skip(f"this CPU lacks {missing_features(isa)}")
    feeds = random_input(model, 2)
    got = run_host_library(section["library"], feeds)
    want = ort_session(path).run(None, feeds)[0]
    assert np.max(np.abs(got - want)) <= output_scales(model)[0] * 1.001


def _qdq_conv_prelu(path: Path, slopes: np.ndarray) -> Path:
    """x (uint8 QDQ, 16 channels) -> 1x1 conv 16 -> 24 -> QDQ -> PRelu(slopes) -> QDQ, at 7x9."""
    rng = np.random.default_rng(9)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (24, 16, 1, 1)).astype(np.int8), "w_q"),
             numpy_helper.from_array(rng.uniform(0.002, 0.004, 24).astype(np.float32), "w_s"),
             numpy_helper.from_array(slopes.astype(np.float32).reshape(24, 1, 1), "slope")]
    for s, sv, z, zv in [("s_x", 0.05, "z_x", 120), ("s_c", 0.1, "z_c", 140), ("s_y", 0.12, "z_y", 90)]:
        inits += [numpy_helper.from_array(np.array(sv, np.float32), s),
                  numpy_helper.from_array(np.array(zv, np.uint8), z)]

    def qdq(src, dst, s, z):
        return [helper.make_node("QuantizeLinear", [src, s, z], [f"{dst}_q"]),
                helper.make_node("DequantizeLinear", [f"{dst}_q", s, z], [dst])]

    nodes = [*qdq("x", "xd", "s_x", "z_x"), helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], axis=0),
             helper.make_node("Conv", ["xd", "w"], ["c"]), *qdq("c", "cd", "s_c", "z_c"),
             helper.make_node("PRelu", ["cd", "slope"], ["p"]), *qdq("p", "y", "s_y", "z_y")]
    graph = helper.make_graph(nodes, "prelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 7, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24, 7, 9])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("spread", [False, True])
def test_prelu_on_packed_codes_is_lane_arithmetic_on_x86(tmp_path, spread):
    """PRelu after a packed conv on x86: int32 lane arithmetic (the slope's fixed-point ratio chosen by the sign,
    a rounding shift), no per-channel table gather — for positive, negative, zero and large slopes; slopes too far
    apart for int32's mantissa (1e-7 next to 2) keep the table. Within one output step of the QDQ semantics."""
    slopes = np.linspace(-2.0, 2.0, 24)
    slopes[3] = 0.0
    if spread:
        slopes[5] = 1e-7
    path = _qdq_conv_prelu(tmp_path / "prelu.onnx", slopes)
    model = onnx.load(str(path))
    section = build_for_target(model, "host{cores=1}", tmp_path / "out")
    kernels = list(section["kernel_schedules"])
    assert any(k.startswith("take") for k in kernels) == spread, kernels
    assert section["int8"]["by_op"].get("prelu") == 1, section["int8"]
    feeds = random_input(model, 4)
    got = run_host_library(section["library"], feeds)
    want = ort_session(path).run(None, feeds)[0]
    assert np.max(np.abs(got - want)) <= output_scales(model)[0] * 1.001
