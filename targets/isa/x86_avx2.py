"""x86 with AVX2 but without AVX-512 VNNI (Haswell and later, Zen 1-3, client cores whose VNNI is the 256-bit
AVX-VNNI, which has no family of its own yet, and AVX-512 CPUs before Cascade Lake): 8-bit products widened to 16
bits and summed in pairs by ``vpmaddwd``.

The same packed layouts as the dot-product families, the weights stored as int16 (``WEIGHT_DTYPE``: widened once
at build time, not per step); the 16x4 step (16 output channels x 4 input channels) is, per 4 output channels, one
``vpmaddwd`` (16 int16 x int16 products, neighbours summed into 8 int32) with the 4 activations zero-extended to int16
and broadcast: no saturation anywhere (255 x 128 and a sum of two fit easily), where ``vpmaddubsw`` (u8 x s8 summed
in saturating int16, onnxruntime's AVX2 kernels) clips. The accumulator keeps each output channel's two pair sums
apart (``PAIRS``); the epilogue adds them once per output. Activations enter as they are (``INPUT_OFFSET`` 0): a
zero-extended uint8 is a valid int16.

Convs whose weights all lie within +-64 (``quant{weight_bits=7}``, which ``host`` asks for on these CPUs) take a
faster step (``INTRIN_SMALL``): ``vpmaddubsw`` on the uint8 activations and the int8 weights as they are, exact there,
then ``vpmaddwd`` by ones -- 7 instructions per 64 MACs with the broadcast, against ~10 on widened operands
(bench/x86: resnet_s int8 1.68 -> 1.08 M instructions). The weights' range is checked per conv at build time: an
8-bit weight never reaches ``vpmaddubsw``.
"""

from __future__ import annotations

import functools

import tvm
from compress_graph.targets.isa import arm_sdot, features, x86_vnni

# the 32-bit fixed-point requantization (exact where it applies, else the generic int64 one): LLVM makes its
# 32 x 32 -> 64-bit products vpmuldq on 8-lane vectors
requant_constants = arm_sdot.requant_constants


def requant_te(*args):
    """arm_sdot's requant without the ``min`` that only buys aarch64 its ``sqdmulh``."""
    return arm_sdot.requant_te(*args, sqdmulh=False)


NAME = "x86-avx2"
INPUT_OFFSET = 0
PAIRS = 2  # per output channel: the sums of input channels {0, 1} and {2, 3} of each group of 4
INTRIN = "compress_graph_dot_16x4x2_u8_s16_avx2"
WEIGHT_DTYPE = "int16"  # the packed weights (int8 values) as vpmaddwd reads them
# convs whose weights all lie within +-SMALL_LIMIT (``quant{weight_bits=7}``, which targets without VNNI prefer):
# ``vpmaddubsw`` on the uint8 activations and int8 weights as they are -- a pair of products is at most 2 x 255 x 64
# = 32640, so its int16 sum never saturates -- then ``vpmaddwd`` by ones into int32: 3 instructions per 32 MACs
INTRIN_SMALL = "compress_graph_dot_16x4_u8_s7_avx2"
SMALL_LIMIT = 64
SMALL_REG_N = 1  # the weights as memory operands; measured under qemu (M instructions, resnet_s / pose_s int8):
# 1 pixel 1.08 / 8.05, 2: 1.12 / 8.50, 3: 1.12 / 8.71, 4: 1.15 / 8.74, 6: 1.15 / 9.02
REG_N = 1  # output pixels per register tile: 4 ymm accumulators; the weights then feed vpmaddwd from memory (measured
# under qemu on resnet_s int8: 1.75 M instructions per inference with 1 pixel, 2.01 M with 2 or 3, 2.18 M with 4)


def matches(target: tvm.target.Target) -> bool:
    """x86 with AVX2 (the VNNI family takes the CPUs that have it)."""
    return (features.arch_is(target, features.X86, default=True) and not x86_vnni.has_vnni(target)
            and bool(features.has(target, "avx2", native=_host_has_avx2)))


@functools.cache
def _host_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return any(line.startswith("flags") and "avx2" in line.split() for line in fh)
    except OSError:
        return False


@functools.cache
def register_intrinsic() -> None:
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int16", offset_factor=1),
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
                            c[vi, vp] = c[vi, vp] + T.cast(a[vp * T.int64(2) + vk], "int32") * T.cast(
                                b[vi, vp * T.int64(2) + vk], "int32")

    pmaddwd = "llvm.x86.avx2.pmadd.wd"

    # no named temporaries inside: TVMScript turns them into local buffers (a workspace allocation per call)
    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int16", offset_factor=1),
             c: T.Buffer((16, 2), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(c[0:16, 0:2], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16, 0:2])
            # per 4 output channels (16 int16 weights): 16 products with the 4 activations (zero-extended, the 64
            # bits broadcast 4 times), neighbours summed: the channels' 8 pair sums
            for h in T.unroll(4):
                c[h * 4, T.ramp(0, 1, 8)] = c.vload([h * 4, 0], dtype="int32x8") + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(pmaddwd),
                    b.vload([h * 4, 0], dtype="int16x16"),
                    T.reinterpret(T.broadcast(T.reinterpret(T.cast(a.vload([0], "uint8x4"), "int16x4"),
                                                            dtype="int64"), 4), dtype="int16x16"),
                    dtype="int32x8")

    TensorIntrin.register(INTRIN, desc, impl, override=True)
    register_small_intrinsic()


@functools.cache
def register_small_intrinsic() -> None:
    """``INTRIN_SMALL``: C[16] += sum_k A[k] * B[16, k] (uint8 A, int8 B within +-64, int32 C), per 8 output
    channels one ``vpmaddubsw`` (32 products, neighbours summed in int16: exact for such weights) and one
    ``vpmaddwd`` by ones (the two pair sums of each channel into int32)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            for i in T.serial(T.int64(0), T.int64(16)):
                for k in T.serial(T.int64(0), T.int64(4)):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    pmaddubsw = "llvm.x86.avx2.pmadd.ub.sw"
    pmaddwd = "llvm.x86.avx2.pmadd.wd"

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            for h in T.unroll(2):
                c[T.ramp(h * 8, 1, 8)] = c.vload([h * 8], dtype="int32x8") + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(pmaddwd),
                    T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(pmaddubsw),
                        T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"), 8),
                                      dtype="int8x32"),
                        b.vload([h * 8, 0], dtype="int8x32"), dtype="int16x16"),
                    T.broadcast(T.int16(1), 16), dtype="int32x8")

    TensorIntrin.register(INTRIN_SMALL, desc, impl, override=True)
