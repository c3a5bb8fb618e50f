"""Low-rank factorization on the reference models: MACs removed vs output agreement, data-free vs data-aware.

    python bench/lowrank/run.py [--models resnet_s,yolo_s] [--eval 32] [--calib 32] [--runs 30]

For every model (BN folded first, so the baseline is `fold-bn`) and every setting (`energy` levels, global `macs`
targets), the pass runs once without data and once with calibration inputs (seeded N(0, 1), the distribution the
reference models were built for); evaluation inputs are a disjoint seeded set. Reported: MACs removed
(ir/cost), cosine similarity (worst output; YOLO's boxes and scores separately) and top-1 agreement with the
unfactorized model, and the onnxruntime latency ratio (1 thread, runs interleaved in alternating order so machine
drift hits both models alike).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from compress_graph import load, run_pipeline
from compress_graph.ir.cost import model_cost
from compress_graph.passes.data import CalibData
from compress_graph.passes.instruments import compare_outputs, worst

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent.parent / "models"
SETTINGS = ["energy=0.99", "energy=0.95", "energy=0.9", "macs=0.85", "macs=0.7"]


def session(proto, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def outputs(proto, feeds: list[dict]) -> list[dict]:
    sess = session(proto, threads=2)
    names = [o.name for o in sess.get_outputs()]
    return [split(dict(zip(names, sess.run(names, f)))) for f in feeds]


def split(outs: dict) -> dict:
    """YOLO's output0 joins box pixels (~0-128) and class scores (0-1): judge the scores on their own too."""
    if set(outs) == {"output0"}:
        o = outs["output0"]
        return {"boxes": o[:, :4], "scores": o[:, 4:]}
    return outs


def latency_ratio(base, other, feed: dict, runs: int) -> float:
    sa, sb = session(base), session(other)
    for _ in range(3):
        sa.run(None, feed)
        sb.run(None, feed)
    ta, tb = [], []
    for r in range(runs):
        order = [(sa, ta), (sb, tb)]
        for sess, acc in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            sess.run(None, feed)
            acc.append(time.perf_counter() - t0)
    return float(np.median(tb) / np.median(ta))


def bench_model(name: str, args: argparse.Namespace) -> list[dict]:
    model = load(str(MODELS / f"{name}.onnx"))
    base, _ = run_pipeline(model, "fold-bn", verify=False)
    base_proto = base.to_onnx()
    base_macs = model_cost(base).macs
    calib = CalibData.random(base, count=args.calib, seed=1)
    evals = CalibData.random(base, count=args.eval, seed=2).samples(args.eval)
    ref = outputs(base_proto, evals)
    rows = []
    for setting in args.settings.split(","):
        for aware in (False, True):
            text = f"lowrank{{{setting}}}"
            t0 = time.perf_counter()
            out, report = run_pipeline(base, text, calib=calib if aware else None, verify=False)
            seconds = time.perf_counter() - t0
            stats = report["passes"][-1]["stats"]
            proto = out.to_onnx()
            m = worst(compare_outputs(ref, outputs(proto, evals)))
            macs = model_cost(out).macs
            row = {"model": name, "setting": setting, "data": "aware" if aware else "free",
                   "factorized": stats.get("factorized", 0), "macs_removed": 1 - macs / base_macs,
                   "cosine": m.get("cosine"), "top1": m.get("top1_agreement"),
                   "latency": latency_ratio(base_proto, proto, evals[0], args.runs) if stats.get("factorized")
                   else 1.0, "pass_s": seconds}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | setting | data | layers | MACs removed | cosine | top-1 | ORT latency | pass time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        top1 = f"{r['top1']:.2f}" if r["top1"] is not None else "-"
        lines.append(f"| {r['model']} | {r['setting']} | {r['data']} | {r['factorized']} | "
                     f"{100 * r['macs_removed']:.1f}% | {r['cosine']:.4f} | {top1} | {r['latency']:.2f}x | "
                     f"{r['pass_s']:.1f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet_s,mobilenetv2_s,yolo_s,pose_s,face_s")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated lowrank option sets")
    p.add_argument("--eval", type=int, default=32, help="evaluation inputs per model")
    p.add_argument("--calib", type=int, default=32, help="calibration inputs per model (data-aware runs)")
    p.add_argument("--runs", type=int, default=30, help="interleaved latency runs per pair")
    p.add_argument("--json", type=Path, default=HERE / "results.json")
    args = p.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        rows.extend(bench_model(name, args))
    args.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
