"""compress_graph `quant` side by side with onnxruntime.quantization.quantize_static.

    python bench/quant/run.py                       # models/*.onnx
    python bench/quant/run.py --real                # + the trained models of bench/accuracy (if fetched)
    python bench/quant/run.py --pipeline "fold-bn,quant{method=mse}" --models mobilenetv2_s

Same model, same calibration samples, per-channel int8 weights and QDQ format on both sides. Per variant:
agreement with the float model on held-out samples (worst-output cosine; top-1 agreement for classifiers; the
task metric for real models), file size, quantization wall time and peak RSS (each quantizer runs in its own
subprocess, measured with os.wait4), and onnxruntime latency relative to float (interleaved runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODELS = ["resnet_s", "mobilenetv2_s", "yolo_s", "pose_s", "face_s"]
REAL = ["ppocr_cls", "doc_orientation", "ppocr_rec", "ppocr_det", "yolox_chars", "layout_picodet"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- workers
def worker(kind: str, spec: str, src: str, calib: str, dst: str) -> None:
    """Runs in a subprocess: quantize `src` with calibration `calib` (.npz) into `dst`; print the seconds."""
    t0 = time.perf_counter()
    if kind == "cg":
        from compress_graph import load, run_pipeline, save

        model, _ = run_pipeline(load(src), spec, calib=calib, verify=False)
        save(model, dst)
    else:
        import logging

        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        logging.getLogger().setLevel(logging.ERROR)
        npz = np.load(calib)
        name = npz.files[0]
        arr = npz[name]

        class Reader:
            def __init__(self):
                self.i = 0

            def get_next(self):
                if self.i >= len(arr):
                    return None
                self.i += 1
                return {name: arr[self.i - 1:self.i]}

            def rewind(self):
                self.i = 0

        model = onnx.load(src)
        opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        staged = src
        if opset < 13:
            model = onnx.version_converter.convert_version(model, 13)
            staged = dst + ".fp32.onnx"
            onnx.save(model, staged)
        act = QuantType.QUInt8 if spec.endswith(":u8") else QuantType.QInt8
        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[spec.split(":")[0]]
        quantize_static(staged, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=act, weight_type=QuantType.QInt8, calibrate_method=method)
    print(json.dumps({"seconds": time.perf_counter() - t0}))


def run_worker(kind: str, spec: str, src: Path, calib: Path, dst: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, spec, str(src), str(calib), str(dst)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError((err.strip().splitlines() or ["failed"])[-1][:200])
    info = json.loads(out.strip().splitlines()[-1])
    info["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux: kilobytes
    return info


# ----------------------------------------------------------------------------------------------- measures
def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def outputs(path: Path, inputs: np.ndarray) -> list[list[np.ndarray]]:
    sess = session(path, 2)
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: x[None]}) for x in inputs]


def agreement(ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> dict:
    cos, top1 = 1.0, None
    for k in range(len(ref[0])):
        a = np.concatenate([r[k].ravel() for r in ref]).astype(np.float64)
        b = np.concatenate([g[k].ravel() for g in got]).astype(np.float64)
        d = np.linalg.norm(a) * np.linalg.norm(b)
        cos = min(cos, float(a @ b / d) if d else 1.0)
        if ref[0][k].ndim == 2 and ref[0][k].shape[1] > 1:
            t = float(np.mean([r[k].argmax() == g[k].argmax() for r, g in zip(ref, got)]))
            top1 = t if top1 is None else min(top1, t)
    return {"cosine": cos, "top1": top1}


def latency_ratio(base: Path, other: Path, x: np.ndarray, runs: int) -> float:
    sa, sb = session(base), session(other)
    fa = {sa.get_inputs()[0].name: x[None]}
    fb = {sb.get_inputs()[0].name: x[None]}
    for _ in range(3):
        sa.run(None, fa)
        sb.run(None, fb)
    ta, tb = [], []
    for r in range(runs):
        pair = [(sa, fa, ta), (sb, fb, tb)]
        for s, f, acc in pair if r % 2 == 0 else pair[::-1]:
            t0 = time.perf_counter()
            s.run(None, f)
            acc.append(time.perf_counter() - t0)
    return float(np.median(tb) / np.median(ta))


def integer_kernels(path: Path) -> int:
    """Number of fused integer ops (QLinear*, *Integer*) in onnxruntime's optimized graph."""
    o = ort.SessionOptions()
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    o.log_severity_level = 3
    with tempfile.TemporaryDirectory() as d:
        o.optimized_model_filepath = str(Path(d) / "opt.onnx")
        ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
        m = onnx.load(o.optimized_model_filepath)
    return sum(1 for n in m.graph.node if n.op_type.startswith("QLinear") or "Integer" in n.op_type)


# ----------------------------------------------------------------------------------------------- data
def synthetic_data(path: Path, n_calib: int, n_eval: int) -> tuple[np.ndarray, np.ndarray, None]:
    m = onnx.load(str(path), load_external_data=False)
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim][1:]
    calib = np.random.default_rng(1).standard_normal((n_calib, *shape)).astype(np.float32)
    ev = np.random.default_rng(2).standard_normal((n_eval, *shape)).astype(np.float32)
    return calib, ev, None


def real_model(name: str, n_calib: int, n_eval: int):
    sys.path.insert(0, str(ROOT / "bench" / "accuracy"))
    import fetch
    import tasks

    path = fetch.fetch_model(name)
    task = tasks.TASKS[name]
    proto = onnx.load(str(path), load_external_data=False)
    if task.needs:
        task.needs({p.key: p.value for p in proto.metadata_props})
    data = tasks.build_dataset(task, n_calib, n_eval, 0)
    return path, data.calib, data.inputs, task, data.labels


def task_metric(task, labels, float_outs, outs) -> float:
    preds = [task.predict(o) for o in outs]
    refs = [task.predict(o) for o in float_outs] if task.reference == "float" else labels
    return float(task.score(preds, refs))


# ----------------------------------------------------------------------------------------------- main
def bench_one(name: str, args, work: Path) -> list[dict]:
    task = labels = None
    if name in MODELS:
        src = ROOT / "models" / f"{name}.onnx"
        calib, ev, _ = synthetic_data(src, args.calib_samples, args.eval_samples)
    else:
        src, calib, ev, task, labels = real_model(name, args.calib_samples, args.eval_samples)
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    calib_path = work / f"{name}.calib.npz"
    np.savez(calib_path, **{input_name: calib})
    ref = outputs(src, ev)
    rows = []
    float_metric = task_metric(task, labels, ref, ref) if task else None
    variants = [("compress_graph " + p, "cg", p) for p in args.pipeline.split(";")]
    variants += [(f"ort quantize_static {m}", "ort", m) for m in args.ort.split(",") if m]
    for label, kind, spec in variants:
        dst = work / f"{name}.{len(rows)}.onnx"
        row = {"model": name, "variant": label, "float_size_kb": src.stat().st_size / 1024}
        try:
            info = run_worker(kind, spec, src, calib_path, dst)
            got = outputs(dst, ev)
            row.update(agreement(ref, got))
            if task:
                row["metric"] = task_metric(task, labels, ref, got)
                row["float_metric"] = float_metric
                row["metric_name"] = task.metric
            row.update(size_kb=dst.stat().st_size / 1024, quant_s=info["seconds"], peak_rss_mb=info["peak_rss_mb"],
                       latency_ratio=latency_ratio(src, dst, ev[0], args.runs), int_kernels=integer_kernels(dst))
        except Exception as exc:  # one failing variant must not hide the others
            row["error"] = f"{type(exc).__name__}: {exc}"[:200]
        log(f"[{name}] {label}: {json.dumps({k: v for k, v in row.items() if k not in ('model', 'variant')})}")
        rows.append(row)
    return rows


def fmt(v, spec=".4f") -> str:
    return "—" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    lines = ["| model | variant | cosine | top-1 agr. | task metric (float → q) | size KB (float → q) | ratio "
             "| quant s | peak RSS MB | latency × float | int kernels |", "|" + "---|" * 11]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | error: {r['error'].replace('|', '/')} |" + " |" * 8)
            continue
        metric = f"{r['float_metric']:.1f} → {r['metric']:.1f}" if "metric" in r else "—"
        lines.append(f"| {r['model']} | {r['variant']} | {fmt(r['cosine'])} | {fmt(r['top1'], '.3f')} | {metric} "
                     f"| {r['float_size_kb']:.0f} → {r['size_kb']:.0f} | {r['float_size_kb'] / r['size_kb']:.2f}x "
                     f"| {r['quant_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['latency_ratio']:.2f} | {r['int_kernels']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:7])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="", help="comma-separated models (default: models/ and, with --real, all)")
    p.add_argument("--real", action="store_true", help="also the trained models of bench/accuracy")
    p.add_argument("--pipeline", default="fold-bn,quant", help='";"-separated compress_graph pipelines')
    p.add_argument("--ort", default="minmax",
                   help="quantize_static calibrators (minmax,percentile,entropy; suffix ':u8': uint8 activations)")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--eval-samples", type=int, default=32)
    p.add_argument("--runs", type=int, default=30, help="interleaved latency runs")
    p.add_argument("--json", type=Path, default=HERE / "results.json")
    args = p.parse_args(argv)
    names = [m for m in args.models.split(",") if m] or MODELS + (REAL if args.real else [])
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            try:
                rows += bench_one(name, args, Path(d))
            except Exception as exc:
                log(f"[{name}] skipped: {type(exc).__name__}: {exc}")
                rows.append({"model": name, "variant": "—", "error": f"skipped: {exc}"[:200]})
    args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
