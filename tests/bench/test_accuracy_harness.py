"""The accuracy benchmark (bench/accuracy) runs end to end on one real model, so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL", reason="the accuracy benchmark renders its data with Pillow")

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "accuracy"


@pytest.fixture
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import decode
    import peers
    import tasks

    return decode, peers, tasks


def test_metrics_and_matching(bench_modules):
    decode, _, _ = bench_modules
    assert decode.edit_distance("kitten", "sitting") == 3
    assert decode.char_accuracy(["abcd"], ["abed"]) == pytest.approx(75.0)
    ref = decode.detections([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [0, 0])
    pred = decode.detections([[1, 1, 10, 10], [50, 50, 60, 60]], [0.9, 0.8], [0, 0])
    assert decode.match_counts(pred, ref) == (1, 1, 1)
    assert decode.detection_f1([pred], [ref]) == pytest.approx(50.0)
    probs = np.eye(5)[[1, 1, 0, 1, 2, 2, 0]]
    assert decode.ctc_greedy(probs, list("abcd")) == "aab"


def test_yunet_decode(bench_modules):
    """One face at stride 8, cell (row 2, col 3), offset (0.5, 0.5), 2x2 cells: centre (28, 20), box 16 x 16."""
    decode, _, _ = bench_modules
    outs = []
    cells = (16, 4, 1)  # strides 8, 16, 32 at 32 x 32
    for kind in ("cls", "obj", "bbox"):
        for n in cells:
            outs.append(np.zeros((1, n, 4 if kind == "bbox" else 1), np.float32))
    cls8, obj8, bbox8 = outs[0], outs[3], outs[6]
    cell = 2 * 4 + 3
    cls8[0, cell, 0], obj8[0, cell, 0] = 0.9, 0.9
    bbox8[0, cell] = [0.5, 0.5, np.log(2.0), np.log(2.0)]
    det = decode.yunet_boxes(outs, 32, 32)
    assert det["boxes"].tolist() == [[20.0, 12.0, 36.0, 28.0]] and det["scores"][0] == pytest.approx(0.9)


def test_peer_pipeline_text(bench_modules):
    _, peers, _ = bench_modules
    parts = peers.split_pipeline("fold-bn,prune{ratio=0.3,x=1},quant")
    assert parts == ["fold-bn", "prune{ratio=0.3,x=1}", "quant"]
    assert peers.with_option("fold-bn,prune{ratio=0.3}", ("prune",), "reconstruct=false") == \
        "fold-bn,prune{ratio=0.3,reconstruct=false}"
    assert peers.default_peer_pipelines("fold-bn,quant") == []


def test_split_is_disjoint_deterministic_and_covers_classes(bench_modules):
    _, _, tasks = bench_modules
    task = tasks.TASKS["ppocr_cls"]
    a = tasks.build_dataset(task, 4, 6, seed=0)
    b = tasks.build_dataset(task, 4, 6, seed=0)
    assert np.array_equal(a.calib, b.calib) and np.array_equal(a.inputs, b.inputs)
    assert a.calib.shape == (4, 3, 48, 192)
    assert set(a.labels) == {0, 1}


@pytest.mark.slow
def test_harness_end_to_end_on_one_real_model(tmp_path):
    fetched = subprocess.run([sys.executable, str(BENCH / "fetch.py"), "--models", "ppocr_cls"],
                             capture_output=True, text=True, timeout=600)
    if fetched.returncode != 0:
        pytest.skip(f"model not fetchable (no network?): {(fetched.stdout + fetched.stderr).strip()[-200:]}")
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(BENCH / "run.py"), "--pipeline", "fold-bn", "--models", "ppocr_cls",
           "--samples", "8", "--calib-samples", "4", "--peers", "--ort-methods", "minmax", "--runs", "3",
           "--json", str(out), "--workdir", str(tmp_path / "work")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    ours = rows["compress_graph: fold-bn"]
    assert ours["compressed"] is not None, ours["note"]
    assert ours["drop"] == pytest.approx(0.0, abs=1e-6)  # folding BN is exact up to float rounding
    assert ours["after"]["macs"] < ours["before"]["macs"]
    peer = rows["ort quantize_static QDQ per-channel minmax"]
    assert peer["compressed"] is not None, peer["note"]
    assert "| ppocr_cls |" in proc.stdout
    # as shipped ([-1,3,?,?] input) with a task-metric budget judged on the control set
    out = tmp_path / "shipped.json"
    cmd = [sys.executable, str(BENCH / "run.py"), "--pipeline", "fold-bn,quant", "--models", "ppocr_cls",
           "--as-shipped", "--max-drop", "1", "--samples", "8", "--calib-samples", "4", "--control-samples", "8",
           "--runs", "1", "--json", str(out), "--workdir", str(tmp_path / "work2")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    budget = rows["compress_graph: fold-bn,quant --max-drop 1"]
    assert budget["compressed"] is not None and budget["as_shipped"], budget["note"]
    assert budget["budget"] == "drop ≤ 1 pts top-1 % (0/180), control set" and "control set: drop" in budget["note"]
    assert budget["before"]["macs"] > 0  # the dynamic model counted at the calibration shape
    assert rows["compress_graph: fold-bn,quant"]["budget"] == "none"
