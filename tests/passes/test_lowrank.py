"""lowrank on hand-built Gemm / MatMul / Conv graphs, checked against onnxruntime."""

import collections

import numpy as np
import pytest
from cg_testutil import assert_close, make_model, ort_run, rand
from compress_graph import run_pipeline
from compress_graph.ir.cost import model_cost
from compress_graph.ir.errors import UsageError
from compress_graph.ir.io import normalize
from compress_graph.ir.model import Model
from compress_graph.passes.base import PassContext
from compress_graph.passes.lowrank import decompose as D
from compress_graph.passes.lowrank import layers as L
from compress_graph.passes.lowrank import rank as R
from compress_graph.passes.lowrank.lowrank_pass import LowRank
from onnx import helper, numpy_helper


def _model(proto):
    return Model.from_onnx(normalize(proto))


def _factorize_all(proto, scheme, ranks=None):
    """Rewrite every candidate layer at full rank (or ``ranks``) with ``scheme``, bypassing rank selection."""
    m = _model(proto)
    layers, _ = L.find_layers(m, L.infer_shapes(m), [])
    assert layers
    for ly in layers:
        lm = D.LayerMath(ly.weight)
        fact = D.factorize(lm, scheme, ranks or D.full_rank(scheme, ly.weight.shape))
        L.apply(m, ly, fact)
    return m


def _lowrank(proto, text="lowrank", calib=None):
    out, report = run_pipeline(_model(proto), text, calib=calib, verify=False)
    return out, report["passes"][-1]["stats"], report


def _gemm(trans_b=0, alpha=1.0, beta=1.0, bias=True, n=24, d=32, spectrum=None):
    w = rand((d, n), 1)
    if spectrum is not None:
        u, _, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
        w = (u * spectrum) @ vt
    w = (w.T if trans_b else w).astype(np.float32)
    inits = {"w": w}
    ins = ["x", "w"]
    if bias:
        inits["c"] = rand((n,), 2)
        ins.append("c")
    node = helper.make_node("Gemm", ins, ["y"], transB=trans_b, alpha=alpha, beta=beta, name="fc")
    return make_model([node], [("x", [3, d])], [("y", [3, n])], inits)


# ------------------------------------------------------------------------------------------------ full rank
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha,beta,bias", [(1.0, 1.0, True), (0.5, 2.0, True), (1.5, 1.0, False)])
def test_gemm_full_rank_exact(trans_b, alpha, beta, bias):
    proto = _gemm(trans_b, alpha, beta, bias)
    out = _factorize_all(proto, "channel")
    ops = collections.Counter(n.op for n in out.graph.nodes)
    assert ops == ({"MatMul": 1, "Gemm": 1} if bias else {"MatMul": 2})
    assert_close(proto, out, rtol=1e-5, atol=1e-5)


def test_matmul_3d_full_rank_exact():
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")
    proto = make_model([node], [("x", [2, 5, 16])], [("y", [2, 5, 12])], {"w": rand((16, 12))})
    out = _factorize_all(proto, "channel")
    assert [n.op for n in out.graph.nodes] == ["MatMul", "MatMul"]
    assert_close(proto, out, rtol=1e-5, atol=1e-5)


CONV_CASES = [
    dict(strides=[1, 1], pads=[1, 1, 1, 1]),
    dict(strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(strides=[2, 1], pads=[0, 2, 1, 0], dilations=[1, 2]),
    dict(strides=[1, 2], pads=[2, 1, 2, 1], dilations=[2, 1]),
    dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(auto_pad="VALID", dilations=[2, 2]),
]


def _conv(n=12, c=6, k=(3, 3), hw=(11, 9), bias=True, **attrs):
    inits = {"w": rand((n, c, *k), 1)}
    ins = ["x", "w"]
    if bias:
        inits["b"] = rand((n,), 2)
        ins.append("b")
    node = helper.make_node("Conv", ins, ["y"], name="conv", **attrs)
    return make_model([node], [("x", [2, c, *hw])], [("y", [2, n, *_out_hw(hw, k, attrs)])], inits)


def _out_hw(hw, k, attrs):
    strides = attrs.get("strides", [1, 1])
    dil = attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    out = []
    for a in range(2):
        if attrs.get("auto_pad", "").startswith("SAME"):
            out.append(-(-hw[a] // strides[a]))
        else:
            out.append((hw[a] + pads[a] + pads[a + 2] - dil[a] * (k[a] - 1) - 1) // strides[a] + 1)
    return out


@pytest.mark.parametrize("scheme", D.SCHEMES)
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv_full_rank_exact(scheme, case):
    proto = _conv(**CONV_CASES[case])
    out = _factorize_all(proto, scheme)
    assert len(out.graph.nodes) == (3 if scheme == "tucker" else 2)
    assert_close(proto, out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme", ["channel", "tucker"])
def test_conv_1x5_and_1x1(scheme):
    proto = _conv(k=(1, 5), pads=[0, 2, 0, 2], strides=[1, 2])
    assert_close(proto, _factorize_all(proto, scheme), rtol=1e-5, atol=1e-5)
    proto = _conv(k=(1, 1), strides=[2, 2], bias=False)
    assert_close(proto, _factorize_all(proto, "channel"), rtol=1e-5, atol=1e-5)


def test_truncated_conv_matches_equivalent_weight():
    """A truncated factorization computes exactly the conv with the rank-reduced kernel ``approx``."""
    proto = _conv(strides=[2, 1], pads=[1, 0, 1, 2], dilations=[1, 2])
    m = _model(proto)
    (ly,), _ = L.find_layers(m, L.infer_shapes(m), [])
    for scheme, ranks in (("channel", (4,)), ("spatial", (5,)), ("tucker", (3, 5))):
        fact = D.factorize(D.LayerMath(ly.weight), scheme, ranks)
        ref = _conv(strides=[2, 1], pads=[1, 0, 1, 2], dilations=[1, 2])
        ref.graph.initializer[0].CopyFrom(numpy_helper.from_array(fact.approx.astype(np.float32), "w"))
        assert_close(ref, _factorize_all(proto, scheme, ranks), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ rank selection
@pytest.mark.parametrize("energy", [0.5, 0.8, 0.9, 0.99])
def test_energy_picks_smallest_rank_meeting_it(energy):
    spectrum = 0.8 ** np.arange(24)
    proto = _gemm(spectrum=spectrum, d=64, n=24)
    out, stats, _ = _lowrank(proto, f"lowrank{{energy={energy},round_to=1,min_saving=0}}")
    kept = np.cumsum(spectrum**2) / np.sum(spectrum**2)
    want = int(np.searchsorted(kept, energy - 1e-12) + 1)
    assert stats["factorized"] == 1
    (layer,) = stats["layers"]
    assert layer["ranks"] == [want]
    assert layer["error"] <= 1 - energy + 1e-9
    assert kept[want - 2] < energy if want > 1 else True


def test_rank_option_absolute_and_fraction():
    proto = _conv(n=32, c=16, hw=(8, 8))
    _, stats, _ = _lowrank(proto, "lowrank{rank=8,round_to=1}")
    assert stats["layers"][0]["ranks"] == [8]
    _, stats, _ = _lowrank(proto, "lowrank{rank=0.25,round_to=4}")
    assert stats["layers"][0]["ranks"] == [8]  # 0.25 * min(32, 144)
    _, stats, _ = _lowrank(proto, "lowrank{rank=6,round_to=4,scheme=spatial}")
    assert stats["layers"][0]["ranks"] == [8] and stats["layers"][0]["scheme"] == "spatial"


def test_no_factorization_when_macs_would_not_drop():
    proto = _gemm(n=24, d=32)  # r < 24*32/56 = 13.7 is needed
    _, stats, _ = _lowrank(proto, "lowrank{rank=14,round_to=1,min_saving=0}")
    assert stats["factorized"] == 0
    _, stats, _ = _lowrank(proto, "lowrank{rank=13,round_to=1,min_saving=0}")
    assert stats["factorized"] == 1


def test_macs_match_cost_model():
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2], name="c1"),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["b"], pads=[2, 2, 2, 2], dilations=[2, 2], name="c2"),
             helper.make_node("Flatten", ["b"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, name="fc")]
    inits = {"w1": rand((32, 16, 3, 3), 1), "w2": rand((48, 32, 3, 3), 2), "w3": rand((10, 48 * 8 * 8), 3),
             "b3": rand((10,), 4)}
    proto = make_model(nodes, [("x", [1, 16, 16, 16])], [("y", [1, 10])], inits)
    for scheme in D.SCHEMES:
        out, stats, _ = _lowrank(proto, f"lowrank{{rank=0.5,scheme={scheme}}}")
        per_node = {n.name: n.macs for n in model_cost(out).per_node}
        assert stats["factorized"] >= 2
        for layer in stats["layers"]:
            assert sum(per_node[n] for n in layer["new_nodes"]) == layer["macs_after"], (scheme, layer)
        orig = {n.name: n.macs for n in model_cost(_model(proto)).per_node}
        for layer in stats["layers"]:
            assert orig[layer["node"]] == layer["macs_before"]
        assert stats["macs_after"] == model_cost(out).macs < stats["macs_before"]


def test_auto_scheme_picks_fewest_macs():
    proto = _conv(n=32, c=16, hw=(8, 8))
    _, stats, _ = _lowrank(proto, "lowrank{energy=0.7,min_saving=0}")
    (chosen,) = stats["layers"]
    m = _model(proto)
    (ly,), _ = L.find_layers(m, L.infer_shapes(m), [])
    for scheme in D.SCHEMES:
        c = R.by_energy(ly, D.LayerMath(ly.weight), (scheme,), 4, 0.0, 0.7)
        assert c is None or c.macs >= chosen["macs_after"]


def test_macs_target_met():
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["b"], pads=[1, 1, 1, 1], name="c2"),
             helper.make_node("GlobalAveragePool", ["b"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w3"], ["y"], name="fc")]
    inits = {"w1": rand((32, 8, 3, 3), 1), "w2": rand((32, 32, 3, 3), 2), "w3": rand((32, 10), 3)}
    proto = make_model(nodes, [("x", [1, 8, 12, 12])], [("y", [1, 10])], inits)
    before = model_cost(_model(proto)).macs
    out, stats, report = _lowrank(proto, "lowrank{macs=0.7,max_error=0.6}")
    assert model_cost(out).macs <= 0.7 * before
    assert set(stats["sensitivity"]) >= {"c1", "c2"}
    assert not report["warnings"]
    _, _, report = _lowrank(proto, "lowrank{macs=0.2}")  # beyond what max_error allows: said, not silent
    assert any("not reached" in w for w in report["warnings"])
    ref = ort_run(proto, {"x": rand((1, 8, 12, 12), 5)})[0]
    got = ort_run(out, {"x": rand((1, 8, 12, 12), 5)})[0]
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.5


def test_skips_have_reasons():
    nodes = [helper.make_node("Conv", ["x", "dw"], ["a"], group=4, pads=[1, 1, 1, 1], name="dw"),
             helper.make_node("Conv", ["a", "pw"], ["b"], name="pw"),
             helper.make_node("Conv", ["b", "pw"], ["y"], name="shared")]
    inits = {"dw": rand((4, 1, 3, 3)), "pw": rand((4, 4, 1, 1))}
    proto = make_model(nodes, [("x", [1, 4, 6, 6])], [("y", [1, 4, 6, 6])], inits)
    m = _model(proto)
    layers, skipped = L.find_layers(m, L.infer_shapes(m), [])
    assert not layers
    assert skipped == {"dw": "grouped / depthwise conv", "pw": "weight is shared with other nodes",
                       "shared": "weight is shared with other nodes"}


def test_exclude_patterns():
    proto = _gemm(spectrum=0.5 ** np.arange(24), d=64)
    _, stats, _ = _lowrank(proto, "lowrank{energy=0.9,exclude=conv*|f?}")
    assert stats["factorized"] == 0 and stats["skipped"] == {"excluded": 1}


@pytest.mark.parametrize("text", ["lowrank{energy=1.5}", "lowrank{energy=0.9,macs=0.8}", "lowrank{rank=0}",
                                  "lowrank{round_to=0}", "lowrank{scheme=cp}"])
def test_bad_options(text):
    with pytest.raises(UsageError):
        _lowrank(_gemm(), text)


# ------------------------------------------------------------------------------------------------ data-aware
def test_data_aware_beats_data_free_on_correlated_inputs(tmp_path):
    rng = np.random.default_rng(0)
    d, n = 48, 32
    mix = rng.standard_normal((d, d)) * np.geomspace(3, 0.01, d)[:, None]  # strongly correlated, anisotropic
    w = rand((d, n), 1)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")
    proto = make_model([node], [("x", [1, d])], [("y", [1, n])], {"w": w})
    calib = (rng.standard_normal((64, d)) @ mix).astype(np.float32)
    test = (rng.standard_normal((64, d)) @ mix).astype(np.float32)
    path = tmp_path / "calib.npz"
    np.savez(path, x=calib)
    errs = {}
    for aware in (True, False):
        out, stats, _ = _lowrank(proto, f"lowrank{{rank=8,data_aware={str(aware).lower()}}}", calib=str(path))
        assert stats["data_aware"] is aware
        ref = np.concatenate([ort_run(proto, {"x": t[None]})[0] for t in test])
        got = np.concatenate([ort_run(out, {"x": t[None]})[0] for t in test])
        errs[aware] = float(np.sum((ref - got) ** 2) / np.sum(ref**2))
    assert errs[True] < 0.5 * errs[False], errs


@pytest.mark.parametrize("scheme", D.SCHEMES)
def test_data_aware_conv_schemes(tmp_path, scheme):
    """With data the whitened error is what is minimized: lower output error on inputs like the calibration."""
    rng = np.random.default_rng(1)
    proto = _conv(n=16, c=8, hw=(10, 10), pads=[1, 1, 1, 1], strides=[2, 2])
    base = rng.standard_normal((40, 2, 10, 10))
    mixing = np.array([[1, 0], [0, 0.1]] + [[0.5 + 0.1 * i, 1] for i in range(6)])  # 8 channels, ~2 directions
    x = np.einsum("cd,ndhw->nchw", mixing, base).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x[:32])
    errs = {}
    ranks = {"channel": "rank=3", "spatial": "rank=3", "tucker": "rank=0.25"}[scheme]
    for aware in (True, False):
        out, stats, _ = _lowrank(proto, f"lowrank{{{ranks},round_to=1,scheme={scheme},data_aware="
                                        f"{str(aware).lower()}}}", calib=str(tmp_path / "c.npz"))
        assert stats["factorized"] == 1
        ref = ort_run(proto, {"x": x[32:34]})[0]
        got = ort_run(out, {"x": x[32:34]})[0]
        errs[aware] = float(np.sum((ref - got) ** 2) / np.sum(ref**2))
    assert errs[True] < errs[False], errs


def test_pass_direct_api_and_fold_bn_composition():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn")]
    inits = {"w": rand((16, 8, 3, 3)), "g": rand((16,), 1) + 2, "b": rand((16,), 2), "m": rand((16,), 3),
             "v": np.abs(rand((16,), 4)) + 0.5}
    proto = make_model(nodes, [("x", [1, 8, 8, 8])], [("y", [1, 16, 8, 8])], inits)
    out, report = run_pipeline(_model(proto), "fold-bn,lowrank{rank=100000,min_saving=-10}", verify=True)
    assert report["passes"][-1]["verify"]["worst"]["cosine"] > 0.99999
    assert_close(proto, out, rtol=1e-4, atol=1e-5)
    result = LowRank(energy=0.9).run(_model(proto), PassContext())
    assert result.modified in (True, False) and "skipped" in result.stats


@pytest.mark.parametrize("kind", ["matmul", "gemm", "conv"])
def test_bias_correction_removes_mean_error(tmp_path, kind):
    rng = np.random.default_rng(2)
    if kind == "conv":
        proto = _conv(n=16, c=8, hw=(6, 6), pads=[1, 1, 1, 1], bias=False)
        x = (rng.standard_normal((48, 8, 6, 6)) + 3.0).astype(np.float32)  # inputs far from zero mean
    else:
        d, n = 32, 24
        node = (helper.make_node("MatMul", ["x", "w"], ["y"], name="l") if kind == "matmul"
                else helper.make_node("Gemm", ["x", "w"], ["y"], name="l", alpha=0.5))
        proto = make_model([node], [("x", [2, d])], [("y", [2, n])], {"w": rand((d, n), 1)})
        x = (rng.standard_normal((304, d)) + 3.0).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x[:-16])
    errs = {}
    for bc in (True, False):
        out, stats, _ = _lowrank(proto, f"lowrank{{rank=4,round_to=1,samples=1000,bias_correction={str(bc).lower()}}}",
                                 calib=str(tmp_path / "c.npz"))
        layer = stats["layers"][0]
        per_node = {nc.name: nc.macs for nc in model_cost(out).per_node}
        assert sum(per_node[n] for n in layer["new_nodes"]) == layer["macs_after"]
        tests = [x[i:i + 2] for i in range(len(x) - 16, len(x), 2)]
        ref = np.concatenate([ort_run(proto, {"x": t})[0] for t in tests])
        got = np.concatenate([ort_run(out, {"x": t})[0] for t in tests])
        errs[bc] = float(np.sum((ref - got) ** 2) / np.sum(ref**2))
    assert errs[True] < errs[False], errs


@pytest.mark.parametrize("text", ["lowrank{energy=0.6}", "lowrank{macs=0.6}", "lowrank{rank=24,round_to=8}"])
def test_data_aware_with_fewer_samples_than_dims(tmp_path, text):
    """Calibration rows span fewer dimensions than the layer has outputs (a head fed one row per image)."""
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1, name="fc2")]
    inits = {"w1": rand((48, 96), 1), "b1": rand((96,), 2), "w2": rand((80, 96), 3)}
    proto = make_model(nodes, [("x", [1, 48])], [("y", [1, 80])], inits)
    np.savez(tmp_path / "c.npz", x=rand((6, 48), 4))
    out, stats, _ = _lowrank(proto, text, calib=str(tmp_path / "c.npz"))
    assert stats["data_aware"] and stats["factorized"] >= 1
    feeds = {"x": rand((1, 48), 9)}
    ref, got = ort_run(proto, feeds)[0], ort_run(out, feeds)[0]
    assert np.isfinite(got).all() and np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.5
