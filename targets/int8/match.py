"""Reading the QDQ importer's output: which Relax values are dequantized 8-bit tensors or constant weights.

The Relax ONNX frontend turns DequantizeLinear into ``R.dequantize(q, scale, zp, axis)`` with constant
scale/zero point and QuantizeLinear into ``R.quantize``; a conv's bias arrives as a dequantized int32
constant, reshaped to (1, C, 1, 1). These helpers recognise those shapes and raise ``Refuse`` with a reason
otherwise, so the lowering can count why a value stayed in float.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

INT8_TYPES = ("uint8", "int8")


class Refuse(Exception):  # noqa: N818 - a reason, not an error: the value stays float
    """Why a match was refused; the message goes into the lowering's stats."""


@dataclass(frozen=True)
class QTensor:
    """An 8-bit tensor (``expr`` in the original module) and its per-tensor quantization parameters."""

    expr: relax.Expr
    scale: float
    zero_point: int
    dtype: str


def op_name(expr: relax.Expr | None) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def dtype_of(expr: relax.Expr) -> str:
    ty = expr.ty
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else ""


def shape_of(expr: relax.Expr) -> tuple[int, ...]:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise Refuse("unknown shape")
    try:
        return tuple(int(d) for d in ty.shape.values)
    except (TypeError, AttributeError) as exc:
        raise Refuse("dynamic shape") from exc


def channels_of(expr: relax.Expr) -> int:
    """Channel count of an NCHW or NCHW[b]c tensor."""
    shape = shape_of(expr)
    return shape[1] * (shape[4] if len(shape) == 5 else 1)


def prim_float(expr: relax.Expr) -> float | None:
    """A Clip bound given as a PrimValue / scalar constant -> float (None if absent)."""
    if isinstance(expr, tvm.ir.GenericConst):
        return float(expr.value.numpy().reshape(-1)[0])
    value = getattr(expr, "value", None)
    if value is None:
        return None
    try:
        return float(value.value if hasattr(value, "value") else value)
    except (TypeError, ValueError):
        return None


def const_value(expr: relax.Expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


def scalar_const(expr: relax.Expr, what: str) -> float:
    val = const_value(expr)
    if val is None:
        raise Refuse(f"{what} is not a constant")
    if val.size != 1:
        raise Refuse(f"{what} is per-channel")
    return val.reshape(-1)[0].item()


class Definitions:
    """Var -> bound value over a whole module, to walk producers backwards from a QuantizeLinear."""

    def __init__(self, func: relax.Function):
        self._defs: dict[relax.Var, relax.Expr] = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                if isinstance(binding, relax.VarBinding):
                    self._defs[binding.var] = binding.value

    def __call__(self, expr: relax.Expr) -> relax.Expr | None:
        return self._defs.get(expr) if isinstance(expr, relax.Var) else None

    def resolve(self, expr: relax.Expr) -> relax.Expr:
        """Follow var-to-var aliases and return the innermost value (the expr itself if unbound)."""
        seen = 0
        while isinstance(expr, relax.Var) and expr in self._defs and seen < 64:
            expr = self._defs[expr]
            seen += 1
        return expr

    def scalar_bound(self, expr: relax.Expr) -> float | None:
        """A constant scalar, also behind the importer's ``where(isnan(c), +-inf, c)`` (a Clip bound)."""
        expr = self.resolve(expr)
        if op_name(expr) == "relax.where":
            cond = self.resolve(expr.args[0])
            if op_name(cond) != "relax.isnan":
                return None
            c = prim_float(self.resolve(cond.args[0]))
            if c is None:
                return None
            return prim_float(expr.args[1]) if np.isnan(c) else c
        return prim_float(expr) if isinstance(expr, tvm.ir.GenericConst) else None

    def dequantized(self, expr: relax.Expr) -> QTensor:
        """``expr`` = dequantize(q, scalar scale, scalar zp) of an 8-bit tensor, else Refuse."""
        call = self.resolve(expr)
        if op_name(call) != "relax.dequantize":
            raise Refuse(f"input is {op_name(call) or type(call).__name__}, not a dequantized tensor")
        q, scale, zp = call.args
        dt = dtype_of(q)
        if dt not in INT8_TYPES:
            raise Refuse(f"dequantize of {dt}")
        return QTensor(q, float(np.float32(scalar_const(scale, "input scale"))),
                       int(scalar_const(zp, "input zero point")), dt)

    def weight(self, expr: relax.Expr) -> tuple[np.ndarray, np.ndarray, int]:
        """``expr`` = dequantize(int8 constant, scales, zero zps, axis) -> (w int8, scales f32, axis)."""
        call = self.resolve(expr)
        if op_name(call) != "relax.dequantize":
            raise Refuse("weight is not a dequantized constant")
        w, scale, zp = (const_value(a) for a in call.args)
        if w is None or scale is None or zp is None:
            raise Refuse("weight is not constant")
        if w.dtype != np.int8:
            raise Refuse(f"weight dtype {w.dtype} (int8 expected)")
        if np.any(zp != 0):
            raise Refuse("weight zero point is not 0")
        return w, scale.astype(np.float32).reshape(-1), int(call.attrs.axis)

    def bias(self, expr: relax.Expr) -> np.ndarray:
        """A constant (optionally dequantized, optionally reshaped) bias -> float64 vector."""
        call = self.resolve(expr)
        if op_name(call) == "relax.reshape":
            call = self.resolve(call.args[0])
        val = const_value(call)
        if val is not None:
            return val.astype(np.float64).reshape(-1)
        if op_name(call) == "relax.dequantize":
            q, scale, zp = (const_value(a) for a in call.args)
            if q is not None and scale is not None and zp is not None:
                axis = int(call.attrs.axis)
                s = scale.astype(np.float64)
                z = zp.astype(np.float64)
                if s.size > 1 and q.ndim > 1:
                    s = s.reshape(_bshape(q.ndim, axis, s.size))
                    z = z.reshape(_bshape(q.ndim, axis, z.size))
                return ((q.astype(np.float64) - z) * s).reshape(-1)
        raise Refuse("bias is not constant")


def _bshape(ndim: int, axis: int, n: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[axis] = n
    return tuple(shape)
