"""Parameters, MACs and bytes per node and in total: what reports and pruning/low-rank budgets use.

Quantize/DequantizeLinear count no MACs: runtimes fuse them into the integer kernels they surround.
MACs count multiply-accumulates of the main arithmetic (Conv, ConvTranspose, Gemm/MatMul and their integer forms);
pooling, normalization and elementwise ops count one operation per output element (pooling: per window element),
as most papers and tools do. Shapes come from ONNX shape inference on the exported model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from compress_graph.ir.model import Model
from compress_graph.ir.shapes import infer_shapes, pin_input_shapes

#: ``Model.annotations`` key of the concrete input shapes costs are counted at (``{input name: dims}``), set by the
#: pipeline for models with dynamic input dims; the model itself keeps its dynamic dims.
INPUT_SHAPES_KEY = "input_shapes"

_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "PRelu", "HardSigmoid", "HardSwish",
    "Elu", "Selu", "Exp", "Log", "Sqrt", "Pow", "Max", "Min", "Sum", "Mean", "Neg", "Abs", "Softplus", "Erf", "Gelu",
    "Mish", "Softmax", "LogSoftmax", "BatchNormalization", "InstanceNormalization", "LayerNormalization",
    "GroupNormalization", "Where", "Resize", "Upsample", "Swish",
}
_POOL = {"MaxPool", "AveragePool", "LpPool"}
_GLOBAL_POOL = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "ReduceMean", "ReduceMax", "ReduceSum"}


@dataclass
class NodeCost:
    name: str
    op: str
    params: int = 0
    macs: int = 0
    param_bytes: int = 0
    act_bytes: int = 0


@dataclass
class Cost:
    params: int = 0
    macs: int = 0
    bytes: int = 0  # bytes of all constant tensors (weights): what the model file costs
    act_bytes: int = 0  # bytes of all node outputs (activations, batch as in the model)
    per_node: list[NodeCost] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs, "bytes": self.bytes, "act_bytes": self.act_bytes}


def _numel(shape) -> int | None:
    if shape is None:
        return None
    total = 1
    for d in shape:
        if not isinstance(d, int) or d < 0:
            return None
        total *= d
    return total


def _shape_map(proto: onnx.ModelProto) -> dict[str, tuple[list | None, int]]:
    out = {}
    values = list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output)
    for vi in values:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            out[vi.name] = (None, tt.elem_type)
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        out[vi.name] = (dims, tt.elem_type)
    for init in proto.graph.initializer:
        out[init.name] = (list(init.dims), init.data_type)
    return out


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _itemsize(elem_type: int) -> int:
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except Exception:
        return 4


def node_macs(node: onnx.NodeProto, shapes: dict) -> int:
    """MACs of one node given the shape map (0 when shapes are unknown)."""

    def shape(i: int, outputs: bool = False):
        names = node.output if outputs else node.input
        if i >= len(names) or not names[i]:
            return None
        return shapes.get(names[i], (None, 0))[0]

    op = node.op_type
    out = shape(0, outputs=True)
    out_n = _numel(out)
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = shape(3 if op == "QLinearConv" else 1)
        if out_n is None or w is None or _numel(w) is None:
            return 0
        # each output element: (Cin/groups) * prod(kernel) MACs; W is [Cout, Cin/groups, *k]
        return out_n * int(np.prod(w[1:]))
    if op == "ConvTranspose":
        x, w = shape(0), shape(1)
        if _numel(x) is None or w is None or _numel(w) is None:
            return 0
        # every input element is scattered into (Cout/groups) * prod(kernel) outputs; W is [Cin, Cout/groups, *k]
        return _numel(x) * int(np.prod(w[1:]))
    if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        a = shape(0)
        if out_n is None or a is None or not a:
            return 0
        if op == "Gemm":
            k = a[0] if _attr(node, "transA", 0) else a[-1]
        else:
            k = a[-1]
        return out_n * int(k) if isinstance(k, int) else 0
    if op in _POOL:
        kernel = _attr(node, "kernel_shape", [])
        return (out_n or 0) * int(np.prod(kernel)) if kernel else (out_n or 0)
    if op in _GLOBAL_POOL:
        return _numel(shape(0)) or 0
    if op in _ELEMENTWISE:
        return out_n or 0
    return 0


def model_cost(model: Model | onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> Cost:
    """Per-node and total cost. Shared constants count once in the totals.

    ``input_shapes`` (default: the model's ``annotations["input_shapes"]``) gives dynamic inputs the concrete dims
    MACs and activation bytes are counted at; without them nodes behind a dynamic dim count 0 MACs.
    """
    if input_shapes is None and isinstance(model, Model):
        input_shapes = model.annotations.get(INPUT_SHAPES_KEY)
    proto = model.to_onnx(weights=False) if isinstance(model, Model) else model
    if input_shapes:
        proto = pin_input_shapes(proto, input_shapes)
    try:
        proto = infer_shapes(proto)
    except Exception:
        pass  # costs of nodes with unknown shapes stay 0
    shapes = _shape_map(proto)
    consts: dict[str, tuple[int, int]] = {}
    for init in proto.graph.initializer:
        n = int(np.prod(init.dims)) if init.dims else 1
        consts[init.name] = (n, n * _itemsize(init.data_type))
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output:
            t = _attr(node, "value")
            if isinstance(t, onnx.TensorProto):
                n = int(np.prod(t.dims)) if t.dims else 1
                consts[node.output[0]] = (n, n * _itemsize(t.data_type))
    stored = dict(consts)
    folded = _constant_nodes(proto, consts, shapes)  # adds the tensors they compute to consts
    cost = Cost()
    counted: set[str] = set()
    consumed_by_compute: set[str] = set()
    for i, node in enumerate(proto.graph.node):
        nc = NodeCost(name=node.name or f"#{i}", op=node.op_type, macs=node_macs(node, shapes))
        if node.op_type != "Constant" and i not in folded:
            for name in node.input:
                if name in consts:
                    consumed_by_compute.add(name)
                    nc.params += consts[name][0]
                    nc.param_bytes += consts[name][1]
        for name in node.output:
            dims, elem = shapes.get(name, (None, 0))
            numel = _numel(dims)
            if numel is not None:
                nc.act_bytes += numel * _itemsize(elem)
        cost.per_node.append(nc)
        cost.macs += nc.macs
        cost.act_bytes += nc.act_bytes
    feeds_constants_only = {name for i in folded for name in proto.graph.node[i].input} - consumed_by_compute
    for name, (n, b) in consts.items():
        if name in counted:
            continue
        counted.add(name)
        if name in stored:
            cost.bytes += b  # what the file stores
        # parameters are the constants compute reads: a weight made at run time from a stored shape (ConstantOfShape
        # in onnx's light models) counts as the weight, not as its 4-element shape
        if name not in feeds_constants_only and (name in stored or name in consumed_by_compute):
            cost.params += n
    return cost


_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli", "Dropout"}


def _constant_nodes(proto: onnx.ModelProto, consts: dict[str, tuple[int, int]], shapes: dict) -> set[int]:
    """Indices of nodes that compute constants (all inputs constant, deterministic, no subgraph); the tensors they
    compute join ``consts`` (element count and bytes from the inferred shapes)."""
    folded: set[int] = set()
    for i, node in enumerate(proto.graph.node):
        if node.op_type in ("Constant", *_NONDETERMINISTIC) or not node.input:
            continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        if not all(name in consts for name in node.input if name):
            continue
        folded.add(i)
        for name in node.output:
            dims, elem = shapes.get(name, (None, 0))
            numel = _numel(dims)
            consts[name] = (numel or 0, (numel or 0) * _itemsize(elem))
    return folded
