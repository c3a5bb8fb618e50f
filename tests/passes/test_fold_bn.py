import collections

import numpy as np
import onnx
import pytest
from cg_testutil import BUNDLED, MODELS, assert_close, light_model, make_model, rand
from compress_graph import run_pipeline
from compress_graph.ir.io import normalize
from compress_graph.ir.model import Model
from onnx import helper


def _bn_inits(c, seed=1, prefix="bn"):
    rng = np.random.default_rng(seed)
    return {f"{prefix}_g": rng.uniform(0.5, 1.5, c).astype(np.float32),
            f"{prefix}_b": rng.normal(0, 0.3, c).astype(np.float32),
            f"{prefix}_m": rng.normal(0, 0.5, c).astype(np.float32),
            f"{prefix}_v": rng.uniform(0.3, 2.0, c).astype(np.float32)}


def _bn(x, y, prefix="bn"):
    return helper.make_node("BatchNormalization", [x, f"{prefix}_g", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"],
                            [y], epsilon=1e-3)


def _fold(model):
    m = Model.from_onnx(normalize(model))
    out, report = run_pipeline(m, "fold-bn", verify=False)
    ops = collections.Counter(n.op for n in out.graph.nodes)
    return out, ops, report["passes"][0]["stats"]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("group", [1, 2])
def test_conv(bias, group):
    inits = {"w": rand((8, 4 // group, 3, 3)), **_bn_inits(8)}
    ins = ["x", "w"]
    if bias:
        inits["b"] = rand((8,), 2)
        ins.append("b")
    nodes = [helper.make_node("Conv", ins, ["c"], pads=[1] * 4, group=group), _bn("c", "y")]
    model = make_model(nodes, [("x", [1, 4, 6, 6])], [("y", [1, 8, 6, 6])], inits)
    out, ops, stats = _fold(model)
    assert ops == {"Conv": 1} and stats["folded"] == {"Conv": 1}
    assert_close(model, out)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose(group):
    inits = {"w": rand((4, 6 // group, 2, 2)), **_bn_inits(6)}
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["c"], strides=[2, 2], group=group), _bn("c", "y")]
    model = make_model(nodes, [("x", [1, 4, 5, 5])], [("y", [1, 6, 10, 10])], inits)
    out, ops, _ = _fold(model)
    assert ops == {"ConvTranspose": 1}
    assert_close(model, out)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_gemm(trans_b, beta):
    w = rand((6, 5) if trans_b else (5, 6))
    inits = {"w": w, "c": rand((6,), 3), **_bn_inits(6)}
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"], transB=trans_b, alpha=0.7, beta=beta), _bn("g", "y")]
    model = make_model(nodes, [("x", [3, 5])], [("y", [3, 6])], inits)
    out, ops, _ = _fold(model)
    assert ops == {"Gemm": 1}
    assert_close(model, out)


def test_matmul_gets_bias_add():
    inits = {"w": rand((5, 6)), **_bn_inits(6)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["g"]), _bn("g", "y")]
    model = make_model(nodes, [("x", [3, 5])], [("y", [3, 6])], inits)
    out, ops, _ = _fold(model)
    assert ops == {"MatMul": 1, "Add": 1}
    assert_close(model, out)


def test_standalone_bn_becomes_mul_add():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), _bn("r", "y")]
    model = make_model(nodes, [("x", [1, 4, 3, 3])], [("y", [1, 4, 3, 3])], _bn_inits(4))
    out, ops, stats = _fold(model)
    assert ops == {"Relu": 1, "Mul": 1, "Add": 1}
    assert "producer is Relu" in stats["skipped"][0]["reason"]
    assert_close(model, out)


def test_shared_weight_is_skipped_with_reason():
    inits = {"w": rand((4, 4, 1, 1)), **_bn_inits(4)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), _bn("c", "y1"),
             helper.make_node("Conv", ["x", "w"], ["y2"])]
    model = make_model(nodes, [("x", [1, 4, 3, 3])], [("y1", [1, 4, 3, 3]), ("y2", [1, 4, 3, 3])], inits)
    out, ops, stats = _fold(model)
    assert ops["Conv"] == 2 and "BatchNormalization" not in ops
    assert "shared" in stats["skipped"][0]["reason"]
    assert_close(model, out)


def test_weight_as_graph_input_is_skipped():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), _bn("c", "y")]
    model = make_model(nodes, [("x", [1, 4, 3, 3]), ("w", [4, 4, 1, 1])], [("y", [1, 4, 3, 3])], _bn_inits(4))
    out, ops, stats = _fold(model)
    assert "not a constant" in stats["skipped"][0]["reason"]
    feeds = {"x": rand((1, 4, 3, 3)), "w": rand((4, 4, 1, 1), 5)}
    assert_close(model, out, feeds=feeds)


def test_conv_output_used_twice_is_not_folded():
    inits = {"w": rand((4, 4, 1, 1)), **_bn_inits(4)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), _bn("c", "y1"), helper.make_node("Relu", ["c"], ["y2"])]
    model = make_model(nodes, [("x", [1, 4, 3, 3])], [("y1", [1, 4, 3, 3]), ("y2", [1, 4, 3, 3])], inits)
    out, ops, stats = _fold(model)
    assert ops["Conv"] == 1 and "used elsewhere" in stats["skipped"][0]["reason"]
    assert_close(model, out)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_models(name):
    from compress_graph import load

    m = load(MODELS / f"{name}.onnx")
    out, report = run_pipeline(m, "fold-bn")
    ops = collections.Counter(n.op for n in out.graph.nodes)
    assert "BatchNormalization" not in ops
    assert report["passes"][0]["verify"]["worst"]["max_rel"] < 1e-4
    assert_close(onnx.load(MODELS / f"{name}.onnx"), out)


@pytest.mark.parametrize("name", ["resnet50", "densenet121", "inception_v2", "shufflenet"])
def test_light_models(name):
    from compress_graph import load

    m = load(light_model(name))
    out, report = run_pipeline(m, "fold-bn")
    stats = report["passes"][0]["stats"]
    assert sum(stats["folded"].values()) > 0
    ops = collections.Counter(n.op for n in out.graph.nodes)
    assert "BatchNormalization" not in ops  # folded, or Mul+Add where no conv precedes (DenseNet's pre-activation)
    assert report["passes"][0]["verify"]["worst"]["max_rel"] < 1e-4
