"""Cleanup passes: constant folding (never Q/DQ), Identity/Dropout removal, dead code, duplicate constants."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from compress_graph.ir import graph as G
from compress_graph.ir.model import Model
from compress_graph.passes.base import Pass, PassContext, PassResult, option, register_pass
from onnx.reference import ReferenceEvaluator

#: Never folded: folding a weight's DequantizeLinear would store it in float again (4x larger, onnxsim #216).
NEVER_FOLD = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "RandomNormal", "RandomUniform",
              "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "If", "Loop", "Scan"}


def _const_inputs(node: gs.Node) -> list[np.ndarray | None] | None:
    """Values of all inputs if every (non-empty) input is constant, else None."""
    values: list[np.ndarray | None] = []
    for t in node.inputs:
        if t.name == "" and not isinstance(t, gs.Constant):
            values.append(None)  # omitted optional input
            continue
        v = G.constant_value(t) if isinstance(t, gs.Constant) else None
        if v is None:
            return None
        values.append(v)
    return values


def _static_shape(t: gs.Tensor) -> list[int] | None:
    if t.shape is None or not all(isinstance(d, int) and d >= 0 for d in t.shape):
        return None
    return [int(d) for d in t.shape]


def _evaluate(node: gs.Node, values: list, opset: int) -> list[np.ndarray] | None:
    names = [f"i{k}" if v is not None else "" for k, v in enumerate(values)]
    outs = [f"o{k}" for k in range(len(node.outputs))]
    attrs = {}
    for k, v in node.attrs.items():
        if isinstance(v, gs.Constant):
            v = onnx.numpy_helper.from_array(np.asarray(v.values), k)
        elif isinstance(v, gs.Graph):
            return None
        attrs[k] = v
    try:
        proto = onnx.helper.make_node(node.op, names, outs, domain=node.domain or "", **attrs)
        ev = ReferenceEvaluator(proto, opsets={"": opset})
        feeds = {n: v for n, v in zip(names, values) if n}
        return [np.asarray(r) for r in ev.run(None, feeds)]
    except Exception:
        return None


def _if_condition_cone(graph: gs.Graph) -> set[int]:
    """Nodes that compute an If condition. Folding them gains nothing (branches are not inlined here), but a
    condition that onnxruntime can evaluate at load time makes it type-check the taken branch strictly, and it
    then rejects models it ran before (the expanded AffineGrid function of the ONNX test suite)."""
    cone: set[int] = set()
    stack = [n.inputs[0] for n in graph.nodes if n.op == "If" and n.inputs]
    while stack:
        t = stack.pop()
        for producer in t.inputs:
            if id(producer) not in cone and producer.op != "Constant":
                cone.add(id(producer))
                stack.extend(producer.inputs)
    return cone


def fold_constants(model: Model, max_growth_bytes: int = 1 << 24) -> dict[str, int]:
    """Fold nodes whose inputs are all constant, and ``Shape``/``Size`` of statically shaped tensors.

    One walk in topological order, so chains (Shape -> Gather -> Concat -> Reshape) fold in a single call. Outputs
    larger than their inputs by more than ``max_growth_bytes`` (Expand/Tile/ConstantOfShape blow-ups) are left alone,
    except ConstantOfShape feeding a weight input (old exports store weights that way). If conditions stay
    computed (see ``_if_condition_cone``).
    """
    G.toposort(model.graph)
    keep_computed = _if_condition_cone(model.graph)
    folded = 0
    shapes_folded = 0
    for node in list(model.graph.nodes):
        if node.op in NEVER_FOLD or (node.domain or "") not in ("", "ai.onnx") or not node.outputs:
            continue
        if any(G.is_graph_output(model.graph, t) for t in node.outputs):
            continue
        if id(node) in keep_computed:
            continue
        results = None
        if node.op in ("Shape", "Size") and node.inputs:
            shape = _static_shape(node.inputs[0])
            if shape is not None:
                if node.op == "Size":
                    results = [np.array(int(np.prod(shape)), dtype=np.int64)]
                else:
                    start = node.attrs.get("start", 0)
                    end = node.attrs.get("end", None)
                    results = [np.array(shape[start:end] if end is not None else shape[start:], dtype=np.int64)]
                shapes_folded += 1
        if results is None:
            values = _const_inputs(node)
            if values is None:
                continue
            if node.op == "Constant":
                results = _evaluate(node, [], model.opset)
            else:
                results = _evaluate(node, values, model.opset)
            if results is None:
                continue
            in_bytes = sum(v.nbytes for v in values if v is not None)
            out_bytes = sum(r.nbytes for r in results)
            if out_bytes > in_bytes + max_growth_bytes and node.op != "ConstantOfShape":
                continue
        for out, value in zip(list(node.outputs), results):
            # The constant keeps the tensor's name, so consumers see the same name, now constant.
            name = out.name
            out.name = model.unique_name(name + "__folded")
            G.replace_tensor(out, gs.Constant(name, np.asarray(value)), model.graph)
        G.detach(node)
        folded += 1
    if folded:
        model.graph.nodes = [n for n in model.graph.nodes if n.outputs or n.inputs]
    return {"folded": folded, "shapes_folded": shapes_folded}


#: Ops whose output shape depends on input values: with any of them in the graph, shapes are never taken from runs.
DATA_DEPENDENT_SHAPES = {"NonZero", "Unique", "TopK", "Compress", "NonMaxSuppression", "Loop", "If", "Scan",
                         "RandomNormalLike", "RandomUniformLike", "Multinomial", "StringSplit", "RegexFullMatch"}


def observe_static_shapes(model: Model, seed: int = 0) -> int:
    """Give ``Shape``/``Size`` inputs the shapes they have at run time, when that shape cannot change.

    Exporters compute reshape targets at run time (Paddle: Shape -> Gather -> Concat -> Reshape) in places ONNX shape
    inference cannot follow. With every graph input static and no op whose output shape depends on values, each
    tensor's shape is fixed; two runs on different random inputs must agree before a shape is used. Returns how many
    tensors got a shape.
    """
    from compress_graph.ir import runtime
    from compress_graph.passes.data import CalibData

    graph = model.graph
    if any(n.op in DATA_DEPENDENT_SHAPES for n in graph.nodes):
        return 0
    wanted = [n.inputs[0] for n in graph.nodes
              if n.op in ("Shape", "Size") and n.inputs and _static_shape(n.inputs[0]) is None]
    wanted = [t for t in {id(t): t for t in wanted}.values() if not isinstance(t, gs.Constant)]
    if not wanted:
        return 0
    try:
        data = CalibData.random(model, count=2, seed=seed + 1)
        if data.batch > 1:
            data = CalibData.random(model, count=2 * data.batch, seed=seed + 1)
        sess = runtime.session(model, [t.name for t in wanted])
        runs = [runtime.run(sess, feed, [t.name for t in wanted]) for feed in data.samples(2 * data.batch)]
    except Exception:
        return 0  # dynamic inputs, or the model does not run: leave the shapes unknown
    if len(runs) < 2:
        return 0
    count = 0
    for t in wanted:
        a, b = np.shape(runs[0][t.name]), np.shape(runs[1][t.name])
        if a == b:
            t.shape = [int(d) for d in a]
            count += 1
    return count


def eliminate_identity(model: Model) -> int:
    """Remove Identity and inference-mode Dropout nodes by rewiring consumers to their input."""
    removed = 0
    graph = model.graph
    for node in list(graph.nodes):
        if node.op not in ("Identity", "Dropout") or not node.inputs or not node.outputs:
            continue
        if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].outputs:
            continue  # the mask is used
        src, dst = node.inputs[0], node.outputs[0]
        if G.is_graph_output(graph, dst):
            if G.is_graph_output(graph, src) or any(t is src for t in graph.inputs) or isinstance(src, gs.Constant):
                continue  # keep the output name without aliasing an input/constant
            # the producer writes the output name directly
            prod = G.producer(src)
            if prod is None or len(src.outputs) != 1:
                continue
            G.detach(node)
            idx = next(i for i, t in enumerate(prod.outputs) if t is src)
            prod.outputs[idx] = dst
        else:
            G.replace_tensor(dst, src)
            G.detach(node)
        removed += 1
    if removed:
        graph.nodes = [n for n in graph.nodes if n.inputs or n.outputs]
    return removed


def canonical_resize(model: Model) -> int:
    """Resize nodes that list both ``scales`` and ``sizes`` with an empty ``scales`` constant (tf2onnx's form for
    TFLite models) get ``scales`` omitted: ONNX reads an empty tensor as "not given", but importers such as TVM's
    refuse the node ("Only one of scales and sizes can be provided"). An empty ``roi`` is dropped likewise.
    Returns how many nodes changed."""
    changed = 0
    for node in model.graph.nodes:
        if node.op != "Resize" or len(node.inputs) < 4 or not node.inputs[3].name:
            continue
        hit = False
        for i in (1, 2):  # roi, scales
            t = node.inputs[i]
            if t.name and isinstance(t, gs.Constant) and np.asarray(t.values).size == 0:
                node.inputs[i] = gs.Variable.empty()
                hit = True
        changed += hit
    return changed


def eliminate_dead(model: Model) -> int:
    removed = G.remove_dead(model.graph)
    G.remove_unused_graph_inputs(model.graph)
    return removed


def dedupe_constants(model: Model, min_bytes: int = 0) -> int:
    """Make nodes share one Constant where several hold identical values (same dtype, shape, bytes)."""
    uses = [(node, i, t) for node in model.graph.nodes for i, t in enumerate(node.inputs) if isinstance(t, gs.Constant)]
    # only constants that share dtype and shape with another can be equal: hash just those (in place, no copies)
    kinds: dict[tuple, set[int]] = {}
    for _, _, t in uses:
        kinds.setdefault((str(t.dtype), tuple(t.shape or ())), set()).add(id(t))
    seen: dict[tuple, gs.Constant] = {}
    merged = 0
    for node, i, t in uses:
        kind = (str(t.dtype), tuple(t.shape or ()))
        if len(kinds[kind]) < 2:
            continue
        v = np.asarray(t.values)  # (not ascontiguousarray: it turns a scalar into shape (1,))
        if v.nbytes < min_bytes or v.dtype.kind == "O":  # strings: their bytes are pointers
            continue
        flat = np.ascontiguousarray(v).reshape(-1)
        digest = hashlib.sha256(memoryview(flat).cast("B") if flat.size else b"").hexdigest()
        first = seen.setdefault((v.dtype.str, v.shape, digest), t)
        if first is not t:
            node.inputs[i] = first
            merged += 1
    return merged


@register_pass
class FoldConstants(Pass):
    name = "fold-constants"
    description = ("Fold constant subgraphs and static Shape/Size (never Quantize/DequantizeLinear); Resize with an "
                   "empty scales next to sizes loses the empty input")

    @dataclass
    class Options:
        max_growth_mb: float = option(16.0, "skip folds whose outputs exceed their inputs by more than this (MB)")

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        limit = int(self.options.max_growth_mb * (1 << 20))
        stats = fold_constants(model, limit)
        resized = canonical_resize(model)
        observed = observe_static_shapes(model, ctx.seed)
        if observed:
            more = fold_constants(model, limit)
            stats = {k: stats[k] + more[k] for k in stats}
        dead = eliminate_dead(model) if stats["folded"] or resized else 0
        return PassResult(model, stats["folded"] > 0 or resized > 0,
                          {**stats, "shapes_observed": observed, "dead_removed": dead, "resize_canonicalized": resized})


@register_pass
class Cleanup(Pass):
    name = "cleanup"
    description = "Constant folding, Identity/Dropout removal, dead-node and duplicate-constant removal"

    @dataclass
    class Options:
        fold: bool = option(True, "fold constant subgraphs and static shapes")

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        stats = {"identity_removed": eliminate_identity(model), "resize_canonicalized": canonical_resize(model)}
        if self.options.fold:
            stats.update(fold_constants(model))
        stats["dead_removed"] = eliminate_dead(model)
        stats["constants_merged"] = dedupe_constants(model)
        modified = any(v for v in stats.values())
        return PassResult(model, modified, stats)
