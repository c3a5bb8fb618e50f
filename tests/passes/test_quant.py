"""quant pass: QDQ placement on hand-built graphs, fused integer kernels in onnxruntime, the reference models."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
import quant_helpers as H  # noqa: E402
from compress_graph import load, run_pipeline  # noqa: E402
from compress_graph.ir.errors import UsageError  # noqa: E402
from compress_graph.passes.data import CalibData  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "models"


def residual_net(seed=0):
    """input -> conv1 -> relu -> conv2 -> add(relu out) -> relu -> gap -> flatten -> gemm -> logits"""
    rng = np.random.default_rng(seed)
    c1, i1 = H.conv_node("conv1", "input", "c1", (8, 3, 3, 3), True, rng)
    c2, i2 = H.conv_node("conv2", "r1", "c2", (8, 8, 3, 3), True, rng)
    w = numpy_helper.from_array((rng.standard_normal((8, 4)) * 0.3).astype(np.float32), "fc.weight")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "fc.bias")
    nodes = [c1, helper.make_node("Relu", ["c1"], ["r1"], name="relu1"), c2,
             helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc")]
    return H.make_model(nodes, i1 + i2 + [w, b], [H.tensor("input", [1, 3, 16, 16])], [H.tensor("logits", [1, 4])])


def feeds(model, n=16, seed=1):
    return CalibData.random(model, n, seed=seed).samples(n)


def quantize(model, text="quant", n=16):
    data = CalibData.random(model, n, seed=3)
    q, report = run_pipeline(model, text, calib=data, verify=False)
    return q, report["passes"][-1]["stats"]


def ops_of(model):
    return [n.op for n in model.graph.nodes]


def producer_op(model, name):
    t = model.tensor_map()[name]
    return t.inputs[0].op if t.inputs else None


def test_placement_residual_net():
    m = residual_net()
    q, stats = quantize(m, "quant{bias_correction=off}")
    tm = q.tensor_map()
    # Relu stays directly after its Conv (no Q/DQ in between); the quant point is after the Relu
    conv1 = next(n for n in q.graph.nodes if n.name == "conv1")
    assert [c.op for c in conv1.outputs[0].outputs] == ["Relu"]
    assert producer_op(q, "r1") == "DequantizeLinear"
    assert producer_op(q, "r2") == "DequantizeLinear"
    # the graph output (Gemm logits) stays float: no Q on it
    assert producer_op(q, "logits") == "Gemm"
    # weights: int8 initializers behind a per-channel DequantizeLinear (axis 0 for Conv, axis 1 for Gemm, transB=0)
    for node_name, axis in [("conv1", 0), ("conv2", 0), ("fc", 1)]:
        node = next(n for n in q.graph.nodes if n.name == node_name)
        dq = node.inputs[1].inputs[0]
        assert dq.op == "DequantizeLinear" and dq.attrs.get("axis") == axis
        assert np.asarray(dq.inputs[0].values).dtype == np.int8
        b_dq = node.inputs[2].inputs[0]
        assert b_dq.op == "DequantizeLinear" and np.asarray(b_dq.inputs[0].values).dtype == np.int32
        # bias scale = input scale x weight scale
        in_scale = float(np.asarray(node.inputs[0].inputs[0].inputs[1].values))
        np.testing.assert_allclose(np.asarray(b_dq.inputs[1].values), in_scale * np.asarray(dq.inputs[1].values),
                                   rtol=1e-6)
    # activations uint8 asymmetric; relu outputs have zero point 0
    zp = np.asarray(tm["r1"].inputs[0].inputs[2].values)
    assert zp.dtype == np.uint8 and int(zp) == 0
    assert stats["fused_activations"] == 2 and stats["int8_weights"] == 3
    # onnxruntime runs it as integer kernels and the numbers agree with float
    ops = H.optimized_ops(q)
    assert ops["QLinearConv"] == 2 and ops["QLinearAdd"] == 1
    f = feeds(m)
    assert H.cosine(H.run(m, f), H.run(q, f)) > 0.995
    onnx.checker.check_model(q.to_onnx(), full_check=True)


def test_int8_symmetric_and_per_tensor_options():
    m = residual_net()
    q, _ = quantize(m, "quant{act_dtype=int8,per_channel=false,bias_correction=off}")
    zp = np.asarray(q.tensor_map()["r1"].inputs[0].inputs[2].values)
    assert zp.dtype == np.int8 and int(zp) == 0
    conv1 = next(n for n in q.graph.nodes if n.name == "conv1")
    dq = conv1.inputs[1].inputs[0]
    assert "axis" not in dq.attrs and np.asarray(dq.inputs[1].values).size == 1
    f = feeds(m)
    assert H.cosine(H.run(m, f), H.run(q, f)) > 0.99


def test_concat_inputs_share_one_scale_and_maxpool_passes_it_on():
    rng = np.random.default_rng(0)
    a, ia = H.conv_node("a", "input", "ya", (4, 3, 3, 3), True, rng)
    b, ib = H.conv_node("b", "input", "yb", (4, 3, 3, 3), True, rng, scale=np.full(4, 5.0))
    c, ic = H.conv_node("c", "pool", "out", (2, 8, 3, 3), True, rng)
    nodes = [a, b, helper.make_node("Concat", ["ya", "yb"], ["cat"], name="cat", axis=1),
             helper.make_node("MaxPool", ["cat"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]), c]
    m = H.make_model(nodes, ia + ib + ic, [H.tensor("input", [1, 3, 8, 8])], [H.tensor("out", [1, 2, 4, 4])])
    q, _ = quantize(m, "quant{bias_correction=off}")
    tm = q.tensor_map()
    scales = {n: float(np.asarray(tm[n].inputs[0].inputs[1].values)) for n in ("ya", "yb", "cat", "pool")}
    assert len(set(scales.values())) == 1, scales
    ops = H.optimized_ops(q)
    assert ops["QLinearConv"] == 2 and ops["QLinearConcat"] == 1  # the last conv writes a float graph output
    f = feeds(m)
    assert H.cosine(H.run(m, f), H.run(q, f)) > 0.99


def test_exclude_patterns_keep_nodes_float():
    m = residual_net()
    q, stats = quantize(m, "quant{exclude=conv2|Add,bias_correction=off}")
    assert set(stats["excluded"]) == {"conv2", "add"}
    conv2 = next(n for n in q.graph.nodes if n.name == "conv2")
    assert conv2.inputs[1].inputs == [] or conv2.inputs[1].inputs[0].op != "DequantizeLinear"
    f = feeds(m)
    assert H.cosine(H.run(m, f), H.run(q, f)) > 0.995


def detector_head():
    """conv -> relu -> two head convs; box: Reshape+Mul(stride), score: Sigmoid; joined by Concat (mixed output)."""
    rng = np.random.default_rng(0)
    c, ic = H.conv_node("backbone", "input", "f", (8, 3, 3, 3), True, rng)
    box, ib = H.conv_node("head.box", "r", "box", (4, 8, 1, 1), True, rng, pads=0)
    cls, icls = H.conv_node("head.cls", "r", "cls", (1, 8, 1, 1), True, rng, pads=0)
    shape = numpy_helper.from_array(np.array([1, 4, 64], np.int64), "shape4")
    shape1 = numpy_helper.from_array(np.array([1, 1, 64], np.int64), "shape1")
    stride = numpy_helper.from_array(np.array(100.0, np.float32), "stride")
    nodes = [c, helper.make_node("Relu", ["f"], ["r"], name="relu"), box, cls,
             helper.make_node("Reshape", ["box", "shape4"], ["box_r"], name="box_reshape"),
             helper.make_node("Mul", ["box_r", "stride"], ["box_px"], name="box_scale"),
             helper.make_node("Reshape", ["cls", "shape1"], ["cls_r"], name="cls_reshape"),
             helper.make_node("Sigmoid", ["cls_r"], ["score"], name="score"),
             helper.make_node("Concat", ["box_px", "score"], ["output0"], name="decode_concat", axis=1)]
    return H.make_model(nodes, ic + ib + icls + [shape, shape1, stride], [H.tensor("input", [1, 3, 8, 8])],
                        [H.tensor("output0", [1, 5, 64])])


def test_keep_head_leaves_decoding_in_float():
    m = detector_head()
    q, stats = quantize(m, "quant{bias_correction=off}")
    assert set(stats["float_head"]) == {"box_reshape", "box_scale", "cls_reshape", "score", "decode_concat"}
    assert producer_op(q, "output0") == "Concat"
    f = feeds(m)
    ref, got = H.run(m, f), H.run(q, f)
    # scores (row 4) keep their resolution next to pixel-sized boxes
    s_ref = np.concatenate([r[0][:, 4] for r in ref])
    s_got = np.concatenate([g[0][:, 4] for g in got])
    assert np.abs(s_ref - s_got).max() < 0.02
    q2, _ = quantize(m, "quant{keep_head=false,bias_correction=off}")
    assert producer_op(q2, "output0") == "DequantizeLinear"
    got2 = H.run(q2, f)
    s_got2 = np.concatenate([g[0][:, 4] for g in got2])
    assert np.abs(s_ref - s_got2).max() > np.abs(s_ref - s_got).max()


def test_conv_transpose_weight_axis_1():
    rng = np.random.default_rng(0)
    c, ic = H.conv_node("conv", "input", "y", (4, 3, 3, 3), True, rng)
    w = numpy_helper.from_array((rng.standard_normal((4, 6, 2, 2)) * 0.3).astype(np.float32), "up.weight")
    b = numpy_helper.from_array(np.zeros(6, np.float32), "up.bias")
    nodes = [c, helper.make_node("Relu", ["y"], ["r"], name="relu"),
             helper.make_node("ConvTranspose", ["r", "up.weight", "up.bias"], ["z"], name="up",
                              kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Relu", ["z"], ["out"], name="relu_out")]
    m = H.make_model(nodes, ic + [w, b], [H.tensor("input", [1, 3, 8, 8])], [H.tensor("out", [1, 6, 16, 16])])
    q, _ = quantize(m, "quant{bias_correction=off}")
    up = next(n for n in q.graph.nodes if n.name == "up")
    dq = up.inputs[1].inputs[0]
    assert dq.attrs["axis"] == 1 and np.asarray(dq.inputs[1].values).shape == (6,)
    f = feeds(m)
    assert H.cosine(H.run(m, f), H.run(q, f)) > 0.99


def test_data_free_warns_and_records_choice():
    m = residual_net()
    q, report = run_pipeline(m, "fold-bn,quant", verify=True)
    stats = report["passes"][-1]["stats"]
    assert stats["calibration"].startswith("data-free")
    assert any("calibration data" in w for w in report["warnings"])
    assert report["passes"][-1]["verify"]["checker"] == "ok"


def test_option_errors():
    m = residual_net()
    with pytest.raises(UsageError):
        run_pipeline(m, "quant{method=kmeans}", verify=False)
    with pytest.raises(UsageError):
        run_pipeline(m, "quant{percentile=20}", verify=False)
    with pytest.raises(UsageError, match="weight_bits must be 8 or 7"):
        run_pipeline(m, "quant{weight_bits=4}", verify=False)


def _conv_weight_codes(q):
    """The int8 weight codes of every Conv (behind its DequantizeLinear)."""
    return {n.name: np.asarray(n.inputs[1].inputs[0].inputs[0].values) for n in q.graph.nodes if n.op == "Conv"}


@pytest.mark.parametrize("text,prefs,bits", [
    ("quant", {}, 8),
    ("quant{weight_bits=7}", {}, 7),
    ("quant", {"weight_bits": 7}, 7),  # a target that prefers 7-bit weights (host{isa=avx2}), option left alone
    ("quant{weight_bits=8}", {"weight_bits": 7}, 8),  # an explicit choice wins over the target's preference
])
def test_weight_bits_7_narrows_the_codes_to_63(text, prefs, bits):
    m = residual_net()
    data = CalibData.random(m, 16, seed=3)
    q, report = run_pipeline(m, text, calib=data, verify=False, preferences=prefs)
    assert report["passes"][-1]["stats"]["weight_bits"] == bits
    qmax = 2 ** (bits - 1) - 1
    codes = _conv_weight_codes(q)
    assert len(codes) == 2
    for name, w in codes.items():
        assert w.dtype == np.int8
        # symmetric per output channel: each channel's largest weight is exactly +-qmax
        assert np.array_equal(np.abs(w.astype(np.int32)).reshape(w.shape[0], -1).max(axis=1),
                              np.full(w.shape[0], qmax)), name
    f = feeds(m)
    assert H.cosine(H.run(m, f), H.run(q, f)) > 0.99


def test_weight_bits_preference_of_the_x86_targets():
    """host{isa=avx2} (and AVX-512 without VNNI) asks quant for 7-bit weights; VNNI and ARM do not."""
    pytest.importorskip("tvm")
    from compress_graph.targets import preferences

    assert preferences("host{isa=avx2}")["weight_bits"] == 7
    assert preferences("host{isa=avx512}")["weight_bits"] == 7
    assert "weight_bits" not in preferences("host{isa=vnni}")
    assert "weight_bits" not in preferences("arm{cpu=cortex-a53}")


@pytest.mark.parametrize("text,bits,tol", [("quant-weights", 8, 0.9999), ("quant-weights{weight_bits=4}", 4, 0.99),
                                           ("quant{weight_only=true,weight_bits=4}", 4, 0.99)])
def test_weight_only_gemm(text, bits, tol):
    m = residual_net()
    q, report = run_pipeline(m, text, verify=False)
    stats = report["passes"][-1]["stats"]
    assert stats["weights"] == 1
    fc = next(n for n in q.graph.nodes if n.name == "fc")
    dq = fc.inputs[1].inputs[0]
    assert dq.op == "DequantizeLinear"
    want = onnx.TensorProto.INT4 if bits == 4 else onnx.TensorProto.INT8
    assert next(t for t in q.to_onnx().graph.initializer if t.name == dq.inputs[0].name).data_type == want
    assert not any(n.op == "QuantizeLinear" for n in q.graph.nodes)
    f = feeds(m)
    assert H.cosine(H.run(m, f), H.run(q, f)) > tol


@pytest.mark.parametrize("name", ["resnet_s", "mobilenetv2_s", "yolo_s", "pose_s", "face_s"])
def test_reference_models(name):
    m = load(MODELS / f"{name}.onnx")
    data = CalibData.random(m, 16, seed=5)
    q, report = run_pipeline(m, "fold-bn,quant", calib=data, verify=False)
    proto = q.to_onnx()
    onnx.checker.check_model(proto, full_check=True)
    float_bytes = (MODELS / f"{name}.onnx").stat().st_size
    assert len(proto.SerializeToString()) < float_bytes
    # weights are int8 initializers: ~4x fewer weight bytes (per-channel scales and int32 biases add a little)
    before = sum(len(t.raw_data) for t in onnx.load(MODELS / f"{name}.onnx").graph.initializer)
    after = sum(len(t.raw_data) for t in proto.graph.initializer)
    assert after * 2.8 < before, (before, after)
    assert not any(t.data_type == onnx.TensorProto.FLOAT and len(t.raw_data) > 4096 for t in proto.graph.initializer)
    ops = H.optimized_ops(q)
    assert ops["QLinearConv"] >= 0.75 * sum(1 for n in m.graph.nodes if n.op == "Conv")  # head convs: float out
    f = CalibData.random(m, 8, seed=9).samples(8)
    assert H.cosine(H.run(m, f), H.run(q, f)) > 0.99
