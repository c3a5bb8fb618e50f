"""Host-target latency of TVM libraries vs onnxruntime on the bundled models (interleaved, ratios).

Variants per model, all with the same thread count as onnxruntime:
  naive    relax.build without schedules (what TVM 0.27 gives a CPU target by default)
  dlight   TVM's rule-based CPU schedules (s_tir.dlight.cpu GEMV + Reduction) with fast-math
  default  compress-graph's untuned default: one seeded MetaSchedule sample per kernel (targets/schedule.py)
  tuned    compress-graph with --tune N (MetaSchedule, N trials per kernel, local runner)
  default_ISA, headline_ISA (--isas avx2,avx512,vnni): the default and headline libraries built for another x86
           level (host{isa=ISA}) where this CPU runs it; onnxruntime keeps this CPU's own best kernels
Usage: python bench/tvm/run.py [--models resnet_s,...] [--trials 8] [--threads 2] [--headline] [--isas avx2]
       [--skip naive,dlight] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[2]


def ort_runner(path: Path, feed: dict, threads: int):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, feed)


def vm_runner(executable_or_lib, feed: dict):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(executable_or_lib, tvm.cpu())
    args = [tvm.runtime.tensor(x) for x in feed.values()]
    return lambda: vm["main"](*args)


def in_process_variant(model: onnx.ModelProto, name: str, threads: int):
    """naive / dlight builds, in process (they are comparators, not artifacts)."""
    import tvm
    from compress_graph.targets import build as cg_build
    from compress_graph.targets import frontend
    from tvm import relax
    from tvm.s_tir import dlight as dl

    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
                                "num-cores": threads, "fast-math": name == "dlight"})
    mod = frontend.to_relax(model)
    if name == "dlight":
        mod = cg_build.prepare(mod, target)
        with target:
            mod = dl.ApplyDefaultSchedule(dl.cpu.GEMV(), dl.cpu.Reduction())(mod)
    return relax.build(mod, target)


def timed(fn, min_batch_s: float = 0.005) -> tuple[callable, int]:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    fn()
    one = max(time.perf_counter() - start, 1e-6)
    return fn, max(1, int(min_batch_s / one))


def interleave(runners: dict, rounds: int) -> dict[str, float]:
    """Median ms per call; variants run round-robin so machine load hits all of them alike."""
    prepared = {k: timed(fn) for k, fn in runners.items()}
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, (fn, batch) in prepared.items():
            start = time.perf_counter()
            for _ in range(batch):
                fn()
            samples[k].append((time.perf_counter() - start) / batch * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def check(outputs, reference) -> float:
    outs = [outputs.numpy()] if hasattr(outputs, "numpy") else [o.numpy() for o in outputs]
    return max(float(np.abs(a.reshape(b.shape) - b).max()) for a, b in zip(outs, reference))


HEADLINE = "fold-bn,prune{macs=0.7},quant"


def headline_library(path: Path, target: str, work: Path) -> str:
    """The headline pipeline on ``path`` with ``target``'s preferences (channel block, quant's weight width), built
    for ``target``: the library's path."""
    from compress_graph import load, run_pipeline, save
    from compress_graph.targets import build_for_target, preferences

    small, _ = run_pipeline(load(path), HEADLINE + ",fold-constants,cleanup", verify=False, seed=0,
                            preferences=preferences(target))
    folder = work / f"{path.stem}-headline-{re.sub(r'[^a-z0-9]+', '-', target)}"
    folder.mkdir(parents=True, exist_ok=True)
    save(small, folder / "model.onnx")
    return build_for_target(onnx.load(str(folder / "model.onnx")), target, folder / "out")["library"]


def bench_model(path: Path, trials: int, threads: int, rounds: int, work: Path, log, headline: bool = False,
                isas: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> dict:
    from compress_graph.targets import build_for_target, frontend
    from compress_graph.targets.host import missing_features

    model = onnx.load(str(path))
    inputs, _ = frontend.signature(model)
    rng = np.random.default_rng(0)
    feed = {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in inputs}
    ort_run = ort_runner(path, feed, threads)
    reference = ort_run()
    runners = {"onnxruntime": ort_run}
    info: dict = {"model": path.stem}
    import tvm

    for name in (v for v in ("naive", "dlight") if v not in skip):
        t0 = time.monotonic()
        ex = in_process_variant(model, name, threads)
        info[f"{name}_build_s"] = round(time.monotonic() - t0, 1)
        runners[name] = vm_runner(ex, feed)
    for name, tune in (("default", 0), ("tuned", trials)):
        if name == "tuned" and trials <= 0:
            continue
        t0 = time.monotonic()
        sec = build_for_target(model, f"host{{cores={threads}}}", work / f"{path.stem}-{name}", tune_trials=tune,
                               progress=log if tune else None)
        info[f"{name}_build_s"] = round(time.monotonic() - t0, 1)
        if tune:
            info["tuning"] = {k: sec["tuning"].get(k) for k in ("tasks", "trials", "failed_trials", "seconds")}
        runners[name] = vm_runner(tvm.runtime.load_module(sec["library"]), feed)
    if headline:  # the compressed model (int8 where the CPU has a family) against onnxruntime fp32 on the original
        runners["headline"] = vm_runner(tvm.runtime.load_module(
            headline_library(path, f"host{{cores={threads}}}", work)), feed)
    for isa in isas:  # another x86 level's libraries, where this CPU runs them (onnxruntime keeps its own best)
        if missing_features(isa):
            info.setdefault("isas_skipped", {})[isa] = missing_features(isa)
            continue
        target = f"host{{cores={threads},isa={isa}}}"
        sec = build_for_target(model, target, work / f"{path.stem}-default-{isa}")
        runners[f"default_{isa}"] = vm_runner(tvm.runtime.load_module(sec["library"]), feed)
        runners[f"headline_{isa}"] = vm_runner(tvm.runtime.load_module(headline_library(path, target, work)), feed)
    # the headline's difference is the compression error, not a kernel error: reported apart
    info["max_abs_err"] = {k: check(fn(), reference) for k, fn in runners.items() if k != "onnxruntime"}
    ms = interleave(runners, rounds)
    info["ms"] = {k: round(v, 4) for k, v in ms.items()}
    info["x_onnxruntime"] = {k: round(v / ms["onnxruntime"], 2) for k, v in ms.items() if k != "onnxruntime"}
    return info


def cpu_flags() -> list[str]:
    """The x86 levels /proc/cpuinfo reports (which CPU a timing came from)."""
    try:
        flags = next((ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo", encoding="utf-8")
                      if ln.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512vbmi", "avx_vnni") if f in flags]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet_s,mobilenetv2_s,face_s,pose_s,yolo_s")
    ap.add_argument("--trials", type=int, default=8, help="MetaSchedule trials per kernel for the tuned variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--headline", action="store_true",
                    help=f"also time `{HEADLINE}` --target host against onnxruntime fp32 on the original model")
    ap.add_argument("--skip", default="", help="TVM baselines not to build and time: naive, dlight")
    ap.add_argument("--isas", default="",
                    help="also the default and headline libraries built for these x86 levels (host{isa=...}: avx2, "
                         "avx512, vnni) where this CPU runs them: columns default_ISA, headline_ISA")
    args = ap.parse_args()
    isas = tuple(i for i in args.isas.split(",") if i)
    skip = tuple(v for v in args.skip.split(",") if v)
    # TVM's thread pool otherwise starts one worker per core whatever the target's num-cores; both runtimes get
    # the same thread count (set before tvm is imported: the pool reads it once).
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="cg-bench-tvm-") as tmp:
        for name in args.models.split(","):
            path = REPO / "models" / f"{name}.onnx"
            print(f"== {name}", file=sys.stderr, flush=True)
            info = bench_model(path, args.trials, args.threads, args.rounds, Path(tmp),
                               lambda msg: print("  " + msg, file=sys.stderr, flush=True), args.headline, isas, skip)
            print(json.dumps(info), file=sys.stderr, flush=True)
            results.append(info)
    cols = ([v for v in ("naive", "dlight") if v not in skip] + ["default", "tuned"]
            + (["headline"] if args.headline else []) + [f"{v}_{i}" for i in isas for v in ("default", "headline")])
    print("| model | onnxruntime ms | " + " | ".join(f"{c} ms (x ort)" for c in cols) + " | tuning |")
    print("|---|---|" + "---|" * len(cols) + "---|")
    for r in results:
        cells = [f"{r['ms'][c]:.3f} ({r['x_onnxruntime'][c]:.2f}x)" if c in r["ms"] else "-" for c in cols]
        tune = r.get("tuning") or {}
        tune_txt = f"{tune.get('tasks')} tasks, {tune.get('trials')} trials, {tune.get('seconds')} s" if tune else "-"
        print(f"| {r['model']} | {r['ms']['onnxruntime']:.3f} | " + " | ".join(cells) + f" | {tune_txt} |")
    if args.json:
        args.json.write_text(json.dumps({"trials_per_kernel": args.trials, "threads": args.threads,
                                         "cpu_flags": cpu_flags(), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
