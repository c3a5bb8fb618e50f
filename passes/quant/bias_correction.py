"""Bias correction: remove the per-channel output mean shift that quantization introduces, layer by layer.

For each quantized Conv/Gemm the shift is measured *locally*: a float copy of the layer (float weights and bias)
is attached to the quantized model, reading the layer's input *before* its Q/DQ, so
``shift = E[layer_float(x_pre)] - E[layer_quantized(DQ(Q(x_pre)))]`` covers weight rounding and the bias that
clipping (percentile, entropy, MSE ranges) puts on the input, with padding and strides handled exactly. Only this
layer's own contribution is counted, so all layers are corrected from one streaming run without double-counting
upstream shifts. Memory: one batch plus two vectors per layer.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_graphsurgeon as gs
from compress_graph.ir import graph as G
from compress_graph.ir import runtime
from compress_graph.ir.model import Model
from compress_graph.passes.quant.placement import Plan


class ChannelMean:
    def __init__(self) -> None:
        self.sum: np.ndarray | None = None
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 2:
            return
        flat = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
        s = flat.sum(axis=1)
        self.sum = s if self.sum is None else self.sum + s
        self.count += flat.shape[1]

    @property
    def mean(self) -> np.ndarray | None:
        return None if self.sum is None or self.count == 0 else self.sum / self.count


def _pre_quant_name(qmodel: Model, name: str) -> str | None:
    """The float tensor a DequantizeLinear-produced ``name`` was quantized from."""
    t = qmodel.tensor_map().get(name)
    dq = G.producer(t) if t is not None else None
    if dq is None or dq.op != "DequantizeLinear":
        return None
    q = G.producer(dq.inputs[0])
    if q is None or q.op != "QuantizeLinear":
        return None
    return q.inputs[0].name


def correct(float_model: Model, qmodel: Model, plan: Plan, feeds: Iterable[dict[str, np.ndarray]],
            include_input: bool = False) -> dict:
    """Adjust the float model's biases (in place) so the quantized model's layer output means match float.

    The caller re-materializes the quantized model from the corrected float model.
    """
    fnodes = {n.name: n for n in float_model.graph.nodes}
    probe = qmodel.copy()
    qnodes = {n.name: n for n in probe.graph.nodes}
    tmap = probe.tensor_map()
    wanted: dict[str, tuple[str, str]] = {}  # node -> (float probe output, quantized layer output)
    for spec in plan.biases:
        node, qnode = fnodes.get(spec.node), qnodes.get(spec.node)
        if node is None or qnode is None or node.op not in ("Conv", "Gemm"):
            continue
        if not isinstance(node.inputs[spec.index], gs.Constant):
            continue
        deq = qnode.inputs[0].name  # what the quantized layer reads (a DequantizeLinear output)
        pre = _pre_quant_name(probe, deq) if include_input else deq
        if pre is None:
            continue
        inputs = [tmap[pre]] + [gs.Constant(probe.unique_name(t.name + "_probe"), np.asarray(t.values))
                                for t in node.inputs[1:]]
        out = gs.Variable(probe.unique_name(spec.node + "_probe_out"), dtype=np.float32)
        probe.graph.nodes.append(gs.Node(node.op, probe.unique_name(spec.node + "_probe"), attrs=dict(node.attrs),
                                         inputs=inputs, outputs=[out]))
        wanted[spec.node] = (out.name, qnode.outputs[0].name)
    if not wanted:
        return {"changed": False, "summary": {"layers": 0}}
    means = {n: ChannelMean() for pair in wanted.values() for n in pair}
    feeds = list(feeds)
    for values in runtime.activations(probe, list(means), feeds):
        for n, m in means.items():
            if n in values:
                m.update(values[n])
    changed, total = 0, 0.0
    for name, (ref, got) in wanted.items():
        node = fnodes[name]
        mu_f, mu_q = means[ref].mean, means[got].mean
        b_t = node.inputs[2] if len(node.inputs) > 2 else None
        if mu_f is None or mu_q is None or not isinstance(b_t, gs.Constant):
            continue
        delta = mu_f - mu_q
        b = np.asarray(b_t.values)
        if b.shape != delta.shape:
            continue
        b_t.values = (b.astype(np.float64) + delta).astype(b.dtype)
        changed += 1
        total = max(total, float(np.abs(delta).max()))
    float_model.invalidate()
    return {"changed": changed > 0, "summary": {"layers": changed, "max_shift_removed": round(total, 6),
                                                "samples": len(feeds)}}
