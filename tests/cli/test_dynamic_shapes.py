"""Models as shipped: dynamic input dims ([-1,3,?,?], [N,3,H,W]) through the cost model, the passes and the targets."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cg_testutil import MODELS, make_model, rand
from compress_graph.cli import main
from compress_graph.ir import io
from compress_graph.ir.cost import model_cost
from compress_graph.passes.data import CalibData
from onnx import helper


def _dynamic(proto: onnx.ModelProto, batch_only: bool = False) -> onnx.ModelProto:
    """The model as exporters ship it: batch written as Paddle does (dim_value -1), H and W symbolic."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    dims = out.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_value = -1  # not legal ONNX, written by Paddle's exporter; loads as an unknown dim
    if not batch_only:
        for d, name in zip(dims[2:], ("?", "?")):
            d.Clear()
            d.dim_param = name
    for o in out.graph.output:
        for i, d in enumerate(o.type.tensor_type.shape.dim):
            if i == 0 or not batch_only:
                d.Clear()
                d.dim_param = f"out_{o.name}_{i}"
    del out.graph.value_info[:]
    return out


@pytest.fixture(scope="module")
def dyn_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("dyn") / "mnv2_dyn.onnx"
    onnx.save(_dynamic(onnx.load(MODELS / "mobilenetv2_s.onnx")), path)
    return path


def _run(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def test_prune_macs_target_counts_at_the_calibration_shape_and_keeps_the_model_dynamic(dyn_model, tmp_path, capsys):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=rand((8, 3, 64, 64), seed=3))
    out = tmp_path / "out"
    code, err = _run([dyn_model, "--passes", "prune{macs=0.7}", "--calib", calib, "-o", out, "-q"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["input_shapes"]["input"] == {"shape": [1, 3, 64, 64], "declared": "[?,3,?,?]",
                                               "from": "calibration data"}
    assert report["before"]["macs"] > 0
    # recount independently: the written model at the calibration shape vs the original at that shape
    at = {"input": [1, 3, 64, 64]}
    kept = model_cost(io.load(out / "model.onnx"), at).macs / model_cost(io.load(dyn_model), at).macs
    assert 0.67 <= kept <= 0.73, kept
    assert report["passes"][-1]["stats"]["macs_kept"] == pytest.approx(kept, abs=1e-3)
    written = onnx.load(out / "model.onnx")
    dims = _dims(written.graph.input[0])
    assert dims[1] == 3 and not isinstance(dims[0], int) and not isinstance(dims[2], int) \
        and not isinstance(dims[3], int), dims
    sess = ort.InferenceSession(str(out / "model.onnx"))
    ref = ort.InferenceSession(str(dyn_model))
    for shape in ((2, 3, 96, 80), (1, 3, 48, 48)):
        x = rand(shape, seed=5)
        got, want = sess.run(None, {"input": x})[0], ref.run(None, {"input": x})[0]
        assert got.shape == want.shape == (shape[0], want.shape[1])
        assert np.isfinite(got).all()
        cos = float(np.sum(got * want) / np.linalg.norm(got) / np.linalg.norm(want))
        assert cos > 0.5, cos  # the pruned model still computes the same function at other sizes


def test_macs_target_without_a_shape_exits_2_with_one_line(dyn_model, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _run([dyn_model, "--passes", "prune{macs=0.7}", "-o", out, "-q"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "input 'input' has a dynamic shape [?,3,?,?]" in lines[0] and "--input-shape input=1,3,H,W" in lines[0]
    assert not out.exists()
    code, err = _run([dyn_model, "--passes", "lowrank{macs=0.8}", "-o", out, "-q"], capsys)
    assert code == 2 and "lowrank{macs=0.8} needs the model's MACs" in err


def test_input_shape_option(dyn_model, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _run([dyn_model, "--passes", "prune{macs=0.7}", "--input-shape", "input=1,3,96,96", "-o", out,
                      "-q"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["input_shapes"]["input"]["shape"] == [1, 3, 96, 96]
    assert report["input_shapes"]["input"]["from"] == "--input-shape"
    at96 = model_cost(io.load(dyn_model), {"input": [1, 3, 96, 96]}).macs
    assert report["before"]["macs"] == at96
    assert at96 > model_cost(io.load(dyn_model), {"input": [1, 3, 64, 64]}).macs
    # no verification was skipped: random sample inputs were made at the given shape
    assert "verify" in report["passes"][0] and "skipped" not in report["passes"][0]["verify"]
    for bad, words in ((["--input-shape", "input=1,3,96"], "3 dims given"),
                       (["--input-shape", "input=1,4,96,96"], "dim 1 is fixed to 3"),
                       (["--input-shape", "images=1,3,96,96"], "no input 'images'"),
                       (["--input-shape", "input=1,3,a,96"], "positive integers")):
        code, err = _run([dyn_model, "--passes", "fold-bn", *bad, "-o", tmp_path / "bad", "-q"], capsys)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (bad, err)


def test_inspect_counts_at_a_given_shape_and_lists_no_zero_mac_nodes(dyn_model, capsys):
    assert main(["inspect", str(dyn_model), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["summary"]["macs"] == 0 and shown["top"] == [] and "--input-shape" in shown["note"]
    assert main(["inspect", str(dyn_model), "--json", "--input-shape", "1,3,64,64"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["summary"]["macs"] == model_cost(io.load(MODELS / "mobilenetv2_s.onnx")).macs
    assert shown["top"] and all(row["macs"] > 0 for row in shown["top"])


def test_dynamic_batch_alone_is_analysed_at_batch_1(tmp_path, capsys):
    proto = _dynamic(onnx.load(MODELS / "resnet_s.onnx"), batch_only=True)
    path = tmp_path / "r.onnx"
    onnx.save(proto, path)
    out = tmp_path / "out"
    code, err = _run([path, "--passes", "prune{macs=0.8}", "-o", out, "-q"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["input_shapes"]["input"] == {"shape": [1, 3, 64, 64], "declared": "[?,3,64,64]", "from": "batch 1"}
    assert report["before"]["macs"] == model_cost(io.load(MODELS / "resnet_s.onnx")).macs
    assert 0.77 <= report["passes"][-1]["stats"]["macs_kept"] <= 0.83


def test_calibration_samples_fewer_than_a_dynamic_batch_still_feed(dyn_model):
    """Prune's sensitivity asks for 2 samples of data fed 8 at a time: it got none ([0, nan, nan] curves)."""
    model = io.load(dyn_model)
    data = CalibData.for_model({"input": rand((8, 3, 64, 64))}, model)
    assert data.dynamic_batch and data.batch == 8
    feeds = data.samples(2)
    assert len(feeds) == 1 and feeds[0]["input"].shape == (2, 3, 64, 64)
    data = CalibData.for_model({"input": rand((3, 3, 64, 64))}, model)
    assert data.batch == 3 and len(data.samples(8)) == 1
    fixed = CalibData.for_model({"input": rand((3, 3, 64, 64))}, io.load(MODELS / "mobilenetv2_s.onnx"))
    assert not fixed.dynamic_batch and fixed.batch == 1 and len(fixed.samples(2)) == 2


def test_negative_dim_value_is_an_unknown_dim(tmp_path):
    """Paddle writes dynamic output dims as dim_value -1; once a folded Reshape makes the dim known, strict shape
    inference failed ("Inferred shape and existing shape differ in dimension 0: (1) vs (-1)") on our own output."""
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"])]
    proto = make_model(nodes, [("x", [1, 2, 5])], [("y", [-1, 10])], {"s": np.array([1, 10], dtype=np.int64)})
    path = tmp_path / "neg.onnx"
    onnx.save(proto, path)
    m = io.load(path)
    assert m.graph.outputs[0].shape[1] == 10 and m.graph.outputs[0].shape[0] in (None, 1)


def _tiny_dynamic(tmp_path, tiny_model, hw: bool) -> str:
    proto = tiny_model()
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = "N"
    if hw:  # the Gemm after Flatten needs 16x16, but the declared dims may still be symbolic (exporters do this)
        for d, name in zip(dims[2:], ("H", "W")):
            d.Clear()
            d.dim_param = name
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    out_dims[0].Clear()
    out_dims[0].dim_param = "N"
    path = tmp_path / ("hw.onnx" if hw else "n.onnx")
    onnx.save(proto, path)
    return str(path)


def test_target_builds_a_dynamic_batch_model_at_batch_1_and_keeps_the_onnx_dynamic(tmp_path, tiny_model, capsys):
    pytest.importorskip("tvm")
    path = _tiny_dynamic(tmp_path, tiny_model, hw=False)
    out = tmp_path / "out"
    code, err = _run([path, "--passes", "quant", "--target", "host", "--verify-target", "-o", out, "-q"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["target"]["verification"]["status"] == "passed"
    meta = json.loads((out / "host" / "model.json").read_text())
    assert meta["inputs"][0]["shape"] == [1, 3, 16, 16] and meta["outputs"][0]["shape"] == [1, 10]
    assert meta["dynamic_inputs"] == {"x": {"shape": [1, 3, 16, 16], "declared": "[?,3,16,16]", "from": "batch 1"}}
    assert _dims(onnx.load(out / "model.onnx").graph.input[0])[0] == "N"
    # H and W dynamic too: no shape can be guessed, exit 2 before any work; with --input-shape it builds
    path = _tiny_dynamic(tmp_path, tiny_model, hw=True)
    code, err = _run([path, "--passes", "", "--target", "host", "-o", tmp_path / "o2", "-q"], capsys)
    assert code == 2 and "--target host needs static shapes: input 'x'" in err and len(err.strip().splitlines()) == 1
    code, err = _run([path, "--passes", "", "--target", "host", "--input-shape", "x=2,3,16,16", "-o",
                      tmp_path / "o3", "-q"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "o3" / "host" / "model.json").read_text())["inputs"][0]["shape"] == [2, 3, 16, 16]


@pytest.mark.parametrize("name,target", [("face_s", 0.75), ("pose_s", 0.5), ("yolo_s", 0.75)])
def test_prune_macs_budget_lands_within_3_points_under_the_target(name, target):
    """face_s is one dependency group: one greedy round cut it to 0.53 for macs=0.75."""
    from compress_graph.passes import run_pipeline

    _, report = run_pipeline(io.load(MODELS / f"{name}.onnx"), f"prune{{macs={target}}}", verify=False)
    stats = report["passes"][0]["stats"]
    assert target - 0.03 <= stats["macs_kept"] <= target + 1e-9, stats["macs_kept"]
    assert stats["macs_kept_vs_target"] == pytest.approx(stats["macs_kept"] - target, abs=1e-3)
    assert not [w for w in report["warnings"] if "landed" in w or "not reached" in w]


def test_prune_macs_budget_off_by_more_than_3_points_warns():
    from compress_graph.passes import run_pipeline

    _, report = run_pipeline(io.load(MODELS / "face_s.onnx"), "prune{macs=0.75,round_to=16}", verify=False)
    kept = report["passes"][0]["stats"]["macs_kept"]
    assert kept < 0.72  # one group in blocks of 16 channels: no cut between ~0.66 and 1.0
    assert any(f"macs=0.75 landed at {kept:.3f}" in w for w in report["warnings"]), report["warnings"]


def _resize_both(tmp_path) -> str:
    """tf2onnx's Resize for TFLite models: roi and scales empty constants next to sizes (legal ONNX)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c", "roi", "scales", "sizes"], ["y"], mode="nearest")]
    inits = {"w": rand((4, 3, 3, 3), seed=2), "roi": np.zeros(0, np.float32), "scales": np.zeros(0, np.float32),
             "sizes": np.array([1, 4, 32, 32], np.int64)}
    path = tmp_path / "resize_both.onnx"
    onnx.save(make_model(nodes, [("x", [1, 3, 16, 16])], [("y", [1, 4, 32, 32])], inits, opset=13), path)
    return str(path)


def test_resize_with_empty_scales_and_sizes_builds_for_a_target(tmp_path, capsys):
    pytest.importorskip("tvm")
    out = tmp_path / "out"
    code, err = _run([_resize_both(tmp_path), "--passes", "", "--target", "host", "--verify-target", "-o", out, "-q"],
                     capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["passes"][0]["name"] == "fold-constants"
    assert report["passes"][0]["stats"]["resize_canonicalized"] == 1
    assert report["target"]["verification"]["status"] == "passed"


def test_importer_failure_is_one_line_with_the_log_saved(tmp_path, capsys, monkeypatch):
    tvm_onnx = pytest.importorskip("tvm.relax.frontend.onnx")

    def failing(*args, **kwargs):
        print("Error converting operator Resize, with inputs: [R.nn.conv2d(x, ...)\n# Metadata omitted.")
        raise ValueError("Traceback ...\n  File x.py\nOnly one of scales and sizes can be provided in Resize.")

    monkeypatch.setattr(tvm_onnx, "from_onnx", failing)
    out = tmp_path / "out"
    code, err = _run([_resize_both(tmp_path), "--passes", "", "--target", "host", "-o", out], capsys)
    assert code == 5
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert lines == [f"error: TVM could not import the ONNX model: Only one of scales and sizes can be provided in "
                     f"Resize. (details: {tmp_path / 'out.reproducer' / 'target.log'})"], err
    assert "Metadata omitted" not in err and "Error converting" not in err
    log = (tmp_path / "out.reproducer" / "target.log").read_text()
    assert "Error converting operator Resize" in log and "Only one of scales and sizes" in log
    assert (tmp_path / "out.reproducer" / "input.onnx").exists() and not out.exists()
