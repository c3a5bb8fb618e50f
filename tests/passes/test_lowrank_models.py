"""lowrank on the reference models, the onnx package's light models, and through TVM (slow tests)."""

import numpy as np
import onnx
import pytest
from cg_testutil import BUNDLED, MODELS, light_model, ort_run, random_feeds
from compress_graph import load, run_pipeline
from compress_graph.ir.cost import model_cost


def _check(out, report, original):
    record = report["passes"][-1]
    stats = record["stats"]
    onnx.checker.check_model(out.to_onnx(), full_check=True)
    feeds = random_feeds(original, seed=3)
    got = ort_run(out, feeds)
    ref = ort_run(original, feeds)
    assert [g.shape for g in got] == [r.shape for r in ref]
    assert all(np.isfinite(g).all() for g in got)
    return stats


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_models_macs_target(name):
    model = load(str(MODELS / f"{name}.onnx"))
    out, report = run_pipeline(model, "fold-bn,lowrank{macs=0.85}")
    stats = _check(out, report, model)
    assert stats["factorized"] >= 1
    before = model_cost(model).macs
    assert model_cost(out).macs <= 0.86 * before
    assert report["passes"][-1]["verify"]["worst"]["cosine"] > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet_s", "face_s"])
def test_bundled_models_energy_data_aware(name):
    model = load(str(MODELS / f"{name}.onnx"))
    from compress_graph.passes.data import CalibData

    calib = CalibData.random(model, count=8, seed=1)
    out, report = run_pipeline(model, "fold-bn,lowrank{energy=0.95}", calib=calib)
    stats = _check(out, report, model)
    assert stats.get("data_aware") is (stats["layers_considered"] > 0)
    if stats["factorized"]:
        assert stats["macs_after"] < stats["macs_before"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["squeezenet", "shufflenet", "inception_v1"])
def test_light_models(name):
    model = load(str(light_model(name)))
    out, report = run_pipeline(model, "fold-constants,fold-bn,lowrank")
    stats = _check(out, report, model)
    # weights of the light models are constant-valued (rank 1): every factorizable layer shrinks, exactly
    assert stats["factorized"] == stats["layers_considered"] > 0
    assert stats["macs_after"] < stats["macs_before"]
    assert report["passes"][-1]["verify"]["worst"]["cosine"] > 0.9999


@pytest.mark.slow
def test_tvm_imports_and_builds_factorized_model():
    tvm = pytest.importorskip("tvm")
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = load(str(MODELS / "resnet_s.onnx"))
    out, _ = run_pipeline(model, "fold-bn,lowrank{macs=0.7,scheme=auto}", verify=False)
    proto = out.to_onnx()
    assert {n.op_type for n in proto.graph.node} >= {"Conv", "Gemm"}
    mod = from_onnx(proto, shape_dict={"input": [1, 3, 64, 64]}, keep_params_in_input=False)
    ex = relax.build(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    feeds = random_feeds(proto, seed=4)
    got = vm["main"](tvm.runtime.tensor(feeds["input"]))
    got = got.numpy() if hasattr(got, "numpy") else got[0].numpy()
    ref = ort_run(proto, feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(ref).max())))
