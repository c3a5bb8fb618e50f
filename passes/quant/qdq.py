"""Write a plan into the graph: QuantizeLinear/DequantizeLinear pairs, int8 weights and int32 biases.

Weights are stored as int8 initializers behind a DequantizeLinear (never folded back: the model shrinks ~4x).
An activation tensor keeps its name on the DequantizeLinear output, so every consumer, graph outputs included, reads
the dequantized value and the float value moves to ``<name>_f``.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from compress_graph.ir import graph as G
from compress_graph.ir.model import Model
from compress_graph.passes.quant.placement import Plan
from compress_graph.passes.quant.qparams import QParams, quantize_bias, quantize_weight, weight_scales


def _const(model: Model, base: str, value: np.ndarray) -> gs.Constant:
    return gs.Constant(model.unique_name(base), np.asarray(value))


def _dq_weight(model: Model, t: gs.Constant, axis: int | None, bits: int) -> tuple[gs.Variable, np.ndarray]:
    w = np.asarray(t.values)
    scale = weight_scales(w, axis, bits)
    q = quantize_weight(w, scale, axis, bits)
    base = t.name
    q_const = _const(model, base + "_q", q)
    s_const = _const(model, base + "_s", scale if axis is not None else np.float32(scale.reshape(())))
    out = gs.Variable(model.unique_name(base + "_dq"), dtype=np.float32, shape=list(w.shape))
    attrs = {"axis": int(axis)} if axis is not None else {}
    node = gs.Node("DequantizeLinear", model.unique_name(base + "_DQ"),
                   attrs=attrs, inputs=[q_const, s_const], outputs=[out])
    model.graph.nodes.append(node)
    return out, scale


def insert_activation_qdq(model: Model, t: gs.Tensor, qp: QParams) -> None:
    """Q -> DQ on ``t``: every consumer (and the graph output) reads the dequantized value under ``t``'s name."""
    graph = model.graph
    scale = _const(model, t.name + "_s", np.float32(qp.scale))
    zp = _const(model, t.name + "_zp", np.array(qp.zero_point, dtype=qp.np_dtype()))
    q_out = gs.Variable(model.unique_name(t.name + "_q"), dtype=qp.np_dtype(), shape=t.shape)
    prod = G.producer(t)
    if prod is None:  # a graph input: it cannot be renamed, so its consumers are rewired
        dq_out = gs.Variable(model.unique_name(t.name + "_dq"), dtype=t.dtype, shape=t.shape)
        consumers = list(t.outputs)
        q = gs.Node("QuantizeLinear", model.unique_name(t.name + "_Q"),
                    inputs=[t, scale, zp], outputs=[q_out])
        for c in consumers:
            for i, x in enumerate(c.inputs):
                if x is t:
                    c.inputs[i] = dq_out
        if G.is_graph_output(graph, t):
            graph.outputs = [dq_out if o is t else o for o in graph.outputs]
    else:
        pre = gs.Variable(model.unique_name(t.name + "_f"), dtype=t.dtype, shape=t.shape)
        idx = next(i for i, o in enumerate(prod.outputs) if o is t)
        prod.outputs[idx] = pre
        dq_out = t
        q = gs.Node("QuantizeLinear", model.unique_name(t.name + "_Q"),
                    inputs=[pre, scale, zp], outputs=[q_out])
    dq = gs.Node("DequantizeLinear", model.unique_name(t.name + "_DQ"),
                 inputs=[q_out, scale, zp], outputs=[dq_out])
    graph.nodes.extend([q, dq])


def materialize(model: Model, plan: Plan, qparams: dict[str, QParams], *, weight_bits: int = 8) -> dict:
    """Apply ``plan`` to ``model`` in place; ``qparams`` maps each planned tensor to its (group's) parameters."""
    graph = model.graph
    nodes = {n.name: n for n in graph.nodes}
    w_scales: dict[tuple[str, int], np.ndarray] = {}
    shared: dict[tuple[str, int | None], tuple[gs.Variable, np.ndarray]] = {}
    n_weights = 0
    for spec in plan.weights:
        node = nodes[spec.node]
        t = node.inputs[spec.index]
        if not isinstance(t, gs.Constant):
            continue
        key = (t.name, spec.axis)
        if key not in shared:
            shared[key] = _dq_weight(model, t, spec.axis, weight_bits)
            n_weights += 1
        out, scale = shared[key]
        node.inputs[spec.index] = out
        w_scales[(spec.node, spec.index)] = scale
    n_bias = 0
    for spec in plan.biases:
        node = nodes[spec.node]
        b_t = node.inputs[spec.index]
        qp = qparams.get(spec.act)
        ws = w_scales.get((spec.node, spec.weight_index))
        if qp is None or ws is None or not isinstance(b_t, gs.Constant):
            continue
        b = np.asarray(b_t.values)
        if ws.size not in (1, b.size):
            continue
        q, scale = quantize_bias(b, qp.scale, ws)
        axis_attrs = {"axis": 0} if scale.size > 1 else {}
        s_val = scale if scale.size > 1 else np.float32(scale.reshape(-1)[0])
        out = gs.Variable(model.unique_name(b_t.name + "_dq"), dtype=np.float32, shape=list(b.shape))
        dq = gs.Node("DequantizeLinear", model.unique_name(b_t.name + "_DQ"), attrs=axis_attrs,
                     inputs=[_const(model, b_t.name + "_q", q), _const(model, b_t.name + "_s", s_val)],
                     outputs=[out])
        graph.nodes.append(dq)
        node.inputs[spec.index] = out
        n_bias += 1
    tmap = graph.tensors()
    n_act = 0
    for name in plan.tensors:
        if name in qparams and name in tmap:
            insert_activation_qdq(model, tmap[name], qparams[name])
            n_act += 1
    G.toposort(graph)
    G.remove_dead(graph)
    model.invalidate()
    return {"weights": n_weights, "biases": n_bias, "activations": n_act}
