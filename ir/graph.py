"""Graph utilities that stay near-linear in the number of nodes (graphsurgeon's own toposort is recursive and its
``tensors()`` rebuilds a map on every call: never use them inside loops)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs
from compress_graph.ir.errors import ModelError


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node writing ``tensor`` (None for graph inputs and constants)."""
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def is_constant(tensor: gs.Tensor | None) -> bool:
    return isinstance(tensor, gs.Constant)


def constant_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor, also through a ``Constant`` node; None if not constant."""
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is not None and node.op == "Constant" and "value" in node.attrs:
        value = node.attrs["value"]
        return np.asarray(value.values if isinstance(value, gs.Constant) else value)
    return None


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def subgraph_inputs(node: gs.Node) -> list[gs.Tensor]:
    """Tensors read by nodes inside ``node``'s subgraphs (If/Loop/Scan bodies): implicit inputs of ``node``."""
    out: list[gs.Tensor] = []
    stack = [v for v in node.attrs.values() if isinstance(v, gs.Graph)]
    stack += [g for v in node.attrs.values() if isinstance(v, list) for g in v if isinstance(g, gs.Graph)]
    while stack:
        sub = stack.pop()
        for inner in sub.nodes:
            out.extend(inner.inputs)
            stack.extend(v for v in inner.attrs.values() if isinstance(v, gs.Graph))
    return out


def all_inputs(node: gs.Node) -> list[gs.Tensor]:
    """Explicit inputs plus the outer-scope tensors its subgraphs read."""
    if any(isinstance(v, (gs.Graph, list)) for v in node.attrs.values()):
        return list(node.inputs) + subgraph_inputs(node)
    return list(node.inputs)


def toposort(graph: gs.Graph) -> None:
    """Sort ``graph.nodes`` topologically (Kahn's algorithm, stable w.r.t. the current order). O(nodes + edges).

    Raises ModelError on a cycle.
    """
    nodes = list(graph.nodes)
    index = {id(n): i for i, n in enumerate(nodes)}
    indegree = [0] * len(nodes)
    succ: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        seen: set[int] = set()
        for t in all_inputs(node):
            for p in t.inputs:
                j = index.get(id(p))
                if j is not None and j not in seen:
                    seen.add(j)
                    succ[j].append(i)
                    indegree[i] += 1
    import heapq

    ready = [i for i, d in enumerate(indegree) if d == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in succ[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        stuck = next(nodes[i] for i, d in enumerate(indegree) if d > 0)
        raise ModelError(f"graph has a cycle (through node '{stuck.name or stuck.op}')")
    graph.nodes = [nodes[i] for i in order]


def remove_dead(graph: gs.Graph) -> int:
    """Remove nodes that do not contribute to a graph output; returns how many were removed. O(nodes + edges)."""
    live: set[int] = set()
    stack: deque[gs.Node] = deque()
    for t in graph.outputs:
        stack.extend(t.inputs)
    while stack:
        node = stack.pop()
        if id(node) in live:
            continue
        live.add(id(node))
        for t in all_inputs(node):
            stack.extend(p for p in t.inputs if id(p) not in live)
    dead = [n for n in graph.nodes if id(n) not in live]
    for node in dead:
        detach(node)
    if dead:
        graph.nodes = [n for n in graph.nodes if id(n) in live]
    return len(dead)


def detach(node: gs.Node) -> None:
    """Disconnect a node from its tensors (graphsurgeon keeps links in both directions)."""
    node.inputs.clear()
    node.outputs.clear()


def remove_unused_graph_inputs(graph: gs.Graph) -> None:
    graph.inputs = [t for t in graph.inputs if t.outputs or is_graph_output(graph, t)]


def replace_tensor(old: gs.Tensor, new: gs.Tensor, graph: gs.Graph | None = None) -> None:
    """Make every consumer of ``old`` read ``new`` (and graph outputs, when ``graph`` is given)."""
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
    if graph is not None:
        graph.outputs = [new if t is old else t for t in graph.outputs]


def to_networkx(graph: gs.Graph) -> nx.DiGraph:
    """Node-level dependency graph: node names (or positions when unnamed) with edges labelled by tensor name."""
    g = nx.DiGraph()
    names = {id(n): (n.name or f"#{i}") for i, n in enumerate(graph.nodes)}
    for node in graph.nodes:
        g.add_node(names[id(node)], op=node.op)
    for node in graph.nodes:
        for t in node.outputs:
            for c in t.outputs:
                if id(c) in names:
                    g.add_edge(names[id(node)], names[id(c)], tensor=t.name)
    return g


def nodes_by_op(graph: gs.Graph, ops: Iterable[str]) -> list[gs.Node]:
    wanted = set(ops)
    return [n for n in graph.nodes if n.op in wanted]
