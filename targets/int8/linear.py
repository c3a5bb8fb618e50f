"""Integer rules for conv2d, conv2d_transpose and matmul: a mixin of :class:`lower.QDQLowering`.

``quantize(linear(dequantize(x_q), dequantize(w_q)) + b)`` becomes an int32 accumulator of the 8-bit input (packed
and tensorized where the target's ISA family has a conv emitter: targets/int8/packed.py), the zero points and
bias folded into one int32 bias, and one requantization (targets/int8/requant.py, or the ISA family's own).
"""

from __future__ import annotations

import numpy as np
from compress_graph.targets.int8.match import QTensor, Refuse, op_name, shape_of
from compress_graph.targets.int8.requant import QRANGE, channel_shape, emit_requant
from tvm import relax

LINEAR_OPS = ("relax.nn.conv2d", "relax.nn.conv2d_transpose", "relax.matmul")


class LinearRules:
    """Methods of the lowering mutator for the linear ops (they use its builder, definitions and options)."""

    def _split_bias(self, add: relax.Call) -> tuple[relax.Call, np.ndarray] | None:
        for lin_arg, bias_arg in ((add.args[0], add.args[1]), (add.args[1], add.args[0])):
            lin = self.defs.resolve(lin_arg)
            if op_name(lin) in LINEAR_OPS:
                try:
                    return lin, self.defs.bias(bias_arg)
                except Refuse:
                    continue
        return None

    # -- conv2d / matmul ----------------------------------------------------------------------------
    def _input_for_dot(self, q: QTensor) -> tuple[relax.Expr, int]:
        """The 8-bit input as fed to conv/matmul and its zero point in that dtype."""
        x = self._new(q.expr)
        if q.dtype == "uint8" and self.opts.act_dtype == "int8":
            x = self._emit(relax.op.astype(relax.op.subtract(relax.op.astype(x, "int16"),
                                                             relax.const(128, "int16")), "int8"))
            return x, q.zero_point - 128
        return x, q.zero_point

    def _lower_linear(self, lin: relax.Call, bias: np.ndarray | None, ctx) -> tuple[str, relax.Expr]:
        q = self.defs.dequantized(lin.args[0])
        if op_name(lin) == "relax.nn.conv2d":
            kind = "conv2d"
            w, s_w, axis = self.defs.weight(lin.args[1])
            attrs = lin.attrs
            if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW":
                raise Refuse(f"layout {attrs.data_layout}/{attrs.kernel_layout}")
            if s_w.size > 1 and axis != 0:
                raise Refuse("weight scales not per output channel")
            x, zp = self._input_for_dot(q)
            acc, block, offset = self._conv(x, zp, w, attrs)
            w_sum = w.astype(np.int64).sum(axis=(1, 2, 3))
            w_abs_sum = np.abs(w.astype(np.float64)).sum(axis=(1, 2, 3))
        elif op_name(lin) == "relax.nn.conv2d_transpose":
            kind = "conv2d_transpose"
            w, s_w, axis = self.defs.weight(lin.args[1])
            if s_w.size > 1 and axis != 1:
                raise Refuse("weight scales not per output channel")
            x, zp = self._input_for_dot(q)
            phased = self._conv_transpose_phases(x, zp, w, lin.attrs, bias, q, s_w, ctx)
            if phased is not None:
                return phased
            acc, block, offset = self._conv_transpose(x, zp, w, lin.attrs)
            w_sum = w.astype(np.int64).sum(axis=(0, 2, 3))
            w_abs_sum = np.abs(w.astype(np.float64)).sum(axis=(0, 2, 3))
        else:
            kind = "matmul"
            w, s_w, axis, _ = self._matmul_weight(lin.args[1])
            if len(shape_of(lin.args[0])) < 2:
                raise Refuse("matmul input is 1-D")
            block, offset = None, 0
            x, zp = self._input_for_dot(q)
            acc = self._emit(relax.op.matmul(x, relax.const(w, "int8"), out_dtype="int32"))
            w_sum = w.astype(np.int64).sum(axis=0)
            w_abs_sum = np.abs(w.astype(np.float64)).sum(axis=0)
        ndim = len(shape_of(lin))
        plain = channel_shape(ndim, 1 if kind != "matmul" else ndim - 1, len(w_sum))
        out = self._requant_linear(acc, block, offset, zp, w_sum, w_abs_sum, bias, q, s_w, ctx, plain)
        if block is None:
            return kind, out
        return kind + "_packed", self._unpack(self._emit(out), block, len(w_sum))

    def _requant_linear(self, acc, block, offset: int, zp: int, w_sum, w_abs_sum, bias, q: QTensor, s_w, ctx,
                        plain_shape: tuple[int, ...]) -> relax.Expr:
        """The 8-bit result of a conv / matmul accumulator ``acc = sum((x - offset) * w)`` (channels on axis 1,
        or last for a matmul; packed NCHW[block]c when ``block``): bias with the zero-point correction, requant,
        the fused Relu/Clip bounds."""
        s_y, z_y, out_dtype, lo, hi = ctx
        n_out = len(w_sum)
        if block is not None:
            n_acc = shape_of(acc)[1] * block  # a packed conv may carry zero-weight channels up to a block
            bshape = (1, n_acc // block, 1, 1, block)
        else:
            n_acc, bshape = n_out, plain_shape
        s_w = np.broadcast_to(s_w.astype(np.float64), (n_out,))
        s_acc = np.float64(q.scale) * s_w
        b_int = np.zeros(n_out, np.int64) if bias is None else np.round(np.broadcast_to(bias, (n_out,)) / s_acc)
        b_eff = b_int.astype(np.int64) - (zp - offset) * w_sum  # acc = sum((x - offset) * w)
        if np.any(np.abs(b_eff) >= 2**31):
            raise Refuse("bias does not fit int32")
        mult = s_acc / np.float64(s_y)
        # |acc + b_eff| = |sum((x - zp) * w) + b| <= 255 * sum|w| + |b| per channel (x - zp within +-255)
        bound = 255 * w_abs_sum + np.abs(b_int.astype(np.float64))
        if n_acc > n_out:  # padded channels: bias 0, any valid multiplier (the unpack drops them)
            b_eff = np.concatenate([b_eff, np.zeros(n_acc - n_out, b_eff.dtype)])
            mult = np.concatenate([mult, np.full(n_acc - n_out, mult[-1])])
            bound = np.concatenate([bound, np.zeros(n_acc - n_out)])
        family = getattr(self.opts.conv_emitter, "family", None) if block is not None else None
        out = self._requant_for_isa(family, acc, mult, b_eff, z_y, out_dtype, lo, hi, bshape, bound)
        if out is None:
            out = emit_requant(self.builder_, acc, mult, z_y, out_dtype, bshape, lo=lo, hi=hi,
                               mode=self.opts.requant, bias=b_eff if np.any(b_eff) else None, acc_bound=bound)
        return out

    def _requant_for_isa(self, family, acc, mult, bias, z_y, out_dtype, lo, hi, bshape,
                         bound) -> relax.Expr | None:
        """The ISA family's own requantization of a packed kernel's accumulators (aarch64: 32-bit arithmetic after
        one 32 x 32 -> 64-bit product), where it has one and it is exact for these multipliers; None: the generic
        fixed point."""
        from compress_graph.targets.int8.requant import fixed_point

        if family is None or not hasattr(family, "requant_te") or self.opts.requant != "fixed":
            return None
        mant, shift = fixed_point(mult)
        consts = family.requant_constants(mant, shift, bound)
        if consts is None:
            return None
        qmin, qmax = QRANGE[out_dtype]
        lo = qmin if lo is None else max(qmin, lo)
        hi = qmax if hi is None else min(qmax, hi)
        if getattr(family, "FOLD_ZERO_POINT", False):  # aarch64: lets the clip be saturating narrows
            folded = family.fold_zero_point(consts, bound, int(z_y))
            if folded is not None:
                consts, z_y = (*consts[:2], folded, consts[3]), 0
        m, left, rnd, k = (relax.const(v.reshape(bshape), "int32") for v in consts)
        b = relax.const(bias.astype(np.int32).reshape(bshape), "int32")
        args = (family.requant_te, acc, b, m, left, rnd, k, int(z_y), int(lo), int(hi), out_dtype)
        out = self.builder_.emit_te(*args, primfunc_name_hint="requant")
        if getattr(family, "FOLD_ZERO_POINT", False):  # a gather (per-channel table) on it: the clip, no narrows
            self.narrowed[out] = lambda: self.builder_.emit_te(*args, primfunc_name_hint="requant", narrow=False)
        return out

    def _matmul_weight(self, arg: relax.Expr) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Weight of ``x @ W`` as int8 (K, N): ``permute_dims(dq(W (N, K)))`` or ``dq(W (K, N))``."""
        node = self.defs.resolve(arg)
        transposed = op_name(node) == "relax.permute_dims"
        if transposed:
            axes = node.attrs.axes
            if axes is not None and [int(a) for a in axes] != [1, 0]:
                raise Refuse("matmul weight permutation is not a transpose")
            node = node.args[0]
        w, s_w, axis = self.defs.weight(node)
        if w.ndim != 2:
            raise Refuse("matmul weight is not 2-D")
        if transposed:
            w = w.T
            axis = 1 - axis
        if s_w.size > 1 and axis != 1:
            raise Refuse("matmul weight scales not per output column")
        return np.ascontiguousarray(w), s_w, axis, w.shape[1]

    def _conv_transpose_phases(self, x: relax.Expr, zp: int, w: np.ndarray, attrs, bias, q: QTensor, s_w,
                               ctx) -> tuple[str, relax.Expr] | None:
        """A strided transposed conv as one ordinary conv per output phase on the undilated input, interleaved
        (targets/conv_transpose.py): no MAC on an inserted zero. Each phase's zero-point correction sums its own
        taps; the 8-bit phase results are interleaved (packed where the convs are). None (the caller keeps the
        dilated form) for dilation, groups, stride 1 or a phase no tap reaches."""
        from compress_graph.targets import conv_transpose

        if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "IOHW" or int(attrs.groups) != 1:
            return None
        if any(int(v) != 1 for v in attrs.dilation):
            return None
        split = conv_transpose.phases(shape_of(x)[2:], w.shape[2:], [int(v) for v in attrs.strides],
                                      [int(v) for v in attrs.padding], [int(v) for v in attrs.output_padding])
        if split is None:
            return None
        (out_h, out_w), parts = split
        w_conv = conv_transpose.equivalent_kernel(w)
        results, blocks = [], set()
        for part in parts:
            w_r = part.kernel(w_conv)
            acc, block, offset = self._conv_raw(x, zp, w_r, [1, 1], list(part.pad), [1, 1], 1)
            w_sum = w_r.astype(np.int64).sum(axis=(1, 2, 3))
            w_abs_sum = np.abs(w_r.astype(np.float64)).sum(axis=(1, 2, 3))
            results.append(self._emit(self._requant_linear(acc, block, offset, zp, w_sum, w_abs_sum, bias, q, s_w,
                                                           ctx, channel_shape(4, 1, w_r.shape[0]))))
            blocks.add(block)
        if len(blocks) != 1:
            raise Refuse("conv2d_transpose phases in different layouts")
        block = blocks.pop()
        sh, sw = (int(v) for v in attrs.strides)
        out = self.builder_.emit_te(conv_transpose.interleave, results, sh, sw, out_h, out_w,
                                    primfunc_name_hint="interleave_phases")
        if block is None:
            return "conv2d_transpose_phases", out
        return "conv2d_transpose_phases_packed", self._unpack(out, block, w.shape[1])

    def _conv_transpose(self, x: relax.Expr, zp: int, w: np.ndarray, attrs) -> tuple[relax.Expr, int | None, int]:
        """A transposed conv as the ordinary conv it equals: the input dilated by the strides and padded by
        ``dilation * (k - 1) - pad`` (+ output padding), both with the zero point (so every inserted value is a
        real 0 and the ``z * sum(w)`` bias correction stays exact), then a stride-1 conv with the kernel
        flipped and its in/out axes swapped. The conv itself takes the packed path where there is one."""
        from tvm import topi

        if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "IOHW" or int(attrs.groups) != 1:
            raise Refuse(f"conv2d_transpose layout {attrs.data_layout}/{attrs.kernel_layout}, groups {attrs.groups}")
        sh, sw = (int(v) for v in attrs.strides)
        dh, dw = (int(v) for v in attrs.dilation)
        top, left, bottom, right = (int(v) for v in attrs.padding)
        oph, opw = (int(v) for v in attrs.output_padding)
        kh, kw = w.shape[2:]
        pad = [dh * (kh - 1) - top, dw * (kw - 1) - left, dh * (kh - 1) - bottom + oph, dw * (kw - 1) - right + opw]
        if min(pad) < 0:
            raise Refuse("conv2d_transpose padding larger than its kernel")
        w_conv = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        xd = x
        if (sh, sw) != (1, 1):
            xd = self.builder_.emit_te(topi.nn.dilate, x, [1, 1, sh, sw], float(zp))
        return self._conv_raw(xd, zp, w_conv, [1, 1], pad, [dh, dw], 1)

    def _conv(self, x: relax.Expr, zp: int, w: np.ndarray, attrs) -> tuple[relax.Expr, int | None, int]:
        """int32 conv of an 8-bit input whose padding must carry the zero point, not 0.

        Returns (acc, block, offset): block is the channel block of a packed NCHW[block]c result, else None;
        ``acc = sum((x - offset) * w)`` (a packed conv for a signed dot product subtracts 128 from uint8 x).
        """
        return self._conv_raw(x, zp, w, [int(s) for s in attrs.strides], [int(p) for p in attrs.padding],
                              [int(d) for d in attrs.dilation], int(attrs.groups))

    def _conv_raw(self, x: relax.Expr, zp: int, w: np.ndarray, strides: list[int], pad: list[int],
                  dilation: list[int], groups: int) -> tuple[relax.Expr, int | None, int]:
        if self.opts.conv_emitter is not None:
            out = self.opts.conv_emitter(self.builder_, x, self.packed_of.get(x), zp, w, strides, pad,
                                         dilation, groups)
            if out is not None:
                return out  # (acc, block, offset): acc = sum((x - offset) * w)
        if any(p < 0 for p in pad):  # a negative padding crops (conv2d_transpose phases)
            top, left, bottom, right = pad
            h, w_ = shape_of(x)[2:]
            x = self._emit(relax.op.strided_slice(x, axes=[2, 3], begin=[max(-top, 0), max(-left, 0)],
                                                  end=[h - max(-bottom, 0), w_ - max(-right, 0)]))
            pad = [max(p, 0) for p in pad]
        if zp and any(pad):
            top, left, bottom, right = pad
            x = self._emit(relax.op.nn.pad(x, [0, 0, 0, 0, top, bottom, left, right], "constant", float(zp)))
            pad = [0, 0, 0, 0]
        return self._emit(relax.op.nn.conv2d(x, relax.const(w, "int8"), strides=strides, padding=pad,
                                             dilation=dilation, groups=groups, out_dtype="int32")), None, 0
