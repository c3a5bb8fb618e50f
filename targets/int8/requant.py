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


def ties_possible(mant: np.ndarray, shift: np.ndarray, acc_bound: np.ndarray | None = None) -> np.ndarray:
    """Per channel: can ``v * M`` be an odd multiple of ``2**(shift-1)`` for an integer ``|v| <= acc_bound``? It
    needs ``|v| >= 2**(shift - 1 - tz(M))``, tz = trailing zero bits of M."""
    tz = np.array([(int(m) & -int(m)).bit_length() - 1 for m in np.ravel(mant)], np.int64)
    bound = np.broadcast_to(np.float64(2**31 - 1) if acc_bound is None else np.asarray(acc_bound, np.float64),
                            tz.shape)
    return np.exp2((np.ravel(shift) - 1 - tz).astype(np.float64)) <= bound


def _const(arr: np.ndarray, dtype: str) -> relax.Constant:
    return relax.const(np.ascontiguousarray(np.asarray(arr).astype(dtype)), dtype)


def channel_shape(ndim: int, axis: int, n: int) -> tuple[int, ...]:
    """Broadcast shape that puts a length-``n`` vector on ``axis`` of an ``ndim`` tensor."""
    shape = [1] * ndim
    shape[axis] = n
    return tuple(shape)


def emit_requant(bb: relax.BlockBuilder, acc: relax.Expr, multiplier: np.ndarray, zero_point: int,
                 out_dtype: str, bcast_shape: tuple[int, ...], *, lo: int | None = None,
                 hi: int | None = None, mode: str = "fixed", bias: np.ndarray | None = None,
                 acc_bound: np.ndarray | None = None) -> relax.Expr:
    """int32 ``acc`` -> ``clip(round((acc + bias) * multiplier) + zero_point)`` as ``out_dtype`` (not emitted
    last).

    ``multiplier`` (and ``bias``, int) are scalars or vectors reshaped to ``bcast_shape``; ``lo``/``hi`` tighten
    the clip (a fused Relu/Clip in the quantized domain).

    Fixed point: ``(acc * M + C) >> shift`` with ``C = bias * M + 2**(shift-1) + (zero_point << shift)`` folded
    at compile time, so the kernel does one 32 x 32 -> 64-bit multiply (M < 2**31 is stored as int32: NEON
    ``smull``, x86 ``vpmuldq``; a full 64-bit multiply, which NEON lacks, was scalarized), one add and one shift
    per element. Rounding is half to even: an exact tie (``acc * M`` a multiple of ``2**(shift-1)`` but not of
    ``2**shift``) needs ``|acc + bias| >= 2**(shift - 1 - tz(M))`` (tz: trailing zero bits); only where
    ``acc_bound`` (per channel, default 2**31) allows that is the odd-floor correction emitted.
    """
    qmin, qmax = QRANGE[out_dtype]
    lo = qmin if lo is None else max(qmin, lo)
    hi = qmax if hi is None else min(qmax, hi)
    mult = np.asarray(multiplier, dtype=np.float64)
    b = None if bias is None else np.asarray(bias, dtype=np.int64)
    per_channel = mult.size > 1 or (b is not None and b.size > 1)
    shape = bcast_shape if per_channel else ()
    n = int(np.prod(bcast_shape)) if per_channel else 1
    if mode == "float":
        if b is not None and np.any(b):
            acc = bb.emit(relax.op.add(acc, _const(np.broadcast_to(b, (n,)).reshape(shape), "int32")))
        scale = _const(np.broadcast_to(mult.astype(np.float32), (n,)).reshape(shape), "float32")
        val = bb.emit(relax.op.round(relax.op.multiply(relax.op.astype(acc, "float32"), scale)))
        val = bb.emit(relax.op.astype(val, "int32"))
        if zero_point:
            val = bb.emit(relax.op.add(val, _const(np.array(zero_point), "int32")))
    else:
        mant, shift = fixed_point(np.broadcast_to(mult.reshape(-1), (n,)))
        b64 = np.zeros(n, np.int64) if b is None else np.broadcast_to(b.reshape(-1), (n,)).astype(np.int64)
        ties = bool(np.any(ties_possible(mant, shift, acc_bound)))
        half = (np.int64(1) << (shift - 1)) - (1 if ties else 0)
        # the zero point joins the constant while zp << shift leaves int64 room for (acc + b) * M < 2**62
        fold_zp = int(shift.max()) <= 53
        const = b64 * mant + half + ((np.int64(zero_point) << shift) if fold_zp else 0)
        shift_c = _const(shift.reshape(shape), "int64")
        mant_c = relax.op.astype(_const(mant.reshape(shape), "int32"), "int64")
        prod = bb.emit(relax.op.multiply(relax.op.astype(acc, "int64"), mant_c))
        if ties:  # half to even at an exact tie: add 1 when the floor of the (unbiased) quotient is odd
            floor = relax.op.right_shift(relax.op.add(prod, _const((b64 * mant).reshape(shape), "int64")), shift_c)
            odd = relax.op.bitwise_and(floor, _const(np.array(1), "int64"))
            prod = bb.emit(relax.op.add(prod, odd))
        val = bb.emit(relax.op.right_shift(relax.op.add(prod, _const(const.reshape(shape), "int64")), shift_c))
        val = bb.emit(relax.op.astype(val, "int32"))
        if zero_point and not fold_zp:
            val = bb.emit(relax.op.add(val, _const(np.array(zero_point), "int32")))
    val = bb.emit(relax.op.clip(val, lo, hi))
    return relax.op.astype(val, out_dtype)


def rescale_terms(bb: relax.BlockBuilder, x: relax.Expr, zero_point: int, ratio: float,
                  frac_bits: int, dtype: str = "int64") -> relax.Expr:
    """``(x - zp) * round(ratio * 2**frac_bits)`` in ``dtype``: one addend of a quantized Add/Sub."""
    val = relax.op.astype(x, dtype)
    if zero_point:
        val = relax.op.subtract(val, _const(np.array(zero_point), dtype))
    mant = int(round(ratio * (1 << frac_bits)))
    return bb.emit(relax.op.multiply(val, _const(np.array(mant), dtype)))


def emit_round_shift(bb: relax.BlockBuilder, val: relax.Expr, frac_bits: int, zero_point: int,
                     out_dtype: str, *, lo: int | None = None, hi: int | None = None,
                     dtype: str = "int64") -> relax.Expr:
    """``dtype`` value with ``frac_bits`` fraction bits -> rounded (half to even), offset, clipped 8-bit."""
    qmin, qmax = QRANGE[out_dtype]
    lo = qmin if lo is None else max(qmin, lo)
    hi = qmax if hi is None else min(qmax, hi)
    shift_c = _const(np.array(frac_bits), dtype)
    odd = relax.op.bitwise_and(relax.op.right_shift(val, shift_c), _const(np.array(1), dtype))
    half = _const(np.array((1 << (frac_bits - 1)) - 1), dtype)
    out = bb.emit(relax.op.right_shift(relax.op.add(relax.op.add(val, half), odd), shift_c))
    if dtype != "int32":
        out = bb.emit(relax.op.astype(out, "int32"))
    if zero_point:
        out = bb.emit(relax.op.add(out, _const(np.array(zero_point), "int32")))
    out = bb.emit(relax.op.clip(out, lo, hi))
    return relax.op.astype(out, out_dtype)


#: fewest bits of each ratio's fixed-point mantissa the 32-bit form of an Add/Sub keeps (else int64): a term is
#: then off its exact value by at most 255 / 2**13 of an output step, a one-step flip only that close to a tie
_MIN_MANTISSA_BITS_32 = 12


def add_frac_bits(ratios: list[float]) -> tuple[int, str]:
    """Fraction bits and integer type for a sum of ``(x - zp) * ratio`` terms (``|x - zp| <= 255``).

    int32 where the whole sum, its rounding constant and the odd-floor correction stay below 2**31 with every
    ratio keeping at least _MIN_MANTISSA_BITS_32 bits (4 lanes per NEON vector, 8 per AVX2, where int64 has 2 /
    4 and NEON no 64-bit multiply); else int64 with as many bits as it comfortably holds."""
    total = sum(ratios)
    for bits in range(24, 7, -1):
        if 255 * (total * 2.0**bits + len(ratios)) + 2.0**bits + 1 < 2.0**31:
            if min(ratios) * 2.0**bits >= 2.0**_MIN_MANTISSA_BITS_32:
                return bits, "int32"
            break
    top = max(max(ratios), 1e-30)
    # each term is at most 255 * ratio * 2**bits; keep the sum of a few terms below 2**60
    bits = int(np.floor(60 - 8 - 3 - np.log2(top)))
    return int(min(max(bits, 8), 40)), "int64"
