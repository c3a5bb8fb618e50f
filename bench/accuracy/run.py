"""Accuracy of a compress_graph pipeline on real trained models, next to onnxruntime's quantizer.

    python bench/accuracy/run.py --pipeline "fold-bn,quant" [--models a,b] [--samples N] [--peers]
    python bench/accuracy/run.py --report bench/accuracy/results/fold-bn.json   # table from saved JSON

For every model: render the calibration and evaluation sets (disjoint, seeded), run the pipeline through
the Python API, decode both models' outputs the way the shipping package does, and report the task metric,
its drop in points, MACs, parameters, file size, the onnxruntime latency ratio and the pass time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import sys
import time
import traceback
from pathlib import Path

import fetch
import numpy as np
import onnx
import onnxruntime as ort
import peers
import tasks

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def slug(pipeline: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=]+", "-", pipeline).strip("-") or "identity"


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def predict_all(path: Path, task: tasks.Task, inputs: np.ndarray, threads: int = 2) -> list:
    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    return [task.predict(sess.run(None, {name: x[None]})) for x in inputs]


def latency_ratio(base: Path, other: Path, sample: np.ndarray, threads: int, runs: int) -> float:
    """Median latency of `other` / `base`, runs interleaved (alternating order) so drift hits both alike."""
    sa, sb = session(base, threads), session(other, threads)
    feed_a = {sa.get_inputs()[0].name: sample[None]}
    feed_b = {sb.get_inputs()[0].name: sample[None]}
    for _ in range(2):
        sa.run(None, feed_a)
        sb.run(None, feed_b)
    ta, tb = [], []
    for r in range(runs):
        order = [(sa, feed_a, ta), (sb, feed_b, tb)]
        for sess, feed, acc in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            sess.run(None, feed)
            acc.append(time.perf_counter() - t0)
    return float(np.median(tb) / np.median(ta))


def cost_of(path: Path, shape: list[int] | None = None) -> dict:
    """MACs and parameters from compress_graph's cost model (a dynamic input counted at ``shape``), file size from
    disk."""
    out = {"size_mb": path.stat().st_size / 1e6, "macs": None, "params": None}
    try:
        from compress_graph import load
        from compress_graph.ir.cost import model_cost

        # count both sides after compress_graph's normalisation (opset >= 13, shapes inferred), so an
        # old-opset original is not undercounted where plain shape inference stops early
        model = load(path)
        name = model.graph.inputs[0].name
        cost = model_cost(model.to_onnx(), {name: list(shape)} if shape else None)
        out["macs"], out["params"] = int(cost.macs), int(cost.params)
        out["act_bytes"] = int(cost.act_bytes)
    except Exception as exc:  # cost model missing or unable to read this graph: report, don't fail
        out["cost_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
    return out


def run_compress_graph(src: Path, dst: Path, pipeline: str, calib_npz: Path, control=None,
                       max_drop: float | None = None) -> tuple[float, str]:
    """Apply `pipeline` via the Python API; returns (pass seconds, note). ``control``: (task, inputs, refs) the
    ``--max-drop`` budget is judged on (the task metric on the control set, never the evaluation set)."""
    from compress_graph import load, run_pipeline, save

    model = load(src)
    t0 = time.perf_counter()
    accuracy = task_budget(model, *control, max_drop) if control is not None else None
    model, report = run_pipeline(model, pipeline, calib=str(calib_npz), verify=False, accuracy=accuracy)
    seconds = time.perf_counter() - t0
    save(model, dst)
    warnings = report.get("warnings", []) if isinstance(report, dict) else []
    note = f"{len(warnings)} warning(s), first: {str(warnings[0])[:90]}" if warnings else ""
    if accuracy is not None:
        acc = report["accuracy"]
        applied = [r["accuracy_control"]["applied"] for r in report["passes"] if "accuracy_control" in r]
        floats = [len(r["stats"]["accuracy_control"].get("float_layers", [])) for r in report["passes"]
                  if "accuracy_control" in r.get("stats", {})]
        note = (f"control set: drop {acc['drop']:.2f} ({acc['evaluations']} evaluations)"
                + (f", ran {', '.join(applied)}" if applied else "")
                + (f", {floats[0]} nodes float" if floats else "") + (f"; {note}" if note else ""))
    return seconds, note


def task_budget(model, task: tasks.Task, inputs: np.ndarray, refs: list, max_drop: float):
    """The task metric as a compress_graph metric on the control samples (one run per sample batch, decoded the way
    the package decodes), with the --max-drop budget."""
    from compress_graph.passes.metric import AccuracyBudget, Evaluator, Metric

    def score(outputs: dict, labels: dict) -> float:
        names = list(outputs)
        n = len(outputs[names[0]])
        preds = [task.predict([outputs[k][i:i + 1] for k in names]) for i in range(n)]
        return task.score(preds, refs)

    name = model.graph.inputs[0].name
    evaluator = Evaluator(Metric(task.metric, score), {name: inputs}, model)
    return AccuracyBudget(evaluator, model, max_drop)


def variants(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(label, kind, spec) rows to produce per model: the pipeline itself, then the requested peers."""
    rows = [(f"compress_graph: {args.pipeline or '(identity)'}", "pipeline", args.pipeline)]
    if args.max_drop is not None:
        rows.append((f"compress_graph: {args.pipeline} --max-drop {args.max_drop:g}", "budget", args.pipeline))
    if not args.peers:
        return rows
    peer_pipes = ([("peer", p) for p in args.peer_pipelines.split(";") if p.strip()] if args.peer_pipelines
                  else peers.default_peer_pipelines(args.pipeline))
    rows += [(f"compress_graph: {p} ({label})", "pipeline", p) for label, p in peer_pipes]
    if args.ort_quant == "auto":
        want_ort = "quant" in [re.match(r"[\w-]*", p).group(0) for p in peers.split_pipeline(args.pipeline)] \
            or not peer_pipes
    else:
        want_ort = args.ort_quant == "on"
    if want_ort:
        methods = [m for m in args.ort_methods.split(",") if m]
        rows += [(f"ort quantize_static QDQ per-channel {m}", "ort", m) for m in methods]
    return rows


def bench_model(name: str, args: argparse.Namespace, workdir: Path) -> list[dict]:
    task = tasks.TASKS[name]
    path = fetch.fetch_model(name, as_shipped=args.as_shipped)
    proto = onnx.load(str(path), load_external_data=False)
    if task.needs:
        task.needs({p.key: p.value for p in proto.metadata_props})
    input_name = proto.graph.input[0].name
    t0 = time.perf_counter()
    data = tasks.build_dataset(task, args.calib_samples, args.samples, args.seed,
                               n_control=args.control_samples if args.max_drop is not None else 0)
    calib_npz = workdir / f"{name}.calib.npz"
    np.savez(calib_npz, **{input_name: data.calib})
    float_preds = predict_all(path, task, data.inputs)
    refs = float_preds if task.reference == "float" else data.labels
    float_metric = task.score(float_preds, refs)
    shape = [1, *data.calib.shape[1:]]  # where a shipped model's dims are dynamic, counted at the data's shape
    base_cost = cost_of(path, shape)
    control = None
    if data.control is not None:
        control_refs = (predict_all(path, task, data.control) if task.reference == "float"
                        else data.control_labels)
        control = (task, data.control, control_refs)
    log(f"[{name}] float {task.metric} = {float_metric:.2f} ({len(data.calib)} calib / "
        f"{len(data.inputs)} eval, {time.perf_counter() - t0:.1f}s)")
    rows = []
    for i, (label, kind, spec) in enumerate(variants(args)):
        row = {"model": name, "variant": label, "metric_name": task.metric, "reference": task.reference,
               "budget": budget_of(kind, spec, task, args), "as_shipped": bool(args.as_shipped),
               "float": round(float_metric, 2), "compressed": None, "drop": None, "before": base_cost,
               "after": None, "latency_ratio": None, "pass_s": None, "note": ""}
        out = workdir / f"{name}.v{i}.onnx"
        try:
            t1 = time.perf_counter()
            if kind == "pipeline":
                row["pass_s"], row["note"] = run_compress_graph(path, out, spec, calib_npz)
            elif kind == "budget":
                row["pass_s"], row["note"] = run_compress_graph(path, out, spec, calib_npz, control, args.max_drop)
            else:
                stride = peers.calib_stride(len(data.calib), base_cost.get("act_bytes"), args.calib_mem_gb * 1e9)
                row["note"] = peers.ort_quantize(path, out, input_name, data.calib, spec, stride)
                row["pass_s"] = time.perf_counter() - t1
            preds = predict_all(out, task, data.inputs)
            metric = task.score(preds, refs)
            ratio = latency_ratio(path, out, data.inputs[0], args.threads, args.runs)
            row.update(compressed=round(metric, 2), drop=round(float_metric - metric, 2), after=cost_of(out, shape),
                       latency_ratio=round(ratio, 3))
            row["pass_s"] = round(row["pass_s"], 2)
        except Exception as exc:  # one failing variant must not hide the others
            first = str(exc).splitlines()[0] if str(exc) else ""
            row["note"] = f"skipped: {type(exc).__name__}: {first}"[:200]
            if args.verbose:
                traceback.print_exc()
        out.unlink(missing_ok=True)  # compressed models are large and not needed after measuring
        log(f"[{name}] {label}: {row['compressed']} (drop {row['drop']}) {row['note']}")
        rows.append(row)
    return rows


def budget_of(kind: str, spec: str, task: tasks.Task, args: argparse.Namespace) -> str:
    """What the row's budget was measured in: the task metric (--max-drop), MACs, output cosine, or none."""
    if kind == "budget":
        return f"drop ≤ {args.max_drop:g} pts {task.metric}, control set"
    if kind == "ort":
        return "none"
    parts = [f"MACs {m}" for m in re.findall(r"macs=([0-9.]+)", spec or "")]
    parts += [f"cosine drop {b}" for b in re.findall(r"budget=([0-9.e-]+)", spec or "")]
    return ", ".join(parts) or "none"


def _fmt(v, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


def _pair(row: dict, key: str, scale: float, spec: str) -> str:
    a = row["before"].get(key) if row["before"] else None
    b = row["after"].get(key) if row["after"] else None
    return f"{_fmt(None if a is None else a / scale, spec)} → {_fmt(None if b is None else b / scale, spec)}"


def markdown_table(result: dict) -> str:
    head = ("| model | variant | metric | budget in | float | compressed | drop (pts) | MMACs | params (k) | size MB "
            "| latency ×| pass s | note |")
    lines = [head, "|" + "---|" * 13]
    for r in result["rows"]:
        lines.append(" | ".join([
            f"| {r['model']}{' (as shipped)' if r.get('as_shipped') else ''}", r["variant"], r["metric_name"],
            r.get("budget", "—"), _fmt(r["float"]), _fmt(r["compressed"]),
            _fmt(r["drop"]), _pair(r, "macs", 1e6, ".1f"), _pair(r, "params", 1e3, ".0f"),
            _pair(r, "size_mb", 1, ".2f"), _fmt(r["latency_ratio"]), _fmt(r["pass_s"], ".1f"),
            r["note"].replace("|", "/") + " |"]))
    for s in result.get("skipped", []):
        lines.append(f"| {s['model']} | — | — | — | — | — | — | — | — | — | — | — | {s['reason']} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", help='compress_graph pipeline text, e.g. "fold-bn,quant" ("" = identity)')
    p.add_argument("--models", default=",".join(tasks.TASKS), help="comma-separated subset of models")
    p.add_argument("--samples", type=int, default=100, help="evaluation samples per model")
    p.add_argument("--calib-samples", type=int, default=32, help="calibration samples per model")
    p.add_argument("--peers", action="store_true", help="also run the peer baselines on the same data")
    p.add_argument("--ort-methods", default="minmax,percentile", help="quantize_static calibrators to run")
    p.add_argument("--ort-quant", choices=("auto", "on", "off"), default="auto",
                   help="onnxruntime quantizer peers (auto: for quant pipelines or when no other peer)")
    p.add_argument("--peer-pipelines", default="",
                   help='";"-separated peer pipelines (default: the pipeline with reconstruct=false)')
    p.add_argument("--calib-mem-gb", type=float, default=14.0,
                   help="memory budget for onnxruntime's calibrators (chunked calibration above it)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the latency ratio")
    p.add_argument("--runs", type=int, default=20, help="interleaved latency runs per model pair")
    p.add_argument("--as-shipped", action="store_true",
                   help="compress the .onnx as the wheel ships it (dynamic dims kept) instead of the fixed-shape copy")
    p.add_argument("--max-drop", type=float,
                   help="also run the pipeline with this task-metric budget (points), judged on a control set")
    p.add_argument("--control-samples", type=int, default=50, help="samples of the --max-drop control set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="where to write results (default results/<pipeline-slug>.json)")
    p.add_argument("--workdir", type=Path, help="scratch folder for models and calibration (default: cache)")
    p.add_argument("--report", type=Path, nargs="+", help="only print the table of saved results JSON files")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.report is None and args.pipeline is None:
        p.error("--pipeline is required (use --pipeline '' for the identity)")
    unknown = [m for m in args.models.split(",") if m and m not in tasks.TASKS]
    if unknown:
        p.error(f"unknown models {unknown}; known: {', '.join(tasks.TASKS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        results = [json.loads(path.read_text()) for path in args.report]
        merged = {"rows": [r for res in results for r in res["rows"]],
                  "skipped": [s for res in results for s in res.get("skipped", [])]}
        merged["rows"].sort(key=lambda r: list(tasks.TASKS).index(r["model"]) if r["model"] in tasks.TASKS else 99)
        print(markdown_table(merged))
        return 0
    # one folder per run: concurrent runs of the same pipeline must not wipe each other's files
    workdir = args.workdir or fetch.cache_dir() / "runs" / f"{slug(args.pipeline)}.{os.getpid()}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    result = {"pipeline": args.pipeline, "date": now,
              "settings": {"samples": args.samples, "calib_samples": args.calib_samples, "seed": args.seed,
                           "as_shipped": bool(args.as_shipped), "max_drop": args.max_drop,
                           "control_samples": args.control_samples if args.max_drop is not None else 0,
                           "latency_threads": args.threads, "latency_runs": args.runs,
                           "onnxruntime": ort.__version__},
              "models": {n: {"package": f"{s.package}=={s.version}", "sha256": s.sha256,
                             "input_shape": list(s.input_shape)} for n, s in fetch.SOURCES.items()},
              "rows": [], "skipped": []}
    suffix = (".shipped" if args.as_shipped else "") + (f".max-drop={args.max_drop:g}" if args.max_drop is not None
                                                         else "")
    out = args.json or RESULTS / f"{slug(args.pipeline)}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in [m for m in args.models.split(",") if m]:
        try:
            fetch.fetch_model(name, as_shipped=args.as_shipped)
        except (fetch.FetchError, OSError) as exc:
            log(f"skip {name}: {exc}")
            result["skipped"].append({"model": name, "reason": f"not fetched: {exc}"})
            continue
        result["rows"] += bench_model(name, args, workdir)
        out.write_text(json.dumps(result, indent=1) + "\n")  # after every model: a crash keeps the rest
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown_table(result))
    log(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
