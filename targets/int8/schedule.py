"""Hand-written schedules for the packed int8 kernels: usable speed without any tuning.

The packed conv (``topi.nn.conv2d_NCHWc_int8``, the block ``conv2d_NCHWc_int8``) left to LLVM as a plain loop
nest runs at ~5 GMAC/s on x86 VNNI, and MetaSchedule's VNNI design space for the small convs of edge models
holds few distinct programs and rarely beats that (bench/int8/README.md). The schedule here is the classic
direct-conv register blocking for a 16-channel dot-product step, whose instruction comes from the target's ISA
family (targets/isa: ``vpdpbusd``, 4 ``sdot``, or ``smull`` / ``sadalp`` into pair accumulators):

    for (n, oc_chunk, oh)  parallel            # one output row of one 16-channel block per iteration
      for ow_outer                              # REG_N output pixels at a time
        acc[REG_N][16] = 0                      # int32, kept in vector registers
        for ic_outer, kh, kw, ic_f_inner        # reduction
          for ow_inner in 0..REG_N (unrolled)
            acc[ow_inner] += dot16x4(data[4 x u8] broadcast, kernel[16 x 4 i8])   # the ISA's intrinsic
        epilogue (bias, requant, clip, residual add ...) on acc, vectorized over the 16 channels

Every elementwise block the fuser put after the conv is inlined into one epilogue computed per output tile
right after the tile's accumulation, while it is still in cache. Packed depthwise convs get the same tiling
with the 16 channels as int32 vector lanes (no dot product), max pools on packed codes with them as byte lanes.
Kernels the schedule does not fit keep whatever the caller does next (tuning records, sampled defaults);
``schedule_int8_kernels`` reports them.
"""

from __future__ import annotations

from typing import Any

import tvm
from compress_graph.targets.schedule import SCHEDULED_ATTR, hand_schedule

CONV_BLOCK = "conv2d_NCHWc_int8"
DEPTHWISE_BLOCK = "depthwise_conv2d_NCHWc_int8"  # packed.depthwise_conv2d_nchwc_int8
PAD_BLOCK = "data_pad_zp"  # packed._zero_point_pad
NARROW_ANNOTATION = "compress_graph.weights_in_127"  # packed.conv2d_nchwc_int8: no weight is -128
SMALL_ANNOTATION = "compress_graph.weights_small"  # packed.conv2d_nchwc_int8: |weights| <= the family's SMALL_LIMIT
ROWS_ANNOTATION = "compress_graph.weight_rows"  # packed.ROWS_ANNOTATION
PAIRS_BLOCK = "conv2d_NCHWc_int8_pairs"  # packed.PAIRS_BLOCK
LOOKUP_BLOCK = "table_lookup_packed"  # lookup.PACKED_BLOCK
VNNI_INTRIN = "dot_16x4_vnni"  # targets/isa/x86_vnni.INTRIN
REG_N = 8  # x86 VNNI's register tile (targets/isa/x86_vnni.REG_N)


class NotAPackedConv(ValueError):
    """The kernel has no packed-conv block."""


def _open(func, block_name: str):
    """(schedule, the named block, its zero-point pad block or None, epilogue blocks): every elementwise block
    after it inlined into the last one."""
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    try:
        main = sch.get_sblock(block_name)
    except Exception as exc:  # noqa: BLE001 - tvm raises its generic error for a missing block
        raise NotAPackedConv(block_name) from exc
    root = sch.get_sblock("root")
    blocks = sch.get_child_blocks(root)
    pad = blocks[0] if sch.get(blocks[0]).name_hint == PAD_BLOCK else None
    at = 1 if pad is not None else 0
    if sch.get(blocks[at]).name_hint != block_name:
        raise ValueError("producers fused before the conv")
    # a PAIRS family's partial-sum reduction stays a block of its own (a reduction cannot be inlined): it is the
    # first block of the returned epilogue
    first = at + 1
    keep = first + 1 if len(blocks) > first and sch.get(blocks[first]).name_hint == PAIRS_BLOCK else first
    # a table lookup (targets/int8/lookup.packed_lookup_func, a gather made NEON code per pixel) stays a block of
    # its own: the chain before it collapses into the block it reads, the chain after it into the last block
    names = [sch.get(b).name_hint for b in blocks]
    look = names.index(LOOKUP_BLOCK, keep + 1) if LOOKUP_BLOCK in names[keep + 1:] else None
    runs = [(keep, len(blocks) - 1)] if look is None else [(keep, look - 1), (look + 1, len(blocks) - 1)]
    for lo, hi in runs:  # each run of the epilogue chain collapses into its last block
        for block in blocks[lo:hi]:
            sch.compute_inline(block)
    return sch, main, pad, sch.get_child_blocks(root)[first:]


def _pad_rows(sch, pad, outer) -> None:
    """The zero-point padded input rows one output row needs, computed inside the kernel's parallel loop."""
    if pad is None:
        return
    sch.compute_at(pad, outer)
    sch.vectorize(sch.get_loops(pad)[-1])


def _register_tile(sch, loop, reg_n: int):
    width = int(sch.get(loop).extent)
    return sch.split(loop, [None, max(d for d in range(1, min(reg_n, width) + 1) if width % d == 0)])


def schedule_dot_conv(func, intrin: str = VNNI_INTRIN, reg_n: int = REG_N,
                      wide: tuple[str, int, bool, int | None] | None = None,
                      rows: tuple[str, int, str | None, int] | None = None,
                      small: tuple[str, int] | None = None, lookup_unroll: int = 1):
    """The scheduled PrimFunc for a fused packed conv (+ epilogue), its 16x4 step tensorized to ``intrin``;
    raises if the kernel does not fit. ``wide`` = (intrinsic, groups, needs narrow weights, its register tile or
    None for ``reg_n``): a family's
    16 x (4 * groups) step, used where the input block holds a multiple of that many groups of 4 channels (and,
    if it needs them, the conv block is marked as having no -128 weight: NARROW_ANNOTATION). ``rows`` = (intrinsic,
    register tile, the partials' reduction intrinsic or None, output channels per pass) for a conv on weight rows
    (packed.conv2d_nchwc_int8_rows, marked ROWS_ANNOTATION): the whole 16-channel input block per step, the 16
    output channels in one pass or several over the reduction. ``small`` = (intrinsic, register tile) for a conv
    whose weights are all within the family's ``SMALL_LIMIT`` (marked SMALL_ANNOTATION): the 16x4 step on them.
    ``lookup_unroll``: pixels per unrolled step of a table lookup in the epilogue (the family's LOOKUP_UNROLL)."""
    sch, conv, pad, epilogue = _open(func, CONV_BLOCK)
    if sch.get(conv).annotations.get(SMALL_ANNOTATION, 0):
        if small is None:
            raise NotAPackedConv("small weights without the family's small-weight intrinsic")
        intrin, reg_n, wide = small[0], small[1], None
    loops = sch.get_loops(conv)
    pair = loops[5:6] if len(loops) == 11 else []  # the partial-sum axis of a PAIRS family (targets/isa)
    n, oc_chunk, oh, ow, oc_block = loops[:5]
    kh, kw, ic_outer, ic_f_inner, ic_s_inner = loops[5 + len(pair):]
    groups = int(sch.get(ic_f_inner).extent)
    on_rows = bool(sch.get(conv).annotations.get(ROWS_ANNOTATION, 0))
    if on_rows and rows is None:
        raise NotAPackedConv("weight rows without the family's rows intrinsic")
    narrow_ok = not (wide and wide[2]) or bool(sch.get(conv).annotations.get(NARROW_ANNOTATION, 0))
    use_wide = not on_rows and wide is not None and narrow_ok and groups % wide[1] == 0
    if on_rows:
        wide = (rows[0], groups, True, rows[1])
    ow_outer, ow_inner = _register_tile(sch, ow, wide[3] if (use_wide or on_rows) and wide[3] else reg_n)
    if on_rows and rows[3] < int(sch.get(oc_block).extent):  # output channels in passes over the reduction
        oc_pass, oc_block = sch.split(oc_block, [None, rows[3]])
        sch.reorder(n, oc_chunk, oh, ow_outer, oc_pass, ic_outer, kh, kw, ow_inner, ic_f_inner, oc_block, *pair,
                    ic_s_inner)
        tensorize_at = ic_f_inner
        intrin = wide[0]
    elif on_rows or use_wide:
        if groups == wide[1]:  # the whole input block per step (sdot: 16 channels)
            sch.reorder(n, oc_chunk, oh, ow_outer, ic_outer, kh, kw, ow_inner, ic_f_inner, oc_block, *pair,
                        ic_s_inner)
            tensorize_at = ic_f_inner
        else:  # part of it (NEON: 2 of 4 groups), the weights of the part reused across the tile's pixels
            g_outer, tensorize_at = sch.split(ic_f_inner, [None, wide[1]])
            sch.reorder(n, oc_chunk, oh, ow_outer, ic_outer, kh, kw, g_outer, ow_inner, tensorize_at, oc_block,
                        *pair, ic_s_inner)
        intrin = wide[0]
    else:
        sch.reorder(n, oc_chunk, oh, ow_outer, ic_outer, kh, kw, ic_f_inner, ow_inner, oc_block, *pair, ic_s_inner)
        tensorize_at = oc_block
    outer = sch.fuse(n, oc_chunk, oh)
    sch.parallel(outer)
    _pad_rows(sch, pad, outer)
    _epilogue_at(sch, epilogue, ow_outer, int(sch.get(ow_inner).extent))
    init = sch.decompose_reduction(conv, ic_outer)
    sch.tensorize(tensorize_at, intrin)
    sch.unroll(ow_inner)
    if pair and on_rows and rows[2]:  # the family's intrinsic adds the partials of 16 channels
        pairs = epilogue.pop(0)
        *_, pb, pp = sch.get_loops(pairs)
        pinit = sch.decompose_reduction(pairs, pb)
        sch.vectorize(sch.get_loops(pinit)[-1])
        sch.tensorize(pb, rows[2])
    elif pair:  # the partial sums added per output tile, 16 channels at a time
        pairs = epilogue.pop(0)
        *_, pw, pb, pp = sch.get_loops(pairs)
        sch.reorder(pp, pb)
        sch.vectorize(pb)  # before the init is split off: the update block alone may not be vectorized
        sch.unroll(pp)
        pinit = sch.decompose_reduction(pairs, pp)
        sch.vectorize(sch.get_loops(pinit)[-1])
    return _finish_after(sch, init, epilogue, lookup_unroll)


def schedule_depthwise(func, reg_n: int = REG_N, lookup_unroll: int = 1):
    """The scheduled PrimFunc for a fused packed depthwise conv (+ epilogue): 16 channels = 16 int32 lanes."""
    sch, conv, pad, epilogue = _open(func, DEPTHWISE_BLOCK)
    n, c_chunk, oh, ow, c_block, kh, kw = sch.get_loops(conv)
    ow_outer, ow_inner = _register_tile(sch, ow, reg_n)
    sch.reorder(n, c_chunk, oh, ow_outer, kh, kw, ow_inner, c_block)
    outer = sch.fuse(n, c_chunk, oh)
    sch.parallel(outer)
    _pad_rows(sch, pad, outer)
    _epilogue_at(sch, epilogue, ow_outer, int(sch.get(ow_inner).extent))
    sch.vectorize(c_block)  # before the init is split off: the update block alone may not be vectorized
    sch.unroll(ow_inner)
    init = sch.decompose_reduction(conv, kh)
    sch.unroll(kh)
    sch.unroll(kw)
    return _finish_after(sch, init, epilogue, lookup_unroll)


POOL_BLOCK = "pool_max"  # relax.nn.max_pool2d legalized (topi pool2d): pad block "pad_temp", then "pool_max"


def schedule_packed_max_pool(func):
    """The scheduled PrimFunc for a max pool on packed 8-bit data (NCHW16c codes, the int8 lowering's pools: a
    max of codes is the code of the max): parallel over the channel blocks, the padded block of rows a fill then
    a vector copy per pixel, the window unrolled, each output pixel's 16 channels one vector (``umax`` /
    ``vpmaxub``); raises NotAPackedConv for anything else (other blocks fused in, float or unpacked pools)."""
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    if names not in ([POOL_BLOCK], ["pad_temp", POOL_BLOCK]):
        raise NotAPackedConv("not a lone max pool")
    pool = blocks[-1]
    out = sch.get(pool).writes[0].source
    if len(out.shape) != 5 or int(out.shape[-1]) != 16 or str(out.dtype) not in ("uint8", "int8"):
        raise NotAPackedConv("not a packed 8-bit pool")
    loops = sch.get_loops(pool)
    if len(loops) != 7:
        raise NotAPackedConv("not a 2-D window")
    n, c, h, w, b, rh, rw = loops
    outer = sch.fuse(n, c)
    sch.reorder(outer, h, w, rh, rw, b)
    sch.parallel(outer)
    if len(blocks) == 2:
        pad = blocks[0]
        sch.compute_at(pad, outer)
        rows = sch.get_loops(pad)[1]
        for block in ([sch.decompose_padding(pad, rows), pad] if sch.can_decompose_padding(pad, rows) else [pad]):
            sch.vectorize(sch.get_loops(block)[-1])
    sch.vectorize(b)  # before the init is split off: the update block alone may not be vectorized
    init = sch.decompose_reduction(pool, rh)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(rh)
    sch.unroll(rw)
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


LOOKUP_CHUNK = 32  # output pixels per table-lookup pass: their codes (512 bytes) stay a stack buffer


def _epilogue_at(sch, epilogue, tile, tile_pixels: int) -> None:
    """The epilogue per register tile, right after its accumulation; a table lookup (and the blocks after it)
    once per chunk of up to LOOKUP_CHUNK pixels of the row, after the chunk's tiles. Per tile, beside a conv's
    accumulators and weights, LLVM reloaded the 16 table registers every time (ppocr_cls's a76 convs: more than a
    lookup pass of their own); per row, a row of codes over 1 KiB became a runtime workspace per row."""
    chunk = None
    if any(sch.get(b).name_hint == LOOKUP_BLOCK for b in epilogue):
        tiles = int(sch.get(tile).extent)
        most = max(LOOKUP_CHUNK, tile_pixels)
        per = max(d for d in range(1, tiles + 1) if tiles % d == 0 and d * tile_pixels <= most)
        chunk, tile = sch.split(tile, [None, per])
    after = False  # the lookup and what follows it (a residual add) per chunk
    for block in epilogue:
        after = after or sch.get(block).name_hint == LOOKUP_BLOCK
        sch.reverse_compute_at(block, chunk if after else tile)


def _finish_after(sch, init, epilogue, lookup_unroll: int = 1):
    """Init and epilogue vectorized over the 16 channels (a table lookup is vector code already); the result
    marked scheduled."""
    sch.vectorize(sch.get_loops(init)[-1])
    for block in epilogue:
        if sch.get(block).name_hint == LOOKUP_BLOCK:
            _tensorize_lookup(sch, block, lookup_unroll)
        else:
            sch.vectorize(sch.get_loops(block)[-1])
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


def _tensorize_lookup(sch, block, unroll: int = 1) -> None:
    """A packed lookup's 16 channels as one NEON lookup (targets/int8/lookup.vector_store), its pixels unrolled by
    up to ``unroll`` (the family's LOOKUP_UNROLL). Tensorize cannot match a gather (its index is a load), so the
    16-lane loop is made a block and that block's body replaced by the vector code."""
    from compress_graph.targets.int8 import lookup
    from tvm import s_tir

    *_, pixels, lanes = sch.get_loops(block)
    outer = sch.blockize(lanes)
    node = sch.get(outer)
    (y,) = node.writes
    table = next(r for r in node.reads if len(r.source.shape) == 1)
    x = next(r for r in node.reads if len(r.source.shape) == len(y.source.shape))
    body = lookup.vector_store(x.source, [r.min for r in x.region], table.source, y.source, [r.min for r in y.region])
    new = s_tir.SBlock(node.iter_vars, node.reads, node.writes, node.name_hint, body, None, node.alloc_buffers,
                       node.match_buffers, node.annotations)
    sch.state.replace(sch.get_sref(outer), new, {node: new})
    width = int(sch.get(pixels).extent)
    step = next(d for d in range(max(1, unroll), 0, -1) if width % d == 0)
    if step > 1:
        sch.unroll(sch.split(pixels, [None, step])[1])


def schedule_packed_lookup(func, unroll: int = 1):
    """The scheduled PrimFunc for a table lookup on packed codes (targets/int8/lookup.packed_lookup_func) that
    is not in a conv's kernel: alone, or after the elementwise blocks the fuser put before it (a Split's slice):
    parallel over channel blocks, those blocks computed per pixel, vectorized over its 16 channels."""
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if sch.get(blocks[-1]).name_hint != LOOKUP_BLOCK:
        raise NotAPackedConv("no packed lookup")
    look = blocks[-1]
    for block in blocks[:-2]:
        sch.compute_inline(block)
    n, c, h, w, lanes = sch.get_loops(look)
    outer = sch.fuse(n, c)
    sch.parallel(outer)
    if len(blocks) > 1:
        codes = sch.get_child_blocks(sch.get_sblock("root"))[0]
        sch.compute_at(codes, w)
        sch.vectorize(sch.get_loops(codes)[-1])
    _tensorize_lookup(sch, look, unroll)
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


def schedule_int8_kernels(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[tvm.IRModule, dict[str, Any]]:
    """Hand-schedule, in a new module, every not-yet-scheduled packed int8 conv kernel of the fused ``mod`` with
    the target's dot-product family (targets/isa), and every lone max pool on packed codes.

    Returns (module, stats): ``scheduled`` kernel names, ``failed`` {name: reason} for packed convs the
    schedule did not fit (they stay as they were), ``isa`` the family used.
    """
    from compress_graph.targets import isa

    family = isa.int8_dot(target)
    if family is None:
        return mod, {"scheduled": [], "failed": {}}
    family.register_intrinsic()
    wide = ((family.INTRIN_WIDE, family.WIDE_GROUPS, getattr(family, "WIDE_NEEDS_NARROW", False),
             getattr(family, "WIDE_REG_N", None)) if hasattr(family, "INTRIN_WIDE") else None)
    rows = None
    if hasattr(family, "rows_step"):
        rows_intrin, rows_oc = family.rows_step(target)
        rows = (rows_intrin, family.ROWS_REG_N, getattr(family, "ROWS_REDUCE_INTRIN", None), rows_oc)
    small = (family.INTRIN_SMALL, family.SMALL_REG_N) if hasattr(family, "INTRIN_SMALL") else None
    unroll = getattr(family, "LOOKUP_UNROLL", 1)
    mod, stats = hand_schedule(mod, (lambda f: schedule_dot_conv(f, family.INTRIN, family.REG_N, wide, rows, small,
                                                                 unroll),
                                     lambda f: schedule_depthwise(f, family.REG_N, unroll), schedule_packed_max_pool,
                                     lambda f: schedule_packed_lookup(f, unroll)),
                               NotAPackedConv)
    stats["isa"] = family.NAME
    return mod, stats
