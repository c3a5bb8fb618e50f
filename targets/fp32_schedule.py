"""Hand-written schedules for float32 convolutions: vector FMAs without tuning, on every CPU target.

What TVM gives a float conv without tuning is a plain loop nest (scalar ``fmadd`` on aarch64) or one random
MetaSchedule sample (targets/schedule.py). The conv as the Relax legalizer emits it (block ``conv2d_nchw``, NCHW,
OIHW weights, groups 1) gets the classic direct-conv register blocking instead:

    for (n, oc_outer, oh)  parallel
      for ow_outer                              # OW_T output pixels ...
        acc[OC_T][OW_T] = 0                     # ... of OC_T output channels, in vector registers
        for ic, kh, kw                          # reduction
          for oc_inner (unrolled)
            acc[oc_inner][:] += w[oc, ic, kh, kw] (broadcast) * x[ic, oh + kh, ow : ow + OW_T]   # vector FMA
        epilogue (bias, residual add, Relu/Clip ...) on acc, vectorized over OW_T

The width of a vector comes from the target (targets/isa.float_lanes: NEON 4, AVX2 8, AVX-512 16); OW_T is two
vectors, OC_T 8 output channels where the ISA has 32 vector registers (aarch64, AVX-512: 16 accumulators) and 4
elsewhere (AVX2: 8), the input row loaded once per (ic, kh, kw) for OC_T output channels. The padded input is one
loop nest before the conv (vectorized). Shapes that would defeat the vectors are rearranged first: a 1x1 conv at a
width off the vector runs over the flat H*W pixel row, a stride-2 conv reads its padded input split into even and
odd columns, and a 3-vector tile is 3 unrolled power-of-two vectors. kxk convs on aarch64 and x86 get the transposed
tile instead, output channels as the vector dimension (schedule_conv_channels, with prepacked weights), where the
channel count is a multiple of the tile's. Depthwise convs take the pixel-vector schedule with one channel per tile
(stride 2: float_rewrites._depthwise_phases under schedule_depthwise_phases, an even/odd column deinterleave by
vector shuffles; on AVX-512 the sampled schedule timed faster and stays). A conv's padded input is a row of zeros
then the in-bound row as vectors (_schedule_pad). Kernels this does not fit keep what the caller does next (tuning
records win over it; the rest get the sampled default). A transposed conv's phase interleave gets
a scalar copy schedule (schedule_interleave); a max pool, which targets/float_rewrites.py writes as two separable
maxima, a vectorized one (schedule_max_pool).
"""

from __future__ import annotations

import functools
from typing import Any

import tvm
from compress_graph.targets.schedule import SCHEDULED_ATTR, hand_schedule

CONV_BLOCK = "conv2d_nchw"
GROUP_CONV_BLOCK = "group_conv2d_nchw"  # the legalizer's grouped and depthwise conv
PAD_BLOCK = "pad_temp"
FLOATS = ("float32", "float16")  # float16: arm{fp16=true} (targets/half.py), twice the lanes per vector
OC_T = 4  # output channels per register tile where the ISA has 16 vector registers (targets/isa.float_oc_tile)


class NotAFloatConv(ValueError):
    """The kernel has no float32 NCHW conv block."""


def _tile(extent: int, most: int) -> int:
    return max(d for d in range(1, min(most, extent) + 1) if extent % d == 0)


def _width_tile(width: int, lanes: int) -> int:
    """Output pixels per tile: whole vectors where the width allows (2 or 3 of them: 12 = 3 x 4 rather than 6,
    whose 1.5 vectors cost element inserts), else the largest divisor up to 2 vectors."""
    for vectors in (2, 3, 1):
        if width % (vectors * lanes) == 0:
            return vectors * lanes
    return _tile(width, 2 * lanes)


def _pointwise(block, kh: int, kw: int) -> bool:
    """A 1x1, stride-1 conv: input pixel = output pixel (no stride multiplier in the input index)."""
    if kh != 1 or kw != 1:
        return False
    return all("*" not in str(r.min) for r in list(block.reads[0].region)[2:])


def _pow2_vector(extent: int, lanes: int) -> int:
    """The widest power-of-two vector, at most ``lanes`` wide, that divides ``extent`` (1: scalar)."""
    v = lanes
    while v > 1 and extent % v:
        v //= 2
    return v


def _width_stride(block) -> int:
    """The conv's stride along the width: the output column's coefficient in its input index (``v_xx * 2 + v_rx``;
    a dilation multiplies the kernel column instead, ``v_xx + v_rx * 2``)."""
    return _coefficient(list(block.reads[0].region)[3].min, block.iter_vars[3].var)


def _coefficient(expr, var) -> int:
    """The integer coefficient of ``var`` in an affine index expression (sums, differences, products with integer
    constants, casts); 0 where it does not occur."""
    tirx = tvm.tirx
    if isinstance(expr, tirx.Var):
        return 1 if expr.same_as(var) else 0
    if isinstance(expr, tirx.Cast):
        return _coefficient(expr.value, var)
    if isinstance(expr, tirx.Add):
        return _coefficient(expr.a, var) + _coefficient(expr.b, var)
    if isinstance(expr, tirx.Sub):
        return _coefficient(expr.a, var) - _coefficient(expr.b, var)
    if isinstance(expr, tirx.Mul):
        if isinstance(expr.b, tirx.IntImm):
            return _coefficient(expr.a, var) * int(expr.b.value)
        if isinstance(expr.a, tirx.IntImm):
            return _coefficient(expr.b, var) * int(expr.a.value)
    return 0


def _copy_only(pad_block) -> bool:
    """The pad block pads nothing: it reads a buffer of its own shape."""
    src, dst = pad_block.reads[0].source, pad_block.writes[0].source
    return [int(d) for d in src.shape] == [int(d) for d in dst.shape]


PREPROC_ATTR = "meta_schedule.layout_rewrite_preproc"  # relax.transform.SplitLayoutRewritePreproc's mark


def schedule_conv_channels(func, channels: int, max_pixels: int, unroll_taps: bool = False,
                           lanes: int | None = None, pointwise_lanes: int = 0):
    """The scheduled PrimFunc of a fused float32 NCHW conv (+ epilogue) with output channels as the vector dimension:

        for (n, oc_outer, oh)  parallel
          for ow_outer                                  # P output pixels ...
            acc[P][C] = 0                               # ... of C output channels (C: 1-4 vectors), in registers
            for ic, kh, kw
              for p (unrolled)
                acc[p][:] += x[ic, oh + kh, ow + p + kw] (broadcast) * w'[oc_outer, ic, kh, kw, :]   # vector FMAs
            epilogue on acc -> NCHW rows of P pixels

    Every vector lane does work however narrow the image (a 4x4 or 8x8 map filled a fraction of a pixel vector),
    one weight vector serves P pixels and the input is one broadcast per FMA (AVX-512: folded into the FMA as an
    embedded broadcast; aarch64: the P inputs loaded as vectors and taken by element, ``fmla v.4s, v.4s, v.s[i]``,
    no broadcast at all). The weights are re-laid out OIHW -> (O/C)IHW[C] by a layout-rewrite preproc block that
    relax.transform.SplitLayoutRewritePreproc moves out of the kernel and FoldConstant folds into the constant
    (``fold_weight_layouts``). Raises NotAFloatConv where the output channels are not a multiple of C.
    ``unroll_taps``: the KHxKW loops unrolled too, so that LLVM loads each input broadcast once for the kernel
    columns that share it (AVX2, no embedded broadcast: 1 + (P - 1) / KW broadcasts per P pixels and tap).
    ``lanes``: the ISA's float vector width (the padded input's rows; default C). ``pointwise_lanes`` (float16
    kernels: 8): a 1x1 conv whose H*W pixels are no whole number of such vectors is taken too, where the pixel
    vectors would be part-filled (PP-LCNet's 256-channel 1x1 convs at 14x14, cortex-a76: 42.6 -> 17.8 M
    instructions for that kernel with the narrowed pixel tile -> this one; doc_orientation 92 -> 54 M)."""

    sch, conv, blocks, at = _open_conv(func)
    nn, ff, yy, xx, rc, ry, rx = sch.get_loops(conv)
    if int(sch.get(ff).extent) % channels:
        raise NotAFloatConv(f"output channels not a multiple of {channels}")
    pixels_flat = int(sch.get(yy).extent) * int(sch.get(xx).extent)
    if int(sch.get(ry).extent) * int(sch.get(rx).extent) == 1 and not (pointwise_lanes
                                                                        and pixels_flat % pointwise_lanes):
        # 1x1 convs keep the pixel-vector schedule, which runs them over the flat H*W row (measured with them
        # channel-vector: AVX-512 host mobilenetv2_s 1.32x -> 1.60x onnxruntime's time; a72 instructions
        # mobilenetv2_s 0.67x -> 0.75x, ppocr_cls 0.61x -> 0.64x)
        raise NotAFloatConv("1x1")
    epilogue_names = [sch.get(b).name_hint for b in blocks[at + 1:]]
    wc = sch.cache_read(conv, 1, "global")
    sch.transform_layout(wc, ("write", 0), lambda o, i, h, w: (o // channels, i, h, w, o % channels))
    sch.annotate(wc, PREPROC_ATTR, True)
    # "global", not "local": TVM 0.27 keeps a small constant-size global buffer on the stack, but services a
    # "local" one inside the parallel loop with a TVMBackendAllocWorkspace/FreeWorkspace pair per output row
    # (resnet_s AVX2: ~900 pairs, 1.72 -> 1.59 M instructions per inference)
    acc = sch.cache_write(conv, 0, "global")
    sch.transform_layout(conv, ("write", 0), lambda n, c, h, w: (n, h, w, c))  # a pixel's channels contiguous
    pixels = _tile(int(sch.get(xx).extent), max_pixels)
    ff_o, ff_i = sch.split(ff, [None, channels])
    xx_o, xx_i = sch.split(xx, [None, pixels])
    sch.reorder(nn, ff_o, yy, xx_o, rc, ry, rx, xx_i, ff_i)
    outer = sch.fuse(nn, ff_o, yy)
    sch.parallel(outer)
    if epilogue_names:  # the epilogue reads the accumulators directly
        sch.compute_inline(acc)
        out_block = sch.get_sblock(epilogue_names[-1])
    else:
        out_block = acc
    sch.reverse_compute_at(out_block, xx_o)
    sch.unroll(xx_i)
    if unroll_taps:
        sch.unroll(rx)
        sch.unroll(ry)
    sch.vectorize(ff_i)
    init = sch.decompose_reduction(conv, rc)
    sch.vectorize(sch.get_loops(init)[-1])
    *_, out_c, out_px = sch.get_loops(out_block)
    sch.unroll(out_c)
    if pixels & (pixels - 1) == 0 and pixels > 1:
        sch.vectorize(out_px)
    else:
        sch.unroll(out_px)
    if at == 1:  # the padded input: zeros, then the in-bound rows as vectors
        _schedule_pad(sch, sch.get_child_blocks(sch.get_sblock("root"))[1], lanes or channels)
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


def _open_conv(func, grouped: bool = False):
    """(schedule, the conv block, the root's blocks after the epilogue chain was inlined into its last block, the
    conv's position: 1 after a pad block, else 0). ``grouped``: a grouped or depthwise conv's block is taken too."""
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    for name in (CONV_BLOCK, GROUP_CONV_BLOCK) if grouped else (CONV_BLOCK,):
        try:
            conv = sch.get_sblock(name)
            break
        except Exception:  # noqa: BLE001,S112 - tvm raises its generic error for a missing block
            continue
    else:
        raise NotAFloatConv(CONV_BLOCK)
    if str(sch.get(conv).writes[0].source.dtype) not in FLOATS:
        raise NotAFloatConv("not float32 / float16")
    root = sch.get_sblock("root")
    blocks = sch.get_child_blocks(root)
    names = [sch.get(b).name_hint for b in blocks]
    at = names.index(sch.get(conv).name_hint)
    # elementwise blocks fused in before the conv that neither it nor its pad reads (another branch's bias + relu
    # that only the epilogue's residual add takes: pose_s) are computed inside the epilogue instead
    feeds = {r.source for b in blocks[:at + 1] if sch.get(b).name_hint in (PAD_BLOCK, names[at])
             for r in sch.get(b).reads}
    side = [b for b in blocks[:at] if sch.get(b).name_hint != PAD_BLOCK and sch.get(b).writes[0].source not in feeds
            and all(iv.iter_type == tvm.tirx.IterVar.DataPar for iv in sch.get(b).iter_vars)]
    for block in side:
        sch.compute_inline(block)
    if side:
        blocks = sch.get_child_blocks(root)
        names = [sch.get(b).name_hint for b in blocks]
        at = names.index(sch.get(conv).name_hint)
    if at > 1 or (at == 1 and names[0] != PAD_BLOCK):
        raise ValueError("producers fused before the conv")
    for block in blocks[at + 1:-1]:  # the epilogue chain collapses into its last block
        sch.compute_inline(block)
    return sch, conv, sch.get_child_blocks(root), at


def fold_weight_layouts(mod) -> tuple[Any, dict[str, int]]:
    """Kernels scheduled with a weight layout-rewrite preproc (schedule_conv_channels): the rewrite split out of
    the kernel and folded into the constant weights. Returns (module, stats): ``weights_prepacked`` kernels,
    ``weight_transforms_at_runtime`` rewrites left as calls (a weight that is no constant)."""
    from tvm import relax

    if not any(PREPROC_ATTR in str(f) for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)):
        return mod, {}
    mod = relax.transform.SplitLayoutRewritePreproc()(mod)
    mod = relax.transform.DeadCodeElimination()(relax.transform.FoldConstant()(mod))
    names = [gv.name_hint for gv in mod.functions.keys()]
    return mod, {"weights_prepacked": sum(n.endswith("_prepacked") for n in names),
                 "weight_transforms_at_runtime": sum(n.endswith("_weight_prepack") for n in names)}


def schedule_conv_nchw(func, lanes: int, oc_tile: int = OC_T, prepack: bool = False, narrow_tiles: bool = False):
    """The scheduled PrimFunc of a fused float32 NCHW conv (+ elementwise epilogue); raises if it does not fit.
    ``prepack``: the weights re-laid out per output-channel tile at build time (aarch64). Grouped and depthwise
    convs too (each output channel reads its group's input rows: no input row shared across a depthwise tile).
    ``narrow_tiles`` (float16 kernels): a width no whole vector divides takes one half-width vector per tile where
    the usual tile would be more than 3 part-filled vectors."""
    sch, conv, blocks, at = _open_conv(func, grouped=True)
    root = sch.get_sblock("root")
    epilogue = sch.get_child_blocks(root)[at + 1:]
    nn, ff, yy, xx, rc, ry, rx = sch.get_loops(conv)
    phases = at == 1 and _width_stride(sch.get(conv)) == 2
    if phases and sch.get(conv).name_hint == GROUP_CONV_BLOCK:
        # the phase split costs ~4 scalar instructions per input element (int32 index arithmetic per scattered
        # store), which one channel's KHxKW/4 MACs per element cannot carry (mobilenetv2_s's 64-channel 3x3/2
        # depthwise on AVX2: 816 K instructions vs the sampled schedule's 202 K)
        raise NotAFloatConv("a stride-2 grouped conv")
    if phases:
        # stride 2 along the width: the padded input is stored as its even and its odd columns, one after the other
        # (w -> (w % 2, w // 2)), so the conv reads each kernel column's inputs as one contiguous row where it
        # gathered every other element (element inserts on NEON and AVX alike)
        pad_block = blocks[0]
        odd = int(sch.get(pad_block).writes[0].source.shape[3]) % 2
        sch.transform_layout(pad_block, ("write", 0), lambda n, c, h, w: (n, c, h, w % 2, w // 2),
                             pad_value=0.0 if odd else None)
    width = int(sch.get(xx).extent)
    if (width % lanes and _pointwise(sch.get(conv), int(sch.get(ry).extent), int(sch.get(rx).extent))
            and (at == 0 or _copy_only(sch.get(blocks[0])))):
        # a 1x1 conv at a width off the vector (14, 7, 12 on NEON): its output pixels are one contiguous row of
        # H*W, so vectors run over it instead of inserting elements into part-filled vectors
        if at == 1:  # the legalizer's pad_temp of a conv without padding is a plain copy: read the input itself
            sch.compute_inline(blocks[0])
            at = 0
        flat = True
        xx = sch.fuse(yy, xx)
        yy = sch.add_unit_loop(xx)
        sch.reorder(yy, xx)
        width = int(sch.get(xx).extent)
    else:
        flat = False
    ow_t = _width_tile(width, lanes)
    if narrow_tiles and ow_t // _pow2_vector(ow_t, lanes) > 3 and width % (lanes // 2) == 0:
        # a tile of many part-filled vectors (float16's 8 lanes over 196 = 14 x 14 pixels: 7 vectors of 2 lanes
        # x 8 channels, 56 accumulators, spilled: 13x the instructions of that conv) -> one half-width vector
        ow_t = lanes // 2
    if ow_t == 1:  # a prime width: no pixel tile (the sampled default vectorizes what it can)
        raise NotAFloatConv(f"no pixel tile for width {width}")
    # about 8 accumulator vectors: more output channels per tile when the pixel tile is one vector
    depthwise = sch.get(conv).name_hint == GROUP_CONV_BLOCK and int(sch.get(rc).extent) == 1
    if depthwise:
        # no input row serves two output channels: one channel per tile (4 unrolled ones: LLVM hoisted their 36
        # taps' loads and spilled them), its rows serial inside the parallel channel loop, where the KHxKW weight
        # broadcasts stay in registers
        oc_t = 1
    else:
        oc_t = _tile(int(sch.get(ff).extent),
                     oc_tile * max(1, (2 * lanes) // ow_t) if ow_t % lanes == 0 else oc_tile)
    ff_o, ff_i = sch.split(ff, [None, oc_t])
    xx_o, xx_i = sch.split(xx, [None, ow_t])
    sch.reorder(nn, ff_o, yy, xx_o, rc, ry, rx, ff_i, xx_i)
    outer = sch.fuse(nn, ff_o) if depthwise else sch.fuse(nn, ff_o, yy)
    sch.parallel(outer)
    for block in epilogue:
        # flat pixels: a tile's pixels are no rectangle of the 4-d buffers, so the epilogue runs once per group of
        # output channels (OC_T x H x W, in cache) over the flat pixel row, a whole vector at a time
        sch.reverse_compute_at(block, outer if flat else xx_o)
    # vectors of a power-of-two width, the rest of the tile unrolled: LLVM builds a 12-float vector (3 NEON vectors,
    # 1.5 AVX ones) from element inserts
    vec = _pow2_vector(ow_t, lanes)
    count = ow_t // vec
    if count & (count - 1):  # 3 vectors: LLVM's 12-float vector; 2 or 4 it splits well itself
        xx_u, xx_i = sch.split(xx_i, [None, vec])
        sch.unroll(xx_u)
    sch.vectorize(xx_i)  # before the init is split off: the update block alone may not be vectorized
    sch.unroll(ff_i)
    init = sch.decompose_reduction(conv, rc)
    sch.vectorize(sch.get_loops(init)[-1])
    for block in epilogue:
        if flat:
            pixels = sch.fuse(*sch.get_loops(block)[-2:])
            if int(sch.get(pixels).extent) % lanes == 0:
                sch.vectorize(sch.split(pixels, [None, lanes])[1])
        else:
            last = sch.get_loops(block)[-1]
            width = int(sch.get(last).extent)
            step = _pow2_vector(width, lanes)
            if width % lanes and width > lanes:
                outer_px, last = sch.split(last, [None, step])
                sch.unroll(outer_px)
            sch.vectorize(last)
    if at == 1:  # the padded input (phase-split: written by scattered scalar stores)
        pad = sch.get_child_blocks(root)[0]
        loops = sch.get_loops(pad)
        if phases:
            sch.parallel(sch.fuse(*loops[:-2]))
        else:
            _schedule_pad(sch, pad, lanes)
    if prepack and oc_t > 1:
        # the tile's OC_T weights of one (ic, kh, kw) contiguous, (O/OC_T)IHW[OC_T] prepacked at build time: paired
        # loads (`ldp s`) where OIHW made them OC_T scalar loads strided by IC*KH*KW. Measured on cortex-a72:
        # mobilenetv2_s 4.31 -> 4.11 M instructions, ppocr_cls 12.38 -> 12.14 M; AVX2 (qemu) mobilenetv2_s +2 %,
        # where the FMA takes the scalar weight as an embedded broadcast anyway: aarch64 only
        reads = [r.source for r in sch.get(conv).reads]  # the weight: (O, I, KH, KW), O a multiple of OC_T > 1
        found = [k for k, b in enumerate(reads) if len(b.shape) == 4 and int(b.shape[0]) % oc_t == 0
                 and all(int(d) == int(sch.get(lp).extent) for d, lp in zip(b.shape[1:], (rc, ry, rx)))]
        if len(found) == 1:
            wc = sch.cache_read(conv, found[0], "global")
            sch.transform_layout(wc, ("write", 0), lambda o, i, h, w: (o // oc_t, i, h, w, o % oc_t))
            sch.annotate(wc, PREPROC_ATTR, True)
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


INTERLEAVE_BLOCK = "interleave_phases"


def schedule_interleave(func):
    """A transposed conv's phase interleave (targets/conv_transpose.py), float NCHW: output rows and columns split by
    the stride with the phase loops unrolled innermost, so each output element is one copy from a known phase (a
    sampled schedule vectorized over the output columns and gathered with element inserts: 18 of pose_s's 50 M
    instructions on AVX2)."""
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if len(blocks) != 1 or sch.get(blocks[0]).name_hint != INTERLEAVE_BLOCK:
        raise NotAFloatConv(INTERLEAVE_BLOCK)
    out = sch.get(blocks[0]).writes[0].source
    phase = sch.get(blocks[0]).reads[0].source
    if len(out.shape) != 4 or str(out.dtype) not in FLOATS:
        raise NotAFloatConv("not a float NCHW interleave")
    sh = -(-int(out.shape[2]) // int(phase.shape[2]))
    sw = -(-int(out.shape[3]) // int(phase.shape[3]))
    n, c, y, x = sch.get_loops(blocks[0])
    y_o, y_i = sch.split(y, [None, sh])
    x_o, x_i = sch.split(x, [None, sw])
    sch.reorder(n, c, y_o, x_o, y_i, x_i)
    sch.parallel(sch.fuse(n, c))
    sch.unroll(y_i)
    sch.unroll(x_i)
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


def _vectorized_padding(sch, pad, loop, lanes: int) -> None:
    """A zero-padding block (``if_then_else(in bounds, x, 0)``) as a fill of zeros then a copy of the in-bound
    region, both placed at ``loop`` (a row) with their innermost loops as vectors: vectorized as one block, the
    padding lost its vectors to the bounds check on aarch64 (a scalar load and store per element)."""
    blocks = [sch.decompose_padding(pad, loop), pad]
    for block in blocks:
        last = sch.get_loops(block)[-1]
        extent = int(sch.get(last).extent)
        if extent <= 32 * lanes:  # a row as one vector (66 = 64 + 2 pad: LLVM splits it into whole vectors); a loop
            sch.vectorize(last)  # of row pieces would become a libc memcpy/memset call (LLVM's loop idioms)
        elif extent % lanes == 0:
            sch.vectorize(sch.split(last, [None, lanes])[1])


def _schedule_pad(sch, pad, lanes: int) -> None:
    """The legalizer's padded input of a conv (n, c, h, w): parallel over (n, c), each row zeros then the in-bound
    vector copy (_vectorized_padding); a pad block that pads nothing (a plain copy) stays one vectorized pass
    parallel over its rows (serial rows of a plain copy become one libc memcpy per channel)."""
    loops = sch.get_loops(pad)
    if sch.can_decompose_padding(pad, loops[-1]):
        sch.parallel(sch.fuse(*loops[:-2]))
        _vectorized_padding(sch, pad, loops[-1], lanes)
    else:
        sch.parallel(sch.fuse(*loops[:-1]))
        sch.vectorize(loops[-1])


DEINTERLEAVE_INTRIN = "compress_graph_f32_deinterleave_2x8"


@functools.cache
def _register_deinterleave(dtype: str = "float32") -> str:
    """A tensor intrinsic: 16 contiguous floats -> their 8 even and 8 odd elements, two rows of a strided (2, 8)
    buffer, as two vector shuffles (LLVM: ``vshufps`` + ``vpermpd`` on AVX2, ``ld2`` on NEON); ``dtype`` float16
    too (arm{fp16=true}: one ``ld2 .8h``)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, c: T.handle):
        stride = T.int64()
        src = T.match_buffer(a, (16,), dtype, offset_factor=1)
        dst = T.match_buffer(c, (2, 8), dtype, strides=[stride, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads(src[0:16])
            T.writes(dst[0:2, 0:8])
            for p, j in T.grid(2, 8):
                with T.sblock("update"):
                    vp, vj = T.axis.remap("SS", [p, j])
                    dst[vp, vj] = src[vj * 2 + vp]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, c: T.handle):
        stride = T.int64()
        src = T.match_buffer(a, (16,), dtype, offset_factor=1)
        dst = T.match_buffer(c, (2, 8), dtype, strides=[stride, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads(src[0:16])
            T.writes(dst[0:2, 0:8])
            dst[0, T.Ramp(0, 1, 8)] = T.Shuffle([src[T.Ramp(0, 1, 8)], src[T.Ramp(8, 1, 8)]],
                                                [0, 2, 4, 6, 8, 10, 12, 14])
            dst[1, T.Ramp(0, 1, 8)] = T.Shuffle([src[T.Ramp(0, 1, 8)], src[T.Ramp(8, 1, 8)]],
                                                [1, 3, 5, 7, 9, 11, 13, 15])

    name = DEINTERLEAVE_INTRIN if dtype == "float32" else f"{DEINTERLEAVE_INTRIN}_{dtype}"
    TensorIntrin.register(name, desc, impl)
    return name


def schedule_depthwise_phases(func, lanes: int):
    """A stride-2 float depthwise conv as float_rewrites._depthwise_phases writes it (+ a fused elementwise
    epilogue): the padded rows as vectors, the even/odd split by the deinterleave intrinsic (8 phase columns per
    step), then per channel (parallel) and output row a tile of output pixels as vectors, every tap one contiguous
    load of its phase and one FMA with the tap's weight broadcast."""
    from compress_graph.targets.float_rewrites import DW_CONV, DW_PAD, DW_PHASES, PHASE_GROUP
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    try:
        pad, phases, conv = (sch.get_sblock(name) for name in (DW_PAD, DW_PHASES, DW_CONV))
    except Exception as exc:  # noqa: BLE001 - tvm raises its generic error for a missing block
        raise NotAFloatConv(DW_CONV) from exc
    root = sch.get_sblock("root")
    for block in sch.get_child_blocks(root)[3:-1]:  # the epilogue chain collapses into its last block
        sch.compute_inline(block)
    epilogue = sch.get_child_blocks(root)[3:]
    a, b, y, q = sch.get_loops(pad)
    sch.parallel(sch.fuse(a, b))
    _vectorized_padding(sch, pad, q, lanes)
    a, b, y, p, j = sch.get_loops(phases)
    j_o, j_i = sch.split(j, [None, PHASE_GROUP])
    sch.reorder(j_o, p, j_i)
    sch.parallel(sch.fuse(a, b, y))
    sch.tensorize(p, _register_deinterleave(str(sch.get(phases).writes[0].source.dtype)))
    a, b, y, q, ry, rx = sch.get_loops(conv)
    width = int(sch.get(q).extent)
    ow_t = _width_tile(width, lanes)
    if ow_t == 1:
        raise NotAFloatConv(f"no pixel tile for width {width}")
    q_o, q_i = sch.split(q, [None, ow_t])
    sch.reorder(q_o, ry, rx, q_i)
    sch.parallel(sch.fuse(a, b))  # the rows serial: the taps' weight broadcasts stay in registers
    if epilogue:
        sch.reverse_compute_at(epilogue[-1], q_o)
    vec = _pow2_vector(ow_t, lanes)
    if ow_t // vec > 1:
        q_u, q_i = sch.split(q_i, [None, vec])
        sch.unroll(q_u)
    if vec > 1:
        sch.vectorize(q_i)
    sch.unroll(ry)
    sch.unroll(rx)
    init = sch.decompose_reduction(conv, ry)
    if vec > 1:
        sch.vectorize(sch.get_loops(init)[-1])
    if epilogue:
        last = sch.get_loops(epilogue[-1])[-1]
        step = _pow2_vector(int(sch.get(last).extent), lanes)
        if step > 1:
            outer_px, last = sch.split(last, [None, step])
            sch.unroll(outer_px)
            sch.vectorize(last)
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


POOL_ROWS, POOL_COLS = "pool_rows", "pool_cols"  # float_rewrites._separable_max_pool


def schedule_max_pool(func, lanes: int):
    """A float NCHW max pool as float_rewrites writes it (``pool_rows``: the window's rows, ``pool_cols``: its
    columns; + a fused elementwise epilogue): per output row, the row maxima over every input column as vectors
    (contiguous loads), kept local, then the column maxima over the output row, a vector of outputs at a time (a
    stride-2 window reads every other local element). The sampled schedule of the legalized pool ran 151 K
    instructions for resnet_s's 3x3/2 pool on AVX2 (qemu)."""
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    try:
        rows, cols = sch.get_sblock(POOL_ROWS), sch.get_sblock(POOL_COLS)
    except Exception as exc:  # noqa: BLE001 - tvm raises its generic error for a missing block
        raise NotAFloatConv(POOL_COLS) from exc
    root = sch.get_sblock("root")
    blocks = sch.get_child_blocks(root)
    names = [sch.get(b).name_hint for b in blocks]
    if names[:2] != [POOL_ROWS, POOL_COLS]:
        raise ValueError("producers fused before the pool")
    shape = [int(d) for d in sch.get(cols).writes[0].source.shape]
    for b in blocks[2:-1]:  # the epilogue chain collapses into its last block
        sch.compute_inline(b)
    epilogue = sch.get_child_blocks(root)[2:]
    reshaped = bool(epilogue) and [int(d) for d in sch.get(epilogue[-1]).writes[0].source.shape] != shape
    if reshaped:
        # an epilogue of another shape (a channel pad before a residual add): its loops lead, each of its output
        # rows computing the pool row it reads (the pool's blocks keep their own channel range as a predicate)
        if len(shape) != 4 or len(sch.get_loops(epilogue[-1])) != 4:
            raise ValueError("an epilogue of another rank")
        n, c, y, x = sch.get_loops(epilogue[-1])
        sch.parallel(sch.fuse(n, c))
        outer = y
        sch.compute_at(cols, outer)
        sch.compute_at(rows, outer)
        width = int(sch.get(x).extent)
        ev = _pow2_vector(width, lanes)
        if ev > 1:
            sch.vectorize(sch.split(x, [None, ev])[1])
        *_, x, s = sch.get_loops(cols)
        vec = _pow2_vector(int(sch.get(x).extent), lanes)
        x_o, x_i = sch.split(x, [None, vec])
        sch.reorder(x_o, s, x_i)
    else:
        n, c, y, x, s = sch.get_loops(cols)
        vec = _pow2_vector(int(sch.get(x).extent), lanes)
        x_o, x_i = sch.split(x, [None, vec])
        sch.reorder(n, c, y, x_o, s, x_i)
        sch.parallel(sch.fuse(n, c))
        outer = y
        sch.compute_at(rows, outer)
        acc = sch.cache_write(cols, 0, "global")  # "global": on the stack, as the conv accumulator's above
        if epilogue:
            sch.compute_inline(acc)
            out_block = epilogue[-1]
        else:
            out_block = acc
        sch.reverse_compute_at(out_block, x_o)
    *_, q, r = sch.get_loops(rows)
    qv = _pow2_vector(int(sch.get(q).extent), lanes)
    q_o, q_i = sch.split(q, [None, qv])
    sch.reorder(q_o, r, q_i)
    if qv > 1:
        sch.vectorize(q_i)
    if vec > 1:
        sch.vectorize(x_i)
    rinit = sch.decompose_reduction(rows, r)
    init = sch.decompose_reduction(cols, s)
    for block, width in [(rinit, qv), (init, vec)] + ([] if reshaped else [(out_block, vec)]):
        if width > 1:  # the block's innermost loop is its vector (else a loop around more than the block)
            sch.vectorize(sch.get_loops(block)[-1])
    sch.unroll(r)
    sch.unroll(s)
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


def schedule_fp32_kernels(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[tvm.IRModule, dict[str, Any]]:
    """Hand-schedule, in a new module, every not-yet-scheduled float32 conv kernel of the fused ``mod`` (and the
    float elementwise kernels that would recompute an exponential: targets/float_tail.py).

    Returns (module, stats): ``scheduled`` kernel names, ``failed`` {name: reason} for convs it did not fit.
    """
    from compress_graph.targets import isa
    from compress_graph.targets.isa import features

    lanes32 = isa.float_lanes(target)
    if lanes32 is None:
        return mod, {"scheduled": [], "failed": {}}
    oc_tile = isa.float_oc_tile(target)
    prepack = features.arch_is(target, features.AARCH64, default=False)

    def half(func) -> int:
        """2 for a float16 kernel (arm{fp16=true}: twice the lanes per vector register), else 1."""
        return 2 if any(str(getattr(p, "dtype", "")) == "float16" for p in func.params) else 1

    def channels_first(func):
        """The first channel-vector tile that fits; anything else (NotAFloatConv) gets the pixel-vector schedule.
        float16: the tile's channels doubled, the same registers holding twice the lanes."""
        reason = "no channel tile for this target"
        k = half(func)
        for channels, pixels, unroll in isa.float_channel_tiles(target):
            try:
                return schedule_conv_channels(func, channels * k, pixels, unroll, lanes=lanes32 * k,
                                              pointwise_lanes=lanes32 * k if k == 2 else 0)
            except NotAFloatConv as exc:  # e.g. channels not a multiple of this tile's: the next tile may fit
                reason = str(exc)
            except Exception as exc:  # noqa: BLE001 - a schedule primitive refused: the pixel schedule may fit
                raise NotAFloatConv(str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else "") from exc
        raise NotAFloatConv(reason)

    def float_tail(func):
        from compress_graph.targets.float_tail import NotAFloatTail, schedule_float_tail

        try:
            return schedule_float_tail(func, lanes32 * half(func))
        except NotAFloatTail as exc:
            raise NotAFloatConv(str(exc)) from exc

    def depthwise_phases(func):
        if lanes32 == 16 and half(func) == 1:
            # AVX-512: the sampled schedule of the same three blocks ran faster on this host (mobilenetv2_s's
            # 64 / 96 / 128-channel 3x3/2 depthwise convs 15 / 6 / 3.4 us against 22-26 / 10-12 / 3.7-4.7 us, 1
            # thread, Zen 4), the phase buffers' passes over the whole tensor costing more than its scalar taps
            raise NotAFloatConv("AVX-512: the sampled schedule is faster for a stride-2 depthwise conv")
        return schedule_depthwise_phases(func, lanes32 * half(func))

    mod, stats = hand_schedule(mod, (channels_first,
                                     lambda f: schedule_conv_nchw(f, lanes32 * half(f), oc_tile, prepack,
                                                                  narrow_tiles=half(f) == 2),
                                     schedule_interleave, lambda f: schedule_max_pool(f, lanes32 * half(f)),
                                     depthwise_phases, float_tail),
                               NotAFloatConv)
    mod, folded = fold_weight_layouts(mod)
    return mod, {**stats, **folded}
