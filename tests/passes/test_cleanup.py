import numpy as np
import onnx_graphsurgeon as gs
from cg_testutil import assert_close, make_model, rand
from compress_graph import run_pipeline
from compress_graph.ir.io import normalize
from compress_graph.ir.model import Model
from onnx import helper


def _shape_chain_model():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Reshape", ["x", "s"], ["y"])]
    return make_model(nodes, [("x", [2, 3, 4])], [("y", [2, 3, 4])])


def test_shape_of_unknown_tensor_folds_from_runs():
    proto = _shape_chain_model()
    m = Model.from_onnx(proto)  # no shape inference: 'r' has no shape, as after an exporter's runtime reshapes
    out, report = run_pipeline(m, "fold-constants", verify=False)
    stats = report["passes"][0]["stats"]
    assert stats["shapes_observed"] == 1 and stats["shapes_folded"] == 1
    reshape = next(n for n in out.graph.nodes if n.op == "Reshape")
    assert isinstance(reshape.inputs[1], gs.Constant)
    np.testing.assert_array_equal(reshape.inputs[1].values, [2, 3, 4])
    assert_close(proto, out, feeds={"x": rand((2, 3, 4))})


def test_no_shapes_from_runs_with_data_dependent_ops():
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]),
             helper.make_node("Shape", ["nz"], ["s"]),
             helper.make_node("Cast", ["s"], ["y"], to=1)]
    proto = make_model(nodes, [("x", [4])], [("y", [2])])
    out, report = run_pipeline(Model.from_onnx(proto), "fold-constants", verify=False)
    assert report["passes"][0]["stats"]["shapes_observed"] == 0
    assert any(n.op == "Shape" for n in out.graph.nodes)


def test_cleanup_never_folds_dequantize():
    nodes = [helper.make_node("DequantizeLinear", ["wq", "sc"], ["w"]),
             helper.make_node("Add", ["x", "w"], ["y"])]
    proto = make_model(nodes, [("x", [4])], [("y", [4])],
                       {"sc": np.array(0.5, np.float32), "wq": np.array([1, -2, 3, -4], np.int8)})
    out, _ = run_pipeline(Model.from_onnx(normalize(proto)), "cleanup", verify=False)
    assert any(n.op == "DequantizeLinear" for n in out.graph.nodes)
    assert_close(proto, out, feeds={"x": rand((4,))})


def test_cleanup_removes_identity_and_dead_nodes():
    nodes = [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Relu", ["i"], ["y"]),
             helper.make_node("Sigmoid", ["x"], ["unused"])]
    proto = make_model(nodes, [("x", [1, 4])], [("y", [1, 4])])
    out, report = run_pipeline(Model.from_onnx(normalize(proto)), "cleanup")
    assert [n.op for n in out.graph.nodes] == ["Relu"]
    assert report["passes"][0]["verify"]["worst"]["max_abs"] == 0.0
