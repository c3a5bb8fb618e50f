"""Where Q/DQ pairs go: a per-op rule table, the detection-head preset, exclusions and shared-scale groups.

The placement follows what runtimes fuse into integer kernels (onnxruntime's QDQ selectors, TVM's QNN lowering):
``DQ(x), DQ(w), DQ(b) -> Conv -> [Relu|Clip] -> Q``. A Relu/Clip that is the only consumer of a quantized node's
output is absorbed: the quant point moves after it (no Q/DQ between a Conv and its activation). Concat, MaxPool and
Resize share one scale between their inputs and output, and pure data-movement ops (Reshape, Transpose, ...) pass
the scale of their input through, so re-quantizing there is exact.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
from compress_graph.ir import graph as G
from compress_graph.ir.model import Model


@dataclass(frozen=True)
class OpRule:
    """How one op type is quantized."""

    act_inputs: tuple[int, ...] = (0,)  # activation inputs that get Q/DQ
    weight: int | None = None  # constant input quantized per channel (int8 symmetric)
    bias: int | None = None  # constant input quantized to int32 with scale in_scale * w_scale
    output: bool = True  # the output gets a quant point
    shared: bool = False  # inputs and output share one scale


#: The handler table. An op not listed here is left in float (its inputs are read through DequantizeLinear).
RULES: dict[str, OpRule] = {
    "Conv": OpRule(weight=1, bias=2),
    "ConvTranspose": OpRule(weight=1, bias=2),
    "Gemm": OpRule(weight=1, bias=2),
    "MatMul": OpRule(act_inputs=(0, 1), weight=1),
    "Add": OpRule(act_inputs=(0, 1)),
    "Concat": OpRule(act_inputs=(), shared=True),  # all inputs
    "MaxPool": OpRule(shared=True),
    "Resize": OpRule(shared=True),
    "AveragePool": OpRule(),
    "GlobalAveragePool": OpRule(),
}
#: Ops with weights: what mixed precision and `exclude` usually target.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Pure data movement: the output may reuse the input's scale (exact re-quantization).
TRANSPARENT_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Split", "Slice")
#: Activations absorbed into the preceding quantized op's output quant point.
FUSED_ACTIVATIONS = ("Relu", "Clip")
FLOAT_TYPES = (np.float32, np.float16, np.float64)


@dataclass
class WeightSpec:
    node: str
    index: int
    axis: int | None  # None: per-tensor


@dataclass
class BiasSpec:
    node: str
    index: int
    act: str  # the activation tensor whose scale the bias scale is built from
    weight_index: int


@dataclass
class Plan:
    """The quantization decisions for one float model."""

    qnodes: list[str] = field(default_factory=list)  # nodes that run quantized (graph order)
    tensors: list[str] = field(default_factory=list)  # activation tensors that get Q/DQ (graph order)
    groups: dict[str, str] = field(default_factory=dict)  # tensor -> representative of its shared-scale group
    weights: list[WeightSpec] = field(default_factory=list)
    biases: list[BiasSpec] = field(default_factory=list)
    absorbed: list[str] = field(default_factory=list)  # Relu/Clip nodes fused into a quant point
    head: list[str] = field(default_factory=list)  # nodes kept in float by the detection-head preset
    excluded: list[str] = field(default_factory=list)  # nodes kept in float by `exclude` or mixed precision
    skipped: dict[str, str] = field(default_factory=dict)  # node -> why it was not quantized

    def group_members(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for t in self.tensors:
            out.setdefault(self.groups.get(t, t), []).append(t)
        return out


# --------------------------------------------------------------------------------------------- helpers
def name_nodes(model: Model) -> None:
    """Give every node a unique name (plans and reports refer to nodes by name)."""
    seen: set[str] = set()
    for node in model.graph.nodes:
        if not node.name or node.name in seen:
            node.name = model.unique_name(node.name or f"{node.op}_{len(seen)}")
        seen.add(node.name)


def matches(node: gs.Node, patterns: list[str]) -> bool:
    """fnmatch ``patterns`` against the node name or op type."""
    return any(fnmatch.fnmatchcase(node.name, p) or fnmatch.fnmatchcase(node.op, p) for p in patterns)


def is_float(t: gs.Tensor) -> bool:
    return t.dtype is None or np.dtype(t.dtype) in [np.dtype(d) for d in FLOAT_TYPES]


def head_nodes(graph: gs.Graph) -> list[gs.Node]:
    """The decoding subgraph: nodes on a path to a graph output after the last compute op (Conv/Gemm/MatMul)."""
    seen: dict[int, gs.Node] = {}
    stack = [G.producer(t) for t in graph.outputs]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen or node.op in COMPUTE_OPS:
            continue
        seen[id(node)] = node
        for t in node.inputs:
            if not isinstance(t, gs.Constant):
                stack.append(G.producer(t))
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return sorted(seen.values(), key=lambda n: order.get(id(n), 0))


def weight_axis(node: gs.Node, w: np.ndarray) -> int | None:
    """The output-channel axis of a weight (Conv: 0; ConvTranspose: 1; Gemm: by transB; MatMul: last)."""
    if node.op == "Conv":
        return 0
    if node.op == "ConvTranspose":
        return 1 if int(node.attrs.get("group", 1)) == 1 else None
    if node.op == "Gemm":
        if w.ndim != 2:
            return None
        return 0 if int(node.attrs.get("transB", 0)) else 1
    if node.op == "MatMul":
        return 1 if w.ndim == 2 else None
    return None


def quant_point(t: gs.Tensor, graph: gs.Graph, absorbed: list[str]) -> gs.Tensor:
    """Follow single-consumer Relu/Clip chains after ``t``: the tensor whose value the next Q sees."""
    while len(t.outputs) == 1 and not G.is_graph_output(graph, t):
        nxt = t.outputs[0]
        if nxt.op not in FUSED_ACTIVATIONS or nxt.inputs[0] is not t:
            break
        if nxt.op == "Clip" and any(not isinstance(x, gs.Constant) for x in nxt.inputs[1:] if x.name):
            break
        absorbed.append(nxt.name)
        t = nxt.outputs[0]
    return t


class _Groups:
    """Union-find over tensor names (shared scales)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


# --------------------------------------------------------------------------------------------- planning
def plan_quantization(
    model: Model,
    *,
    exclude: list[str] = (),
    keep_head: bool = True,
    per_channel: bool = True,
    float_nodes: set[str] = frozenset(),
) -> Plan:
    """Decide which nodes run quantized and which tensors get Q/DQ (nothing is changed in the model)."""
    graph = model.graph
    plan = Plan()
    head = {id(n) for n in head_nodes(graph)} if keep_head else set()
    plan.head = [n.name for n in graph.nodes if id(n) in head]
    wanted: list[str] = []  # tensors in the order they are first needed
    groups = _Groups()

    def want(t: gs.Tensor) -> None:
        wanted.append(t.name)

    excluded = {n.name for n in graph.nodes if RULES.get(n.op) and id(n) not in head
                and (n.name in float_nodes or matches(n, list(exclude)))}
    for node in graph.nodes:
        rule = RULES.get(node.op)
        if rule is None or (node.domain or "") not in ("", "ai.onnx"):
            continue
        if id(node) in head:
            continue
        if node.name in excluded:
            plan.excluded.append(node.name)
            continue
        reason = _why_not(node, rule)
        if reason:
            plan.skipped[node.name] = reason
            continue
        plan.qnodes.append(node.name)
        act_idx = range(len(node.inputs)) if rule.shared and node.op == "Concat" else rule.act_inputs
        acts = [node.inputs[i] for i in act_idx if i < len(node.inputs) and not isinstance(node.inputs[i], gs.Constant)]
        for t in acts:
            want(t)
        if rule.weight is not None and rule.weight < len(node.inputs) and isinstance(node.inputs[rule.weight],
                                                                                    gs.Constant):
            w = np.asarray(node.inputs[rule.weight].values)
            axis = weight_axis(node, w) if per_channel else None
            plan.weights.append(WeightSpec(node.name, rule.weight, axis))
            if (rule.bias is not None and rule.bias < len(node.inputs) and node.inputs[rule.bias].name
                    and isinstance(node.inputs[rule.bias], gs.Constant)
                    and np.asarray(node.inputs[rule.bias].values).ndim == 1):
                plan.biases.append(BiasSpec(node.name, rule.bias, node.inputs[0].name, rule.weight))
        if rule.output:
            outs = []
            for o in node.outputs:
                q = quant_point(o, graph, plan.absorbed) if not rule.shared else o
                if keep_head and not rule.shared and (G.is_graph_output(graph, q) or _only_head(q, head)):
                    # graph outputs and what only the float decoding head reads stay float: a head conv often
                    # writes class logits and box offsets into one tensor, which one 8-bit scale cannot hold
                    continue
                if q.outputs and all(c.name in excluded for c in q.outputs):
                    continue  # read only by layers kept in float: no rounding for them
                outs.append(q)
                want(q)
            if rule.shared:
                for t in acts + outs:
                    groups.union(acts[0].name, t.name)
    chosen = set(wanted)
    # data movement between two quantized tensors keeps the scale
    for node in graph.nodes:
        if node.op in TRANSPARENT_OPS and node.inputs and node.inputs[0].name in chosen:
            for o in node.outputs:
                if o.name in chosen:
                    groups.union(node.inputs[0].name, o.name)
    tmap = model.tensor_map()
    order = _tensor_order(graph)
    plan.tensors = sorted((t for t in chosen if is_float(tmap[t])), key=lambda n: order.get(n, -1))
    plan.groups = {t: groups.find(t) for t in plan.tensors}
    # a group representative must itself be a planned tensor
    members = plan.group_members()
    rep = {r: min(ms, key=lambda n: order.get(n, -1)) for r, ms in members.items()}
    plan.groups = {t: rep[plan.groups[t]] for t in plan.tensors}
    plan.absorbed = list(dict.fromkeys(plan.absorbed))
    return plan


def _only_head(t: gs.Tensor, head: set[int]) -> bool:
    return bool(t.outputs) and all(id(c) in head for c in t.outputs)


def _why_not(node: gs.Node, rule: OpRule) -> str | None:
    if not node.outputs or not all(is_float(o) for o in node.outputs):
        return "output is not float"
    if rule.weight is not None and node.op in ("Conv", "ConvTranspose"):
        if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
            return "weight is not a constant"
    if node.op == "Gemm" and (node.attrs.get("transA", 0) or len(node.inputs) < 2):
        return "Gemm with transA"
    if node.op == "Add" and any(isinstance(t, gs.Constant) for t in node.inputs):
        return "Add of a constant (left in float)"
    if rule.shared and node.op == "Concat" and any(isinstance(t, gs.Constant) for t in node.inputs):
        return "Concat of a constant"
    if not all(is_float(t) for t in node.inputs[:1]):
        return "input is not float"
    return None


def _tensor_order(graph: gs.Graph) -> dict[str, int]:
    order: dict[str, int] = {}
    for t in graph.inputs:
        order.setdefault(t.name, len(order))
    for node in graph.nodes:
        for t in node.outputs:
            order.setdefault(t.name, len(order))
    return order
