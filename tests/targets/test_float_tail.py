"""Float decode heads as one kernel that evaluates each exponential once (targets/float_tail.py).

A YOLO-style decode (per-scale box / class maps reshaped and concatenated, sigmoid, the box distances split into
halves and combined as centre and size, concatenated with the class scores) fuses into one injective kernel; the
sampled default inlined every block into the output and re-evaluated the sigmoid per path. The tests build such
heads, check the kernel is hand-scheduled with its exponentials kept as loops of their own, and compare the
library's outputs with onnxruntime (host natively, cortex-a76 under qemu).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

tvm = pytest.importorskip("tvm")
from compress_graph.targets import build_for_target  # noqa: E402


def _decode_head(sizes=(8, 4, 2), classes: int = 5) -> onnx.ModelProto:
    """Per scale s a box map (1, 4, s, s) and a class map (1, classes, s, s) as graph inputs -> reshape to
    (1, C, s*s) -> concat over scales -> sigmoid; boxes: x 16, split into distances (l, t) and (r, b), x1y1 =
    anchors - lt, x2y2 = anchors + rb, centre = (x1y1 + x2y2) / 2, wh = x2y2 - x1y1, concat, x strides; output:
    concat(boxes, class sigmoid) (1, 4 + classes, N)."""
    n = sum(s * s for s in sizes)
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(np.float32(16.0), "max_dist"),
             numpy_helper.from_array(np.array([2, 2], np.int64), "halves"),
             numpy_helper.from_array(rng.uniform(0, 32, (1, 2, n)).astype(np.float32), "anchors"),
             numpy_helper.from_array(np.float32(2.0), "two"),
             numpy_helper.from_array(rng.uniform(4, 16, (1, 1, n)).astype(np.float32), "strides")]
    nodes, inputs, boxes, scores = [], [], [], []
    for s in sizes:
        for kind, c, acc in (("box", 4, boxes), ("cls", classes, scores)):
            name = f"{kind}{s}"
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, c, s, s]))
            inits.append(numpy_helper.from_array(np.array([1, c, s * s], np.int64), f"{name}_shape"))
            nodes.append(helper.make_node("Reshape", [name, f"{name}_shape"], [f"{name}_r"]))
            acc.append(f"{name}_r")
    nodes += [helper.make_node("Concat", boxes, ["box"], axis=2),
              helper.make_node("Concat", scores, ["cls"], axis=2),
              helper.make_node("Sigmoid", ["box"], ["box_s"]),
              helper.make_node("Mul", ["box_s", "max_dist"], ["dist"]),
              helper.make_node("Split", ["dist", "halves"], ["lt", "rb"], axis=1),
              helper.make_node("Sub", ["anchors", "lt"], ["x1y1"]),
              helper.make_node("Add", ["anchors", "rb"], ["x2y2"]),
              helper.make_node("Add", ["x1y1", "x2y2"], ["csum"]),
              helper.make_node("Div", ["csum", "two"], ["cxy"]),
              helper.make_node("Sub", ["x2y2", "x1y1"], ["wh"]),
              helper.make_node("Concat", ["cxy", "wh"], ["xywh"], axis=1),
              helper.make_node("Mul", ["xywh", "strides"], ["pixels"]),
              helper.make_node("Sigmoid", ["cls"], ["cls_s"]),
              helper.make_node("Concat", ["pixels", "cls_s"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "decode", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4 + classes, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {i.name: (rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]) * 3).astype(np.float32)
            for i in model.graph.input}


def test_decode_kernel_keeps_each_exponential_in_its_own_loop():
    """The scheduler itself on the fused decode kernel: the exponentials (topi's fast_exp) stay blocks at the
    root, each read by plain loads; the cheap arithmetic around them is inlined."""
    from compress_graph.targets import frontend
    from compress_graph.targets.build import prepare
    from compress_graph.targets.float_tail import NotAFloatTail, schedule_float_tail

    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    mod = prepare(frontend.to_relax(_decode_head()), target)
    done = []
    for func in mod.functions.values():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        try:
            done.append(schedule_float_tail(func, 8).script())
        except NotAFloatTail:
            continue
    assert len(done) == 1, f"{len(done)} kernels took the float-tail schedule"
    text = done[0]
    # box and class sigmoids: each evaluated in one place (its own loop), where the sampled default had the box
    # sigmoid inlined into every reader of the centre and size
    assert text.count("T.sigmoid(") + text.count('T.sblock("T_fast_exp') == 2, text
    assert text.count("T.vectorized") >= 5


@pytest.mark.parametrize("target", ["host{isa=avx2,cores=1}", "arm{cpu=cortex-a76,cores=1}"])
def test_decode_head_library_matches_onnxruntime(tmp_path, target):
    import onnxruntime as ort
    from compress_graph.targets.runners import qemu_available

    if target.startswith("arm") and qemu_available("aarch64"):
        pytest.skip(qemu_available("aarch64"))
    if target.startswith("host"):
        from compress_graph.targets import host

        if host.missing_features("avx2"):
            pytest.skip("needs AVX2 to run the library")
    model = _decode_head()
    feeds = _feeds(model)
    section = build_for_target(model, target, tmp_path / "out", verify_target=True, sample_inputs=[feeds])
    sources = section["kernel_schedules"]
    tail = [k for k, v in sources.items() if "sigmoid" in k]
    assert tail and all(sources[k] == "hand-scheduled fp32" for k in tail), sources
    check = section["verification"]
    assert check["status"] == "passed", check
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert check["max_abs_err"] <= 1e-4 * max(1.0, float(np.abs(want).max())), check
