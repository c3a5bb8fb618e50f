"""Task metrics of a built target library, run where the build verifies it (qemu-aarch64 for `arm`).

    python bench/accuracy/library.py --target "arm{cpu=cortex-a76,fp16=true}" [--models a,b] [--samples N]

run.py scores ONNX models in onnxruntime (the QDQ semantics, the same on every machine). A target option that
changes the arithmetic itself, such as `arm{fp16=true}` (float16 inside the library), can only be judged by running
the library: each model goes through `fold-bn` and the target's ONNX passes, is built for the target, and every
evaluation sample runs through the library under qemu (about 2 s a sample); the outputs are decoded and scored as
run.py does, next to the float model in onnxruntime on the same samples.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import fetch
import numpy as np
import onnx
import tasks
from run import RESULTS, log, predict_all, slug

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "arm"))
import insn  # noqa: E402  (bench/arm: the pipeline with a target's ONNX passes)


def bench_model(name: str, target: str, args: argparse.Namespace, workdir: Path) -> dict:
    from compress_graph.targets import build_for_target
    from compress_graph.targets.runners import run_qemu

    task = tasks.TASKS[name]
    path = fetch.fetch_model(name)
    proto = onnx.load(str(path), load_external_data=False)
    if task.needs:
        task.needs({p.key: p.value for p in proto.metadata_props})
    data = tasks.build_dataset(task, 1, args.samples, args.seed)
    float_preds = predict_all(path, task, data.inputs)
    refs = float_preds if task.reference == "float" else data.labels
    float_metric = task.score(float_preds, refs)
    t0 = time.perf_counter()
    folded = insn.compressed(path, args.pipeline, workdir / f"{name}.onnx", target.split("{")[0], args.seed)
    section = build_for_target(onnx.load(str(folded)), target, workdir / f"{name}.lib")
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    ran = run_qemu(Path(section["library"]), [[x[None]] for x in data.inputs], workdir=workdir)
    shapes = [o["shape"] for o in json.loads(Path(section["model_json"]).read_text())["outputs"]]
    preds = [task.predict([np.asarray(o).reshape(s) for o, s in zip(outs, shapes)]) for outs in ran["outputs"]]
    metric = task.score(preds, refs)
    row = {"model": name, "target": target, "pipeline": args.pipeline, "metric_name": task.metric,
           "reference": task.reference, "samples": len(data.inputs), "float": round(float_metric, 2),
           "library": round(metric, 2), "drop": round(float_metric - metric, 2), "build_s": round(build_s, 1),
           "run_s": round(time.perf_counter() - t1, 1), "fp16": section.get("fp16"),
           "schedule": {k: section["schedule"].get(k) for k in ("fp32_hand_scheduled", "sampled")}}
    log(f"[{name}] float {task.metric} {row['float']} -> library {row['library']} (drop {row['drop']})")
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True)
    p.add_argument("--pipeline", default="fold-bn")
    p.add_argument("--models", default="ppocr_cls,doc_orientation,face_yunet,ppocr_rec")
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    workdir = fetch.cache_dir() / "runs" / f"library.{slug(args.target)}"
    workdir.mkdir(parents=True, exist_ok=True)
    out = args.json or RESULTS / f"library.{slug(args.target)}.json"
    result = {"target": args.target, "pipeline": args.pipeline, "samples": args.samples,
              "date": datetime.date.today().isoformat(), "rows": []}
    for name in [m for m in args.models.split(",") if m]:
        result["rows"].append(bench_model(name, args.target, args, workdir))
        out.write_text(json.dumps(result, indent=1) + "\n")  # after each model: a long run keeps what it did
    rows = result["rows"]
    print("| model | metric | float (onnxruntime) | library | drop (points) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['metric_name']} | {r['float']:.2f} | {r['library']:.2f} | {r['drop']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
