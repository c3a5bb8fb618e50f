"""--metric / --eval / --max-drop: task metrics on labeled evaluation data drive the passes."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from cg_testutil import MODELS
from compress_graph.cli import main
from compress_graph.ir import io, runtime
from compress_graph.passes.metric import detection_f1, load_metric, top1, top5

PCK = textwrap.dedent('''
    import numpy as np

    def pck(outputs, labels):
        """Percent of keypoints whose heatmap peak lies within 1 cell of the labeled (x, y)."""
        hm = outputs["heatmaps"]
        n, k, h, w = hm.shape
        y, x = np.divmod(hm.reshape(n, k, -1).argmax(-1), w)
        ref = labels["keypoints"]
        return float(100.0 * np.mean((np.abs(x - ref[..., 0]) <= 1) & (np.abs(y - ref[..., 1]) <= 1)))
''')


def _pck(outputs, labels):
    scope: dict = {}
    exec(PCK, scope)
    return scope["pck"](outputs, labels)


def _heatmaps(path, x) -> np.ndarray:
    sess = runtime.session(io.load(path))
    return np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


@pytest.fixture(scope="module")
def pose_data(tmp_path_factory):
    """pose_s with keypoint labels from the float model: calibration, evaluation and held-out sets, disjoint."""
    root = tmp_path_factory.mktemp("pose")
    rng = np.random.default_rng(0)
    paths = {}
    for name, n in (("calib", 32), ("eval", 100), ("held", 100)):
        x = rng.standard_normal((n, 3, 128, 96)).astype(np.float32)
        arrays = {"input": x}
        if name != "calib":
            hm = _heatmaps(MODELS / "pose_s.onnx", x)
            y, xx = np.divmod(hm.reshape(n, 17, -1).argmax(-1), hm.shape[-1])
            arrays["keypoints"] = np.stack([xx, y], -1)
        paths[name] = root / f"{name}.npz"
        np.savez(paths[name], **arrays)
    (root / "pck.py").write_text(PCK)
    paths["metric"] = f"{root / 'pck.py'}:pck"
    return paths


def test_plugin_metric_drives_max_drop_and_holds_on_held_out_data(pose_data, tmp_path, capsys):
    args = [str(MODELS / "pose_s.onnx"), "--passes", "prune{macs=0.5},quant", "--calib", str(pose_data["calib"]),
            "--metric", pose_data["metric"], "--eval", str(pose_data["eval"]), "-q"]
    assert main([*args, "-o", str(tmp_path / "free")]) == 0
    free = json.loads((tmp_path / "free" / "report.json").read_text())["accuracy"]
    assert free["drop"] > 20 and free["max_drop"] is None  # without a budget the cut costs this much

    assert main([*args, "--max-drop", "5", "-o", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    acc = report["accuracy"]
    assert acc["met"] and acc["drop"] <= 5 and acc["original"] == 100.0
    prune = report["passes"][0]
    assert prune["accuracy_control"]["applied"].startswith("prune{macs=")
    assert 0.5 < prune["stats"]["macs_kept"] < 1.0  # backed off, not left out
    assert prune["accuracy_control"]["allowed_drop"] == 2.5  # half the budget: quant comes after it
    held = np.load(pose_data["held"])
    labels = {"keypoints": held["keypoints"]}
    original = _pck({"heatmaps": _heatmaps(MODELS / "pose_s.onnx", held["input"])}, labels)
    got = _pck({"heatmaps": _heatmaps(tmp_path / "out" / "model.onnx", held["input"])}, labels)
    assert original == 100.0 and original - got <= 5.0, got


def test_max_drop_not_met_exits_4_with_the_report(pose_data, tmp_path, capsys):
    """A fixed rank has no milder form the pipeline could back off to: the drop stays, exit 4, report written."""
    out = tmp_path / "out"
    code = main([str(MODELS / "pose_s.onnx"), "--passes", "lowrank{rank=2}", "--metric", pose_data["metric"],
                 "--eval", str(pose_data["eval"]), "--max-drop", "1", "-o", str(out), "-q"])
    err = capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert code == 4 and report["status"] == "budget_exceeded" and not report["accuracy"]["met"]
    assert f"dropped {report['accuracy']['drop']:.4g}" in err and "over --max-drop 1" in err


@pytest.mark.parametrize("args,words", [
    (["--max-drop", "1"], "--max-drop needs --metric"),
    (["--metric", "top1"], "--metric needs --eval"),
    (["--metric", "nosuch", "--eval", "e.npz"], "metric 'nosuch': expected a built-in"),
    (["--metric", "missing.py:fn", "--eval", "e.npz"], "metric file 'missing.py' not found"),
    (["--metric", "top1", "--eval", "missing.npz"], "evaluation data 'missing.npz'"),
    (["--metric", "top1", "--eval", "e.npz", "--max-drop", "-1"], "--max-drop must be >= 0"),
])
def test_accuracy_options_are_checked(args, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "e.npz", input=np.zeros((2, 3, 64, 64), np.float32), label=np.zeros(2, np.int64))
    code = main([str(MODELS / "resnet_s.onnx"), "--passes", "fold-bn", *args, "-o", "out", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_failing_metric_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.py").write_text("def m(outputs, labels):\n    return outputs['nope']\n")
    np.savez(tmp_path / "e.npz", input=np.zeros((2, 3, 64, 64), np.float32), label=np.zeros(2, np.int64))
    code = main([str(MODELS / "resnet_s.onnx"), "--passes", "fold-bn", "--metric", f"{tmp_path / 'bad.py'}:m",
                 "--eval", str(tmp_path / "e.npz"), "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "failed: KeyError: 'nope'" in err and len(err.strip().splitlines()) == 1


def test_builtin_metrics():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.3, 0.3, 0.4]])
    labels = {"label": np.array([1, 0, 1, 0])}
    assert top1({"y": logits}, labels) == 50.0
    assert top5({"y": logits}, labels) == 100.0
    assert load_metric("top1").fn is top1
    boxes = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.zeros((0, 4))]
    truth = [np.array([[1, 1, 10, 10], [50, 50, 60, 60]]), np.array([[0, 0, 5, 5]])]
    # image 1: one match (IoU 0.81), one false positive, one miss; image 2: one miss -> 2*1 / (2*1 + 1 + 2)
    assert detection_f1(boxes, truth) == pytest.approx(40.0)
    assert detection_f1([np.array([[0, 0, 10, 10]])], [np.array([[5, 0, 15, 10]])]) == 0.0  # IoU 1/3 < 0.5
    assert detection_f1([np.zeros((0, 4))], [np.zeros((0, 4))]) == 100.0


def test_default_agreement_is_per_output_and_compares_scores_at_the_threshold():
    """No metric given: each output is judged on its own scale, and score outputs by which side of 0.5 they fall
    on — a detector whose box regressors dominate can keep cosine 0.999 while its scores flip."""
    from compress_graph.passes.instruments import compare_outputs, worst

    rng = np.random.default_rng(0)
    boxes = rng.standard_normal((4, 100, 4)) * 100.0
    scores = rng.uniform(0.45, 0.55, (4, 100, 1))
    ref = [{"boxes": boxes[i:i + 1], "scores": scores[i:i + 1]} for i in range(4)]
    got = [{"boxes": boxes[i:i + 1] * 1.001, "scores": 1.0 - scores[i:i + 1]} for i in range(4)]
    metrics = compare_outputs(ref, got)
    assert metrics["boxes"]["cosine"] > 0.999 and "score_agreement" not in metrics["boxes"]
    assert metrics["scores"]["score_agreement"] < 0.1  # nearly every score crossed the threshold
    all_outputs = np.concatenate([np.concatenate([r["boxes"].ravel(), r["scores"].ravel()]) for r in ref])
    all_got = np.concatenate([np.concatenate([g["boxes"].ravel(), g["scores"].ravel()]) for g in got])
    one_cosine = float(all_outputs @ all_got / np.linalg.norm(all_outputs) / np.linalg.norm(all_got))
    assert one_cosine > 0.999  # what a single cosine over all outputs would have reported
    w = worst(metrics)
    assert w["score_agreement"] < 0.1 and w["normalized_error"] == metrics["scores"]["normalized_error"]
