"""aarch64 with the Armv8.2 dot product (cortex-a55/a76/a78, x1, neoverse-n1): ``sdot``, int8 x int8 only.

The packed int8 conv keeps uint8 activations (the layouts, padding and packed elementwise ops of the x86 path
unchanged); the intrinsic turns the 4 activation bytes into int8 on the fly (``x ^ 0x80 == x - 128``, one ``eor``
per broadcast shared by 4 ``sdot``) and the lowering moves the 128 into the bias (``INPUT_OFFSET``). One 16x4
step: 16 output channels x 4 input channels = 4 ``sdot`` (4 int32 lanes x 4 int8 products each), the weights
as 4 q registers reused across the ``REG_N`` output pixels of a tile.
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from compress_graph.targets.isa import features

NAME = "arm-sdot"
INPUT_OFFSET = 128  # sdot multiplies int8 x int8: the uint8 activation enters as x - 128
INTRIN = "compress_graph_dot_16x4_u8off_s8_sdot"
#: 16 output x 16 input channels per step, where a conv's input block is 16 channels: the 16 activation bytes of a
#: pixel in one q register (one load, one ``eor``), each group of 4 taken by the indexed ``sdot v.4s, v.16b,
#: v.4b[g]`` -- no ``ldr w`` + ``eor`` + ``dup`` per 4 input channels as in the 16x4 step
INTRIN_WIDE = "compress_graph_dot_16x16_u8off_s8_sdot_lane"
WIDE_GROUPS = 4  # groups of 4 input channels per INTRIN_WIDE step
FOLD_ZERO_POINT = True  # the zero point rides in the rounding constant (fold_zero_point)
REG_N = 2  # output pixels per register tile: 2 x 4 q accumulators; 4 and 6 executed 3-5 % more (spills)
#: one-row tables on a conv's codes run in the conv's kernel (targets/int8/lookup.packed_lookup_func), the pixels
#: of a lookup step unrolled by LOOKUP_UNROLL (yolo_s headline 3.64 -> 3.63 M with 4)
TABLES_IN_CONVS = True
LOOKUP_UNROLL = 4


def is_aarch64(target: tvm.target.Target) -> bool:
    return features.arch_is(target, features.AARCH64, default=False)


def matches(target: tvm.target.Target) -> bool:
    """aarch64 with ``+dotprod`` in mattr or an mcpu LLVM knows to have it."""
    return is_aarch64(target) and bool(features.has(target, "dotprod"))


@functools.cache
def register_intrinsic() -> None:
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + (T.cast(a[vk], "int32") - 128) * T.cast(b[vi, vk], "int32")

    sdot = "llvm.aarch64.neon.sdot.v4i32.v16i8"

    # no named temporaries inside: TVMScript turns them into local buffers, which become a workspace allocation
    # (TVMBackendAllocWorkspace / Free) per intrinsic call
    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            for q in T.unroll(4):  # 4 output channels per sdot; the 4 activation bytes, each minus 128 (xor of
                # its top bit), broadcast to every lane
                c[T.ramp(q * 4, 1, 4)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(sdot), c.vload([q * 4], dtype="int32x4"),
                    b.vload([q * 4, 0], dtype="int8x16"),
                    T.reinterpret(T.broadcast(T.bitwise_xor(T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"),
                                                            T.int32(-2139062144)), 4), dtype="int8x16"),
                    dtype="int32x4")

    TensorIntrin.register(INTRIN, desc, impl, override=True)

    @T.prim_func(s_tir=True)
    def desc_wide(a: T.Buffer((16,), "uint8", offset_factor=1), b: T.Buffer((4, 16, 4), "int8", offset_factor=1),
                  c: T.Buffer((16,), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(c[0:16], a[0:16], b[0:4, 0:16, 0:4])
            T.writes(c[0:16])
            for g in T.serial(0, 4):
                for i in T.serial(0, 16):
                    for k in T.serial(0, 4):
                        with T.sblock("update"):
                            vi, vg, vk = T.axis.remap("SRR", [i, g, k])  # the conv block's order: ob, icf, ics
                            c[vi] = c[vi] + (T.cast(a[vg * 4 + vk], "int32") - 128) * T.cast(b[vg, vi, vk], "int32")

    # the activation vector (minus 128 by xor) is written out per use, LLVM loads and flips it once; the lane
    # broadcast (a shuffle of lane g) folds into the indexed sdot
    @T.macro
    def group(a, b, c, g):  # g: a Python int when the macro expands, so the shuffle's lanes are constants
        for q in T.unroll(4):
            c[T.ramp(q * 4, 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(sdot), c.vload([q * 4], dtype="int32x4"),
                b.vload([g, q * 4, 0], dtype="int8x16"),
                T.reinterpret(T.Shuffle([T.bitwise_xor(T.reinterpret(a.vload([0], "uint8x16"), dtype="int32x4"),
                                                       T.broadcast(T.int32(-2139062144), 4))], [g, g, g, g]),
                              dtype="int8x16"), dtype="int32x4")

    @T.prim_func(s_tir=True)
    def impl_wide(a: T.Buffer((16,), "uint8", offset_factor=1), b: T.Buffer((4, 16, 4), "int8", offset_factor=1),
                  c: T.Buffer((16,), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(c[0:16], a[0:16], b[0:4, 0:16, 0:4])
            T.writes(c[0:16])
            group(a, b, c, 0)
            group(a, b, c, 1)
            group(a, b, c, 2)
            group(a, b, c, 3)

    TensorIntrin.register(INTRIN_WIDE, desc_wide, impl_wide, override=True)


# -- requantization of the packed kernels' int32 accumulators ---------------------------------------------------
def requant_constants(mant: np.ndarray, shift: np.ndarray, acc_bound: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(M, left, round, k) int32 per channel for ``(mulhi31((acc + b) << left, M) + round) >> k``, or None where
    that is not exact; ``mulhi31(v, M) = floor(v * M / 2**31)`` (what NEON's ``sqdmulh`` computes).

    Adding ``2**(k-1)`` and shifting by ``k = shift + left - 31 >= 1`` is then exactly
    ``floor(v * M / 2**shift + 1/2)`` (the low 31 bits dropped first cannot cross an integer boundary of the second
    quotient). Multipliers of 1/2 and more (shift <= 31) pre-shift ``v`` left, which ``acc_bound`` (per channel:
    the largest ``|acc + b|``) must leave inside int32. This rounds half up, so it is used only where no exact tie
    can occur (``requant.ties_possible``). Everything after the 32 x 32 -> 64-bit product is 32-bit arithmetic:
    4-lane NEON vectors, where the generic int64 fixed point runs on 2-lane ones."""
    from compress_graph.targets.int8.requant import ties_possible

    bound = np.asarray(acc_bound, np.float64)
    left = np.maximum(32 - shift, 0).astype(np.int64)
    if np.any(bound * np.exp2(left) >= 2**31) or np.any(ties_possible(mant, shift, bound)):
        return None
    k = shift + left - 31
    if np.any(k < 1) or np.any(k > 31):
        return None
    return (mant.astype(np.int32), left.astype(np.int32), (np.int64(1) << (k - 1)).astype(np.int32),
            k.astype(np.int32))


def fold_zero_point(consts: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], acc_bound: np.ndarray,
                    zero_point: int) -> np.ndarray | None:
    """``round + (zero_point << k)`` per channel where adding it before the shift cannot overflow int32 (from
    ``acc_bound``), else None. ``(q + round + (z << k)) >> k == ((q + round) >> k) + z`` exactly. A constant
    added after the shift, LLVM moves past the clip (``smax(x + z, a) = smax(x, a - z) + z``), which turns the
    saturating narrows of ``requant_te`` back into ``smax``/``smin``."""
    mant, left, rnd, k = (np.asarray(v, np.int64) for v in consts)
    v = np.asarray(acc_bound, np.float64) * np.exp2(left.astype(np.float64))
    q = np.floor(v * mant.astype(np.float64) / 2.0**31) + 1  # |mulhi31(v, M)| bound
    z = np.int64(zero_point) << k
    if np.any(q + rnd + np.maximum(z, 0) >= 2**31 - 1) or np.any(-q + rnd + np.minimum(z, 0) <= -2**31):
        return None
    return (rnd + z).astype(np.int32)


def requant_te(acc, bias, mult, left, rounding, shift, zero_point: int, lo: int, hi: int, out_dtype: str,
               sqdmulh: bool = True, narrow: bool = True):
    """8-bit ``clip(((mulhi31((acc + bias) << left, M) + round) >> k) + zero_point)`` of a packed int32 ``acc``
    (N, C/16, H, W, 16); the per-channel constants are (1, C/16, 1, 1, 16) (``left`` None: all 0).

    ``sqdmulh`` (aarch64): the product written as ``min((v * M) >> 31, 2**31 - 1)`` in int64, which LLVM (22)
    turns into one NEON ``sqdmulh`` per 4 lanes on any vector width (the saturation never applies: ``M < 2**31``
    and ``|v| < 2**31``); without the ``min`` it is ``smull`` + ``smull2`` + ``shrn`` + ``shrn2``. (The
    ``sqdmulh`` intrinsic itself was tried first: LLVM aborts the process on vectors wider than 4 lanes.) x86 has
    no such instruction and would pay for the 64-bit ``min``: its families pass False.

    ``narrow`` (aarch64, with ``sqdmulh``): a clip to the whole 8-bit range as two saturating narrows, int32 ->
    int16 -> 8 bits, which LLVM selects as ``sqxtn`` and ``sqxtun``/``sqxtn``: 6 instructions per 16 outputs where
    ``smax`` + ``smin`` per 4 lanes and a ``tbl`` gather took 9. (x86: measured no change on AVX2.) False where the
    result is widened again at once (a table lookup's index, QDQLowering._lookup)."""
    from tvm import te, tirx

    info = np.iinfo(out_dtype)
    narrow = narrow and sqdmulh and (lo, hi) == (int(info.min), int(info.max))

    def f(n, c, y, x, k):
        a = acc[n, c, y, x, k] + bias[0, c, 0, 0, k]
        if left is not None:  # None: no channel pre-shifts
            a = tirx.shift_left(a, left[0, c, 0, 0, k])
        q = tirx.shift_right(a.astype("int64") * mult[0, c, 0, 0, k].astype("int64"), tirx.const(31, "int64"))
        if sqdmulh:
            q = tirx.min(q, tirx.const(2**31 - 1, "int64"))
        r = tirx.shift_right(q.astype("int32") + rounding[0, c, 0, 0, k], shift[0, c, 0, 0, k])
        if zero_point:  # 0: folded into ``rounding`` (fold_zero_point)
            r = r + tirx.const(zero_point, "int32")
        if narrow:
            r = tirx.max(tirx.min(r, tirx.const(32767, "int32")), tirx.const(-32768, "int32")).astype("int16")
            return tirx.max(tirx.min(r, tirx.const(hi, "int16")), tirx.const(lo, "int16")).astype(out_dtype)
        return tirx.max(tirx.min(r, tirx.const(hi, "int32")), tirx.const(lo, "int32")).astype(out_dtype)

    return te.compute(acc.shape, f, name="requant_mulhi")
