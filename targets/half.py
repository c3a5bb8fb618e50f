"""A float32 ONNX model as float16 inside, float32 at its edges: what ``arm{fp16=true}`` builds from.

On Armv8.2-A cores with FP16 arithmetic (Cortex-A55, A76: ``+fullfp16``) a NEON register holds 8 halves where it
holds 4 floats, so a half-precision conv executes about half the FMAs (``fmla v.8h``) and moves half the bytes. The
conversion is done on the ONNX graph, before TVM imports it (TVM's Relax ``ToMixedPrecision`` refuses the
``call_tir`` calls its ONNX importer emits for Clip): every float32 initializer, Constant and Cast-to-float becomes
float16, except the inputs the ONNX spec types apart from the data (Resize's roi and scales, Upsample's scales),
which stay float32; each float32 graph input is cast to float16 once at the start and each float32 output back to
float32 at the end, so the library's signature does not change. Arithmetic is then float16 throughout, conv
accumulations included (as in ncnn's fp16 mode): the build verifies the library against onnxruntime's float32 run
of the original model with a tolerance for that (``FP16_REL``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: inputs (op type -> input positions) that ONNX types separately from the data: they stay float32
FLOAT32_INPUTS: dict[str, tuple[int, ...]] = {"Resize": (1, 2), "Upsample": (1,)}
#: the verification's tolerance for a float16 library, relative to the largest magnitude of each output
FP16_REL = 2e-2
_FLOAT, _HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def _half(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """float16 copy of a float32 tensor, values beyond float16's range clipped to its largest finite value."""
    values = numpy_helper.to_array(tensor)
    return numpy_helper.from_array(np.clip(values, -65504.0, 65504.0).astype(np.float16), tensor.name)


def _rename(nodes: list[onnx.NodeProto], old: str, new: str, *, outputs: bool) -> None:
    """Every use of tensor ``old`` as a node input (and, with ``outputs``, as a node output) becomes ``new``."""
    for node in nodes:
        for field in (node.input, node.output) if outputs else (node.input,):
            for k, name in enumerate(field):
                if name == old:
                    field[k] = new


def to_half(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The float16 copy of ``model`` (float32 inputs and outputs kept) and counts for the report."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep = set()  # tensor names that must stay float32
    for node in graph.node:
        for pos in FLOAT32_INPUTS.get(node.op_type, ()):
            if pos < len(node.input) and node.input[pos]:
                keep.add(node.input[pos])
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear") for n in graph.node):
        raise ValueError("a quantized (QDQ) model: its scales and float kernels are not converted to float16")
    stats = {"initializers": 0, "constants": 0, "casts": 0}
    for i, init in enumerate(graph.initializer):
        if init.data_type == _FLOAT and init.name not in keep:
            graph.initializer[i].CopyFrom(_half(init))
            stats["initializers"] += 1
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] not in keep:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == _FLOAT:
                    attr.t.CopyFrom(_half(attr.t))
                    stats["constants"] += 1
                elif attr.name in ("value_float", "value_floats"):
                    value = helper.get_attribute_value(attr)
                    arr = np.asarray(value, dtype=np.float16)
                    node.ClearField("attribute")
                    node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(
                        arr if attr.name == "value_floats" else arr.reshape(()))))
                    stats["constants"] += 1
                    break
        elif node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == _FLOAT and node.output[0] not in keep:
                    attr.i = _HALF
                    stats["casts"] += 1
        elif node.op_type == "ConstantOfShape" and node.output[0] not in keep:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == _FLOAT:
                    attr.t.CopyFrom(_half(attr.t))
                    stats["constants"] += 1
            if not any(a.name == "value" for a in node.attribute):  # the default: float32 zeros
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(
                    np.zeros(1, np.float16))))
                stats["constants"] += 1
        elif node.op_type in ("EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"):
            raise ValueError(f"{node.op_type} ({node.name or node.output[0]}): no float16 rewrite for it")
    # a float32 tensor consumed where float32 is required but produced in float16: cast it back there
    produced_half = {o for n in graph.node if n.op_type != "Constant" for o in n.output}
    new_nodes = []
    for name in sorted(keep & produced_half):
        cast = f"{name}__float32"
        new_nodes.append((name, helper.make_node("Cast", [name], [cast], to=_FLOAT, name=f"{name}__to_float32")))
    renames = {name: node.output[0] for name, node in new_nodes}
    for node in graph.node:
        for pos in FLOAT32_INPUTS.get(node.op_type, ()):
            if pos < len(node.input) and node.input[pos] in renames:
                node.input[pos] = renames[node.input[pos]]
    nodes = list(graph.node)
    for name, cast in new_nodes:
        at = next(k for k, n in enumerate(nodes) if name in n.output) + 1
        nodes.insert(at, cast)
    # the edges: float32 in, float32 out
    head, tail = [], []
    for inp in graph.input:
        if inp.type.tensor_type.elem_type == _FLOAT:
            _rename(nodes, inp.name, f"{inp.name}__float16", outputs=False)
            head.append(helper.make_node("Cast", [inp.name], [f"{inp.name}__float16"], to=_HALF,
                                         name=f"{inp.name}__to_float16"))
    for outp in graph.output:
        if outp.type.tensor_type.elem_type == _FLOAT:
            _rename(nodes, outp.name, f"{outp.name}__float16", outputs=True)
            tail.append(helper.make_node("Cast", [f"{outp.name}__float16"], [outp.name], to=_FLOAT,
                                         name=f"{outp.name}__to_float32"))
    graph.ClearField("node")
    graph.node.extend(head + nodes + tail)
    graph.ClearField("value_info")  # float32 element types of the inside no longer hold
    return out, stats
