"""x86 AVX-512 VNNI: ``vpdpbusd`` (16 int32 lanes += 4 uint8 x 4 int8 each), uint8 activations as they are."""

from __future__ import annotations

import functools

import tvm
from compress_graph.targets.isa import features

NAME = "x86-vnni"
INPUT_OFFSET = 0  # u8 x s8 natively
INTRIN = "dot_16x4_vnni"  # TVM's name: MetaSchedule's VNNI rule finds the fixed intrinsic under it too
REG_N = 8  # output pixels per register tile: 8 zmm accumulators (4, 8, 16 measured alike on resnet_s)

def matches(target: tvm.target.Target) -> bool:
    return has_vnni(target)


def has_vnni(target: tvm.target.Target) -> bool:
    """AVX-512 VNNI: ``+avx512vnni`` in mattr, an mcpu LLVM knows to have it, or mcpu=native on a CPU that has it."""
    return features.arch_is(target, features.X86, default=True) and bool(
        features.has(target, "avx512vnni", native=host_has_vnni))


def host_has_vnni() -> bool:
    """Whether this machine runs AVX-512 VNNI code (features.host_has)."""
    return features.host_has("avx512vnni", "avx512_vnni")


def has_vbmi(target: tvm.target.Target) -> bool:
    """AVX-512 VBMI (``vpermi2b``: 256-entry byte tables as 64-lane lookups, targets/int8/lookup.py): by mattr, by
    mcpu, or on this machine for mcpu=native."""
    return features.arch_is(target, features.X86, default=True) and bool(
        features.has(target, "avx512vbmi", native=lambda: features.host_has("avx512vbmi", "avx512vbmi")))


@functools.cache
def register_intrinsic() -> None:
    """Replace TVM's ``dot_16x4_vnni`` tensor intrinsic with one LLVM 22 accepts (idempotent): the shipped one
    passes int32x16 operands where LLVM 22's ``vpdpbusd.512`` wants <64 x i8>."""
    from compress_graph.targets.schedule import light_tensor_intrinsics

    light_tensor_intrinsics("cpu")  # only the CPU intrinsics: importing every backend's takes ~20 s
    import tvm.s_tir.tensor_intrin  # noqa: F401 - registers the shipped intrinsics first
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir.tensor_intrin.x86 import VNNI_DOT_16x4_INTRIN, dot_product_16x4_u8i8i32_desc
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def vnni_16x4(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
                  c: T.Buffer((16,), "int32", offset_factor=1)):
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            a_vec = T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"), 16),
                                  dtype="int8x64")
            c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                c.vload([0], dtype="int32x16"), a_vec, b.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    assert VNNI_DOT_16x4_INTRIN == INTRIN
    TensorIntrin.register(VNNI_DOT_16x4_INTRIN, dot_product_16x4_u8i8i32_desc, vnni_16x4, override=True)
