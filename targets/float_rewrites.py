"""Relax rewrites of float ops before legalization: what the float kernels of a build need to be fast.

- ``conv2d_transpose`` with constant weights and strides > 1 becomes one ``conv2d`` per output phase plus an
  interleave (targets/conv_transpose.py): the legalized transposed conv dilates its input with zeros and
  multiplies them (pose_s fp32 on aarch64: 108 M instructions in that one kernel), while the phase convs are
  ordinary convs that the float conv schedule (targets/fp32_schedule.py) vectorizes.
- ``max_pool2d`` (float NCHW, static shape) becomes two separable maxima, over the window's rows then its columns
  (``_separable_max_pool``), which targets/fp32_schedule.schedule_max_pool vectorizes: the legalized pool under a
  sampled schedule gathered each window element with scalar inserts (resnet_s AVX2: 151 K instructions).
- A float NCHW depthwise conv of width stride 2 (vector CPU targets) becomes padded rows, an even/odd column split
  and a conv over the two phases (``_depthwise_phases``), which fp32_schedule.schedule_depthwise_phases vectorizes
  with a deinterleave intrinsic: the legalized conv's phase split wrote each element with a scattered scalar store
  (mobilenetv2_s's 64-channel 3x3/2 depthwise on AVX2: 816 K instructions that way, 202 K sampled, 123 K now).
- With the target's ``fast-math`` (the CPU targets' default, ``fastmath=on``): ``sigmoid`` as
  ``1 / (1 + fast_exp(-x))`` and TVM's fast ``exp`` / ``tanh`` / ``erf`` (``FastMathTransform``): polynomials that
  vectorize, where the legalized ops call libm's ``expf`` once per element (yolo_s's SiLUs: 5.5 M of its 20 M
  aarch64 instructions). Relative error of ``fast_exp`` ~1.1e-6 (measured over [-30, 30]).
"""

from __future__ import annotations

import tvm
from tvm import relax


def _fast_sigmoid(x):
    """float32 or float16 (computed in float32: TVM's fast_exp polynomial is float32's; converts vectorize)."""
    from tvm import te, topi

    if x.dtype == "float32":
        e = topi.fast_exp(topi.negative(x))
        return te.compute(x.shape, lambda *i: tvm.tirx.const(1.0, x.dtype) / (tvm.tirx.const(1.0, x.dtype) + e(*i)),
                          name="fast_sigmoid")
    x32 = te.compute(x.shape, lambda *i: x(*i).astype("float32"), name="to_float32")
    e = topi.fast_exp(topi.negative(x32))
    one = tvm.tirx.const(1.0, "float32")
    return te.compute(x.shape, lambda *i: (one / (one + e(*i))).astype(x.dtype), name="fast_sigmoid")


def _separable_max_pool(x, kernel, strides, padding, out_shape):
    """NCHW max pool as two maxima: over the window's rows for every input column (``pool_rows``, reads whole
    rows), then over its columns (``pool_cols``); out-of-range rows and columns (padding, ceil mode) are skipped as
    -FLT_MAX, which is what the ONNX pool's padding means for max."""
    from tvm import te

    n, c, h, w = (int(v) for v in x.shape)
    (kh, kw), (sh, sw), (top, left) = kernel, strides, padding[:2]
    oh, ow = out_shape
    low = tvm.tirx.min_value(x.dtype)
    r = te.reduce_axis((0, kh), name="r")
    rows = te.compute(
        (n, c, oh, w),
        lambda a, b, y, q: te.max(tvm.tirx.if_then_else(
            tvm.tirx.all(y * sh + r >= top, y * sh + r < h + top), x[a, b, y * sh + r - top, q], low), axis=r),
        name="pool_rows")
    s = te.reduce_axis((0, kw), name="s")
    return te.compute(
        (n, c, oh, ow),
        lambda a, b, y, col: te.max(tvm.tirx.if_then_else(
            tvm.tirx.all(col * sw + s >= left, col * sw + s < w + left), rows[a, b, y, col * sw + s - left], low),
            axis=s),
        name="pool_cols")


DW_PAD, DW_PHASES, DW_CONV = "dw_pad", "dw_phases", "dw_conv"  # the blocks fp32_schedule.schedule_depthwise_phases
PHASE_GROUP = 8  # phase columns per deinterleave step (16 input columns -> 8 even + 8 odd)


def _depthwise_phases(x, w, stride_h, padding, out_shape):
    """A float NCHW depthwise conv of width stride 2 as three steps: the zero-padded input (``dw_pad``: rows as
    contiguous vectors, widened to whole PHASE_GROUPs of both phases), its even and odd columns split apart
    (``dw_phases``: a vector deinterleave, ``vshufps``/``vpermpd`` on AVX, ``ld2`` on NEON), and the conv over the
    phases (``dw_conv``): kernel column ``rx`` reads phase ``rx % 2`` at column ``ox + rx // 2``, one contiguous
    vector per tap. The legalized conv's phase split wrote each element with a scattered scalar store."""
    from tvm import te

    n, c, h, wd = (int(v) for v in x.shape)
    kh, kw = (int(v) for v in w.shape[2:])
    top, left = padding[:2]
    oh, ow = out_shape
    rows = (oh - 1) * stride_h + kh
    half = -(-(ow + (kw - 1) // 2) // PHASE_GROUP) * PHASE_GROUP
    zero = tvm.tirx.const(0.0, x.dtype)
    padded = te.compute(
        (n, c, rows, 2 * half),
        lambda a, b, y, q: tvm.tirx.if_then_else(
            tvm.tirx.all(y >= top, y < h + top, q >= left, q < wd + left), x[a, b, y - top, q - left], zero),
        name=DW_PAD)
    phases = te.compute((n, c, rows, 2, half), lambda a, b, y, p, j: padded[a, b, y, 2 * j + p], name=DW_PHASES)
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    return te.compute(
        (n, c, oh, ow),
        lambda a, b, y, q: te.sum(phases[a, b, y * stride_h + ry, rx % 2, q + rx // 2] * w[b, 0, ry, rx],
                                  axis=[ry, rx]),
        name=DW_CONV)


FLOATS = ("float32", "float16")  # float16: arm{fp16=true} (targets/half.py)


def _dtype(expr: relax.Expr) -> str:
    ty = expr.ty
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else ""


@relax.expr_functor.mutator
class _FloatRewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, fast_math: bool, vector_cpu: bool):
        super().__init__(mod)
        self.mod_ = mod
        self.fast_math = fast_math
        self.vector_cpu = vector_cpu
        self.count = {"conv2d_transpose_phases": 0, "fast_sigmoid": 0, "separable_max_pool": 0,
                      "depthwise_phases": 0}

    def transform(self) -> tvm.IRModule:
        for gvar, func in self.mod_.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gvar, self.visit_expr(func))
        return self.builder_.get()

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        name = getattr(call.op, "name", None)
        if name == "relax.sigmoid" and self.fast_math and _dtype(call.args[0]) in FLOATS:
            self.count["fast_sigmoid"] += 1
            return self.builder_.call_te(_fast_sigmoid, call.args[0], primfunc_name_hint="fast_sigmoid")
        if name == "relax.nn.max_pool2d":
            pooled = self._max_pool(call)
            if pooled is not None:
                self.count["separable_max_pool"] += 1
                return pooled
        if name == "relax.nn.conv2d" and self.vector_cpu:
            phased = self._depthwise_stride2(call)
            if phased is not None:
                self.count["depthwise_phases"] += 1
                return phased
        if name == "relax.nn.conv2d_transpose":
            phased = self._conv_transpose(call)
            if phased is not None:
                self.count["conv2d_transpose_phases"] += 1
                return phased
        return call

    def _max_pool(self, call: relax.Call) -> relax.Expr | None:
        attrs = call.attrs
        if str(attrs.layout) != "NCHW" or str(attrs.out_layout) != "NCHW" or _dtype(call.args[0]) not in FLOATS \
                or any(int(v) != 1 for v in attrs.dilation):
            return None
        try:
            in_shape = [int(v) for v in call.args[0].ty.shape.values]
            out_shape = [int(v) for v in call.ty.shape.values]
        except (TypeError, AttributeError, ValueError):  # a dynamic shape
            return None
        if len(in_shape) != 4 or len(out_shape) != 4:
            return None
        return self.builder_.call_te(_separable_max_pool, call.args[0], [int(v) for v in attrs.pool_size],
                                     [int(v) for v in attrs.strides], [int(v) for v in attrs.padding],
                                     out_shape[2:], primfunc_name_hint="max_pool2d")

    def _depthwise_stride2(self, call: relax.Call) -> relax.Expr | None:
        """A float NCHW depthwise conv (channel multiplier 1) of width stride 2, static shape: _depthwise_phases."""
        x, weight = call.args
        attrs = call.attrs
        if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW" \
                or str(attrs.out_layout or "NCHW") != "NCHW" or str(attrs.out_dtype or "") not in ("", _dtype(x)) \
                or _dtype(x) not in FLOATS or _dtype(weight) != _dtype(x) \
                or any(int(v) != 1 for v in attrs.dilation) or int(attrs.strides[1]) != 2:
            return None
        try:
            in_shape = [int(v) for v in x.ty.shape.values]
            w_shape = [int(v) for v in weight.ty.shape.values]
            out_shape = [int(v) for v in call.ty.shape.values]
        except (TypeError, AttributeError, ValueError):  # a dynamic shape
            return None
        channels = in_shape[1] if len(in_shape) == 4 else -1
        if len(w_shape) != 4 or int(attrs.groups) != channels or w_shape[:2] != [channels, 1]:
            return None
        return self.builder_.call_te(_depthwise_phases, x, weight, int(attrs.strides[0]),
                                     [int(v) for v in attrs.padding], out_shape[2:],
                                     primfunc_name_hint="depthwise_conv2d_s2")

    def _conv_transpose(self, call: relax.Call) -> relax.Expr | None:
        from compress_graph.targets import conv_transpose

        x, weight = call.args
        attrs = call.attrs
        if not isinstance(weight, tvm.ir.GenericConst) or str(attrs.data_layout) != "NCHW" \
                or str(attrs.kernel_layout) != "IOHW" or int(attrs.groups) != 1 \
                or any(int(v) != 1 for v in attrs.dilation) or str(attrs.out_dtype or "") not in ("", _dtype(x)):
            return None
        ty = x.ty
        if not isinstance(ty, relax.TensorType) or ty.shape is None or str(ty.dtype) not in FLOATS:
            return None
        try:
            n, c, h, w_in = (int(v) for v in ty.shape.values)
        except (TypeError, AttributeError, ValueError):  # a dynamic shape
            return None
        w = weight.value.numpy()
        split = conv_transpose.phases((h, w_in), w.shape[2:], [int(v) for v in attrs.strides],
                                      [int(v) for v in attrs.padding], [int(v) for v in attrs.output_padding])
        if split is None:
            return None
        (out_h, out_w), parts = split
        w_conv = conv_transpose.equivalent_kernel(w)
        results = []
        for part in parts:
            top, left, bottom, right = part.pad
            xi = x
            if min(part.pad) < 0:  # a negative padding crops
                xi = self.builder_.emit(relax.op.strided_slice(
                    x, axes=[2, 3], begin=[max(-top, 0), max(-left, 0)],
                    end=[h - max(-bottom, 0), w_in - max(-right, 0)]))
            pad = [max(top, 0), max(left, 0), max(bottom, 0), max(right, 0)]
            results.append(self.builder_.emit(relax.op.nn.conv2d(
                xi, relax.const(part.kernel(w_conv).astype(str(ty.dtype))), strides=[1, 1], padding=pad)))
        sh, sw = (int(v) for v in attrs.strides)
        return self.builder_.call_te(conv_transpose.interleave, results, sh, sw, out_h, out_w,
                                     primfunc_name_hint="interleave_phases")


def rewrite_float_ops(mod: tvm.IRModule, target) -> tuple[tvm.IRModule, dict[str, int]]:
    """``mod`` with the rewrites above (fast math where ``target`` asks for it); returns counts for the report."""
    from compress_graph.targets import isa

    fast = bool(target.attrs.get("fast-math", False)) if hasattr(target.attrs, "get") else False
    rewriter = _FloatRewriter(mod, fast, isa.float_lanes(target) is not None)
    mod = rewriter.transform()
    if fast and str(target.kind.name) == "llvm":
        mod = relax.transform.FastMathTransform()(mod)
    return mod, dict(rewriter.count)
