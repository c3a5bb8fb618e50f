"""Host latency: TVM int8 (lower_qdq) vs TVM fp32 vs onnxruntime int8 (QDQ) vs onnxruntime fp32.

    python bench/int8/run.py                          # all three models, untuned + tuned (64 trials each)
    python bench/int8/run.py --models resnet_s --trials 0
    python bench/int8/run.py --reuse                  # compile from the tuning records of an earlier run

Each model is quantized with onnxruntime's static quantizer (QDQ, per-channel, u8 activations, s8 weights,
4 seeded random calibration inputs). TVM int8 and TVM fp32 get the same MetaSchedule budget (trials over
the conv/matmul tasks, same search settings). All variants of a model are timed interleaved (round-robin,
median of rounds), same thread count each (``--threads``, default 1: TVM's 2-thread pool collapses when the
machine is oversubscribed — 142 ms vs 2.6 ms single-threaded for the same tuned resnet_s), so shared-machine
load hits them alike: compare ratios, not absolute ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# TVM's thread pool reads this at import; parsed before argparse for that reason
THREADS = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--threads"), "1")
os.environ["TVM_NUM_THREADS"] = THREADS
ROOT = Path(__file__).resolve().parents[2]
STRATEGY = ["evolutionary"]  # set from --strategy
if str(ROOT.parent) not in sys.path:  # pragma: no cover - running from a checkout without an install
    sys.path.insert(0, str(ROOT.parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tvm  # noqa: E402
from compress_graph import load, run_pipeline, save  # noqa: E402
from compress_graph.targets.int8 import lower_qdq  # noqa: E402
from compress_graph.targets.int8.build import compile_module, preprocess, tune  # noqa: E402
from compress_graph.targets.int8.testing import (  # noqa: E402
    import_relax,
    ort_session,
    output_scales,
    quantize_qdq,
    random_input,
)
from tvm import relax  # noqa: E402

MODELS = ("resnet_s", "mobilenetv2_s", "yolo_s")


def _vm_runner(ex, feeds):
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(v) for v in feeds.values()]
    return lambda: vm["main"](*args)


def _asm_count(ex, mnemonic: str) -> int:
    return ex.mod.imports[0].inspect_source("asm").count(mnemonic)


def _tuned(mod, target, work: Path, trials: int, per_task: int, reuse: bool) -> tuple[object, float]:
    """Tune (unless ``reuse``) and compile from the records; (None, 0) if reusing and there are none."""
    start = time.time()
    records = work / "database_tuning_record.json"
    if reuse and not (records.exists() and records.stat().st_size):
        return None, 0.0
    if not reuse:
        tune(mod, target, work, trials, per_task=per_task, strategy=STRATEGY[0])
    spent = time.time() - start
    return compile_module(mod, target, work), spent


def prepare(name: str, args, target) -> tuple[dict, dict]:
    """Build every variant of one model; returns (runners, facts)."""
    work = Path(args.work) / name
    work.mkdir(parents=True, exist_ok=True)
    fp32_path = ROOT / "models" / f"{name}.onnx"
    qdq_path = quantize_qdq(fp32_path, work / f"{name}_qdq.onnx")
    qdq = onnx.load(str(qdq_path))
    feeds = random_input(qdq, seed=1)
    int8_low, stats = lower_qdq(import_relax(qdq), target)
    int8_mod = preprocess(int8_low, target)
    # the fp32 baseline gets BN folded (fold-bn, as onnxruntime's quantizer pre-processing does for the QDQ
    # model), so both TVM variants start from the same graph
    folded = work / f"{name}_folded.onnx"
    save(run_pipeline(load(fp32_path), "fold-bn", verify=False)[0], folded)
    fp32_mod = preprocess(import_relax(onnx.load(str(folded))), target)
    facts = {"lower": {k: stats[k] for k in ("converted", "float", "by_op", "float_ops")}}
    executables = {"tvm int8 untuned": compile_module(int8_mod, target),
                   "tvm fp32 untuned": compile_module(fp32_mod, target)}
    if args.trials:
        executables["tvm int8 tuned"], facts["tune_s_int8"] = _tuned(
            int8_mod, target, work / "tune_int8", args.trials, args.per_task, args.reuse)
        executables["tvm fp32 tuned"], facts["tune_s_fp32"] = _tuned(
            fp32_mod, target, work / "tune_fp32", args.trials, args.per_task, args.reuse)
    executables = {k: ex for k, ex in executables.items() if ex is not None}
    runners = {k: _vm_runner(ex, feeds) for k, ex in executables.items()}
    facts["vpdpbusd"] = {k: _asm_count(ex, "vpdpbusd") for k, ex in executables.items() if "int8" in k}
    ort_int8 = ort_session(qdq_path, threads=args.threads, fused=True)  # timed as onnxruntime runs it here
    ort_fp32 = ort_session(fp32_path, threads=args.threads, fused=True)
    runners["ort int8"] = lambda: ort_int8.run(None, feeds)
    runners["ort fp32"] = lambda: ort_fp32.run(None, feeds)
    want = ort_session(qdq_path, threads=args.threads).run(None, feeds)[0]  # the QDQ semantics, op by op
    step = output_scales(qdq)[0]
    facts["max_err_steps_vs_qdq"] = {
        k: float(np.max(np.abs(r().numpy() - want)) / step) for k, r in runners.items() if k.startswith("tvm int8")}
    facts["max_err_steps_ort_fused_vs_qdq"] = float(np.max(np.abs(ort_int8.run(None, feeds)[0] - want)) / step)
    return runners, facts


def measure(runners: dict, rounds: int, seconds: float) -> dict[str, float]:
    """Interleaved: each round times every variant for ``seconds``; median of the per-round means (ms)."""
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():
        fn()
    for _ in range(rounds):
        for key, fn in runners.items():
            fn()
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                fn()
                count += 1
            samples[key].append((time.perf_counter() - start) / count * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def table(results: dict) -> str:
    cols = ["tvm int8 untuned", "tvm fp32 untuned", "tvm int8 tuned", "tvm fp32 tuned", "ort int8", "ort fp32"]
    lines = ["| model | " + " | ".join(f"{c} (ms)" for c in cols)
             + " | TVM int8 vs fp32 speedup | best TVM int8 vs ORT int8 |",
             "|---" * (len(cols) + 3) + "|"]
    for name, res in results.items():
        ms = res["ms"]
        cells = [f"{ms[c]:.3f}" if c in ms else "-" for c in cols]
        speed = f"{ms['tvm fp32 untuned'] / ms['tvm int8 untuned']:.2f}x untuned"
        if "tvm int8 tuned" in ms and "tvm fp32 tuned" in ms:
            speed += f", {ms['tvm fp32 tuned'] / ms['tvm int8 tuned']:.2f}x tuned"
        best = min(v for k, v in ms.items() if k.startswith("tvm int8"))
        vs_ort = f"{best / ms['ort int8']:.1f}x ORT's time"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {speed} | {vs_ort} |")
    return "\n".join(lines)


def render(json_paths: list[str]) -> str:
    """The README table from one or more results files."""
    results = {}
    for path in json_paths:
        results.update(json.loads(Path(path).read_text())["results"])
    return table(results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--trials", type=int, default=64, help="MetaSchedule trials per model and variant (0: none)")
    ap.add_argument("--per-task", type=int, default=16)
    ap.add_argument("--strategy", choices=["evolutionary", "random"], default="evolutionary",
                    help="MetaSchedule search (random = ReplayTrace sampling of the design space)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.3, help="timing window per variant per round")
    ap.add_argument("--work", default="/tmp/compress_graph_bench_int8")
    ap.add_argument("--mcpu", default=None, help="x86 CPU to build for (default: this machine's)")
    ap.add_argument("--threads", type=int, default=int(THREADS),
                    help="threads for TVM and onnxruntime alike (1: robust on a shared, oversubscribed machine)")
    ap.add_argument("--reuse", action="store_true", help="compile from existing tuning records")
    ap.add_argument("--json", default=str(Path(__file__).with_name("results.json")))
    ap.add_argument("--render", nargs="+", metavar="JSON", help="only print the table of earlier results")
    args = ap.parse_args(argv)
    STRATEGY[0] = args.strategy
    if args.render:
        print(render(args.render))
        return 0
    mcpu = args.mcpu or str(tvm.target.codegen.llvm_get_system_cpu())
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    results = {}
    for name in args.models.split(","):
        runners, facts = prepare(name, args, target)
        facts["ms"] = measure(runners, args.rounds, args.seconds)
        results[name] = facts
        print(json.dumps({name: facts}, indent=1), flush=True)
    meta = {"threads": args.threads, "trials": args.trials, "per_task": args.per_task, "rounds": args.rounds,
            "strategy": args.strategy,
            "target": str(target),
            "load_avg_at_end": os.getloadavg()}
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
