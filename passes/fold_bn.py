"""Fold inference-mode BatchNormalization into the preceding Conv / ConvTranspose / Gemm / MatMul.

A BatchNormalization with no foldable producer becomes Mul + Add with per-channel constants. Every skip has a
reason in the stats (weights not constant, shared with other nodes, producer output used elsewhere, ...).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from compress_graph.ir import graph as G
from compress_graph.ir.model import Model
from compress_graph.passes.base import Pass, PassContext, PassResult, option, register_pass
from compress_graph.passes.cleanup import eliminate_dead, fold_constants


@dataclass
class BNParams:
    scale: np.ndarray  # gamma / sqrt(var + eps)
    shift: np.ndarray  # beta - mean * scale

    @property
    def channels(self) -> int:
        return int(self.scale.shape[0])


def bn_params(node: gs.Node) -> BNParams | None:
    """Per-channel affine form of an inference BatchNormalization, or None when a parameter is not constant."""
    values = [G.constant_value(t) for t in node.inputs[1:5]]
    if len(values) != 4 or any(v is None for v in values):
        return None
    gamma, beta, mean, var = (np.asarray(v, dtype=np.float64) for v in values)
    eps = float(node.attrs.get("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    return BNParams(scale=scale, shift=beta - mean * scale)


def _private_constant(t: gs.Tensor, owner: gs.Node) -> bool:
    """A constant read only by ``owner`` (so rewriting it changes nothing else)."""
    return isinstance(t, gs.Constant) and all(c is owner for c in t.outputs)


def _why_not(producer: gs.Node | None, bn: gs.Node, graph: gs.Graph) -> str | None:
    if producer is None:
        return "input is not produced by a node"
    if producer.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return f"producer is {producer.op}"
    out = bn.inputs[0]
    if len(out.outputs) != 1 or G.is_graph_output(graph, out):
        return "producer output is also used elsewhere"
    if len(producer.inputs) < 2 or not isinstance(producer.inputs[1], gs.Constant):
        return "weight is not a constant (graph input or computed)"
    if not _private_constant(producer.inputs[1], producer):
        return "weight is shared with other nodes"
    if len(producer.inputs) > 2 and producer.inputs[2].name:
        if not _private_constant(producer.inputs[2], producer):
            return "bias is not a private constant"
    return None


def _scaled(w: np.ndarray, scale: np.ndarray, dtype, chunk_bytes: int = 1 << 26) -> np.ndarray:
    """``(w * scale).astype(dtype)`` computed in float64, a block of rows at a time (``scale`` broadcasts against
    ``w`` with a leading dimension of 1 or ``w.shape[0]``), so a large weight never has a float64 copy in memory."""
    out = np.empty(w.shape, dtype=dtype)
    rows = max(1, chunk_bytes // max(1, 8 * (w.size // max(1, w.shape[0]))))  # float64 bytes per block
    for start in range(0, w.shape[0], rows):
        sl = slice(start, start + rows)
        s = scale[sl] if scale.shape[0] != 1 else scale
        out[sl] = (w[sl].astype(np.float64) * s).astype(dtype)
    return out


def _fold_conv(node: gs.Node, p: BNParams, model: Model) -> str | None:
    w = np.asarray(node.inputs[1].values)
    if w.shape[0] != p.channels and node.op == "Conv":
        return "channel count mismatch"
    dtype = w.dtype
    if node.op == "Conv":
        w2 = _scaled(w, p.scale.reshape(-1, *([1] * (w.ndim - 1))), dtype)
    else:  # ConvTranspose weight: [Cin, Cout/group, *k]; output channel o = g * (Cout/group) + j
        group = int(node.attrs.get("group", 1))
        cin, cpg = w.shape[0], w.shape[1]
        if cpg * group != p.channels:
            return "channel count mismatch"
        s = p.scale.reshape(group, 1, cpg, *([1] * (w.ndim - 2)))
        w2 = (w.astype(np.float64).reshape(group, cin // group, cpg, *w.shape[2:]) * s).reshape(w.shape)
    bias = G.constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    b = np.zeros(p.channels) if bias is None else np.asarray(bias, dtype=np.float64)
    b2 = b * p.scale + p.shift
    node.inputs[1].values = w2.astype(dtype)
    bias_t = gs.Constant(model.unique_name(f"{node.name or node.op}.bias_folded"), b2.astype(dtype))
    if len(node.inputs) > 2:
        node.inputs[2] = bias_t
    else:
        node.inputs.append(bias_t)
    return None


def _fold_gemm(node: gs.Node, p: BNParams, model: Model, out_rank: int | None) -> str | None:
    w = np.asarray(node.inputs[1].values)
    dtype = w.dtype
    if node.op == "MatMul":
        if out_rank != 2 or w.ndim != 2 or w.shape[1] != p.channels:
            return "MatMul output is not [N, C] with C = BN channels"
        node.inputs[1].values = (w.astype(np.float64) * p.scale[None, :]).astype(dtype)
        # MatMul has no bias input: the shift becomes an Add after it.
        mm_out = node.outputs[0]
        new_out = gs.Variable(model.unique_name(mm_out.name + "_mm"), dtype=mm_out.dtype)
        node.outputs[0] = new_out
        add = gs.Node("Add", model.unique_name(f"{node.name or 'MatMul'}.bn_shift"),
                      inputs=[new_out, gs.Constant(model.unique_name(f"{node.name}.bn_bias"), p.shift.astype(dtype))],
                      outputs=[mm_out])
        model.graph.nodes.append(add)
        return None
    trans_b = int(node.attrs.get("transB", 0))
    n_out = w.shape[0] if trans_b else w.shape[1]
    if n_out != p.channels:
        return "Gemm output channels differ from BN channels"
    w2 = _scaled(w, p.scale[:, None] if trans_b else p.scale[None, :], dtype)
    beta = float(node.attrs.get("beta", 1.0))
    c = G.constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    c = np.zeros(p.channels) if c is None else np.asarray(c, dtype=np.float64) * beta
    c2 = c * p.scale + p.shift  # broadcasting keeps [N] or [M, N]
    node.inputs[1].values = w2.astype(dtype)
    bias_t = gs.Constant(model.unique_name(f"{node.name or 'Gemm'}.bias_folded"), np.asarray(c2, dtype=dtype))
    if len(node.inputs) > 2:
        node.inputs[2] = bias_t
    else:
        node.inputs.append(bias_t)
    node.attrs["beta"] = 1.0
    return None


def _to_mul_add(bn: gs.Node, p: BNParams, model: Model) -> str | None:
    x = bn.inputs[0]
    rank = len(x.shape) if x.shape is not None else None
    if rank is None or rank < 2:
        return "input rank unknown"
    dtype = np.dtype(x.dtype) if x.dtype is not None else np.dtype(np.float32)
    bshape = (p.channels,) + (1,) * (rank - 2)
    base = bn.name or "bn"
    mid = gs.Variable(model.unique_name(base + ".scaled"), dtype=x.dtype, shape=x.shape)
    mul = gs.Node("Mul", model.unique_name(base + ".mul"),
                  inputs=[x, gs.Constant(model.unique_name(base + ".scale"), p.scale.reshape(bshape).astype(dtype))],
                  outputs=[mid])
    y = bn.outputs[0]
    add = gs.Node("Add", model.unique_name(base + ".add"),
                  inputs=[mid, gs.Constant(model.unique_name(base + ".shift"), p.shift.reshape(bshape).astype(dtype))],
                  outputs=[y])
    G.detach(bn)
    model.graph.nodes.extend([mul, add])
    return None


def fold_batchnorm(model: Model, *, to_affine: bool = True) -> dict:
    graph = model.graph
    folded: Counter = Counter()
    skipped: list[dict[str, str]] = []
    converted = 0
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        name = bn.name or bn.outputs[0].name
        if len(bn.outputs) > 1 and any(t.outputs or G.is_graph_output(graph, t) for t in bn.outputs[1:]):
            skipped.append({"node": name, "reason": "training-mode outputs are used"})
            continue
        p = bn_params(bn)
        if p is None:
            skipped.append({"node": name, "reason": "BN parameters are not constant"})
            continue
        prod = G.producer(bn.inputs[0])
        reason = _why_not(prod, bn, graph)
        if reason is None:
            y = bn.outputs[0]
            if prod.op in ("Conv", "ConvTranspose"):
                reason = _fold_conv(prod, p, model)
            else:
                rank = len(y.shape) if y.shape is not None else None
                reason = _fold_gemm(prod, p, model, rank)
            if reason is None:
                # the producer (or its bias Add) now writes the BN output directly
                last = prod if prod.op != "MatMul" else graph.nodes[-1]
                old = last.outputs[0]
                G.detach(bn)
                last.outputs[0] = y
                if prod.op != "MatMul":
                    old.outputs.clear()
                folded[prod.op] += 1
                continue
        if to_affine and _to_mul_add(bn, p, model) is None:
            converted += 1
            skipped.append({"node": name, "reason": f"not folded ({reason}); became Mul+Add"})
        else:
            skipped.append({"node": name, "reason": reason or "unsupported"})
    graph.nodes = [n for n in graph.nodes if n.inputs or n.outputs]
    if folded or converted:
        G.toposort(graph)
    return {"folded": dict(folded), "to_mul_add": converted, "skipped": skipped}


@register_pass
class FoldBatchNorm(Pass):
    name = "fold-bn"
    description = "Fold BatchNormalization into the preceding Conv/ConvTranspose/Gemm/MatMul (else Mul+Add)"

    @dataclass
    class Options:
        to_affine: bool = option(True, "turn BNs that cannot be folded into Mul+Add")

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        # BN statistics are kept for passes that want them (data-free quantization ranges, BN-scale pruning).
        record_bn_stats(model)
        consts = fold_constants(model)  # old exports compute weights (ConstantOfShape, Unsqueeze of constants)
        stats = fold_batchnorm(model, to_affine=self.options.to_affine)
        stats["constants_folded"] = consts["folded"]
        eliminate_dead(model)
        modified = bool(stats["folded"] or stats["to_mul_add"] or consts["folded"])
        return PassResult(model, modified, stats)


BN_STATS_KEY = "bn_stats"


def record_bn_stats(model: Model) -> None:
    """Remember, per BN output tensor, the per-channel mean (beta) and std (|gamma|) the BN produces.

    Stored on the model object (not in the file): data-free quantization and BN-scale pruning read it after folding.
    """
    stats = model.annotations.setdefault(BN_STATS_KEY, {})
    for bn in model.graph.nodes:
        if bn.op != "BatchNormalization":
            continue
        vals = [G.constant_value(t) for t in bn.inputs[1:3]]
        if any(v is None for v in vals):
            continue
        gamma, beta = (np.asarray(v, dtype=np.float64) for v in vals)
        stats[bn.outputs[0].name] = {"std": np.abs(gamma), "mean": beta}
