"""quant accuracy tools: cross-layer equalization, bias correction, mixed precision with a budget."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
import quant_helpers as H  # noqa: E402
from compress_graph import run_pipeline  # noqa: E402
from compress_graph.passes.data import CalibData  # noqa: E402
from compress_graph.passes.quant import cle  # noqa: E402


def outlier_chain(act="Relu", depthwise=False, seed=0):
    """conv1 (one output channel x40: an outlier channel) -> act -> conv2 [-> relu -> conv3]"""
    rng = np.random.default_rng(seed)
    scale = np.ones(8)
    scale[3] = 40.0
    scale[5] = 0.05
    c1, i1 = H.conv_node("conv1", "input", "y1", (8, 3, 3, 3), True, rng, scale=scale)
    if act == "Clip":
        lo = numpy_helper.from_array(np.array(0.0, np.float32), "clip_lo")
        hi = numpy_helper.from_array(np.array(6.0, np.float32), "clip_hi")
        a = helper.make_node("Clip", ["y1", "clip_lo", "clip_hi"], ["a1"], name="act1")
        i1 += [lo, hi]
    else:
        a = helper.make_node("Relu", ["y1"], ["a1"], name="act1")
    if depthwise:
        c2, i2 = H.conv_node("conv2", "a1", "y2", (8, 1, 3, 3), True, rng, group=8)
    else:
        c2, i2 = H.conv_node("conv2", "a1", "y2", (8, 8, 3, 3), True, rng)
    c3, i3 = H.conv_node("conv3", "r2", "out", (4, 8, 1, 1), True, rng, pads=0)
    nodes = [c1, a, c2, helper.make_node("Relu", ["y2"], ["r2"], name="relu2"), c3]
    return H.make_model(nodes, i1 + i2 + i3, [H.tensor("input", [1, 3, 12, 12])], [H.tensor("out", [1, 4, 12, 12])])


def data_for(model, n=32, seed=3, mean=0.0):
    d = CalibData.random(model, n, seed=seed)
    d.arrays = {k: v + np.float32(mean) for k, v in d.arrays.items()}
    return d


def quant_error(model, text, calib, evaluation):
    q, report = run_pipeline(model, text, calib=calib, verify=False)
    return H.mse(H.run(model, evaluation), H.run(q, evaluation)), report["passes"][-1]["stats"]


def test_cle_fixes_a_planted_outlier_channel():
    m = outlier_chain()
    calib, ev = data_for(m), data_for(m, 16, seed=9).samples(16)
    base = "quant{method=minmax,bias_correction=off,per_channel=false"
    off, _ = quant_error(m, base + ",cle=off}", calib, ev)
    on, stats = quant_error(m, base + ",cle=on}", calib, ev)
    assert stats["cle"]["pairs"] == 2
    assert on < 0.5 * off, (on, off)


def test_cle_keeps_the_float_function_through_relu_and_relu6():
    for act, dw in [("Relu", False), ("Clip", True)]:
        m = outlier_chain(act, depthwise=dw)
        c = m.copy()
        calib = data_for(m)
        stats = cle.equalize(c, calib.batches())
        assert stats["pairs"] == 2
        f = calib.samples(16)
        ref, got = H.run(m, f), H.run(c, f)
        np.testing.assert_allclose(np.concatenate([r[0] for r in got]), np.concatenate([r[0] for r in ref]),
                                   rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(ref[0][0]).max())))


def test_cle_leaves_relu6_pairs_alone_without_data():
    m = outlier_chain("Clip", depthwise=True)
    c = m.copy()
    stats = cle.equalize(c, None)
    assert stats["clip_pairs_skipped"] == 1  # conv1 -> Clip -> conv2: no observed ranges, no rescaling
    w0 = next(n for n in m.graph.nodes if n.name == "conv1").inputs[1].values
    w1 = next(n for n in c.graph.nodes if n.name == "conv1").inputs[1].values
    np.testing.assert_array_equal(w0, w1)


def mean_shift_net(seed=0):
    """Inputs with a large mean through convs whose per-tensor weight scale is set by one big channel."""
    rng = np.random.default_rng(seed)
    scale = np.ones(8)
    scale[0] = 30.0
    c1, i1 = H.conv_node("conv1", "input", "y1", (8, 3, 3, 3), True, rng, scale=scale)
    c2, i2 = H.conv_node("conv2", "a1", "out", (8, 8, 1, 1), True, rng, scale=scale, pads=0)
    nodes = [c1, helper.make_node("Relu", ["y1"], ["a1"], name="relu1"), c2]
    return H.make_model(nodes, i1 + i2, [H.tensor("input", [1, 3, 10, 10])], [H.tensor("out", [1, 8, 10, 10])])


def channel_shift(model, q, feeds):
    ref = np.concatenate([r[0] for r in H.run(model, feeds)])
    got = np.concatenate([r[0] for r in H.run(q, feeds)])
    return np.abs((ref - got).mean(axis=(0, 2, 3)))


def test_bias_correction_reduces_the_output_mean_shift():
    m = mean_shift_net()
    calib, ev = data_for(m, mean=3.0), data_for(m, 16, seed=11, mean=3.0).samples(16)
    base = "quant{method=minmax,per_channel=false,cle=off,sens_samples=32"
    q_off, _ = run_pipeline(m, base + ",bias_correction=off}", calib=calib, verify=False)
    off = channel_shift(m, q_off, ev)
    for mode in ("weights", "full"):
        q_on, rep = run_pipeline(m, base + f",bias_correction={mode}}}", calib=calib, verify=False)
        assert rep["passes"][-1]["stats"]["bias_correction"]["applied"] == mode
        on = channel_shift(m, q_on, ev)
        assert on.mean() < 0.5 * off.mean(), (mode, on, off)


def test_auto_choices_are_measured_and_reported():
    m = mean_shift_net()
    _, rep = run_pipeline(m, "quant", calib=data_for(m, mean=3.0), verify=False)
    stats = rep["passes"][-1]["stats"]
    assert set(stats["method_agreement"]) == {"minmax", "percentile", "mse"}
    assert stats["method_agreement"][stats["method"]] == max(stats["method_agreement"].values())
    bc = stats["bias_correction"]
    assert set(bc["agreement"]) == {"off", "weights", "full"}
    assert bc["agreement"][bc["applied"]] == max(bc["agreement"].values())


def sensitive_net(seed=0):
    """Three convs; conv2 reads an activation whose per-tensor range is set by one huge channel of conv1."""
    rng = np.random.default_rng(seed)
    scale = np.ones(8)
    scale[2] = 200.0
    c1, i1 = H.conv_node("conv1", "input", "y1", (8, 3, 3, 3), True, rng, scale=scale)
    w2 = np.ones(8)
    c2, i2 = H.conv_node("conv2", "a1", "y2", (8, 8, 3, 3), True, rng, scale=w2)
    c3, i3 = H.conv_node("conv3", "a2", "out", (4, 8, 1, 1), True, rng, pads=0)
    i2[0].CopyFrom(numpy_helper.from_array(_mask_channel(numpy_helper.to_array(i2[0]), 2), "conv2.weight"))
    nodes = [c1, helper.make_node("Relu", ["y1"], ["a1"], name="relu1"), c2,
             helper.make_node("Relu", ["y2"], ["a2"], name="relu2"), c3]
    return H.make_model(nodes, i1 + i2 + i3, [H.tensor("input", [1, 3, 10, 10])], [H.tensor("out", [1, 4, 10, 10])])


def _mask_channel(w, c):
    w = w.copy()
    w[:, c] *= 1e-3  # conv2 hardly uses the huge channel: it only ruins conv2's input scale
    return w


def test_mixed_precision_stops_once_the_budget_is_met():
    m = sensitive_net()
    calib = data_for(m)
    base = "quant{method=minmax,cle=off,bias_correction=off,per_channel=true,sens_samples=16"
    _, rep = run_pipeline(m, base + ",budget=1.0}", calib=calib, verify=False)
    mp = rep["passes"][-1]["stats"]["mixed_precision"]
    assert mp["float_layers"] == [] and mp["met"]
    drop_all = mp["drop_all_quantized"]
    assert drop_all > 1e-4
    q, rep = run_pipeline(m, base + f",budget={drop_all / 20}}}", calib=calib, verify=False)
    mp = rep["passes"][-1]["stats"]["mixed_precision"]
    assert mp["met"] and mp["drop"] <= drop_all / 20
    assert mp["float_layers"] == ["conv2"]  # the one sensitive layer, and no more
    assert "conv2" in rep["passes"][-1]["stats"]["excluded"]
    conv2 = next(n for n in q.graph.nodes if n.name == "conv2")
    assert conv2.inputs[0].inputs[0].op != "DequantizeLinear"  # its input is float as well
