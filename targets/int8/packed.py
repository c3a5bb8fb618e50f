"""Packed int8 convolutions that reach the CPUs' 8-bit dot products (x86 VNNI ``vpdpbusd``, aarch64 ``sdot``).

A dot-product instruction needs packed layouts: data NCHW[ic_bn]c (uint8), kernel OIHW[ic_bn/4]i16o4i (int8,
prepacked here with numpy), output NCHW16c int32 -- the layouts of ``topi.nn.conv2d_NCHWc_int8``.
targets/int8/schedule.py tensorizes the 16x4 inner step with the intrinsic of the target's ISA family
(targets/isa: x86_vnni, arm_sdot); the family's ``INPUT_OFFSET`` says what the instruction multiplies: the
uint8 activation itself (VNNI, u8 x s8) or ``x - 128`` (sdot, s8 x s8), which the lowering's bias makes up for.

Also packed: depthwise convs (NCHW16c, the 16 channels as vector lanes; :func:`depthwise_conv2d_nchwc_int8`),
and convs whose channel count is not a multiple of 16 (zero-weight output channels up to a whole block: the
padding channels travel with the packed tensor, meet zero weights in the next conv, and are sliced off when
an unpacked consumer needs the tensor).

Packed results stay packed: the lowering records, for each 8-bit output it unpacks, the packed tensor it
came from, and the next conv, residual add, multiply, table lookup or max-pool reads that packed tensor
directly, so the unpack / repack pair between consecutive packed ops becomes dead code and disappears.
"""

from __future__ import annotations

import numpy as np
import tvm
from compress_graph.targets.int8.match import channels_of, dtype_of, shape_of
from tvm import relax

OC_BLOCK = 16
ROWS_IC = 16  # input channels per weight row (pack_kernel_rows)
ROWS_ANNOTATION = "compress_graph.weight_rows"  # the conv block of conv2d_nchwc_int8_rows
PAIRS_BLOCK = "conv2d_NCHWc_int8_pairs"  # adds the partial sums of a PAIRS family's conv (targets/isa)

# feature detection lives with the ISA families; re-exported for existing callers
from compress_graph.targets.isa.arm_sdot import is_aarch64  # noqa: E402,F401
from compress_graph.targets.isa.x86_vnni import has_vnni, host_has_vnni  # noqa: E402,F401


def pack_kernel(w: np.ndarray, ic_bn: int) -> np.ndarray:
    """OIHW int8 -> OIHW[ic_bn/4]i16o4i (7-D) as ``conv2d_NCHWc_int8`` expects."""
    o, i, kh, kw = w.shape
    blocks = w.reshape(o // OC_BLOCK, OC_BLOCK, i // ic_bn, ic_bn // 4, 4, kh, kw)
    return np.ascontiguousarray(blocks.transpose(0, 2, 5, 6, 3, 1, 4))


def pack_kernel_rows(w: np.ndarray) -> np.ndarray:
    """OIHW int8 -> (O/16, I/16, KH, KW, 16o, 16i): each output channel's 16 input-channel weights one contiguous
    row (a family's ``rows_step``, :func:`conv2d_nchwc_int8_rows`)."""
    o, i, kh, kw = w.shape
    blocks = w.reshape(o // OC_BLOCK, OC_BLOCK, i // ROWS_IC, ROWS_IC, kh, kw)
    return np.ascontiguousarray(blocks.transpose(0, 2, 4, 5, 1, 3))


def pack_data(bb: relax.BlockBuilder, x: relax.Expr, block: int) -> relax.Expr:
    return bb.emit(relax.op.layout_transform(x, lambda n, c, h, w: (n, c // block, h, w, c % block)))


def unpack_data(x: relax.Expr, block: int) -> relax.Expr:
    return relax.op.layout_transform(x, lambda n, c, h, w, cb: (n, c * block + cb, h, w))


def reblock_data(bb: relax.BlockBuilder, x: relax.Expr, block: int, channels: int, to: int) -> relax.Expr:
    """The first ``channels`` channels of ``x`` (NCHW[block]c, maybe with padding channels past them) in
    NCHW[to]c (``channels`` a multiple of ``to``): where a Split or Concat cuts a packed tensor inside its blocks
    (YOLOv8's C2f at 8 or 24 channels) the pieces stay packed in a smaller block, and a conv reads such a piece
    in its own block, instead of going back to NCHW."""
    from tvm import te

    def reblock(data):
        n, _, h, w, _ = data.shape
        return te.compute((n, channels // to, h, w, to),
                          lambda i, c, y, z, k: data[i, (c * to + k) // block, y, z, (c * to + k) % block],
                          name="reblock")

    return bb.emit_te(reblock, x, primfunc_name_hint="reblock")


def pad_data(bb: relax.BlockBuilder, x: relax.Expr, block: int, channels: int, pads, code: int) -> relax.Expr:
    """Constant padding of a packed tensor (NCHW[block]c, ``channels`` real channels, maybe padding channels past
    them): ``pads`` = (before, after) for C, H, W; new elements, and the padding channels of the result, are
    ``code`` (the pad value's 8-bit code). The result is NCHW[block]c with its channel count rounded up to the
    block: BlazeFace's shortcut pads a pooled 16-channel tensor to the 24 channels of the conv it is added to,
    and the add, the PRelu after it and the next conv stay packed."""
    from tvm import te, tirx

    (cb, ca), (hb, ha), (wb, wa) = pads
    out_channels = channels + cb + ca
    n, _, h, w, _ = (int(v) for v in shape_of(x))

    def pad(data):
        def value(i, c, y, z, k):
            ch, yy, zz = c * block + k - cb, y - hb, z - wb
            inside = tirx.all(ch >= 0, ch < channels, yy >= 0, yy < h, zz >= 0, zz < w)
            idx = tirx.max(ch, 0)
            return tirx.if_then_else(inside, data[i, idx // block, tirx.max(yy, 0), tirx.max(zz, 0), idx % block],
                                     tirx.const(code, data.dtype))

        return te.compute((n, -(-out_channels // block), h + hb + ha, w + wb + wa, block), value, name="pad")

    return bb.emit_te(pad, x, primfunc_name_hint="pad_packed")


class PackedConvEmitter:
    """Conv hook for :class:`~compress_graph.targets.int8.lower.QDQLowering`: packed convs on uint8 activations
    for the dot-product ISA ``family`` (a targets/isa module).

    Returns ``(acc_int32_packed, block, offset)`` with ``acc = sum((x - offset) * w)``, or None when the conv
    does not fit (a signed input; groups other than 1, except depthwise convs with a multiple of 16 channels);
    those keep the plain NCHW int8 conv.
    """

    def __init__(self, target: tvm.target.Target, family):
        self.target = target
        self.family = family
        self._packed_inputs: dict = {}

    def __call__(self, bb: relax.BlockBuilder, x: relax.Expr, x_packed, zp: int, w: np.ndarray,
                 strides, pad, dilation, groups):
        n_out, n_in = w.shape[:2]
        if dtype_of(x) != "uint8":
            return None
        if groups != 1:
            if groups == n_out and n_in == 1:  # depthwise, channel multiplier 1
                # channels past a whole block (24 -> 32, e.g. after pruning) get zero weights; the input's extra
                # channels are its producer's padding channels or zeros packed in
                extra = (-n_out) % OC_BLOCK
                if extra:
                    w = np.concatenate([w, np.zeros((extra,) + w.shape[1:], w.dtype)])
                xp = self._packed_input(bb, x, x_packed, OC_BLOCK, extra)
                kernel = relax.const(pack_depthwise_kernel(w), "int8")
                acc = bb.emit_te(depthwise_conv2d_nchwc_int8, xp, kernel, list(strides), list(pad), list(dilation),
                                 zp)
                return acc, OC_BLOCK, 0
            return None
        if n_out % OC_BLOCK:  # zero-weight output channels up to a whole block; the unpack drops them
            w = np.concatenate([w, np.zeros((OC_BLOCK - n_out % OC_BLOCK,) + w.shape[1:], w.dtype)])
            n_out = w.shape[0]
        if x_packed is not None and x_packed[1] == OC_BLOCK and channels_of(x_packed[0]) > n_in:
            # the producer's packed result carries padding channels: they meet zero weights here
            extra = channels_of(x_packed[0]) - n_in
        elif n_in % 4:  # e.g. an RGB stem: extra zero-weight input channels reach the 4-wide dot product
            extra = 4 - n_in % 4
        else:
            extra = 0
        if extra:
            w = np.concatenate([w, np.zeros((n_out, extra) + w.shape[2:], w.dtype)], axis=1)
            n_in += extra
        ic_bn = next(b for b in (16, 8, 4) if n_in % b == 0)
        xp = self._packed_input(bb, x, x_packed, ic_bn, extra)
        offset = self.family.INPUT_OFFSET
        narrow = bool(w.min() > -128)
        if ic_bn == ROWS_IC and narrow and hasattr(self.family, "rows_step"):
            kernel = relax.const(pack_kernel_rows(w), "int8")
            acc = bb.emit_te(conv2d_nchwc_int8_rows, xp, kernel, list(strides), list(pad), list(dilation), zp,
                             offset, self.family.ROWS_PAIRS, primfunc_name_hint="conv2d_NCHWc_int8")
            return acc, OC_BLOCK, offset
        limit = getattr(self.family, "SMALL_LIMIT", None)
        if limit is not None and int(np.abs(w.astype(np.int32)).max(initial=0)) <= limit:
            # small weights (quant{weight_bits=7}): the family's step on them as int8, one sum per output
            kernel = relax.const(pack_kernel(w, ic_bn), "int8")
            acc = bb.emit_te(conv2d_nchwc_int8, xp, kernel, list(strides), list(pad), list(dilation), zp, offset,
                             1, narrow, True, primfunc_name_hint="conv2d_NCHWc_int8")
            return acc, OC_BLOCK, offset
        # a family whose instruction multiplies wider operands takes its weights widened once, at build time
        wdtype = getattr(self.family, "WEIGHT_DTYPE", "int8")
        kernel = relax.const(pack_kernel(w, ic_bn).astype(wdtype), wdtype)
        acc = bb.emit_te(conv2d_nchwc_int8, xp, kernel, list(strides), list(pad), list(dilation), zp, offset,
                         getattr(self.family, "PAIRS", 1), narrow, primfunc_name_hint="conv2d_NCHWc_int8")
        return acc, OC_BLOCK, offset

    def _packed_input(self, bb, x, x_packed, block: int, extra: int) -> relax.Expr:
        """``x`` (with ``extra`` zero channels) in NCHW[block]c: the packed producer's result when there is
        one in that block, else packed once per input however many convs read it. Spatial padding is the
        conv's own (with the zero point, inside the kernel)."""
        if x_packed is not None and x_packed[1] == block and channels_of(x_packed[0]) == channels_of(x) + extra:
            return x_packed[0]
        key = (x, block)
        if x_packed is not None and not extra and channels_of(x) % block == 0:  # packed in another block
            if key not in self._packed_inputs:
                self._packed_inputs[key] = reblock_data(bb, x_packed[0], x_packed[1], channels_of(x), block)
            return self._packed_inputs[key]
        if key not in self._packed_inputs:
            # one injective kernel (the fuser adds the producer's quantize to it): channels padded, packed
            self._packed_inputs[key] = bb.emit_te(_pack_padded, x, block, extra, primfunc_name_hint="pack_input")
        return self._packed_inputs[key]


def _pack_padded(data, block: int, extra: int):
    """NCHW -> NCHW[block]c with ``extra`` zero channels appended."""
    from tvm import te

    n, c, h, w = data.shape
    chunks = (c + extra) // block
    zero = tvm.tirx.const(0, data.dtype)
    return te.compute(
        (n, chunks, h, w, block),
        lambda i, j, y, x, k: te.if_then_else(j * block + k < c, data[i, j * block + k, y, x], zero)
        if extra else data[i, j * block + k, y, x],
        name="pack_input")


def _zero_point_pad(data, padding, zp: int):
    """NCHW[b]c ``data`` padded (top, left, bottom, right) with the zero point: the block ``data_pad_zp``,
    which the hand schedule computes row by row inside the conv kernel."""
    from tvm import te

    top, left, bottom, right = padding
    if not any(padding):
        return data
    n, c, h, w, b = data.shape
    fill = tvm.tirx.const(zp, data.dtype)
    return te.compute(
        (n, c, h + top + bottom, w + left + right, b),
        lambda i, j, y, x, k: te.if_then_else(
            te.all(y >= top, y < h + top, x >= left, x < w + left), data[i, j, y - top, x - left, k], fill),
        name="data_pad_zp")


def conv2d_nchwc_int8(data, kernel, strides, padding, dilation, zp: int, offset: int = 0, pairs: int = 1,
                      narrow: bool = False, small: bool = False):
    """Packed conv of uint8 data minus ``offset`` with int8 weights -> int32: NCHW[ic_bn]c data,
    OIHW[ic_bn/4]i16o4i kernel, NCHW16c output; the padding carries the zero point. The reduction of
    ``topi.nn.conv2d_NCHWc_int8`` (block ``conv2d_NCHWc_int8``; it pads with 0 and so needed a separate pad kernel
    before every conv), with the ISA family's input offset (0: u8 x s8, VNNI; 128: s8 x s8, sdot / NEON).
    ``pairs`` > 1: the reduction keeps ``pairs`` partial sums per output (consecutive input channels of every
    group of 4 split into ``pairs`` runs; block ``conv2d_NCHWc_int8`` with a trailing axis), added by a second
    block. ``narrow``: no weight is -128 (annotated on the block: a family may then add two products in int16);
    ``small``: every weight within the family's ``SMALL_LIMIT`` (annotated: its ``INTRIN_SMALL`` step applies)."""
    from compress_graph.targets.int8.schedule import NARROW_ANNOTATION, SMALL_ANNOTATION
    from tvm import te

    attrs = {**({NARROW_ANNOTATION: 1} if narrow else {}), **({SMALL_ANNOTATION: 1} if small else {})} or None
    data_pad = _zero_point_pad(data, padding, zp)
    n, _, h, w, _ = data_pad.shape
    oc_chunks, ic_chunks, kh, kw, ic_f, oc_bn, ic_s = kernel.shape
    (sh, sw), (dh, dw) = strides, dilation
    oh = (h - (kh - 1) * dh - 1) // sh + 1
    ow = (w - (kw - 1) * dw - 1) // sw + 1
    rh = te.reduce_axis((0, kh), name="kh")
    rw = te.reduce_axis((0, kw), name="kw")
    ico = te.reduce_axis((0, ic_chunks), name="ic_outer")
    icf = te.reduce_axis((0, ic_f), name="ic_f_inner")
    ics = te.reduce_axis((0, ic_s), name="ic_s_inner")
    def term(b, oc, y, x, ob, i):
        a = data_pad[b, ico, y * sh + rh * dh, x * sw + rw * dw, icf * ic_s + i].astype("int32")
        return (a - offset if offset else a) * kernel[oc, ico, rh, rw, icf, ob, i].astype("int32")

    if pairs == 1:
        return te.compute(
            (n, oc_chunks, oh, ow, oc_bn),
            lambda b, oc, y, x, ob: te.sum(term(b, oc, y, x, ob, ics), axis=[rh, rw, ico, icf, ics]),
            name="conv2d_NCHWc_int8", attrs=attrs)
    run = ic_s // pairs
    ics = te.reduce_axis((0, run), name="ic_s_inner")
    partial = te.compute(
        (n, oc_chunks, oh, ow, oc_bn, pairs),
        lambda b, oc, y, x, ob, p: te.sum(term(b, oc, y, x, ob, p * run + ics), axis=[rh, rw, ico, icf, ics]),
        name="conv2d_NCHWc_int8", attrs=attrs)
    rp = te.reduce_axis((0, pairs), name="pair")
    return te.compute(
        (n, oc_chunks, oh, ow, oc_bn),
        lambda b, oc, y, x, ob: te.sum(partial[b, oc, y, x, ob, rp], axis=[rp]),
        name=PAIRS_BLOCK)


def conv2d_nchwc_int8_rows(data, kernel, strides, padding, dilation, zp: int, offset: int, pairs: int):
    """:func:`conv2d_nchwc_int8` on weight rows (:func:`pack_kernel_rows`: (O/16, I/16, KH, KW, 16o, 16i)) with
    ``pairs`` partial sums per output: partial ``p`` of a 16-channel input block sums the input channels
    ``h * 8 + p * run + k`` for both halves h of the block and k < run = 8 / pairs -- for NEON's ``smull`` +
    ``smlal2`` + ``sadalp`` over a row, 4 partials of channels {2p, 2p+1, 2p+8, 2p+9}. The
    block (``conv2d_NCHWc_int8``, annotated ``ROWS_ANNOTATION``) has the reduction axes kh, kw, ic_outer, the
    half and the run, as conv2d_nchwc_int8's; a second block adds the partials (``PAIRS_BLOCK``)."""
    from tvm import te

    data_pad = _zero_point_pad(data, padding, zp)
    n, _, h, w, _ = data_pad.shape
    oc_chunks, ic_chunks, kh, kw, oc_bn, ic_bn = kernel.shape
    (sh, sw), (dh, dw) = strides, dilation
    oh = (h - (kh - 1) * dh - 1) // sh + 1
    ow = (w - (kw - 1) * dw - 1) // sw + 1
    half = int(ic_bn) // 2
    run = half // pairs
    rh = te.reduce_axis((0, kh), name="kh")
    rw = te.reduce_axis((0, kw), name="kw")
    ico = te.reduce_axis((0, ic_chunks), name="ic_outer")
    rhalf = te.reduce_axis((0, 2), name="ic_f_inner")
    rk = te.reduce_axis((0, run), name="ic_s_inner")

    def term(b, oc, y, x, ob, p):
        i = rhalf * half + p * run + rk
        a = data_pad[b, ico, y * sh + rh * dh, x * sw + rw * dw, i].astype("int32")
        return (a - offset if offset else a) * kernel[oc, ico, rh, rw, ob, i].astype("int32")

    partial = te.compute(
        (n, oc_chunks, oh, ow, oc_bn, pairs),
        lambda b, oc, y, x, ob, p: te.sum(term(b, oc, y, x, ob, p), axis=[rh, rw, ico, rhalf, rk]),
        name="conv2d_NCHWc_int8", attrs={ROWS_ANNOTATION: 1})
    rp = te.reduce_axis((0, pairs), name="pair")
    return te.compute(
        (n, oc_chunks, oh, ow, oc_bn),
        lambda b, oc, y, x, ob: te.sum(partial[b, oc, y, x, ob, rp], axis=[rp]),
        name=PAIRS_BLOCK)


def pack_depthwise_kernel(w: np.ndarray) -> np.ndarray:
    """Depthwise OIHW (C, 1, KH, KW) int8 -> (C/16, KH, KW, 16)."""
    c, _, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(c // OC_BLOCK, OC_BLOCK, kh, kw).transpose(0, 2, 3, 1))


def depthwise_conv2d_nchwc_int8(data, kernel, strides, padding, dilation, zp: int):
    """Depthwise conv on NCHW16c uint8 data with (C/16, KH, KW, 16) int8 weights -> int32, padded with the
    zero point.

    The 16 channels of a block are the vector lanes: no dot product, but unit-stride loads and no layout
    change between the packed 1x1 convs around a depthwise conv (the block ``depthwise_conv2d_NCHWc_int8``)."""
    from tvm import te

    data = _zero_point_pad(data, padding, zp)
    n, c_chunks, h, w, block = data.shape
    _, kh, kw, _ = kernel.shape
    (sh, sw), (dh, dw) = strides, dilation
    oh = (h - (kh - 1) * dh - 1) // sh + 1
    ow = (w - (kw - 1) * dw - 1) // sw + 1
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")
    return te.compute(
        (n, c_chunks, oh, ow, block),
        lambda b, c, y, x, k: te.sum(
            data[b, c, y * sh + rh * dh, x * sw + rw * dw, k].astype("int32") * kernel[c, rh, rw, k].astype("int32"),
            axis=[rh, rw]),
        name="depthwise_conv2d_NCHWc_int8")
