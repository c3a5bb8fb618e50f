"""Rewrite QDQ (fake-quant) Relax functions into integer kernels.

Every ``R.quantize(v, s_y, z_y)`` whose producer ``v`` can be computed from 8-bit inputs is replaced by an
integer computation of the same 8-bit result; the float producer then dies (dead-code elimination) unless
something else uses it. Each replacement is local and keeps the semantics of the QDQ model as onnxruntime
runs it (QLinearConv & co.), so a refusal never breaks the module: that value simply stays float, with the
explicit quantize/dequantize the importer already put at its border.

Rules (producer of the quantize, with an optional Relu/Clip in between folded into the 8-bit clip):
  conv2d / matmul (+ constant bias)   int8/uint8 x int8 -> int32, zero points folded into an int32 bias
                                      (the input is padded with its zero point, so borders stay exact),
                                      per-channel fixed-point requant
  add / subtract / multiply           two 8-bit inputs, rescaled in int32 (int64 for extreme scale ratios)
  max_pool2d, reshape, permute_dims,  on the 8-bit tensor, then a rescale if the scales differ
  split, concat, resize2d (nearest)
  mean over H, W (global avg pool)    int32 sum, requant by s_x / (N s_y)
  elementwise unary (sigmoid, tanh,   a 256-entry lookup table computed at compile time; PRelu of packed codes
  exp, ...) on one 8-bit input        on x86 as int32 lane arithmetic (targets/int8/table_rules.py)
  pad (constant)                      on packed codes, with the pad value's code
  quantize(dequantize(q))             a rescale
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from compress_graph.targets.int8 import tables
from compress_graph.targets.int8.linear import LINEAR_OPS, LinearRules
from compress_graph.targets.int8.match import (
    Definitions,
    QTensor,
    Refuse,
    channels_of,
    op_name,
    prim_float,
    shape_of,
)
from compress_graph.targets.int8.requant import (
    QRANGE,
    add_frac_bits,
    emit_requant,
    emit_round_shift,
    rescale_terms,
)
from compress_graph.targets.int8.table_rules import TableRules
from tvm import relax

_RESHAPES = ("relax.reshape", "relax.permute_dims", "relax.flatten", "relax.squeeze", "relax.expand_dims")


@dataclass
class LowerOptions:
    """How integer code is emitted.

    requant: "fixed" (int64 multiply + rounding shift) or "float" (float32 multiply, like onnxruntime).
    act_dtype: dtype fed to conv/matmul; "int8" turns uint8 activations into int8 (x - 128) for ARM sdot.
    conv_emitter: optional hook ``(bb, x, zp, w, attrs) -> int32 expr | None`` for packed/tensorized convs.
    """

    requant: str = "fixed"
    act_dtype: str = "uint8"
    conv_emitter: Any = None
    vector_tables: str = ""  # one-row tables as vector lookup kernels: "neon" (tbl / tbx) or "vbmi" (x86 vpermi2b),
    # targets/int8/lookup.py; "": ``take``
    tables_in_convs: bool = False  # such a table on a packed conv's codes runs in the conv's kernel (the family's)
    prelu_arith: bool = False  # PRelu as int32 lane arithmetic (per-channel slopes), else its per-channel table


@dataclass
class LowerStats:
    converted: Counter = field(default_factory=Counter)
    refused: dict[str, str] = field(default_factory=dict)


@relax.expr_functor.mutator
class QDQLowering(relax.PyExprMutator, LinearRules, TableRules):
    """The mutator; use :func:`lower_function` / ``lower_qdq`` rather than this class directly."""

    def __init__(self, mod: tvm.IRModule, opts: LowerOptions):
        super().__init__(mod)
        self.mod_ = mod
        self.opts = opts
        self.stats = LowerStats()
        self.defs: Definitions | None = None
        self._split_cache: dict[Any, relax.Expr] = {}
        # new 8-bit NCHW var -> (packed NCHW[b]c var, b): lets consecutive packed ops skip the unpack
        self.packed_of: dict[Any, tuple[relax.Expr, int]] = {}
        # requant results whose clip is a saturating narrow (aarch64), and how to emit them without it: a table
        # lookup widens its index right back, which the narrow would make LLVM do instruction by instruction
        self.narrowed: dict[Any, Any] = {}
        self._pending_packed: tuple[relax.Expr, int] | None = None

    def transform(self) -> tvm.IRModule:
        for gvar, func in self.mod_.functions_items():
            if isinstance(func, relax.Function):
                self.defs = Definitions(func)
                self.builder_.update_func(gvar, self.visit_expr(func))
        return self.builder_.get()

    # -- the binding hook ---------------------------------------------------------------------------
    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = binding.value
        self._pending_packed = None
        if op_name(value) == "relax.quantize":
            try:
                kind, out = self._lower_quantize(value)
            except Refuse as why:
                producer = self.defs.resolve(value.args[0])
                if not isinstance(producer, relax.Var):  # a graph input is quantized in float: a border
                    self.stats.refused[binding.var.name] = f"{op_name(producer) or 'value'}: {why}"
            else:
                if isinstance(out, relax.Var) and isinstance(binding.var, relax.DataflowVar):
                    new = out  # an identity rescale: reuse the 8-bit value, no alias binding
                elif isinstance(binding.var, relax.DataflowVar):
                    new = self.builder_.emit(out, binding.var.name)
                else:
                    new = self.builder_.emit_output(out, binding.var.name)
                self.set_var_remap(binding.var, new)
                if self._pending_packed is not None:
                    self.packed_of[new] = self._pending_packed
                self.stats.converted[kind] += 1
                return
        super().visit_var_binding_(binding)

    # -- helpers ------------------------------------------------------------------------------------
    def _new(self, expr: relax.Expr) -> relax.Expr:
        """The rewritten counterpart of an expression of the original module."""
        return self.visit_expr(expr)

    def _emit(self, expr: relax.Expr) -> relax.Expr:
        return self.builder_.emit(expr)

    def _rescale(self, q: QTensor, x: relax.Expr, s_y: float, z_y: int, out_dtype: str,
                 lo: int | None, hi: int | None) -> relax.Expr:
        """An 8-bit tensor ``x`` with (q.scale, q.zp) -> the same values at (s_y, z_y), as an expr."""
        qmin, qmax = QRANGE[out_dtype]
        same = q.scale == s_y and q.zero_point == z_y and q.dtype == out_dtype
        if same and (lo is None or lo <= qmin) and (hi is None or hi >= qmax):
            return x
        acc = relax.op.astype(x, "int32")
        if q.zero_point:
            acc = relax.op.subtract(acc, relax.const(q.zero_point, "int32"))
        acc = self._emit(acc)
        return emit_requant(self.builder_, acc, np.float64(q.scale) / s_y, z_y, out_dtype, (),
                            lo=lo, hi=hi, mode=self.opts.requant)

    # -- dispatch -----------------------------------------------------------------------------------
    def _lower_quantize(self, call: relax.Call) -> tuple[str, relax.Expr]:
        from compress_graph.targets.int8.match import scalar_const

        x, scale, zp = call.args
        s_y = float(np.float32(scalar_const(scale, "output scale")))
        z_y = int(scalar_const(zp, "output zero point"))
        out_dtype = str(call.attrs.out_dtype)
        if out_dtype not in QRANGE:
            raise Refuse(f"quantize to {out_dtype}")
        lo = hi = None
        prod = self.defs.resolve(x)
        for _ in range(2):  # Relu, Clip, or Clip as maximum(minimum(.)) over a conv / matmul / add
            bounds = self._activation(prod, s_y, z_y)
            if bounds is None:
                break
            inner, (b_lo, b_hi) = bounds
            inner = self.defs.resolve(inner)
            if not self._is_linear_or_add(inner) and self._activation(inner, s_y, z_y) is None:
                break
            lo = b_lo if lo is None or (b_lo is not None and b_lo > lo) else lo
            hi = b_hi if hi is None or (b_hi is not None and b_hi < hi) else hi
            prod = inner
        ctx = (s_y, z_y, out_dtype, lo, hi)
        try:
            return self._dispatch(prod, ctx)
        except Refuse:
            chain = tables.tabulate(self.defs, prod)
            if chain is None:
                raise
        q, values = chain  # a float function of one 8-bit tensor (SiLU, hard-swish, ...): one table of its codes
        return "elementwise_table", self._lookup(q, tables.quantize(values, s_y, z_y, out_dtype, lo, hi), out_dtype)

    def _dispatch(self, prod: relax.Expr, ctx) -> tuple[str, relax.Expr]:
        name = op_name(prod)
        if name == "relax.add":
            lin = self._split_bias(prod)
            if lin is not None:
                return self._lower_linear(lin[0], lin[1], ctx)
            return "add", self._lower_binary(prod, +1, ctx)
        if name in LINEAR_OPS:
            return self._lower_linear(prod, None, ctx)
        if name == "relax.subtract":
            return "subtract", self._lower_binary(prod, -1, ctx)
        if name == "relax.multiply":
            return "multiply", self._lower_multiply(prod, ctx)
        if name in tables.UNARY or name in ("relax.clip", "relax.nn.leakyrelu", "relax.nn.prelu"):
            return name.split(".")[-1], self._lower_unary(prod, ctx)
        if name == "relax.nn.avg_pool2d":
            return "avg_pool2d", self._lower_avg_pool(prod, ctx)
        if name in ("relax.nn.max_pool2d", "relax.image.resize2d") or name in _RESHAPES:
            return name.split(".")[-1], self._lower_passthrough(prod, ctx)
        if name == "relax.mean":
            return "global_avg_pool", self._lower_mean(prod, ctx)
        if name == "relax.concat":
            return "concat", self._lower_concat(prod, ctx)
        if name == "relax.nn.pad":
            return "pad", self._lower_pad(prod, ctx)
        if isinstance(prod, relax.TupleGetItem):
            return "split", self._lower_split_item(prod, ctx)
        if name == "relax.dequantize":
            q = self.defs.dequantized(prod)
            return "requantize", self._rescale(q, self._new(q.expr), *ctx)
        raise Refuse("no integer rule")

    def _is_linear_or_add(self, expr: relax.Expr) -> bool:
        return op_name(self.defs.resolve(expr)) in ("relax.add", *LINEAR_OPS)

    def _activation(self, act: relax.Expr, s_y: float, z_y: int):
        """Relu/Clip/max/min with constants in float == a clip in the 8-bit domain (quantization is
        monotonic). Returns (input, (lo, hi)) in quantized units, or None if ``act`` is none of these."""
        name, args = op_name(act), list(getattr(act, "args", []))
        if name == "relax.call_tir":  # the importer emits Clip with tensor bounds as TIR maximum/minimum
            callee = getattr(args[0], "name_hint", None) or getattr(args[0], "name", "")
            name = next((op for op in tables.MINMAX if str(callee).startswith(op.split(".")[-1])), None)
            args = list(args[1].fields) if isinstance(args[1], relax.Tuple) else []
        if name == "relax.nn.relu":
            return args[0], (z_y, None)
        if name == "relax.clip":
            lo_f, hi_f = (prim_float(a) for a in args[1:3])
        elif name in tables.MINMAX and len(args) == 2:
            bound = self.defs.scalar_bound(args[1])
            if bound is None:
                return None
            lo_f, hi_f = (bound, None) if name == "relax.maximum" else (None, bound)
        else:
            return None
        lo = None if lo_f is None or not np.isfinite(lo_f) else int(np.round(lo_f / s_y)) + z_y
        hi = None if hi_f is None or not np.isfinite(hi_f) else int(np.round(hi_f / s_y)) + z_y
        return args[0], (lo, hi)

    # -- layouts -------------------------------------------------------------------------------------
    def _unpack(self, packed: relax.Expr, block: int, channels: int | None = None) -> relax.Expr:
        """Leave a packed 8-bit result in NCHW for the original consumers, remembering the packed one.

        ``channels``: the real channel count when the packed tensor carries padding channels past it."""
        from compress_graph.targets.int8.packed import unpack_data

        self._pending_packed = (packed, block)
        out = unpack_data(packed, block)
        if channels is not None and channels != shape_of(packed)[1] * block:
            out = relax.op.strided_slice(self._emit(out), axes=[1], begin=[0], end=[channels])
        return out

    # -- elementwise --------------------------------------------------------------------------------
    def _lower_binary(self, call: relax.Call, sign: int, ctx) -> relax.Expr:
        s_y, z_y, out_dtype, lo, hi = ctx
        qa, qb = (self.defs.dequantized(a) for a in call.args)
        ra, rb = qa.scale / np.float64(s_y), qb.scale / np.float64(s_y)
        bits, acc_dtype = add_frac_bits([ra, rb])
        xa, xb = self._new(qa.expr), self._new(qb.expr)
        pa, pb = self._packed_pair(xa, xb)
        block = None if pa is None else pa[1]
        if block is not None:  # an operand exists packed: add in that layout, the result stays packed
            xa, xb = pa[0], pb[0]
        ta = rescale_terms(self.builder_, xa, qa.zero_point, ra, bits, acc_dtype)
        tb = rescale_terms(self.builder_, xb, qb.zero_point, rb, bits, acc_dtype)
        total = self._emit(relax.op.add(ta, tb) if sign > 0 else relax.op.subtract(ta, tb))
        out = emit_round_shift(self.builder_, total, bits, z_y, out_dtype, lo=lo, hi=hi, dtype=acc_dtype)
        return out if block is None else self._unpack(self._emit(out), block, shape_of(call)[1])

    def _packed_pair(self, xa: relax.Expr, xb: relax.Expr):
        """Packed versions of two same-shape NCHW operands (packing one if only the other is packed).

        Both packed with the same padding channels past the real ones (24 -> 32) also pair up: elementwise
        ops keep the padding, and the unpack drops it. Otherwise both go to the largest block (16, 8, 4) that
        divides the channel count and the blocks they have (packed.reblock_data: a C2f's 8-channel half and a
        conv's 16-channel block with 8 padding channels meet in blocks of 8)."""
        from compress_graph.targets.int8.packed import pack_data, reblock_data

        pa, pb = self.packed_of.get(xa), self.packed_of.get(xb)
        if pa is None and pb is None:
            return None, None
        try:
            same = shape_of(xa) == shape_of(xb)
        except Refuse:
            return None, None
        if (same and pa is not None and pb is not None and pa[1] == pb[1]
                and shape_of(pa[0]) == shape_of(pb[0])):
            return pa, pb
        if not same or len(shape_of(xa)) != 4:
            return None, None
        channels = shape_of(xa)[1]
        blocks = [p[1] for p in (pa, pb) if p is not None]
        block = next((b for b in (16, 8, 4) if channels % b == 0 and all(k % b == 0 for k in blocks)), None)
        if block is None:
            return None, None

        def fit(x, p):
            if p is None:
                return pack_data(self.builder_, x, block), block
            if p[1] != block or channels_of(p[0]) != channels:
                return reblock_data(self.builder_, p[0], p[1], channels, block), block
            return p

        return fit(xa, pa), fit(xb, pb)

    def _lower_multiply(self, call: relax.Call, ctx) -> relax.Expr:
        s_y, z_y, out_dtype, lo, hi = ctx
        qa, qb = (self.defs.dequantized(a) for a in call.args)
        for q, other in ((qa, qb), (qb, qa)):  # x * quantize(f(x)), e.g. SiLU's x * sigmoid(x): one table of x
            real = tables.product_with_unary(self.defs, q, other)
            if real is not None:
                return self._lookup(q, tables.quantize(real, s_y, z_y, out_dtype, lo, hi), out_dtype)
        xs = [self._new(qa.expr), self._new(qb.expr)]
        pa, pb = self._packed_pair(*xs)
        if pa is not None:  # e.g. SiLU's x * sigmoid(x) after a packed conv: stays packed
            xs = [pa[0], pb[0]]
        terms = []
        for q, x in zip((qa, qb), xs, strict=True):
            t = relax.op.astype(x, "int32")
            if q.zero_point:
                t = relax.op.subtract(t, relax.const(q.zero_point, "int32"))
            terms.append(self._emit(t))
        prod = self._emit(relax.op.multiply(terms[0], terms[1]))
        mult = np.float64(qa.scale) * qb.scale / s_y
        out = emit_requant(self.builder_, prod, mult, z_y, out_dtype, (), lo=lo, hi=hi, mode=self.opts.requant)
        return out if pa is None else self._unpack(self._emit(out), pa[1], shape_of(call)[1])

    # -- data movement and pooling ------------------------------------------------------------------
    def _lower_passthrough(self, call: relax.Call, ctx) -> relax.Expr:
        name = op_name(call)
        if name == "relax.image.resize2d" and str(call.attrs.method) != "nearest_neighbor":
            raise Refuse(f"resize method {call.attrs.method}")
        q = self.defs.dequantized(call.args[0])
        x = self._new(q.expr)
        packed = self.packed_of.get(x)
        if name == "relax.nn.max_pool2d" and packed is not None and str(call.attrs.layout) == "NCHW":
            a = call.attrs
            pooled = self._emit(relax.op.nn.max_pool2d(
                packed[0], a.pool_size, a.strides, a.padding, a.dilation, bool(a.ceil_mode),
                layout=f"NCHW{packed[1]}c"))
            out = self._rescale(q, pooled, *ctx)
            return self._unpack(out if isinstance(out, relax.Var) else self._emit(out), packed[1], shape_of(x)[1])
        if (name == "relax.image.resize2d" and packed is not None and str(call.attrs.layout) == "NCHW"
                and channels_of(packed[0]) == shape_of(x)[1]):
            a = call.attrs
            moved = self._emit(relax.op.image.resize2d(
                packed[0], call.args[1], [float(v) for v in a.roi], layout=f"NCHW{packed[1]}c",
                method=str(a.method), coordinate_transformation_mode=str(a.coordinate_transformation_mode),
                rounding_method=str(a.rounding_method), out_dtype=q.dtype))
            out = self._rescale(q, moved, *ctx)
            return self._unpack(out if isinstance(out, relax.Var) else self._emit(out), packed[1], shape_of(x)[1])
        args = [x] + [self._new(a) for a in call.args[1:]]
        moved = self._emit(relax.Call(call.op, args, call.attrs))
        if name == "relax.image.resize2d":
            moved = self._emit(relax.op.astype(moved, q.dtype))
        return self._rescale(q, moved, *ctx)

    def _lower_pad(self, call: relax.Call, ctx) -> relax.Expr:
        """Constant Pad (of channels, rows or columns) of a packed tensor: the codes rescaled, then padded with
        the pad value's code (``quantize(value)``, what the QuantizeLinear after the float Pad gives it); the
        result stays packed. BlazeFace's shortcut pads its max-pooled channels with zeros to the width of the
        conv it is added to, so the add, the PRelu after it and the next conv stay packed too.

        Refused (the Pad stays float, between the unpack and the next pack, as the importer left it) on NCHW
        inputs and where the packed result would be more than a quarter padding channels: the elementwise ops
        after it pay for every padding channel (face_s pruned to 17 channels, packed as 32: cortex-a76 +4 %
        instructions packed, -3 % on the unpruned model's 16 -> 24, 24 -> 32 and 32 -> 48 pads)."""
        s_y, z_y, out_dtype, lo, hi = ctx
        width = [int(v) for v in call.attrs.pad_width]
        q = self.defs.dequantized(call.args[0])
        x = self._new(q.expr)
        packed = self.packed_of.get(x)
        if str(call.attrs.pad_mode) != "constant" or packed is None or len(width) != 8 or width[0] or width[1]:
            raise Refuse("pad of an unpacked tensor, of the batch, or not constant")
        channels, block = shape_of(call)[1], packed[1]
        if 4 * (-channels % block) > channels + (-channels % block):
            raise Refuse(f"pad to {channels} channels: more than a quarter of blocks of {block} would be padding")
        code = int(tables.quantize(np.array([float(call.attrs.pad_value)], np.float32), s_y, z_y, out_dtype,
                                   lo, hi)[0])
        from compress_graph.targets.int8.packed import pad_data

        src = self._rescale(q, packed[0], *ctx)
        src = src if isinstance(src, relax.Var) else self._emit(src)
        pairs = [(width[i], width[i + 1]) for i in (2, 4, 6)]
        return self._unpack(pad_data(self.builder_, src, block, shape_of(x)[1], pairs, code), block, channels)

    def _lower_avg_pool(self, call: relax.Call, ctx) -> relax.Expr:
        """AveragePool as a depthwise conv with a ones kernel (exact int32 window sums; packed where the
        depthwise conv is), then one requant by ``s_x / (s_y * window)``. Padding is filled with the zero
        point, so it must count in the average (``count_include_pad``) or be absent."""
        s_y, z_y, out_dtype, lo, hi = ctx
        a = call.attrs
        if str(a.layout) != "NCHW" or bool(a.ceil_mode):
            raise Refuse(f"avg_pool2d layout {a.layout}, ceil_mode {a.ceil_mode}")
        pad = [int(p) for p in a.padding]
        if any(pad) and not bool(a.count_include_pad):
            raise Refuse("avg_pool2d padding excluded from the count")
        q = self.defs.dequantized(call.args[0])
        kh, kw = (int(k) for k in a.pool_size)
        channels = shape_of(call.args[0])[1]
        x, zp = self._input_for_dot(q)
        acc, block, offset = self._conv_raw(x, zp, np.ones((channels, 1, kh, kw), np.int8),
                                            [int(v) for v in a.strides], pad, [int(v) for v in a.dilation], channels)
        acc = self._emit(relax.op.subtract(acc, relax.const((zp - offset) * kh * kw, "int32"))) if zp - offset \
            else acc
        out = emit_requant(self.builder_, acc, np.float64(q.scale) / (kh * kw * np.float64(s_y)), z_y, out_dtype,
                           (), lo=lo, hi=hi, mode=self.opts.requant)
        return out if block is None else self._unpack(self._emit(out), block, channels)

    def _lower_mean(self, call: relax.Call, ctx) -> relax.Expr:
        s_y, z_y, out_dtype, lo, hi = ctx
        q = self.defs.dequantized(call.args[0])
        shape = shape_of(call.args[0])
        axes = [int(a) % len(shape) for a in call.attrs.axis]
        count = int(np.prod([shape[a] for a in axes]))
        acc = self._emit(relax.op.sum(relax.op.astype(self._new(q.expr), "int32"), axes,
                                      keepdims=bool(call.attrs.keepdims)))
        if q.zero_point:
            acc = self._emit(relax.op.subtract(acc, relax.const(q.zero_point * count, "int32")))
        mult = np.float64(q.scale) / (count * np.float64(s_y))
        return emit_requant(self.builder_, acc, mult, z_y, out_dtype, (), lo=lo, hi=hi, mode=self.opts.requant)

    def _lower_concat(self, call: relax.Call, ctx) -> relax.Expr:
        items = self.defs.resolve(call.args[0])
        if not isinstance(items, relax.Tuple):
            raise Refuse("concat of a non-tuple")
        qs = [self.defs.dequantized(f) for f in items.fields]
        xs = [self._new(q.expr) for q in qs]
        block = self._packed_block(xs, int(call.attrs.axis))
        if block is not None:  # channel concat of packed tensors: whole blocks, stays packed
            from compress_graph.targets.int8.packed import pack_data, reblock_data

            packs = []
            for x in xs:
                p = self.packed_of.get(x)
                if p is None:
                    packs.append(pack_data(self.builder_, x, block))
                elif p[1] != block or channels_of(p[0]) != shape_of(x)[1]:  # a larger block, or padding channels
                    packs.append(reblock_data(self.builder_, p[0], p[1], shape_of(x)[1], block))
                else:
                    packs.append(p[0])
            parts = [self._emit(self._rescale(q, px, *ctx)) for q, px in zip(qs, packs, strict=True)]
            out = self._emit(relax.op.concat(parts, axis=1))
            return self._unpack(out, block, shape_of(call)[1])
        parts = [self._emit(self._rescale(q, x, *ctx)) for q, x in zip(qs, xs, strict=True)]
        return relax.op.concat(parts, axis=int(call.attrs.axis))

    def _packed_block(self, xs: list[relax.Expr], axis: int) -> int | None:
        """The channel block for a packed concat along ``axis`` of 4-D ``xs``: at least one of them is packed;
        the largest of their blocks (16, 8, 4) that divides every channel count and every block. Inputs packed
        in a larger block or with padding channels are re-blocked (packed.reblock_data); None: unpacked concat."""
        packs = [self.packed_of.get(x) for x in xs]
        blocks = {p[1] for p in packs if p is not None}
        if not blocks or axis % 4 != 1 or any(len(shape_of(x)) != 4 for x in xs):
            return None
        counts = [shape_of(x)[1] for x in xs]
        return next((b for b in (16, 8, 4) if all(c % b == 0 for c in counts) and all(k % b == 0 for k in blocks)),
                    None)

    def _lower_split_item(self, item: relax.TupleGetItem, ctx) -> relax.Expr:
        """An item of a Split of a dequantized 8-bit tensor (rescaled), or of a float function of one (YOLOv8's
        C2f: SiLU, then Split, the items quantized one by one): the codes split, each item looked up in its own
        table."""
        split = self.defs.resolve(item.tuple_value)
        if op_name(split) != "relax.split":
            raise Refuse("tuple item of a non-split")
        try:
            q, table = self.defs.dequantized(split.args[0]), None
        except Refuse:
            chain = tables.tabulate(self.defs, split.args[0])
            if chain is None:
                raise
            q, table = chain[0], tables.quantize(chain[1], *ctx)

        def finish(part):
            return self._rescale(q, part, *ctx) if table is None else self._lookup_codes(part, q.dtype, table, ctx[2])

        key = item.tuple_value
        x = self._new(q.expr)
        axis = int(split.attrs.axis) % max(1, len(shape_of(x)))
        bounds = _split_bounds(split.attrs.indices_or_sections, shape_of(x)[axis]) if axis == 1 else None
        packed = self.packed_of.get(x) if bounds and len(shape_of(x)) == 4 else None
        block = None if packed is None else next(
            (b for b in (16, 8, 4) if packed[1] % b == 0 and all(v % b == 0 for v in bounds)), None)
        if block is not None:
            # channel split of a packed tensor at block boundaries: split the blocks, stay packed (re-blocked first
            # where the cuts fall inside its blocks, or it carries padding channels)
            if key not in self._split_cache:
                src = packed[0]
                if block != packed[1] or channels_of(src) != shape_of(x)[1]:
                    from compress_graph.targets.int8.packed import reblock_data

                    src = reblock_data(self.builder_, src, packed[1], shape_of(x)[1], block)
                self._split_cache[key] = self._emit(relax.op.split(src, [b // block for b in bounds[1:-1]], axis=1))
            part = self._emit(relax.TupleGetItem(self._split_cache[key], int(item.index)))
            out = finish(part)
            channels = bounds[int(item.index) + 1] - bounds[int(item.index)]
            return self._unpack(out if isinstance(out, relax.Var) else self._emit(out), block, channels)
        if key not in self._split_cache:
            self._split_cache[key] = self._emit(relax.Call(split.op, [x], split.attrs))
        part = self._emit(relax.TupleGetItem(self._split_cache[key], int(item.index)))
        return finish(part)


def _split_bounds(indices_or_sections, extent: int) -> list[int] | None:
    """[0, i1, i2, ..., extent] for a split given as section count or split indices (None: uneven)."""
    if isinstance(indices_or_sections, int | tvm.tirx.IntImm):
        n = int(indices_or_sections)
        if n <= 0 or extent % n:
            return None
        return [extent // n * i for i in range(n + 1)]
    return [0, *(int(i) for i in indices_or_sections), extent]


def lower_module(mod: tvm.IRModule, opts: LowerOptions) -> tuple[tvm.IRModule, LowerStats]:
    """Apply the rewrite to every Relax function and drop what became dead."""
    lowering = QDQLowering(mod, opts)
    out = lowering.transform()
    out = relax.transform.DeadCodeElimination()(out)
    return out, lowering.stats
