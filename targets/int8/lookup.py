"""256-entry table lookups on aarch64 NEON: ``tbl`` / ``tbx`` over the table held in 16 q registers.

A table (targets/int8/tables.py: SiLU, hard-swish, sigmoid ... tabulated per 8-bit code) lowered as Relax ``take``
runs as a gather: the code widened to an int32 index, one scalar load per element (~2.9 instructions per element
on a76). Here the lookup is a kernel of its own: 16 codes per q register, ``tbl`` (4 table registers, 64 entries;
an index past them gives 0) for codes 0-63, then ``tbx`` (the same, leaving lanes past its 64 entries as they
were) for 64-127, 128-191 and 192-255 on the code minus 64, 128, 192 (uint8 wrap-around puts smaller codes past
the range): 3 subtractions, 4 lookups, a load and a store per 16 elements. Only for tables of one row (a PRelu's
per-channel rows stay ``take``: every lane would need its own table).

Where the family runs tables in conv kernels (``TABLES_IN_CONVS``: the sdot family, cortex-a55/a76), the lookup on a
packed tensor (NCHW16c, a packed conv's codes) is :func:`packed_lookup_func`: a gather declared elementwise, so the
fuser puts it into the producing conv's kernel, where the conv schedules (targets/int8/schedule.py) run it once per
chunk of output pixels after their requant, its 16 lanes as :func:`vector_store` — no kernel, tensor or pass of its
own.

On x86 CPUs with AVX-512 VBMI (Ice Lake and later Intel cores, AMD Zen 4), ``lookup_func(..., isa="vbmi")`` is the
same kernel on 64 codes per zmm register: ``vpermi2b`` looks 64 codes up in 128 table entries (two registers;
index bit 6 picks the register), once over entries 0-127 and once over 128-255, and the code's top bit picks
between the two (``vpblendmb``): where the tables had been ``take`` gathers, a scalar load per code.
"""

from __future__ import annotations

import tvm
from compress_graph.targets.kernel_profile import HAND_WRITTEN_ATTR
from compress_graph.targets.schedule import FUSE_PATTERN_ATTR, SCHEDULED_ATTR

LANES = 16
OP_PATTERN_OPAQUE = 8  # relax's kOpaque: the fuser keeps the kernel to itself
OP_PATTERN_ELEMWISE = 0  # relax's kElemWise: the fuser appends it to a conv's (kOutEWiseFusable) kernel
PACKED_BLOCK = "table_lookup_packed"


def _neon(in_dtype: str, out_dtype: str):
    """``(codes, look)``: the 16 codes of ``x`` at ``index`` as a uint8x16 table index, and the table's entries at
    such an index (``tbl`` over entries 0-63, ``tbx`` over each next 64)."""
    from tvm.script import tirx as T

    flip = in_dtype == "int8"  # the code of an int8 x is x + 128 = x ^ 0x80 as a byte
    tbl4 = "llvm.aarch64.neon.tbl4.v16i8"
    tbx4 = "llvm.aarch64.neon.tbx4.v16i8"

    def part(t, j):  # table entries 16j .. 16j + 15
        return T.reinterpret(t.vload([LANES * j], f"{out_dtype}x16"), dtype="uint8x16")

    def codes(x, index):
        v = T.reinterpret(x.vload(index, f"{in_dtype}x16"), dtype="uint8x16")
        return T.bitwise_xor(v, T.broadcast(T.uint8(128), LANES)) if flip else v

    def look(t, c):
        r = T.call_llvm_pure_intrin("uint8x16", T.llvm_lookup_intrinsic_id(tbl4), part(t, 0), part(t, 1),
                                    part(t, 2), part(t, 3), c)
        for k in (1, 2, 3):
            r = T.call_llvm_pure_intrin("uint8x16", T.llvm_lookup_intrinsic_id(tbx4), r, part(t, 4 * k),
                                        part(t, 4 * k + 1), part(t, 4 * k + 2), part(t, 4 * k + 3),
                                        c - T.broadcast(T.uint8(64 * k), LANES))
        return T.reinterpret(r, dtype=f"{out_dtype}x16")

    return codes, look


VBMI_LANES = 64


def _vbmi(in_dtype: str, out_dtype: str):
    """``(codes, look)`` for 64 codes per AVX-512 register: the codes as int8x64 ``vpermi2b`` indices (an int8 x
    flipped to its code x + 128), and the table's entries at them (entries 0-127 and 128-255 by two ``vpermi2b``,
    which read index bits 0-6; bit 7, the sign, selects between the two)."""
    from tvm.script import tirx as T

    lanes = VBMI_LANES
    flip = in_dtype == "int8"
    perm = "llvm.x86.avx512.vpermi2var.qi.512"

    def part(t, j):  # table entries 64j .. 64j + 63
        return T.reinterpret(t.vload([lanes * j], f"{out_dtype}x{lanes}"), dtype=f"int8x{lanes}")

    def codes(x, index):
        v = T.reinterpret(x.vload(index, f"{in_dtype}x{lanes}"), dtype=f"int8x{lanes}")
        return T.bitwise_xor(v, T.broadcast(T.int8(-128), lanes)) if flip else v

    def look(t, c):
        low = T.call_llvm_pure_intrin(f"int8x{lanes}", T.llvm_lookup_intrinsic_id(perm), part(t, 0), c, part(t, 1))
        high = T.call_llvm_pure_intrin(f"int8x{lanes}", T.llvm_lookup_intrinsic_id(perm), part(t, 2), c,
                                       part(t, 3))
        return T.reinterpret(T.Select(c < T.broadcast(T.int8(0), lanes), high, low), dtype=f"{out_dtype}x{lanes}")

    return codes, look


#: vector lookups per ISA: (their lanes, the (codes, look) builder)
ISAS = {"neon": (LANES, _neon), "vbmi": (VBMI_LANES, _vbmi)}


def lookup_func(n: int, in_dtype: str, out_dtype: str, isa: str = "neon") -> tvm.tirx.PrimFunc:
    """``y[i] = table[x[i] - qmin(in_dtype)]`` over ``n`` codes (int8 / uint8 in, int8 / uint8 out; flat: the
    caller reshapes), the table a (256,) ``out_dtype`` parameter; ``isa``: "neon" (aarch64) or "vbmi" (x86
    AVX-512 VBMI)."""
    from tvm.script import tirx as T

    lanes, builder = ISAS[isa]
    body = n // lanes * lanes
    flip = in_dtype == "int8"
    codes, look = builder(in_dtype, out_dtype)

    def code_of(x, i):
        c = T.cast(x[i], "int32")
        return c + 128 if flip else c

    @T.prim_func(s_tir=True)
    def table_lookup(x: T.Buffer((n,), in_dtype), table: T.Buffer((256,), out_dtype), y: T.Buffer((n,), out_dtype)):
        T.func_attr({"op_pattern": OP_PATTERN_OPAQUE})
        with T.sblock("root"):  # passes that list a module's blocks expect one
            for i in T.parallel(body // lanes):
                with T.sblock("table_lookup"):
                    T.reads(x[i * lanes:i * lanes + lanes], table[0:256])
                    T.writes(y[i * lanes:i * lanes + lanes])
                    y[T.ramp(i * lanes, 1, lanes)] = look(table, codes(x, [i * lanes]))
            for j in T.serial(n - body):
                with T.sblock("table_lookup_tail"):
                    T.reads(x[body + j], table[0:256])
                    T.writes(y[body + j])
                    y[body + j] = table[code_of(x, body + j)]

    return (table_lookup.without_attr("global_symbol").with_attr(SCHEDULED_ATTR, True)
            .with_attr(HAND_WRITTEN_ATTR, True))


def packed_lookup_func(shape: tuple[int, ...], in_dtype: str, out_dtype: str) -> tvm.tirx.PrimFunc:
    """``y = table[x - qmin(in_dtype)]`` on a packed (N, C/16, H, W, 16) tensor, as a plain gather (block
    PACKED_BLOCK) whose 16 channels the schedules replace by the NEON lookup (:func:`vector_store`). Declared
    elementwise to the fuser (relax's kElemWise, which a conv's kernel takes in; TVM's analysis reads a gather as
    opaque): the producing conv's kernel runs it per chunk of output pixels. Not fused (the codes read elsewhere
    too, or a Split's slice before it): targets/int8/schedule.schedule_packed_lookup."""
    from tvm.script import tirx as T

    if int(shape[-1]) != LANES:
        raise ValueError(f"packed lookup on blocks of {shape[-1]}, not {LANES}")
    dims = tuple(T.int64(int(d)) for d in shape)
    offset = 128 if in_dtype == "int8" else 0

    @T.prim_func(s_tir=True)
    def table_lookup(x: T.Buffer(dims, in_dtype), table: T.Buffer((T.int64(256),), out_dtype),
                     y: T.Buffer(dims, out_dtype)):
        T.func_attr({FUSE_PATTERN_ATTR: OP_PATTERN_ELEMWISE})
        for i0, i1, i2, i3, i4 in T.grid(*dims):
            with T.sblock(PACKED_BLOCK):
                v0, v1, v2, v3, v4 = T.axis.remap("SSSSS", [i0, i1, i2, i3, i4])
                # the whole table: tensorize cannot match a region whose bounds are loads
                T.reads(table[T.int64(0):T.int64(256)], x[v0, v1, v2, v3, v4])
                T.writes(y[v0, v1, v2, v3, v4])
                y[v0, v1, v2, v3, v4] = table[T.cast(x[v0, v1, v2, v3, v4], "int32") + offset]

    return table_lookup.without_attr("global_symbol")


def vector_store(x, x_at: list, table, y, y_at: list):
    """The statement ``y[y_at : +16] = table[x[x_at : +16] - qmin]`` as NEON lookups (16 lanes along the last
    index), for the schedules' packed lookups (targets/int8/schedule.py)."""
    from tvm import tirx

    codes, look = _neon(str(x.dtype), str(y.dtype))
    return tirx.BufferStore(y, look(table, codes(x, list(x_at))), list(y_at[:-1]) + [tirx.Ramp(y_at[-1], 1, LANES)])
