"""The op-handler table: op type -> handler. Ops not listed block every channel they touch (the report names them)."""

from __future__ import annotations

from compress_graph.passes.prune.handlers import (
    Conv,
    ConvTranspose,
    Elementwise,
    Gemm,
    GroupNorm,
    Handler,
    PerChannelParams,
    Resize,
    Softmax,
    Unary,
)
from compress_graph.passes.prune.indexing import Concat, Pad, Reduce, Slice, Split, Transpose
from compress_graph.passes.prune.reshape import ReshapeLike


def _build_table() -> dict[str, Handler]:
    table: dict[str, Handler] = {}
    unary = Unary()
    for op in ("Relu", "Sigmoid", "Tanh", "Clip", "LeakyRelu", "HardSwish", "HardSigmoid", "Elu", "Selu", "Celu",
               "Softplus", "Softsign", "Gelu", "Erf", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Mish",
               "Identity", "Dropout", "Cast", "Floor", "Ceil", "Round", "Sign", "ThresholdedRelu", "Swish",
               "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
               "Upsample"):
        table[op] = unary
    table["Resize"] = Resize()
    table["Softmax"] = table["LogSoftmax"] = Softmax()
    table["BatchNormalization"] = PerChannelParams((1, 2, 3, 4))
    table["InstanceNormalization"] = PerChannelParams((1, 2))
    table["PRelu"] = PerChannelParams((1,), right_aligned=True)
    table["GroupNormalization"] = GroupNorm()
    ew = Elementwise()
    for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow"):
        table[op] = ew
    table["Conv"] = Conv()
    table["ConvTranspose"] = ConvTranspose()
    table["Gemm"] = table["MatMul"] = Gemm()
    table["Concat"] = Concat()
    table["Split"] = Split()
    table["Slice"] = Slice()
    table["Pad"] = Pad()
    table["Transpose"] = Transpose()
    for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1"):
        table[op] = Reduce()
    reshape = ReshapeLike()
    for op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        table[op] = reshape
    return table


HANDLERS: dict[str, Handler] = _build_table()
