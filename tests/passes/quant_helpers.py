"""Small hand-built graphs and onnxruntime checks shared by the quant tests."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from compress_graph.ir.model import Model
from onnx import TensorProto, helper, numpy_helper


def conv_node(name, x, out, w, b, rng, *, group=1, scale=None, pads=1):
    """A Conv node plus its initializers (He-like weights; optional per-output-channel factor ``scale``)."""
    cout, cin_g, k, _ = w
    weight = rng.standard_normal(w).astype(np.float32) * np.sqrt(2.0 / (cin_g * k * k))
    if scale is not None:
        weight = weight * np.asarray(scale, np.float32).reshape(-1, 1, 1, 1)
    weight = weight.astype(np.float32)
    bias = (rng.standard_normal(cout) * 0.1).astype(np.float32) if b else None
    inits = [numpy_helper.from_array(weight, f"{name}.weight")]
    inputs = [x, f"{name}.weight"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, f"{name}.bias"))
        inputs.append(f"{name}.bias")
    node = helper.make_node("Conv", inputs, [out], name=name, kernel_shape=[k, k], pads=[pads] * 4, group=group)
    return node, inits


def make_model(nodes, inits, inputs, outputs, opset=17) -> Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto = onnx.shape_inference.infer_shapes(proto)
    onnx.checker.check_model(proto)
    return Model.from_onnx(proto)


def tensor(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def session(model: Model) -> ort.InferenceSession:
    """The QDQ semantics op by op (the same on every CPU), as every int8 comparison here must use."""
    from compress_graph.ir import runtime

    return runtime.session(model)


def run(model: Model, feeds: list[dict]) -> list[list[np.ndarray]]:
    s = session(model)
    return [s.run(None, f) for f in feeds]


def optimized_ops(model: Model) -> Counter:
    """Op types in onnxruntime's optimized graph (QDQ groups fused into QLinearConv etc.)."""
    o = ort.SessionOptions()
    o.log_severity_level = 3
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with tempfile.TemporaryDirectory() as d:
        o.optimized_model_filepath = str(Path(d) / "opt.onnx")
        ort.InferenceSession(model.to_onnx().SerializeToString(), o, providers=["CPUExecutionProvider"])
        return Counter(n.op_type for n in onnx.load(o.optimized_model_filepath).graph.node)


def cosine(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> float:
    x = np.concatenate([o.ravel() for r in a for o in r]).astype(np.float64)
    y = np.concatenate([o.ravel() for r in b for o in r]).astype(np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def mse(a, b) -> float:
    x = np.concatenate([o.ravel() for r in a for o in r]).astype(np.float64)
    y = np.concatenate([o.ravel() for r in b for o in r]).astype(np.float64)
    return float(np.mean((x - y) ** 2))
