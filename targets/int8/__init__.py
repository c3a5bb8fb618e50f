"""Integer execution of QDQ models in TVM Relax (issue 8).

TVM's ONNX importer runs QuantizeLinear/DequantizeLinear as float fake-quant. ``lower_qdq`` rewrites the
QDQ patterns into integer Relax ops (8-bit x int8 -> int32, fixed-point requant), and on targets with
dot-product instructions emits the convs in the packed layouts those instructions need (x86 VNNI:
NCHW16c / OIHW4i16o4i; ARM: int8 x int8 for ``sdot``).

    mod = tvm.relax.frontend.onnx.from_onnx(qdq_model, shape_dict=..., keep_params_in_input=False)
    mod, stats = lower_qdq(mod, target)   # stats: {"converted": n, "float": m, "reasons": {...}, ...}
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import tvm
from compress_graph.targets.int8.lower import LowerOptions, lower_module
from compress_graph.targets.int8.match import dtype_of, op_name
from tvm import relax

__all__ = ["LowerOptions", "has_qdq", "lower_qdq", "options_for_target"]

# Ops that only move or reinterpret data, or sit at a quantization border: not counted as float compute.
_NOT_COMPUTE = {
    "relax.quantize", "relax.dequantize", "relax.reshape", "relax.permute_dims", "relax.flatten",
    "relax.squeeze", "relax.expand_dims", "relax.layout_transform", "relax.split", "relax.concat",
}


def has_qdq(mod: tvm.IRModule) -> bool:
    """True if any Relax function quantizes (the importer's trace of a QDQ model)."""
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            for block in func.body.blocks:
                if any(op_name(b.value) == "relax.quantize" for b in block.bindings):
                    return True
    return False


def options_for_target(target: tvm.target.Target) -> LowerOptions:
    """A CPU with an 8-bit dot product (targets/isa: x86 VNNI, aarch64 sdot): packed convs on uint8 activations,
    one-row tables as vector lookups on aarch64 (NEON) and x86 with AVX-512 VBMI; other aarch64: plain s8 x s8
    convs; else plain u8 x s8."""
    from compress_graph.targets import isa
    from compress_graph.targets.int8 import packed
    from compress_graph.targets.isa import x86_vnni

    if str(target.kind.name) != "llvm":
        return LowerOptions()
    family = isa.int8_dot(target)
    if family is not None:
        tables = "neon" if packed.is_aarch64(target) else ("vbmi" if x86_vnni.has_vbmi(target) else "")
        return LowerOptions(conv_emitter=packed.PackedConvEmitter(target, family), vector_tables=tables,
                            tables_in_convs=bool(getattr(family, "TABLES_IN_CONVS", False)),
                            prelu_arith=not packed.is_aarch64(target))
    if packed.is_aarch64(target):
        return LowerOptions(act_dtype="int8")
    return LowerOptions()


def lower_qdq(mod: tvm.IRModule, target: tvm.target.Target,
              options: LowerOptions | None = None) -> tuple[tvm.IRModule, dict[str, Any]]:
    """Rewrite QDQ patterns of ``mod`` into integer ops for ``target``; returns (module, stats).

    stats: ``converted`` (integer ops produced), ``float`` (compute ops left in float), ``reasons``
    ("op: why" -> count for what stayed float), ``by_op`` (converted count per kind).
    """
    if isinstance(target, dict | str):
        target = tvm.target.Target(target)
    opts = options or options_for_target(target)
    with target:
        out, lstats = lower_module(mod, opts)
    floats, reasons = _float_ops(out, lstats.refused)
    stats = {
        "converted": int(sum(lstats.converted.values())),
        "float": int(sum(floats.values())),
        "reasons": dict(sorted(reasons.items())),
        "by_op": dict(sorted(lstats.converted.items())),
        "float_ops": dict(sorted(floats.items())),
    }
    return out, stats


def _float_ops(mod: tvm.IRModule, refused: dict[str, str]) -> tuple[Counter, Counter]:
    """Count compute calls left with float results, with the refusal reason of their quantize if any."""
    floats: Counter = Counter()
    reasons: Counter = Counter(refused.values())
    for _, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        for block in func.body.blocks:
            for binding in block.bindings:
                name = op_name(binding.value)
                if name is None or name in _NOT_COMPUTE or not dtype_of(binding.value).startswith("float"):
                    continue
                floats[name.removeprefix("relax.")] += 1
    return floats, reasons
