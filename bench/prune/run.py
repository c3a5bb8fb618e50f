"""Benchmark of the `prune` pass on the reference models (and optionally the onnx "light" models).

    python bench/prune/run.py                      # models/*.onnx, table on stdout, JSON in bench/prune/results/
    python bench/prune/run.py --models resnet_s --levels 0.3 --samples 50
    python bench/prune/run.py --light              # structure check on the opset-9 light models (MACs, validity)

For each model and MAC reduction (20/30/50% by default) the pass runs three ways: data-driven with least-squares
reconstruction (the default when calibration data is given), the same without reconstruction, and data-free (l2
weights, no calibration data). Calibration (32) and evaluation (200) inputs are disjoint seeded N(0, 1) samples.
Reported: MACs / parameters removed, output agreement with the original on the evaluation inputs (mean and worst
per-sample cosine, top-1 agreement: argmax over classes for [N, C] outputs, over the last axis per row otherwise),
pass time, and the onnxruntime latency ratio pruned / original (median of interleaved runs, 1 thread).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT.parent))

from compress_graph import load, run_pipeline  # noqa: E402
from compress_graph.ir.cost import model_cost  # noqa: E402
from compress_graph.passes.data import CalibData  # noqa: E402

HERE = Path(__file__).resolve().parent
MODELS = ["resnet_s", "mobilenetv2_s", "yolo_s", "pose_s", "face_s"]
LIGHT = ["resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet", "vgg19"]


def session(proto, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def outputs(sess, feeds) -> list[list[np.ndarray]]:
    return [sess.run(None, f) for f in feeds]


def top1(a: np.ndarray) -> np.ndarray:
    if a.ndim >= 2 and a.shape[-1] == 1:
        a = a.reshape(a.shape[0], -1)
    if a.ndim == 2:
        return a.argmax(1)
    return a.reshape(a.shape[0], a.shape[1], -1).argmax(-1)


def agreement(ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> dict:
    cos, agree = [], []
    for r_outs, g_outs in zip(ref, got):
        per_out = []
        for r, g in zip(r_outs, g_outs):
            r64, g64 = r.astype(np.float64).ravel(), g.astype(np.float64).ravel()
            d = np.linalg.norm(r64) * np.linalg.norm(g64)
            per_out.append(float(r64 @ g64 / d) if d > 0 else 1.0)
            agree.append(float(np.mean(top1(r) == top1(g))))
        cos.append(min(per_out))
    return {"cosine_mean": float(np.mean(cos)), "cosine_min": float(np.min(cos)), "top1": float(np.mean(agree))}


def latency_ratio(p0, p1, feed, runs: int = 30) -> float:
    s0, s1 = session(p0), session(p1)
    for _ in range(3):
        s0.run(None, feed), s1.run(None, feed)
    t0, t1 = [], []
    for i in range(runs):
        order = [(s0, t0), (s1, t1)] if i % 2 == 0 else [(s1, t1), (s0, t0)]
        for s, acc in order:
            start = time.perf_counter()
            s.run(None, feed)
            acc.append(time.perf_counter() - start)
    return float(np.median(t1) / np.median(t0))


def light_model(name: str):
    import onnx.backend.test
    from compress_graph.passes.cleanup import eliminate_dead, fold_constants

    path = Path(onnx.backend.test.__file__).parent / "data" / "light" / f"light_{name}.onnx"
    m = load(path)
    fold_constants(m)
    eliminate_dead(m)
    return m


def bench_model(name: str, model, levels, samples: int, variants, light: bool) -> list[dict]:
    calib = CalibData.random(model, count=32, seed=1)
    evalset = CalibData.random(model, count=samples, seed=2).samples(samples)
    p0 = model.to_onnx()
    ref = outputs(session(p0, threads=os.cpu_count() or 1), evalset)
    base = model_cost(model)
    rows = []
    for level in levels:
        for variant in variants:
            opts = f"macs={1 - level:.2f}"
            data = calib
            if variant == "no-refit":
                opts += ",reconstruct=false"
            elif variant == "data-free":
                opts += ",criterion=l2"
                data = None
            pipe = ("fold-bn," if not light else "") + f"prune{{{opts}}}"
            t = time.perf_counter()
            pruned, report = run_pipeline(model, pipe, calib=data, verify=False)
            elapsed = time.perf_counter() - t
            stats = report["passes"][-1]["stats"]
            p1 = pruned.to_onnx()
            cost = model_cost(pruned)
            row = {"model": name, "reduction": level, "variant": variant, "pipeline": pipe,
                   "macs_removed": 1 - cost.macs / base.macs, "params_removed": 1 - cost.params / base.params,
                   "pass_time_s": elapsed, "criterion": stats["criterion"]}
            row.update(agreement(ref, outputs(session(p1, threads=os.cpu_count() or 1), evalset)))
            row["latency_ratio"] = latency_ratio(p0, p1, evalset[0], runs=10 if light else 30)
            rows.append(row)
            print(fmt_row(row), flush=True)
    return rows


HEADER = ("| model | MAC cut target | variant | MACs removed | params removed | cosine mean / min | top-1 agree "
          "| pass time | ORT latency |\n|---|---|---|---|---|---|---|---|---|")


def fmt_row(r: dict) -> str:
    return (f"| {r['model']} | {r['reduction']:.0%} | {r['variant']} | {r['macs_removed']:.1%} "
            f"| {r['params_removed']:.1%} | {r['cosine_mean']:.4f} / {r['cosine_min']:.4f} | {r['top1']:.3f} "
            f"| {r['pass_time_s']:.1f} s | {r['latency_ratio']:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="comma-separated names (default: all reference models)")
    ap.add_argument("--levels", default="0.2,0.3,0.5", help="MAC reductions (fraction removed)")
    ap.add_argument("--samples", type=int, default=200, help="evaluation inputs")
    ap.add_argument("--variants", default="refit,no-refit,data-free")
    ap.add_argument("--light", action="store_true", help="the onnx light models (structure only) instead")
    args = ap.parse_args()
    names = args.models.split(",") if args.models else (LIGHT if args.light else MODELS)
    levels = [float(v) for v in args.levels.split(",")]
    variants = args.variants.split(",")
    print(HEADER, flush=True)
    rows = []
    for name in names:
        model = light_model(name) if args.light else load(ROOT / "models" / f"{name}.onnx")
        rows.extend(bench_model(name, model, levels, args.samples, variants, args.light))
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    tag = "light" if args.light else "models"
    (out / f"{tag}.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
