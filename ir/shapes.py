"""Shape inference without serializing the weights: run ONNX shape inference on a skeleton of the model (large
initializers keep their dims and type but no data) and copy the inferred value_info back. On a ResNet-50 this cuts
inference from seconds to milliseconds, since protobuf serialization of the weights dominates."""

from __future__ import annotations

import onnx
from onnx import shape_inference

#: Initializers with more elements than this lose their data in the skeleton (small ones stay: data propagation of
#: Reshape/Slice shape constants needs their values).
SKELETON_MIN_ELEMENTS = 1024


def _numel(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def infer_shapes(proto: onnx.ModelProto, *, strict: bool = False) -> onnx.ModelProto:
    """Return ``proto`` with ``graph.value_info`` filled in (the weights are not copied)."""
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(_without_graph(proto))
    g = skeleton.graph
    for init in proto.graph.initializer:
        if _numel(init) > SKELETON_MIN_ELEMENTS:
            stub = g.initializer.add()
            stub.name = init.name
            stub.data_type = init.data_type
            stub.dims.extend(init.dims)
        else:
            g.initializer.add().CopyFrom(init)
    inferred = shape_inference.infer_shapes(skeleton, check_type=strict, strict_mode=strict, data_prop=True)
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(inferred.graph.value_info)
    # outputs may gain shapes too
    shapes = {o.name: o for o in inferred.graph.output}
    for out in proto.graph.output:
        if out.name in shapes:
            out.CopyFrom(shapes[out.name])
    return proto


def _without_graph(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model without initializers (everything else: nodes, inputs, outputs, opsets, functions)."""
    out = onnx.ModelProto()
    graph = proto.graph
    saved = list(graph.initializer)
    del graph.initializer[:]
    try:
        out.CopyFrom(proto)
    finally:
        graph.initializer.extend(saved)
    return out
