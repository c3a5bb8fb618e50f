"""Helpers shared by the tests: tiny hand-built graphs and onnxruntime comparisons."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
BUNDLED = ["resnet_s", "mobilenetv2_s", "yolo_s", "pose_s", "face_s"]
LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def light_model(name: str) -> Path:
    return LIGHT_DIR / f"light_{name}.onnx"


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    """inputs/outputs: list of (name, shape) float32; initializers: dict name -> ndarray."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(initializers).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def rand(shape, seed=0, scale=1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def ort_run(model, feeds: dict) -> list[np.ndarray]:
    if hasattr(model, "to_onnx"):
        model = model.to_onnx()
    from compress_graph.ir import runtime

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    return runtime.session(proto).run(None, feeds)  # the ONNX semantics, the same on every CPU


def random_feeds(model, seed=0) -> dict:
    if hasattr(model, "to_onnx"):
        model = model.to_onnx()
    if isinstance(model, (str, Path)):
        model = onnx.load(model)
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def assert_close(a_model, b_model, *, rtol=1e-4, atol=1e-5, seed=0, feeds=None):
    feeds = feeds or random_feeds(a_model, seed)
    ref = ort_run(a_model, feeds)
    got = ort_run(b_model, feeds)
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        scale = max(float(np.abs(r).max()), 1.0)
        np.testing.assert_allclose(g, r, rtol=rtol, atol=atol * scale)


def save_tmp(model: onnx.ModelProto, tmp_path: Path, name="m.onnx") -> str:
    p = tmp_path / name
    onnx.save(model, p)
    return os.fspath(p)
