import time

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from cg_testutil import MODELS
from compress_graph import load
from compress_graph.ir import graph as G
from compress_graph.ir.errors import ModelError
from compress_graph.ir.model import Model


def _chain(n: int) -> gs.Graph:
    x = gs.Variable("x", dtype=np.float32, shape=[1, 8])
    t = x
    nodes = []
    for i in range(n):
        y = gs.Variable(f"t{i}", dtype=np.float32, shape=[1, 8])
        nodes.append(gs.Node("Relu", f"n{i}", inputs=[t], outputs=[y]))
        t = y
    return gs.Graph(nodes=nodes, inputs=[x], outputs=[t], opset=17)


def test_toposort_10k_nodes_is_fast_and_correct():
    g = _chain(10_000)
    g.nodes.reverse()
    start = time.perf_counter()
    G.toposort(g)
    G.remove_dead(g)
    G.to_networkx(g)
    elapsed = time.perf_counter() - start
    assert [n.name for n in g.nodes[:3]] == ["n0", "n1", "n2"]
    assert elapsed < 5.0, elapsed  # quadratic versions take minutes at this size


def test_toposort_detects_cycle():
    a = gs.Variable("a", dtype=np.float32)
    b = gs.Variable("b", dtype=np.float32)
    n1 = gs.Node("Relu", "n1", inputs=[a], outputs=[b])
    n2 = gs.Node("Relu", "n2", inputs=[b], outputs=[a])
    g = gs.Graph(nodes=[n1, n2], inputs=[], outputs=[b])
    with pytest.raises(ModelError, match="cycle"):
        G.toposort(g)


def test_remove_dead_keeps_live_nodes():
    g = _chain(5)
    dead_out = gs.Variable("dead", dtype=np.float32)
    g.nodes.append(gs.Node("Relu", "dead", inputs=[g.inputs[0]], outputs=[dead_out]))
    assert G.remove_dead(g) == 1
    assert len(g.nodes) == 5


def test_unique_names_never_collide():
    m = load(MODELS / "resnet_s.onnx")
    existing = set(m.graph.tensors()) | {n.name for n in m.graph.nodes}
    some = next(iter(existing))
    names = [m.unique_name(some) for _ in range(50)] + [m.unique_name("fresh") for _ in range(50)]
    assert len(set(names)) == 100
    assert not (set(names) & existing)


def test_analysis_cache_invalidation():
    m = load(MODELS / "resnet_s.onnx")
    calls = []
    m.analysis("count", lambda mm: calls.append(1) or len(mm.graph.nodes))
    m.analysis("count", lambda mm: calls.append(1) or len(mm.graph.nodes))
    assert len(calls) == 1
    m.invalidate()
    m.analysis("count", lambda mm: calls.append(1) or len(mm.graph.nodes))
    assert len(calls) == 2


def test_networkx_view_matches_graph():
    m = load(MODELS / "resnet_s.onnx")
    g = G.to_networkx(m.graph)
    assert g.number_of_nodes() == len(m.graph.nodes)
    import networkx as nx

    assert nx.is_directed_acyclic_graph(g)


def test_copy_is_independent():
    m = load(MODELS / "face_s.onnx")
    c = m.copy()
    c.graph.nodes.clear()
    assert len(m.graph.nodes) > 0
    assert isinstance(c, Model)
