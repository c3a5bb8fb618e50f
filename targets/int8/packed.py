"""Packed int8 convolutions that reach x86 VNNI (``vpdpbusd``) through MetaSchedule.

MetaSchedule's VNNI rule (``MultiLevelTilingWithIntrin`` + ``dot_16x4_vnni``) only fires on packed
layouts: data NCHW[ic_bn]c (uint8), kernel OIHW[ic_bn/4]i16o4i (int8, prepacked here with numpy), output
NCHW16c int32 — ``topi.nn.conv2d_NCHWc_int8``. The intrinsic shipped with TVM 0.27 fails LLVM 22's module
verification (the operands must be <64 x i8>), so :func:`register_vnni_intrinsic` re-registers a fixed one;
call it before tuning (it imports ``tvm.s_tir.tensor_intrin``: 10-60 s, so the lowering itself does not).

Packed results stay packed: the lowering records, for each 8-bit output it unpacks, the packed tensor it
came from, and the next conv (or residual add) reads that packed tensor directly, so the unpack / repack
pair between consecutive packed ops becomes dead code and disappears.
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from compress_graph.targets.int8.match import dtype_of
from tvm import relax, topi

OC_BLOCK = 16
_VNNI_CPUS = {
    "znver4", "znver5", "cascadelake", "cooperlake", "icelake-client", "icelake-server", "tigerlake",
    "sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d", "rocketlake", "diamondrapids",
}


def _attr(target: tvm.target.Target, key: str):
    return target.attrs.get(key) if hasattr(target.attrs, "get") else None


def is_aarch64(target: tvm.target.Target) -> bool:
    triple = str(_attr(target, "mtriple") or "")
    return triple.startswith(("aarch64", "arm64"))


def has_vnni(target: tvm.target.Target) -> bool:
    """AVX-512 VNNI: a known mcpu, ``+avx512vnni`` in mattr, or mcpu=native on a CPU that has it."""
    if str(target.kind.name) != "llvm" or is_aarch64(target):
        return False
    triple = str(_attr(target, "mtriple") or "")
    if triple and not triple.startswith(("x86_64", "i686", "i386")):
        return False
    mattr = [str(a) for a in (_attr(target, "mattr") or [])]
    if "+avx512vnni" in mattr:
        return True
    mcpu = str(_attr(target, "mcpu") or "")
    if mcpu == "native":
        return host_has_vnni()
    return mcpu in _VNNI_CPUS


def host_has_vnni() -> bool:
    """Whether this machine's CPU has AVX-512 VNNI (reads /proc/cpuinfo; False where unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return any(line.startswith("flags") and "avx512_vnni" in line.split() for line in fh)
    except OSError:
        return False


@functools.cache
def register_vnni_intrinsic() -> None:
    """Replace TVM's ``dot_16x4_vnni`` tensor intrinsic with one LLVM 22 accepts (idempotent)."""
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

    TensorIntrin.register(VNNI_DOT_16x4_INTRIN, dot_product_16x4_u8i8i32_desc, vnni_16x4, override=True)


def pack_kernel(w: np.ndarray, ic_bn: int) -> np.ndarray:
    """OIHW int8 -> OIHW[ic_bn/4]i16o4i (7-D) as ``conv2d_NCHWc_int8`` expects."""
    o, i, kh, kw = w.shape
    blocks = w.reshape(o // OC_BLOCK, OC_BLOCK, i // ic_bn, ic_bn // 4, 4, kh, kw)
    return np.ascontiguousarray(blocks.transpose(0, 2, 5, 6, 3, 1, 4))


def pack_data(bb: relax.BlockBuilder, x: relax.Expr, block: int) -> relax.Expr:
    return bb.emit(relax.op.layout_transform(x, lambda n, c, h, w: (n, c // block, h, w, c % block)))


def unpack_data(x: relax.Expr, block: int) -> relax.Expr:
    return relax.op.layout_transform(x, lambda n, c, h, w, cb: (n, c * block + cb, h, w))


def packed_shape(n_out: int, block: int) -> tuple[int, ...]:
    """Broadcast shape of a per-channel vector against a packed NCHW[block]c tensor."""
    return (1, n_out // block, 1, 1, block)


class VnniConvEmitter:
    """Conv hook for :class:`~compress_graph.targets.int8.lower.QDQLowering`: packed u8 x s8 convs.

    Returns ``(acc_int32_packed, block)`` or None when the conv does not fit (grouped/depthwise, signed
    input, channels not multiples of 4 / 16); those keep the plain NCHW int8 conv.
    """

    def __init__(self, target: tvm.target.Target):
        self.target = target
        self.packed_convs = 0
        self._packed_inputs: dict = {}

    def __call__(self, bb: relax.BlockBuilder, x: relax.Expr, x_packed, zp: int, w: np.ndarray,
                 strides, pad, dilation, groups):
        n_out, n_in = w.shape[:2]
        if groups != 1 or dtype_of(x) != "uint8" or n_out % OC_BLOCK:
            return None
        if n_in % 4:  # e.g. an RGB stem: extra zero-weight input channels reach the 4-wide dot product
            extra = 4 - n_in % 4
            w = np.concatenate([w, np.zeros((n_out, extra) + w.shape[2:], w.dtype)], axis=1)
            n_in += extra
        else:
            extra = 0
        ic_bn = next(b for b in (16, 8, 4) if n_in % b == 0)
        top, left, bottom, right = pad
        if x_packed is not None and x_packed[1] == ic_bn and not extra:
            xp = x_packed[0]
            if any(pad):
                xp = bb.emit(relax.op.nn.pad(xp, [0, 0, 0, 0, top, bottom, left, right, 0, 0], "constant",
                                             float(zp)))
        else:  # pad (with the zero point) and pack once per input, however many convs read it
            key = (x, ic_bn, tuple(pad))
            if key not in self._packed_inputs:
                xs = x
                if extra or any(pad):
                    xs = bb.emit(relax.op.nn.pad(x, [0, 0, 0, extra, top, bottom, left, right], "constant",
                                                 float(zp)))
                self._packed_inputs[key] = pack_data(bb, xs, ic_bn)
            xp = self._packed_inputs[key]
        kernel = relax.const(pack_kernel(w, ic_bn), "int8")
        acc = bb.emit_te(topi.nn.conv2d_NCHWc_int8, xp, kernel, list(strides), [0, 0, 0, 0], list(dilation),
                         f"NCHW{ic_bn}c", f"NCHW{OC_BLOCK}c", "int32")
        self.packed_convs += 1
        return acc, OC_BLOCK

