"""aarch64 without the dot product (cortex-a53, a57, a72, a73): 8-bit multiplies widened with NEON.

The same packed layouts as the dot-product families; the 16x4 step (16 output channels x 4 input channels) is
``smull`` (8 int8 x int8 -> int16 products) and ``sadalp`` (pairwise add of int16 neighbours into int32
accumulators) per 4 output channels: 4 instructions per 16 MACs, and no horizontal reduction in the loop,
because the accumulator keeps the two pair sums of every output channel apart (``PAIRS``: the conv computes
``acc[..., 16, 2]``; the epilogue adds the two, once per output, where TVM's shipped NEON 4x4 intrinsic pays an
``addp`` per step). Activations enter as ``x - 128`` (``x ^ 0x80``), as for ``sdot``: int8 x int8 products fit int16.
"""

from __future__ import annotations

import functools

import tvm
from compress_graph.targets.isa import arm_sdot

# the epilogue is NEON's either way: the sdot family's 32-bit requantization
requant_constants = arm_sdot.requant_constants
requant_te = arm_sdot.requant_te
fold_zero_point = arm_sdot.fold_zero_point
FOLD_ZERO_POINT = True  # the zero point rides in the rounding constant (arm_sdot.fold_zero_point)

NAME = "arm-neon"
INPUT_OFFSET = 128
PAIRS = 2  # the accumulator holds, per output channel, the sums of input channels {0, 1} and {2, 3} of each group
INTRIN = "compress_graph_dot_16x4x2_u8off_s8_neon"
#: 16 output x 8 input channels per step, where no weight is -128 (the quant pass's narrow range [-127, 127]):
#: two int8 x int8 products summed in an int16 lane (``smull`` + ``smlal``: |(x - 128) * w| <= 128 * 127, two of
#: them <= 32512) before one ``sadalp`` -- 3 instructions per 16 MACs instead of 4. Kernels whose weights hold a
#: -128 (other quantizers) keep the 16x4 step (``NARROW_ANNOTATION`` marks the others).
INTRIN_WIDE = "compress_graph_dot_16x8x2_u8off_s7_neon"
WIDE_GROUPS = 2
WIDE_NEEDS_NARROW = True
WIDE_REG_N = 1  # 2 pixels: 2 groups of weights (16 d registers) + 2 x 8 q accumulators spill (+9 % on pose_s)
#: 16 output x 16 input channels per step where the input block is 16 channels and no weight is -128, on weight
#: rows (packed.pack_kernel_rows: each output channel's 16 input-channel weights one q register): the pixel's 16
#: activation bytes one q register (one load, one ``eor``), per output channel ``smull`` (input channels 0-7) +
#: ``smlal2`` (8-15, two products per int16 lane) + ``sadalp`` into 4 partial sums -- 3 instructions per 16 MACs
#: and no broadcast; the weights load 2 q registers per ``ldp`` (the 16x8 step: 1 d register per 8 MACs)
ROWS_PAIRS = 4  # partial sums per output channel: input channels {2p, 2p + 1, 2p + 8, 2p + 9}
ROWS_REG_N = 1  # 16 q accumulators per pixel
#: in-order cores: LLVM's scheduler for them hoists the weight loads of the unrolled kernel taps ahead of the
#: accumulators' updates and spills (pose_s a53 with 16 channels per pass: 20.4 M instructions against 18.6 M on
#: the 16x8 step, bench/arm/results_int8_rows_first.json), so the 16 output channels run as 4 passes of 4 over the
#: reduction (17.4 M, no spill; the activations loaded once per pass)
IN_ORDER = ("cortex-a53", "cortex-a35")
#: the 4 partial sums of 16 output channels added by ``addp`` (3 per 4 channels), where LLVM's vectorized
#: stride-4 gathers of the partials became lane moves
ROWS_REDUCE_INTRIN = "compress_graph_sum_16x4_neon_addp"
REG_N = 2  # output pixels per register tile: 2 x 8 q accumulators (16 channels x 2 pair sums each)
#: one-row tables stay kernels of their own (targets/int8/lookup.lookup_func): in the conv's kernel LLVM unrolled
#: the lookup loop and spilled the 16 table registers on a53/a72 (bench/arm/README.md: doc_orientation a53 57.8 ->
#: 58.8 M, ppocr_rec a53 342 -> 346 M; ppocr_cls a53 10.65 -> 10.99 M with 4 pixels per unrolled step)
TABLES_IN_CONVS = False
LOOKUP_UNROLL = 1


def rows_intrin(oc: int) -> str:
    """The weight-rows step for ``oc`` output channels x 16 input channels."""
    return f"compress_graph_dot_{oc}x16_rows_u8off_s7_neon"


def rows_step(target: tvm.target.Target) -> tuple[str, int]:
    """(intrinsic, output channels per pass) of the weight-rows step on ``target``'s core."""
    from compress_graph.targets.isa import features

    oc = 4 if str(features.attr(target, "mcpu") or "") in IN_ORDER else 16
    return rows_intrin(oc), oc


def matches(target: tvm.target.Target) -> bool:
    """aarch64 without the dot product (what arm_sdot does not take)."""
    return arm_sdot.is_aarch64(target) and not arm_sdot.matches(target)


@functools.cache
def register_intrinsic() -> None:
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16, 2), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(c[0:16, 0:2], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16, 0:2])
            # int64 loops, as the packed conv's (the pattern match compares the index expressions exactly)
            for i in T.serial(T.int64(0), T.int64(16)):
                for p in T.serial(T.int64(0), T.int64(2)):
                    for k in T.serial(T.int64(0), T.int64(2)):
                        with T.sblock("update"):
                            vi, vp, vk = T.axis.remap("SSR", [i, p, k])
                            c[vi, vp] = c[vi, vp] + (T.cast(a[vp * T.int64(2) + vk], "int32") - 128) * T.cast(
                                b[vi, vp * T.int64(2) + vk], "int32")

    smull = "llvm.aarch64.neon.smull.v8i16"
    saddlp = "llvm.aarch64.neon.saddlp.v4i32.v8i16"

    # no named temporaries inside: TVMScript turns them into local buffers (a workspace allocation per call)
    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16, 2), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(c[0:16, 0:2], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16, 0:2])
            # per 2 output channels (8 bytes of weights): 8 products with the 4 activation bytes (minus 128, as
            # int8, twice), then their pairwise sums added to the channels' two pair accumulators
            for h in T.unroll(8):
                c[h * 2, T.ramp(0, 1, 4)] = c.vload([h * 2, 0], dtype="int32x4") + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(saddlp),
                    T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(smull),
                        T.reinterpret(T.broadcast(T.bitwise_xor(
                            T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"), T.int32(-2139062144)), 2),
                            dtype="int8x8"),
                        b.vload([h * 2, 0], dtype="int8x8"), dtype="int16x8"),
                    dtype="int32x4")

    TensorIntrin.register(INTRIN, desc, impl, override=True)

    @T.prim_func(s_tir=True)
    def desc_wide(a: T.Buffer((8,), "uint8", offset_factor=1), b: T.Buffer((2, 16, 4), "int8", offset_factor=1),
                  c: T.Buffer((16, 2), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(c[0:16, 0:2], a[0:8], b[0:2, 0:16, 0:4])
            T.writes(c[0:16, 0:2])
            for g in T.serial(T.int64(0), T.int64(2)):
                for i in T.serial(T.int64(0), T.int64(16)):
                    for p in T.serial(T.int64(0), T.int64(2)):
                        for k in T.serial(T.int64(0), T.int64(2)):
                            with T.sblock("update"):
                                vi, vp, vg, vk = T.axis.remap("SSRR", [i, p, g, k])  # the conv block's order
                                c[vi, vp] = c[vi, vp] + (
                                    T.cast(a[vg * T.int64(4) + vp * T.int64(2) + vk], "int32") - 128) * T.cast(
                                    b[vg, vi, vp * T.int64(2) + vk], "int32")

    @T.prim_func(s_tir=True)
    def impl_wide(a: T.Buffer((8,), "uint8", offset_factor=1), b: T.Buffer((2, 16, 4), "int8", offset_factor=1),
                  c: T.Buffer((16, 2), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(c[0:16, 0:2], a[0:8], b[0:2, 0:16, 0:4])
            T.writes(c[0:16, 0:2])
            # per 2 output channels: the products of both groups of 4 input channels added in int16 (smlal),
            # then pairwise into the channels' two pair accumulators (sadalp)
            for h in T.unroll(8):
                c[h * 2, T.ramp(0, 1, 4)] = c.vload([h * 2, 0], dtype="int32x4") + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(saddlp),
                    T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(smull),
                        T.reinterpret(T.broadcast(T.bitwise_xor(
                            T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"), T.int32(-2139062144)), 2),
                            dtype="int8x8"),
                        b.vload([0, h * 2, 0], dtype="int8x8"), dtype="int16x8")
                    + T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(smull),
                        T.reinterpret(T.broadcast(T.bitwise_xor(
                            T.reinterpret(a.vload([4], "uint8x4"), dtype="int32"), T.int32(-2139062144)), 2),
                            dtype="int8x8"),
                        b.vload([1, h * 2, 0], dtype="int8x8"), dtype="int16x8"),
                    dtype="int32x4")

    TensorIntrin.register(INTRIN_WIDE, desc_wide, impl_wide, override=True)

    for oc in (16, 4):
        register_rows(oc)

    @T.prim_func(s_tir=True)
    def desc_reduce(c: T.Buffer((16, 4), "int32", offset_factor=1), out: T.Buffer((16,), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(out[0:16], c[0:16, 0:4])
            T.writes(out[0:16])
            for i in T.serial(T.int64(0), T.int64(16)):
                for p in T.serial(T.int64(0), T.int64(4)):
                    with T.sblock("update"):
                        vi, vp = T.axis.remap("SR", [i, p])
                        out[vi] = out[vi] + c[vi, vp]

    addp = "llvm.aarch64.neon.addp.v4i32"

    def pairwise(x, y):
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(addp), x, y, dtype="int32x4")

    @T.prim_func(s_tir=True)
    def impl_reduce(c: T.Buffer((16, 4), "int32", offset_factor=1), out: T.Buffer((16,), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(out[0:16], c[0:16, 0:4])
            T.writes(out[0:16])
            for q in T.unroll(4):  # channels 4q..4q+3: addp(addp(c0, c1), addp(c2, c3))
                out[T.ramp(q * 4, 1, 4)] = out.vload([q * 4], dtype="int32x4") + pairwise(
                    pairwise(c.vload([q * 4, 0], dtype="int32x4"), c.vload([q * 4 + 1, 0], dtype="int32x4")),
                    pairwise(c.vload([q * 4 + 2, 0], dtype="int32x4"), c.vload([q * 4 + 3, 0], dtype="int32x4")))

    TensorIntrin.register(ROWS_REDUCE_INTRIN, desc_reduce, impl_reduce, override=True)


def register_rows(oc: int) -> None:
    """The weight-rows step for ``oc`` output channels (:func:`rows_intrin`)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    smull = "llvm.aarch64.neon.smull.v8i16"
    saddlp = "llvm.aarch64.neon.saddlp.v4i32.v8i16"

    @T.prim_func(s_tir=True)
    def desc_rows(a: T.Buffer((16,), "uint8", offset_factor=1), b: T.Buffer((oc, 16), "int8", offset_factor=1),
                  c: T.Buffer((oc, 4), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(c[0:oc, 0:4], a[0:16], b[0:oc, 0:16])
            T.writes(c[0:oc, 0:4])
            for g in T.serial(T.int64(0), T.int64(2)):
                for i in T.serial(T.int64(0), T.int64(oc)):
                    for p in T.serial(T.int64(0), T.int64(4)):
                        for k in T.serial(T.int64(0), T.int64(2)):
                            with T.sblock("update"):
                                vi, vp, vg, vk = T.axis.remap("SSRR", [i, p, g, k])  # the conv block's order
                                c[vi, vp] = c[vi, vp] + (
                                    T.cast(a[vg * T.int64(8) + vp * T.int64(2) + vk], "int32") - 128) * T.cast(
                                    b[vi, vg * T.int64(8) + vp * T.int64(2) + vk], "int32")

    def half(v, high):  # the low or high 8 bytes of a q register (LLVM: its d register, or smull2 / smlal2)
        return T.Shuffle([v], [T.int32(j + 8 * high) for j in range(8)])

    def signed(a):  # the 16 activation bytes minus 128, as int8 (one eor)
        return T.reinterpret(T.bitwise_xor(a.vload([0], "uint8x16"), T.broadcast(T.uint8(128), 16)), dtype="int8x16")

    @T.prim_func(s_tir=True)
    def impl_rows(a: T.Buffer((16,), "uint8", offset_factor=1), b: T.Buffer((oc, 16), "int8", offset_factor=1),
                  c: T.Buffer((oc, 4), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(c[0:oc, 0:4], a[0:16], b[0:oc, 0:16])
            T.writes(c[0:oc, 0:4])
            # per output channel: its row of 16 weights times the 16 activations (minus 128, as int8), the two
            # halves' products added in int16 lanes, then pairwise into the channel's 4 partial sums
            for i in T.unroll(oc):
                c[i, T.ramp(0, 1, 4)] = c.vload([i, 0], dtype="int32x4") + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(saddlp),
                    T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(smull), half(signed(a), 0),
                        half(b.vload([i, 0], dtype="int8x16"), 0), dtype="int16x8")
                    + T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(smull), half(signed(a), 1),
                        half(b.vload([i, 0], dtype="int8x16"), 1), dtype="int16x8"),
                    dtype="int32x4")

    TensorIntrin.register(rows_intrin(oc), desc_rows, impl_rows, override=True)
