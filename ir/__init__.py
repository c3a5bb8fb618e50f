"""The IR: an ONNX model held as an onnx-graphsurgeon graph, with loading, saving, graph utilities and costs."""

from compress_graph.ir.io import MIN_OPSET, load, normalize, save
from compress_graph.ir.model import Model

__all__ = ["Model", "load", "save", "normalize", "MIN_OPSET"]
