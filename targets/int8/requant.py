"""Fixed-point requantization: int32 accumulators -> 8-bit outputs with integer-only arithmetic.

A real multiplier ``m = s_in * s_w / s_out`` (per output channel) becomes ``M * 2**-shift`` with a 31-bit
``M`` in [2**30, 2**31). The product ``acc * M`` is formed in int64 (|acc| < 2**31, so it cannot overflow)
and shifted right with round-half-to-even, the rounding onnxruntime's MLAS applies in its float requant
(``nearbyintf``). With 31 bits of multiplier the result differs from onnxruntime's float32
``acc * scale`` only when the exact value lies within ~1e-7 (relative) of a .5 tie: one quantization step,
rarely. ``mode="float"`` instead reproduces onnxruntime's float32 multiply exactly (float32 scale, round
half to even), for targets where float is cheap.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

QRANGE = {"uint8": (0, 255), "int8": (-128, 127)}
_MAX_SHIFT = 62


def fixed_point(multiplier: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real multipliers (> 0) -> (M int64 in [2**30, 2**31), shift int64) with m ~= M * 2**-shift."""
    m = np.asarray(multiplier, dtype=np.float64)
    if np.any(m <= 0) or not np.all(np.isfinite(m)):
        raise ValueError("requantization multipliers must be positive and finite")
    frac, exp = np.frexp(m)  # m = frac * 2**exp, frac in [0.5, 1)
    mant = np.round(frac * (1 << 31)).astype(np.int64)
    carry = mant == (1 << 31)
    mant = np.where(carry, mant >> 1, mant)
    exp = exp + carry.astype(exp.dtype)
    shift = (31 - exp).astype(np.int64)
    # Very small multipliers: trade mantissa bits for a shift that int64 can hold.
    over = np.maximum(shift - _MAX_SHIFT, 0)
    mant = mant >> over
    shift = shift - over
    if np.any(shift < 1):
        raise ValueError("requantization multiplier >= 2**30 is not supported")
    return mant, shift


def _const(arr: np.ndarray, dtype: str) -> relax.Constant:
    return relax.const(np.ascontiguousarray(np.asarray(arr).astype(dtype)), dtype)


def channel_shape(ndim: int, axis: int, n: int) -> tuple[int, ...]:
    """Broadcast shape that puts a length-``n`` vector on ``axis`` of an ``ndim`` tensor."""
    shape = [1] * ndim
    shape[axis] = n
    return tuple(shape)


def emit_requant(bb: relax.BlockBuilder, acc: relax.Expr, multiplier: np.ndarray, zero_point: int,
                 out_dtype: str, bcast_shape: tuple[int, ...], *, lo: int | None = None,
                 hi: int | None = None, mode: str = "fixed") -> relax.Expr:
    """int32 ``acc`` -> ``clip(round(acc * multiplier) + zero_point)`` as ``out_dtype`` (not emitted last).

    ``multiplier`` is a scalar or a vector reshaped to ``bcast_shape``; ``lo``/``hi`` tighten the clip
    (a fused Relu/Clip in the quantized domain).
    """
    qmin, qmax = QRANGE[out_dtype]
    lo = qmin if lo is None else max(qmin, lo)
    hi = qmax if hi is None else min(qmax, hi)
    mult = np.asarray(multiplier, dtype=np.float64)
    shape = bcast_shape if mult.size > 1 else ()
    if mode == "float":
        scale = _const(mult.astype(np.float32).reshape(shape), "float32")
        val = bb.emit(relax.op.round(relax.op.multiply(relax.op.astype(acc, "float32"), scale)))
        val = bb.emit(relax.op.astype(val, "int32"))
    else:
        mant, shift = fixed_point(mult.reshape(-1))
        shift_c = _const(shift.reshape(shape), "int64")
        prod = bb.emit(relax.op.multiply(relax.op.astype(acc, "int64"), _const(mant.reshape(shape), "int64")))
        odd = relax.op.bitwise_and(relax.op.right_shift(prod, shift_c), _const(np.array(1), "int64"))
        bias = _const(((np.int64(1) << (shift - 1)) - 1).reshape(shape), "int64")
        val = bb.emit(relax.op.right_shift(relax.op.add(relax.op.add(prod, bias), odd), shift_c))
        val = bb.emit(relax.op.astype(val, "int32"))
    if zero_point:
        val = bb.emit(relax.op.add(val, _const(np.array(zero_point), "int32")))
    val = bb.emit(relax.op.clip(val, lo, hi))
    return relax.op.astype(val, out_dtype)


def rescale_terms(bb: relax.BlockBuilder, x: relax.Expr, zero_point: int, ratio: float,
                  frac_bits: int) -> relax.Expr:
    """``(x - zp) * round(ratio * 2**frac_bits)`` in int64: one addend of a quantized Add/Concat."""
    val = relax.op.astype(x, "int64")
    if zero_point:
        val = relax.op.subtract(val, _const(np.array(zero_point), "int64"))
    mant = int(round(ratio * (1 << frac_bits)))
    return bb.emit(relax.op.multiply(val, _const(np.array(mant), "int64")))


def emit_round_shift(bb: relax.BlockBuilder, val: relax.Expr, frac_bits: int, zero_point: int,
                     out_dtype: str, *, lo: int | None = None, hi: int | None = None) -> relax.Expr:
    """int64 value with ``frac_bits`` fraction bits -> rounded (half to even), offset, clipped 8-bit."""
    qmin, qmax = QRANGE[out_dtype]
    lo = qmin if lo is None else max(qmin, lo)
    hi = qmax if hi is None else min(qmax, hi)
    shift_c = _const(np.array(frac_bits), "int64")
    odd = relax.op.bitwise_and(relax.op.right_shift(val, shift_c), _const(np.array(1), "int64"))
    half = _const(np.array((1 << (frac_bits - 1)) - 1), "int64")
    out = bb.emit(relax.op.right_shift(relax.op.add(relax.op.add(val, half), odd), shift_c))
    out = bb.emit(relax.op.astype(out, "int32"))
    if zero_point:
        out = bb.emit(relax.op.add(out, _const(np.array(zero_point), "int32")))
    out = bb.emit(relax.op.clip(out, lo, hi))
    return relax.op.astype(out, out_dtype)


def add_frac_bits(ratios: list[float]) -> int:
    """Fraction bits for a sum of ``(x - zp) * ratio`` terms: as many as int64 comfortably holds."""
    top = max(max(ratios), 1e-30)
    # each term is at most 255 * ratio * 2**bits; keep the sum of a few terms below 2**60
    bits = int(np.floor(60 - 8 - 3 - np.log2(top)))
    return int(min(max(bits, 8), 40))
