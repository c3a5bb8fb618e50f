"""Integer rules for one-input elementwise ops (tables and PRelu): a mixin of :class:`lower.QDQLowering`.

A float function of one 8-bit tensor between a DequantizeLinear and a QuantizeLinear becomes a 256-entry table of
its codes (targets/int8/tables.py), looked up with Relax ``take``, or with the target's vector lookups
(targets/int8/lookup.py: NEON ``tbl``/``tbx``, AVX-512 VBMI ``vpermi2b``); a PRelu of packed codes on x86 becomes
int32 lane arithmetic instead of its per-channel table.
"""

from __future__ import annotations

import numpy as np
from compress_graph.targets.int8 import lookup, tables
from compress_graph.targets.int8.match import QTensor, Refuse, dtype_of, op_name, shape_of
from compress_graph.targets.int8.requant import QRANGE, add_frac_bits, emit_round_shift
from tvm import relax

#: fewest bits of a PRelu ratio's fixed-point mantissa (as a quantized Add's terms keep)
_MIN_PRELU_BITS = 12



class TableRules:
    """Methods of the lowering mutator for tables and PRelu (they use its builder, definitions and options)."""

    def _lower_unary(self, call: relax.Call, ctx) -> relax.Expr:
        s_y, z_y, out_dtype, lo, hi = ctx
        if op_name(call) == "relax.nn.prelu" and self.opts.prelu_arith:
            try:
                return self._lower_prelu(call, ctx)
            except Refuse:
                pass  # the per-channel table
        q = self.defs.dequantized(call.args[0])
        return self._lookup(q, tables.quantize(tables.unary(self.defs, call, q), s_y, z_y, out_dtype, lo, hi),
                            out_dtype)

    def _vector_lookup(self, codes: relax.Expr, table: np.ndarray, out_dtype: str) -> relax.Expr:
        """``table[code]`` of an 8-bit tensor with the target's vector lookups (targets/int8/lookup.py): on a packed
        tensor (NCHW16c), where the family runs tables in conv kernels, as an elementwise function the fuser puts
        into its producer's kernel, else as a kernel on the tensor's flat view."""
        shape = shape_of(codes)
        if self.opts.tables_in_convs and len(shape) == 5 and shape[-1] == lookup.LANES:
            gv = self.builder_.add_func(lookup.packed_lookup_func(shape, dtype_of(codes), out_dtype), "table_lookup")
            return relax.call_tir(gv, [codes, relax.const(table, out_dtype)], relax.TensorType(shape, out_dtype))
        n = int(np.prod(shape))
        gv = self.builder_.add_func(lookup.lookup_func(n, dtype_of(codes), out_dtype, self.opts.vector_tables),
                                    "table_lookup")
        flat = self._emit(relax.op.reshape(codes, (n,)))
        return relax.op.reshape(self._emit(relax.call_tir(gv, [flat, relax.const(table, out_dtype)],
                                                          relax.TensorType((n,), out_dtype))), shape)

    def _lookup_codes(self, codes: relax.Expr, dtype: str, table: np.ndarray, out_dtype: str) -> relax.Expr:
        """``table[code - qmin]`` of an 8-bit tensor in any layout (a one-row table)."""
        if self.opts.vector_tables:
            return self._vector_lookup(codes, table, out_dtype)
        idx = relax.op.astype(codes, "int32")
        if QRANGE[dtype][0]:
            idx = relax.op.subtract(idx, relax.const(QRANGE[dtype][0], "int32"))
        return relax.op.take(relax.const(table, out_dtype), self._emit(idx), axis=0)

    def _lookup(self, q: QTensor, table: np.ndarray, out_dtype: str) -> relax.Expr:
        """``table[code of q]`` in q's layout; a 2-D (channels, codes) table: row c for channel c."""
        qmin = QRANGE[q.dtype][0]
        x = self._new(q.expr)
        packed = self.packed_of.get(x)  # a table lookup is elementwise: any layout
        src = x if packed is None else packed[0]
        if self.opts.vector_tables and table.ndim == 1:
            out = self._vector_lookup(src, table, out_dtype)
            return out if packed is None else self._unpack(self._emit(out), packed[1], shape_of(x)[1])
        alias = src
        while isinstance(alias, relax.Var) and alias not in self.narrowed:  # through ``lv1 = lv0`` bindings
            alias = self.builder_.lookup_binding(alias)
        if isinstance(alias, relax.Var):  # the index from the int32 clip, not from the saturating narrows
            src = self.narrowed[alias]()
        idx = relax.op.astype(src, "int32")
        if qmin:
            idx = relax.op.subtract(idx, relax.const(qmin, "int32"))
        if table.ndim == 2:  # row c of the table for channel c (padding channels of a packed tensor: row 0)
            n_ch = table.shape[0]
            if packed is None:
                rows, shape = np.arange(n_ch), (1, n_ch, 1, 1)
            else:
                block = packed[1]
                rows = np.arange(shape_of(packed[0])[1] * block)
                rows[rows >= n_ch] = 0
                shape = (1, rows.size // block, 1, 1, block)
            idx = relax.op.add(idx, relax.const((rows * table.shape[1]).astype(np.int32).reshape(shape), "int32"))
            table = table.reshape(-1)
        out = relax.op.take(relax.const(table, out_dtype), self._emit(idx), axis=0)
        return out if packed is None else self._unpack(self._emit(out), packed[1], shape_of(x)[1])

    def _lower_prelu(self, call: relax.Call, ctx) -> relax.Expr:
        """PRelu of a packed tensor as int32 lane arithmetic: ``t = x - zp``, ``t * M`` with ``M`` the slope's
        fixed-point ratio ``s_x / s_y`` (``t >= 0``) or ``alpha_c * s_x / s_y`` (``t < 0``, per channel), then the
        rounding shift (half to even) of a quantized Add. Vector lanes instead of the per-channel table's gather
        (one scalar load per code); refused (the table) on NCHW codes (there the arithmetic cost more than the
        gather: bench/x86's face_s headline) and where int32 cannot hold the ratios with at least _MIN_PRELU_BITS
        bits."""
        s_y, z_y, out_dtype, lo, hi = ctx
        shape = shape_of(call.args[0])
        if int(call.attrs.axis) != 1 or len(shape) != 4:
            raise Refuse("prelu slope not per channel of NCHW")
        q = self.defs.dequantized(call.args[0])
        channels = shape[1]
        slopes = np.broadcast_to(self.defs.bias(call.args[1]), (channels,))
        ratio = np.float64(q.scale) / np.float64(s_y)
        ratios = np.concatenate([[ratio], ratio * slopes])
        bits, acc_dtype = add_frac_bits([float(np.abs(ratios).max())])
        kept = np.abs(ratios[ratios != 0]) * 2.0**bits
        if acc_dtype != "int32" or kept.size == 0 or kept.min() < 2.0**_MIN_PRELU_BITS:
            raise Refuse("prelu ratios too far apart for int32")
        m_neg = np.round(ratio * slopes * 2.0**bits).astype(np.int32)
        x = self._new(q.expr)
        packed = self.packed_of.get(x)
        if packed is None:
            raise Refuse("prelu of an unpacked tensor")
        src, block = packed
        full = np.zeros(shape_of(src)[1] * block, np.int32)  # padding channels of the packed tensor: slope 0
        full[:channels] = m_neg
        m_neg = full.reshape(1, -1, 1, 1, block)
        t = relax.op.astype(src, "int32")
        if q.zero_point:
            t = relax.op.subtract(t, relax.const(q.zero_point, "int32"))
        t = self._emit(t)
        mult = self._emit(relax.op.where(relax.op.less(t, relax.const(0, "int32")), relax.const(m_neg, "int32"),
                                         relax.const(np.int32(np.round(ratio * 2.0**bits)), "int32")))
        total = self._emit(relax.op.multiply(t, mult))
        out = emit_round_shift(self.builder_, total, bits, z_y, out_dtype, lo=lo, hi=hi, dtype="int32")
        return self._unpack(self._emit(out), block, channels)
