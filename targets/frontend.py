"""ONNX -> TVM Relax, with the failure modes turned into one-line TargetErrors that name the ONNX ops."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import onnx
from compress_graph.ir.errors import TargetError


@dataclass(frozen=True)
class TensorSig:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def as_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def _sig(value_info: onnx.ValueInfoProto, what: str) -> TensorSig:
    ttype = value_info.type.tensor_type
    dims = []
    for d in ttype.shape.dim:
        if not d.HasField("dim_value") or d.dim_value <= 0:
            raise TargetError(f"{what} '{value_info.name}' has a dynamic shape; TVM targets need static shapes "
                              "(give them with --input-shape or --calib data)")
        dims.append(d.dim_value)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)).name
    return TensorSig(value_info.name, tuple(dims), dtype)


def pin_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """The model with its dynamic inputs fixed to ``shapes`` (what the library is built for) and shapes re-inferred."""
    from compress_graph.ir.shapes import infer_shapes, pin_input_shapes

    pinned = pin_input_shapes(model, shapes)
    try:
        return infer_shapes(pinned)
    except Exception:  # an exporter's inconsistent shapes: the importer infers its own
        return pinned


def signature(model: onnx.ModelProto) -> tuple[list[TensorSig], list[TensorSig]]:
    """Graph inputs (initializers excluded) and outputs with their static shapes and numpy dtype names.

    Exporters often declare outputs with symbolic dims even when every input is static (Paddle's
    ``p2o.DynamicDimension``); those shapes are then taken from one onnxruntime run on zero inputs.
    """
    inits = {t.name for t in model.graph.initializer}
    inputs = [_sig(v, "input") for v in model.graph.input if v.name not in inits]
    outputs: list[TensorSig] = []
    actual: dict[str, tuple[int, ...]] | None = None
    for v in model.graph.output:
        try:
            outputs.append(_sig(v, "output"))
        except TargetError:
            if actual is None:
                actual = _run_shapes(model, inputs)
            if v.name not in actual:
                raise
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)).name
            outputs.append(TensorSig(v.name, actual[v.name], dtype))
    return inputs, outputs


def _run_shapes(model: onnx.ModelProto, inputs: list[TensorSig]) -> dict[str, tuple[int, ...]]:
    from compress_graph.ir import runtime

    try:
        sess = runtime.session(model)
        feeds = {s.name: np.zeros(s.shape, dtype=s.dtype) for s in inputs}
        return {k: tuple(int(d) for d in np.shape(v)) for k, v in runtime.run(sess, feeds).items()}
    except Exception:
        return {}


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """ONNX op types (default domain and com.microsoft alike) the Relax ONNX importer has no converter for."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = _get_convert_map()
    ops = dict.fromkeys(n.op_type for n in model.graph.node)
    return [op for op in ops if op not in known]


def to_relax(model: onnx.ModelProto):
    """Import with static input shapes and the weights as constants (so they fold and bind at build time)."""
    from tvm.relax.frontend.onnx import from_onnx

    missing = unsupported_ops(model)
    if missing:
        raise TargetError(f"the TVM ONNX importer lacks these ops: {', '.join(missing)}")
    inputs, _ = signature(model)
    shape_dict = {s.name: list(s.shape) for s in inputs}
    dtype_dict = {s.name: s.dtype for s in inputs}
    with _captured() as log, _pad_as_relax_op():
        try:
            return from_onnx(model, shape_dict=shape_dict, dtype_dict=dtype_dict, keep_params_in_input=False)
        except Exception as exc:  # the importer raises many exception types, all meaning "cannot import"
            failure = exc
    lines = [ln for ln in str(failure).strip().splitlines() if ln.strip()] or [type(failure).__name__]
    printed = log.getvalue()
    details = (printed + ("\n" if printed and not printed.endswith("\n") else "")
               + f"{type(failure).__name__}: {failure}\n")
    raise TargetError(f"TVM could not import the ONNX model: {lines[-1].strip()[:300]}", details=details) from None


@contextlib.contextmanager
def _pad_as_relax_op():
    """ONNX Pad in constant mode as Relax's ``nn.pad`` op rather than the importer's ``emit_te(topi.nn.pad)``.

    The importer's form is a call to an anonymous TIR function whose pad widths no later pass can read: the int8
    lowering could not see a quantized Pad (BlazeFace's shortcut pads its max-pooled channels with zeros), so it
    stayed float, between an unpack to NCHW and a pack back. ``nn.pad`` legalizes to the same TIR function, so
    the float builds are unchanged. Other modes, negative pads (crops) and importers without the hook keep the
    importer's own conversion."""
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend

    pad = onnx_frontend.Pad
    original = pad.__dict__.get("_lower_pad")
    parse = getattr(pad, "_parse_pads_and_axes", None)
    if not isinstance(original, classmethod) or parse is None:
        yield
        return

    def lower_pad(cls, bb, inputs, attr, params, allowed_modes):
        if len(inputs) > 2 and inputs[2] is not None:  # onnxruntime's quantizer leaves DequantizeLinear(value)
            inputs = [*inputs[:2], _folded_dequantize(bb, inputs[2]), *inputs[3:]]
        if attr.get("mode", b"constant").decode("utf-8") == "constant":
            before, after, value = parse(inputs, params)
            if min(before + after, default=0) >= 0:
                width = [int(v) for pair in zip(before, after, strict=True) for v in pair]
                return bb.emit(relax.op.nn.pad(inputs[0], width, "constant", float(value)))
        return original.__func__(cls, bb, inputs, attr, params, allowed_modes)

    pad._lower_pad = classmethod(lower_pad)
    try:
        yield
    finally:
        pad._lower_pad = original


def _folded_dequantize(bb, expr):
    """A ``dequantize`` of constants as the float constant it is (the importer reads a Pad's value only from a
    constant, and failed on a quantized one); anything else unchanged."""
    import tvm
    from tvm import relax

    call = bb.lookup_binding(expr) if isinstance(expr, relax.Var) else expr
    args = list(getattr(call, "args", []))
    if (getattr(getattr(call, "op", None), "name", "") != "relax.dequantize" or len(args) < 3
            or not all(isinstance(a, tvm.ir.GenericConst) for a in args[:3])):
        return expr
    codes, scale, zero_point = (a.value.numpy() for a in args[:3])
    real = (codes.astype(np.float32) - zero_point.astype(np.float32)) * scale.astype(np.float32)
    return relax.const(real.astype(np.float32), "float32")


@contextlib.contextmanager
def _captured():
    """What the importer prints (Python prints of the failing operator with a Relax dump, and the C++ warnings on
    file descriptor 2) goes into a buffer instead of the user's terminal."""
    import io
    import os
    import sys
    import tempfile

    buf = io.StringIO()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as native:
        os.dup2(native.fileno(), 2)
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                yield buf
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            native.seek(0)
            buf.write(native.read().decode("utf-8", "replace"))
