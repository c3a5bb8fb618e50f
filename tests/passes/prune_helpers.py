"""Helpers for the prune tests: tiny hand-built graphs and an onnxruntime comparison against the original."""

from __future__ import annotations

import numpy as np
import onnx
from compress_graph import load, run_pipeline
from compress_graph.ir.cost import model_cost
from onnx import TensorProto, helper, numpy_helper


class Builder:
    """Collect nodes and float32 initializers; ``conv``/``gemm`` create seeded random weights."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: dict[str, np.ndarray] = {}
        self.count = 0

    def init(self, name: str, value) -> str:
        self.inits[name] = np.asarray(value)
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, n_out: int = 1, **attrs) -> str | list[str]:
        self.count += 1
        name = f"{op.lower()}{self.count}"
        outs = [out or name] if n_out == 1 else [f"{name}_o{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, out: str | None = None, **attrs) -> str:
        self.count += 1
        name = f"conv{self.count}"
        w = self.init(f"{name}.weight", self.rng.standard_normal((cout, cin // group, k, k)).astype(np.float32) * 0.5)
        b = self.init(f"{name}.bias", self.rng.standard_normal(cout).astype(np.float32) * 0.1)
        attrs.setdefault("pads", [k // 2] * 4)
        self.nodes.append(helper.make_node("Conv", [x, w, b], [out or name], name=name, group=group,
                                           kernel_shape=[k, k], **attrs))
        return out or name

    def gemm(self, x: str, k: int, m: int, out: str | None = None, trans_b: int = 1) -> str:
        self.count += 1
        name = f"gemm{self.count}"
        shape = (m, k) if trans_b else (k, m)
        w = self.init(f"{name}.weight", self.rng.standard_normal(shape).astype(np.float32) * 0.3)
        b = self.init(f"{name}.bias", self.rng.standard_normal(m).astype(np.float32) * 0.1)
        self.nodes.append(helper.make_node("Gemm", [x, w, b], [out or name], name=name, transB=trans_b))
        return out or name

    def model(self, tmp_path, input_shape, outputs: list[str], opset: int = 17, name: str = "m.onnx"):
        graph = helper.make_graph(
            self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
            [onnx.ValueInfoProto(name=o) for o in outputs],
            [numpy_helper.from_array(v, k) for k, v in self.inits.items()])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        inferred = onnx.shape_inference.infer_shapes(proto)  # fill in the output types and shapes
        known = {vi.name: vi for vi in inferred.graph.value_info}
        for out in proto.graph.output:
            out.CopyFrom(known[out.name])
        path = tmp_path / name
        onnx.save(proto, path)
        return load(path)

    def zero_rows(self, name: str, idx, axis: int = 0) -> None:
        v = self.inits[name]
        sl = [slice(None)] * v.ndim
        sl[axis] = list(idx)
        v[tuple(sl)] = 0.0


def run_ort(proto, feed):
    from compress_graph.ir import runtime

    return runtime.session(proto).run(None, feed)


def prune_and_compare(model, pipeline: str, *, atol: float = 1e-5, seed: int = 0, **kwargs):
    """Prune, check the model is valid, same outputs (names, shapes), fewer MACs, outputs within ``atol``."""
    pruned, report = run_pipeline(model, pipeline, verify=False, **kwargs)
    proto0, proto1 = model.to_onnx(), pruned.to_onnx()
    onnx.checker.check_model(proto1, full_check=True)
    assert [o.name for o in proto0.graph.output] == [o.name for o in proto1.graph.output]
    assert [i.name for i in proto0.graph.input] == [i.name for i in proto1.graph.input]
    rng = np.random.default_rng(seed)
    shape = [d.dim_value for d in proto0.graph.input[0].type.tensor_type.shape.dim]
    feed = {proto0.graph.input[0].name: rng.standard_normal(shape).astype(np.float32)}
    ref, got = run_ort(proto0, feed), run_ort(proto1, feed)
    for a, b in zip(ref, got):
        assert a.shape == b.shape
        # relative to the data: float sums differ in their last bits between SIMD widths and summation orders
        np.testing.assert_allclose(b, a, atol=atol * max(1.0, float(np.abs(a).max())), rtol=0)
    assert model_cost(pruned).macs < model_cost(model).macs
    return pruned, report["passes"][-1]["stats"]
