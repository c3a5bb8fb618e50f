"""Apply a pruning decision: every handler cuts its node's constants, then shapes are re-inferred."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from compress_graph.ir import graph as G
from compress_graph.ir.model import Model
from compress_graph.passes.prune.groups import Analysis, Unit
from compress_graph.passes.prune.handlers import Plan
from onnx import shape_inference


def kept_channels(an: Analysis, removed: list[Unit]) -> dict[str, np.ndarray]:
    """Tensor name -> sorted kept channel indices, for the tensors that lose channels."""
    gone: dict[str, list[np.ndarray]] = {}
    for u in removed:
        for t, idx in u.members.items():
            gone.setdefault(t, []).append(idx)
    kept = {}
    for t, parts in gone.items():
        mask = np.ones(an.info[t].size, dtype=bool)
        mask[np.concatenate(parts)] = False
        kept[t] = np.flatnonzero(mask)
    return kept


def apply_plan(model: Model, an: Analysis, removed: list[Unit]) -> Model:
    """Remove the channels of ``removed`` units from ``model`` (edited in place); returns the re-inferred model."""
    from compress_graph.passes.prune.table import HANDLERS

    kept = kept_channels(an, removed)
    plan = Plan(kept, an)
    for node in list(model.graph.nodes):
        handler = HANDLERS.get(node.op)
        if handler is not None and (node.domain or "") in ("", "ai.onnx"):
            handler.apply(node, plan, model)
    return refresh_shapes(model, kept)


def refresh_shapes(model: Model, kept: dict[str, np.ndarray]) -> Model:
    """Drop stale intermediate shapes and re-run ONNX shape inference; BN statistics follow the kept channels."""
    graph = model.graph
    io = {id(t) for t in graph.inputs} | {id(t) for t in graph.outputs}
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and id(t) not in io:
            t.shape = None
    G.remove_dead(graph)
    if model.is_large():  # no round trip through one protobuf: infer on a skeleton, set shapes in place
        out = model
        model.invalidate()
        try:
            inferred = _infer(model.to_onnx(weights=False))
        except Exception:
            inferred = None
        if inferred is not None:
            _set_shapes(graph, list(inferred.graph.value_info) + list(inferred.graph.output))
        out.invalidate()
    else:
        proto = model.to_onnx()
        try:
            proto = _infer(proto)
        except Exception:  # the model is still valid without value_info; checker and ORT infer on their own
            pass
        out = Model.from_onnx(proto, base_dir=model.base_dir)
        out.metadata = dict(model.metadata)
        out.annotations = dict(model.annotations)
    bn = out.annotations.get("bn_stats")
    if bn:
        new_bn = {}
        for name, st in bn.items():
            k = kept.get(name)
            if k is None:
                new_bn[name] = st
            else:
                new_bn[name] = {key: (np.asarray(v)[k] if np.ndim(v) == 1 and np.size(v) > int(k.max(initial=0))
                                      else v) for key, v in st.items()}
        out.annotations["bn_stats"] = new_bn
    return out


def _set_shapes(graph: gs.Graph, infos: list[onnx.ValueInfoProto]) -> None:
    by_name = {vi.name: vi for vi in infos if vi.type.HasField("tensor_type")}
    for t in graph.tensors().values():
        vi = by_name.get(t.name)
        if not isinstance(t, gs.Variable) or vi is None:
            continue
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            t.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        if tt.elem_type:
            t.dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)


def _infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        from compress_graph.ir.shapes import infer_shapes
    except ImportError:  # older foundation
        return shape_inference.infer_shapes(proto, data_prop=True)
    return infer_shapes(proto)
