"""Which nodes the low-rank pass can factorize, their geometry and MACs, and the graph rewrite.

A candidate is a Conv (2-D, group 1), a Gemm (transA 0) or a MatMul whose weight is a private constant. Every
refusal has a reason. MACs follow ``ir/cost.py`` exactly (a Conv costs ``out_numel * prod(W.shape[1:])``, a
Gemm/MatMul ``out_numel * K``) so the pass's predictions match what the cost model later counts.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from compress_graph.ir import graph as G
from compress_graph.ir.model import Model
from compress_graph.passes.lowrank.decompose import Factorization
from onnx import shape_inference


@dataclass
class Layer:
    node: gs.Node
    kind: str  # "conv" | "gemm" | "matmul"
    weight: np.ndarray  # [N, C, kh, kw] float64 (Gemm/MatMul: [N, D, 1, 1], alpha folded in)
    dtype: np.dtype
    in_shape: tuple[int, ...]  # known dims; symbolic batch/sequence dims count as 1
    out_shape: tuple[int, ...]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)

    @property
    def name(self) -> str:
        return self.node.name or self.node.outputs[0].name

    @property
    def rows(self) -> int:
        """Output positions: batch x spatial for a conv, all leading dims for a Gemm/MatMul."""
        if self.kind == "conv":
            return int(self.out_shape[0] * self.out_shape[2] * self.out_shape[3])
        return int(np.prod(self.out_shape[:-1]))

    @property
    def macs(self) -> int:
        n, c, kh, kw = self.weight.shape
        return self.rows * n * c * kh * kw

    def scheme_macs(self, scheme: str, ranks: tuple[int, ...]) -> int:
        """MACs of the factorized layer, counted the way ir/cost.py counts the new nodes."""
        n, c, kh, kw = self.weight.shape
        if self.kind != "conv" or scheme == "channel":
            r = ranks[0]
            return self.rows * r * (c * kh * kw + n)
        b, _, h_in, w_in = self.in_shape
        _, _, h_out, w_out = self.out_shape
        if scheme == "spatial":
            r = ranks[0]
            return b * r * h_out * w_in * c * kh + b * n * h_out * w_out * r * kw
        r1, r2 = ranks
        return b * r1 * h_in * w_in * c + b * r2 * h_out * w_out * r1 * kh * kw + b * n * h_out * w_out * r2


def infer_shapes(model: Model, input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, tuple]:
    """Tensor name -> dims (None for unknown dims) from ONNX shape inference on the exported model.

    ``input_shapes`` (default: the shapes the pipeline resolved for the model's dynamic inputs, the ones its MACs
    are counted at) pins dynamic input dims, so convs behind a dynamic-size input get concrete shapes (MACs and patch
    geometry need them).
    """
    from compress_graph.ir.cost import INPUT_SHAPES_KEY

    if model.annotations.get(INPUT_SHAPES_KEY):
        input_shapes = model.annotations[INPUT_SHAPES_KEY]
    proto = model.to_onnx()
    for vi in proto.graph.input:
        shape = (input_shapes or {}).get(vi.name)
        dims = vi.type.tensor_type.shape.dim
        if shape is not None and len(shape) == len(dims):
            for d, v in zip(dims, shape):
                if not d.HasField("dim_value") or d.dim_value <= 0:
                    d.Clear()
                    d.dim_value = int(v)
    try:
        proto = shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:
        pass
    shapes: dict[str, tuple] = {}
    for vi in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    return shapes


def _private_weight(t: gs.Tensor, node: gs.Node) -> bool:
    """The weight feeds only this node (a shared constant cannot be rewritten for one user)."""
    return all(c is node for c in t.outputs)


def _concrete(shape: tuple | None, known_from: int = 1) -> tuple[int, ...] | None:
    """Dims with symbolic leading (batch / sequence) dims set to 1; None when a needed dim is unknown."""
    if shape is None:
        return None
    out = []
    for i, d in enumerate(shape):
        if isinstance(d, int) and d > 0:
            out.append(d)
        elif i < known_from:
            out.append(1)
        else:
            return None
    return tuple(out)


def _conv_geometry(node: gs.Node, in_shape: tuple[int, ...], kernel: tuple[int, int]) -> tuple | str:
    strides = tuple(node.attrs.get("strides", [1, 1]))
    dilations = tuple(node.attrs.get("dilations", [1, 1]))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("NOTSET", ""):
        pads = tuple(node.attrs.get("pads", [0, 0, 0, 0]))
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for axis in range(2):
            size = in_shape[2 + axis]
            out = -(-size // strides[axis])
            total = max((out - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1 - size, 0)
            small = total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        pads = (begin[0], begin[1], end[0], end[1])
    else:
        return f"auto_pad {auto_pad}"
    if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
        return "not a 2-D conv"
    return tuple(int(s) for s in strides), tuple(int(p) for p in pads), tuple(int(d) for d in dilations)


def find_layers(model: Model, shapes: dict[str, tuple], exclude: list[str]) -> tuple[list[Layer], dict[str, str]]:
    """Candidate layers in graph order, and ``{node name: reason}`` for every Conv/Gemm/MatMul refused."""
    layers: list[Layer] = []
    skipped: dict[str, str] = {}
    for node in model.graph.nodes:
        if node.op not in ("Conv", "Gemm", "MatMul"):
            continue
        name = node.name or node.outputs[0].name
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            skipped[name] = "excluded"
            continue
        found = _layer(node, shapes)
        if isinstance(found, str):
            skipped[name] = found
        else:
            layers.append(found)
    return layers, skipped


def _layer(node: gs.Node, shapes: dict[str, tuple]) -> Layer | str:
    if len(node.inputs) < 2 or (node.domain or "") not in ("", "ai.onnx"):
        return "unexpected inputs"
    w_t = node.inputs[1]
    w = G.constant_value(w_t)
    if w is None or G.constant_value(node.inputs[0]) is not None:
        return "weight is not a constant (or the data input is)"
    if not _private_weight(w_t, node):
        return "weight is shared with other nodes"
    if not np.issubdtype(w.dtype, np.floating):
        return f"weight dtype {w.dtype}"
    if not np.isfinite(w).all():
        return "weight holds NaN/Inf"
    if len(node.inputs) > 2 and node.inputs[2].name and G.constant_value(node.inputs[2]) is None:
        return "bias is not a constant"
    in_shape = shapes.get(node.inputs[0].name)
    out_shape = shapes.get(node.outputs[0].name)
    dtype = w.dtype
    w64 = w.astype(np.float64)
    if node.op == "Conv":
        if w.ndim != 4:
            return f"{w.ndim - 2}-D conv (only 2-D convs are factorized)"
        if int(node.attrs.get("group", 1)) != 1:
            return "grouped / depthwise conv"
        ins, outs = _concrete(in_shape), _concrete(out_shape)
        if ins is None or outs is None or len(ins) != 4:
            return "input/output shape unknown"
        geo = _conv_geometry(node, ins, (w.shape[2], w.shape[3]))
        if isinstance(geo, str):
            return geo
        strides, pads, dilations = geo
        return Layer(node, "conv", w64, dtype, ins, outs, strides, pads, dilations)
    if w.ndim != 2:
        return f"{w.ndim}-D weight"
    ins = _concrete(in_shape, known_from=len(in_shape) - 1 if in_shape else 1)
    outs = _concrete(out_shape, known_from=len(out_shape) - 1 if out_shape else 1)
    if ins is None or outs is None:
        return "input/output shape unknown"
    if node.op == "Gemm":
        if int(node.attrs.get("transA", 0)):
            return "Gemm with transA"
        mat = w64.T if int(node.attrs.get("transB", 0)) else w64  # [D, N]
        mat = mat * float(node.attrs.get("alpha", 1.0))
        return Layer(node, "gemm", mat.T[:, :, None, None].copy(), dtype, ins, outs)
    return Layer(node, "matmul", w64.T[:, :, None, None].copy(), dtype, ins, outs)


# ------------------------------------------------------------------------------------------------ rewrite
def _const(model: Model, base: str, value: np.ndarray, dtype: np.dtype) -> gs.Constant:
    return gs.Constant(model.unique_name(base), np.ascontiguousarray(value.astype(dtype)))


def _conv(model: Model, base: str, x: gs.Tensor, w: np.ndarray, dtype, attrs: dict, out: gs.Tensor | None,
          bias: gs.Tensor | None = None) -> tuple[gs.Node, gs.Tensor]:
    y = out if out is not None else gs.Variable(model.unique_name(base), dtype=x.dtype)
    inputs = [x, _const(model, base + ".weight", w, dtype)]
    if bias is not None:
        inputs.append(bias)
    full = {"kernel_shape": [int(w.shape[2]), int(w.shape[3])], **attrs}
    return gs.Node("Conv", model.unique_name(base), attrs=full, inputs=inputs, outputs=[y]), y


def apply(model: Model, layer: Layer, fact: Factorization, bias_shift: np.ndarray | None = None) -> list[gs.Node]:
    """Replace ``layer.node`` by the factorized nodes (the last one writes the original output tensor).

    ``bias_shift`` ([N]) is added to the layer's bias: bias correction, the mean output error on calibration data.
    """
    node = layer.node
    base = layer.name
    x, y = node.inputs[0], node.outputs[0]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    dt = layer.dtype
    if bias_shift is not None:
        if layer.kind == "gemm":
            beta = float(node.attrs.get("beta", 1.0)) if bias is not None else 1.0
            old = G.constant_value(bias).astype(np.float64) * beta if bias is not None else 0.0
            node.attrs["beta"] = 1.0
            bias = _const(model, f"{base}.lr.bias", old + bias_shift, dt)
        elif layer.kind == "conv":
            old = G.constant_value(bias).astype(np.float64) if bias is not None else 0.0
            bias = _const(model, f"{base}.lr.bias", old + bias_shift, dt)
    new: list[gs.Node] = []
    if layer.kind == "conv":
        sh, sw = layer.strides
        pt, pl, pb, pr = layer.pads
        dh, dw = layer.dilations
        geo = {"strides": [sh, sw], "pads": [pt, pl, pb, pr], "dilations": [dh, dw]}
        unit = {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1]}
        if fact.scheme == "channel":
            steps = [(fact.factors[0], geo), (fact.factors[1], unit)]
        elif fact.scheme == "spatial":
            steps = [(fact.factors[0], {"strides": [sh, 1], "pads": [pt, 0, pb, 0], "dilations": [dh, 1]}),
                     (fact.factors[1], {"strides": [1, sw], "pads": [0, pl, 0, pr], "dilations": [1, dw]})]
        else:
            steps = [(fact.factors[0], unit), (fact.factors[1], geo), (fact.factors[2], unit)]
        current = x
        for k, (w, attrs) in enumerate(steps):
            last = k == len(steps) - 1
            n, current = _conv(model, f"{base}.lr{k}", current, w, dt, attrs, y if last else None,
                               bias if last else None)
            new.append(n)
    else:
        first, second = fact.factors  # [r, D, 1, 1], [N, r, 1, 1]
        a = first[:, :, 0, 0].T  # [D, r]
        b = second[:, :, 0, 0].T  # [r, N]
        mid = gs.Variable(model.unique_name(f"{base}.lr0"), dtype=x.dtype)
        new.append(gs.Node("MatMul", model.unique_name(f"{base}.lr0"),
                           inputs=[x, _const(model, f"{base}.lr0.weight", a, dt)], outputs=[mid]))
        if layer.kind == "gemm" and bias is not None:
            beta = float(node.attrs.get("beta", 1.0))
            c = G.constant_value(bias).astype(np.float64) * beta
            new.append(gs.Node("Gemm", model.unique_name(f"{base}.lr1"),
                               inputs=[mid, _const(model, f"{base}.lr1.weight", b, dt),
                                       _const(model, f"{base}.lr1.bias", c, dt)], outputs=[y]))
        elif bias_shift is not None:  # MatMul has no bias input: the correction is an Add
            mm = gs.Variable(model.unique_name(f"{base}.lr1"), dtype=x.dtype)
            new.append(gs.Node("MatMul", model.unique_name(f"{base}.lr1"),
                               inputs=[mid, _const(model, f"{base}.lr1.weight", b, dt)], outputs=[mm]))
            new.append(gs.Node("Add", model.unique_name(f"{base}.lr_bias"),
                               inputs=[mm, _const(model, f"{base}.lr.bias", bias_shift, dt)], outputs=[y]))
        else:
            new.append(gs.Node("MatMul", model.unique_name(f"{base}.lr1"),
                               inputs=[mid, _const(model, f"{base}.lr1.weight", b, dt)], outputs=[y]))
    G.detach(node)
    graph = model.graph
    at = next(i for i, n in enumerate(graph.nodes) if n is node)
    graph.nodes[at:at + 1] = new
    return new


def weight_name(layer: Layer) -> str:
    return layer.node.inputs[1].name

