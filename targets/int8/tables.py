"""256-entry tables: ops that map one 8-bit tensor to another, computed once per code at build time.

A one-input function between a DequantizeLinear and a QuantizeLinear — Sigmoid, LeakyRelu, PRelu (one row per
channel), ``x * quantize(sigmoid(x))`` (SiLU), or any float chain of elementwise ops on one 8-bit tensor (the
``quant`` pass leaves SiLU as ``Q(DQ(x) * Sigmoid(DQ(x)))``, hard-swish as ``x * clip(x + 3, 0, 6) / 6``) —
is evaluated here for every code of its input, in float32 as onnxruntime's float kernels compute it, and
quantized like QuantizeLinear. The lowering then emits one lookup (``take``) in the input's layout.
"""

from __future__ import annotations

import numpy as np
import tvm
from compress_graph.targets.int8.match import Definitions, QTensor, Refuse, op_name, prim_float, shape_of
from compress_graph.targets.int8.requant import QRANGE
from tvm import relax

UNARY = {
    "relax.sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "relax.tanh": np.tanh,
    "relax.exp": np.exp,
    "relax.abs": np.abs,
    "relax.negative": np.negative,
    "relax.nn.relu": lambda x: np.maximum(x, 0.0),
    "relax.nn.silu": lambda x: x / (1.0 + np.exp(-x)),
}
MINMAX = ("relax.maximum", "relax.minimum")
BINARY = {
    "relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply, "relax.divide": np.divide,
    "relax.maximum": np.maximum, "relax.minimum": np.minimum, "relax.power": np.power,
}
MAX_CHAIN = 24  # ops in one tabulated elementwise chain


def codes_real(q: QTensor) -> np.ndarray:
    """The real value of every 8-bit code of ``q``, in float32 as onnxruntime dequantizes."""
    qmin, qmax = QRANGE[q.dtype]
    return (np.arange(qmin, qmax + 1, dtype=np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)


def quantize(real: np.ndarray, scale: float, zero_point: int, dtype: str, lo: int | None = None,
             hi: int | None = None) -> np.ndarray:
    """Quantize a table of real values like QuantizeLinear (float32, half to even), clipped to [lo, hi]."""
    qmin, qmax = QRANGE[dtype]
    return np.clip(np.round(real.astype(np.float32) / np.float32(scale)) + zero_point,
                   qmin if lo is None else max(qmin, lo), qmax if hi is None else min(qmax, hi)).astype(dtype)


def unary(defs: Definitions, call: relax.Call, q: QTensor) -> np.ndarray:
    """Real outputs of the one-input op ``call`` for every code of its input ``q``: (codes,), or (channels,
    codes) for PRelu's per-channel slopes."""
    real = codes_real(q)
    name = op_name(call)
    if name == "relax.clip":
        lo_f, hi_f = (prim_float(a) for a in call.args[1:3])
        return np.clip(real, -np.inf if lo_f is None else lo_f, np.inf if hi_f is None else hi_f)
    if name == "relax.nn.leakyrelu":
        alpha = np.float32(float(call.attrs.alpha))
        return np.where(real >= 0, real, real * alpha).astype(np.float32)
    if name == "relax.nn.prelu":
        shape = shape_of(call.args[0])
        if int(call.attrs.axis) != 1 or len(shape) != 4:
            raise Refuse("prelu slope not per channel of NCHW")
        slopes = np.broadcast_to(defs.bias(call.args[1]).astype(np.float32), (shape[1],))
        return np.where(real[None, :] >= 0, real[None, :], real[None, :] * slopes[:, None]).astype(np.float32)
    with np.errstate(over="ignore"):
        return UNARY[name](real).astype(np.float32)


def product_with_unary(defs: Definitions, q: QTensor, other: QTensor) -> np.ndarray | None:
    """Real ``x * f(x)`` per code of q when ``other`` is ``quantize(f(dequantize(q)))`` for a table-able f
    (SiLU's ``x * sigmoid(x)`` with the sigmoid quantized in between), else None."""
    quant = defs.resolve(other.expr)
    if op_name(quant) != "relax.quantize":
        return None
    inner = defs.resolve(quant.args[0])
    if op_name(inner) not in UNARY:
        return None
    try:
        src = defs.dequantized(inner.args[0])
    except Refuse:
        return None
    if not src.expr.same_as(q.expr) or (src.scale, src.zero_point, src.dtype) != (q.scale, q.zero_point, q.dtype):
        return None
    real = codes_real(q)
    with np.errstate(over="ignore"):
        f_q = quantize(UNARY[op_name(inner)](real).astype(np.float32), other.scale, other.zero_point, other.dtype)
    return real * ((f_q.astype(np.float32) - np.float32(other.zero_point)) * np.float32(other.scale))


def tabulate(defs: Definitions, expr: relax.Expr) -> tuple[QTensor, np.ndarray] | None:
    """``(q, f(codes of q))`` when ``expr`` is built only from elementwise ops, scalar constants and the
    dequantized values of a single 8-bit tensor q (evaluated in float32); else None."""
    source: list[QTensor] = []

    def value(e: relax.Expr, depth: int):
        if depth > MAX_CHAIN:
            raise Refuse("elementwise chain too deep")
        node = defs.resolve(e)
        const = node.value.numpy() if isinstance(node, tvm.ir.GenericConst) else None
        if const is not None:
            if const.size != 1 or not np.issubdtype(const.dtype, np.floating):
                raise Refuse("non-scalar constant")
            return np.float32(const.reshape(-1)[0])
        name = op_name(node)
        if name == "relax.dequantize":
            q = defs.dequantized(e)
            if source and not (source[0].expr.same_as(q.expr) and source[0].scale == q.scale
                               and source[0].zero_point == q.zero_point):
                raise Refuse("more than one 8-bit source")
            source[:1] = [q]
            return codes_real(q)
        args = list(getattr(node, "args", []))
        if name in UNARY:
            with np.errstate(over="ignore"):
                return UNARY[name](value(args[0], depth + 1)).astype(np.float32)
        if name in BINARY:
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                return np.asarray(BINARY[name](value(args[0], depth + 1), value(args[1], depth + 1)), np.float32)
        if name == "relax.clip":
            lo_f, hi_f = (prim_float(a) for a in args[1:3])
            return np.clip(value(args[0], depth + 1), -np.inf if lo_f is None else lo_f,
                           np.inf if hi_f is None else hi_f).astype(np.float32)
        if name == "relax.call_tir":  # Clip with tensor bounds arrives as TIR maximum / minimum
            callee = str(getattr(args[0], "name_hint", "") or "")
            op = next((o for o in MINMAX if callee.startswith(o.split(".")[-1])), None)
            fields = list(args[1].fields) if isinstance(args[1], relax.Tuple) else []
            if op is not None and len(fields) == 2:
                bound = defs.scalar_bound(fields[1])
                other = np.float32(bound) if bound is not None else value(fields[1], depth + 1)
                return np.asarray(BINARY[op](value(fields[0], depth + 1), other), np.float32)
        raise Refuse(f"{name} in an elementwise chain")

    try:
        values = value(expr, 0)
        if not source or np.shape(values) != np.shape(codes_real(source[0])) or not np.all(np.isfinite(values)):
            return None
        if shape_of(expr) != shape_of(source[0].expr):  # no broadcast against anything but scalars
            return None
    except Refuse:
        return None
    return source[0], values
