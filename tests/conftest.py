import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # for cg_testutil

REPO = TESTS.parent
MODELS = REPO / "models"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS


def _tiny_model(seed: int = 0) -> onnx.ModelProto:
    """conv(3x3, stride 2) -> relu -> flatten -> gemm: three fused kernels, builds in seconds."""
    rng = np.random.default_rng(seed)
    weights = {"w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
               "b": rng.standard_normal(8).astype(np.float32) * 0.1,
               "gw": rng.standard_normal((512, 10)).astype(np.float32) * 0.05,
               "gb": rng.standard_normal(10).astype(np.float32) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "gw", "gb"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def tiny_model():
    """A factory: ``tiny_model()`` returns a fresh ModelProto each call."""
    return _tiny_model
