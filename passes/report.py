"""Report pieces shared by the pipeline and the front end: cost summaries and tool versions."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from compress_graph.ir.cost import model_cost
from compress_graph.ir.model import Model


def cost_summary(model: Model) -> dict[str, int]:
    return model_cost(model).summary()


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for key, dist in (("compress-graph", "compress-graph"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                      ("onnx-graphsurgeon", "onnx_graphsurgeon"), ("tvm", "apache-tvm"), ("numpy", "numpy")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = None
    return out
