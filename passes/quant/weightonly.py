"""Weight-only quantization: constant Gemm/MatMul (optionally Conv) weights stored as int8 / int4 behind a
DequantizeLinear, activations untouched. Shrinks fully connected heads 4x (8x for int4) with no calibration data.

int4 weights need the INT4 tensor type (opset 21): the model is converted with onnx.version_converter first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from compress_graph.ir import graph as G
from compress_graph.ir.errors import ModelError
from compress_graph.ir.model import Model
from compress_graph.passes.quant import placement as P
from compress_graph.passes.quant.qparams import quantize_weight, weight_scales

INT4_OPSET = 21


def _upgrade(model: Model, opset: int) -> Model:
    if model.opset >= opset:
        return model
    from onnx import version_converter

    try:
        proto = version_converter.convert_version(model.to_onnx(), opset)
    except Exception as exc:
        raise ModelError(f"quant-weights: cannot convert the model to opset {opset} for int4: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    other = Model.from_onnx(proto, base_dir=model.base_dir)
    other.annotations = model.annotations
    return other


def _int4_constant(name: str, q: np.ndarray) -> gs.Constant:
    """An INT4 initializer, two values per byte (low nibble first), kept as a lazily exported TensorProto."""
    from onnx_graphsurgeon.ir.tensor import LazyValues

    flat = (q.astype(np.int8).ravel() & 0x0F).astype(np.uint8)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    tensor = onnx.helper.make_tensor(name, onnx.TensorProto.INT4, list(q.shape), packed.tobytes(), raw=True)
    return gs.Constant(name, LazyValues(tensor))


def quantize_weights(model: Model, *, bits: int = 8, per_channel: bool = True, ops: list[str] = ("Gemm", "MatMul"),
                     exclude: list[str] = ()) -> tuple[Model, dict[str, Any]]:
    if bits == 4:
        model = _upgrade(model, INT4_OPSET)
        P.name_nodes(model)
    done: dict[str, gs.Variable] = {}
    count, skipped = 0, {}
    for node in list(model.graph.nodes):
        if node.op not in ops or P.matches(node, list(exclude)) or len(node.inputs) < 2:
            continue
        t = node.inputs[1]
        if not isinstance(t, gs.Constant):
            skipped[node.name] = "weight is not a constant"
            continue
        w = np.asarray(t.values)
        if w.dtype != np.float32:
            skipped[node.name] = f"weight dtype {w.dtype}"
            continue
        if t.name not in done:
            axis = P.weight_axis(node, w) if per_channel else None
            scale = weight_scales(w, axis, bits)
            q = quantize_weight(w, scale, axis, bits)
            if bits == 4:
                q_const = _int4_constant(model.unique_name(t.name + "_q4"), q)
            else:
                q_const = gs.Constant(model.unique_name(t.name + "_q"), q)
            s_const = gs.Constant(model.unique_name(t.name + "_s"),
                                  scale if axis is not None else np.asarray(scale.reshape(()), np.float32))
            out = gs.Variable(model.unique_name(t.name + "_dq"), dtype=np.float32, shape=list(w.shape))
            attrs = {"axis": int(axis)} if axis is not None else {}
            model.graph.nodes.append(gs.Node("DequantizeLinear", model.unique_name(t.name + "_DQ"), attrs=attrs,
                                             inputs=[q_const, s_const], outputs=[out]))
            done[t.name] = out
            count += 1
        node.inputs[1] = done[t.name]
    if count:
        G.toposort(model.graph)
        G.remove_dead(model.graph)
        model.invalidate()
    return model, {"weights": count, "bits": bits, "opset": model.opset, "skipped": skipped}
