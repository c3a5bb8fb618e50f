"""Instructions per inference of compress-graph's x86 libraries built for another x86 level (``host{isa=avx2}``)
next to onnxruntime, both under ``qemu-x86_64 -cpu Haswell`` (an AVX2 CPU without AVX-512: onnxruntime then picks
its AVX2 kernels, as on such a machine). Counts are deterministic, so an AVX2-only machine is not needed.

    python bench/x86/run.py                                    # 5 bundled models x int8/fp32
    python bench/x86/run.py --models resnet_s --variants int8
    python bench/x86/run.py --variants headline --json /tmp/x86_headline.json

Variants as bench/arm, compressed with ``host{isa=avx2}``'s preferences (16-channel blocks, 7-bit weights): fp32 =
`fold-bn`, int8 = `fold-bn,quant` (onnxruntime runs the same QDQ model with its fused
integer kernels, which on AVX2 sum u8 x s8 pairs in saturating int16: "ort max|d|" shows how far that lands from our
library, which follows the QDQ semantics), headline = `fold-bn,prune{macs=0.7},quant` against onnxruntime fp32 on the
original model (there "ort max|d|" is the compression error, not a kernel error). Our side:
`--target host{isa=avx2,cores=1}` (no tuning). The counting
plugin is bench/arm's (insn_count.c, arch=x86_64); the runner is the host's Python under qemu.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "arm"))
import insn  # noqa: E402  (bench/arm: the plugin build and the report parser)

MODELS = ["resnet_s", "mobilenetv2_s", "yolo_s", "pose_s", "face_s"]
PIPELINES = {"fp32": "fold-bn", "int8": "fold-bn,quant", "headline": "fold-bn,prune{macs=0.7},quant"}
RUNNER = HERE / "runner.py"


def compressed(name: str, variant: str, work: Path) -> Path:
    return insn.compressed(insn.REPO / "models" / f"{name}.onnx", PIPELINES[variant],
                           work / f"{name}.{variant}.onnx", "host{isa=avx2}")


def count(kind: str, path: Path, inputs: list[np.ndarray], cpu: str, work: Path, runs: int) -> dict:
    """Instructions per inference of one runner (tvm library or onnxruntime model) under qemu-x86_64 -cpu CPU."""
    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "in.npz", **{f"in{i}": x for i, x in enumerate(inputs)})
    report = work / "insn.txt"
    env = {**os.environ, "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "ORT_DISABLE_TELEMETRY": "1"}
    cmd = ["qemu-x86_64", "-cpu", cpu, "-plugin", f"{insn.plugin()},out={report},mix=1,arch=x86_64",
           sys.executable, str(RUNNER), kind, str(path), str(runs + 1), str(work / "in.npz"), str(work / "out.npz")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=insn.QEMU_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} under qemu failed: {proc.stderr.strip()[-600:]}")
    parsed = insn._parse(report)
    ops = {k: v / runs for k, v in parsed["ops"].items()}
    data = np.load(work / "out.npz")
    functions = {}
    if kind == "tvm" and (work / "out.npz.maps").is_file():  # per kernel of the library (its symbols)
        functions = {k: v / runs for k, v in insn.per_function(parsed["blocks"], work / "out.npz.maps", path,
                                                                nm="nm").items()}
    return {"instructions": parsed["region"] / runs, "functions": functions,
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
            "mix": mix(ops), "outputs": [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]}


def mix(ops: dict[str, float]) -> dict[str, float]:
    """Shares of the instructions: any vector register (xmm/ymm/zmm), 256-bit, and the 8/16-bit multiply-adds."""
    total = sum(ops.values()) or 1.0
    by = Counter()
    for op, n in ops.items():
        if op.endswith((".x", ".y", ".z")):
            by["vector"] += n
        if op.endswith(".y"):
            by["ymm"] += n
        if op.startswith(("vpmaddwd", "vpmaddubsw", "vpdpbusd", "vpdpwssd")):
            by["int_madd"] += n
        if op.startswith(("vfmadd", "vfnmadd")):
            by["fma"] += n
    return {k: round(v / total, 4) for k, v in by.items()}


def measure(name: str, variant: str, cpu: str, work: Path, runs: int) -> dict:
    import onnx
    from compress_graph.targets import build_for_target

    path = compressed(name, variant, work)
    proto = onnx.load(str(path))
    inputs = list(insn.seeded_inputs(proto).values())
    section = build_for_target(proto, "host{isa=avx2,cores=1,symbols=keep}", work / f"{name}.{variant}")
    ours = count("tvm", Path(section["library"]), inputs, cpu, work / f"{name}.{variant}.tvm", runs)
    peer_model = insn.REPO / "models" / f"{name}.onnx" if variant == "headline" else path  # the uncompressed model
    peer = count("ort", peer_model, inputs, cpu, work / f"{name}.{variant}.ort", runs)
    diff = insn.max_abs_diff(peer["outputs"], ours["outputs"])
    sched = section["schedule"]
    return {"model": name, "variant": variant, "cpu": cpu,
            "ours_minsn": round(ours["instructions"] / 1e6, 3), "ort_minsn": round(peer["instructions"] / 1e6, 3),
            "ratio": round(ours["instructions"] / peer["instructions"], 3), "ours_mix": ours["mix"],
            "ort_mix": peer["mix"], "ours_top_ops": dict(list(ours["ops"].items())[:10]),
            "ort_top_ops": dict(list(peer["ops"].items())[:10]), "max_abs_diff_vs_ort": diff,
            "ours_top_functions": {k: round(v) for k, v in list(ours["functions"].items())[:12]},
            "hand_scheduled": {"int8": sched.get("int8_hand_scheduled", 0), "fp32": sched.get("fp32_hand_scheduled", 0),
                               "kernels": sched.get("kernels")}}


def table(rows: list[dict]) -> str:
    lines = ["| model | variant | ours (M insn) | onnxruntime (M insn) | ours / ort | ours ymm % | ort ymm % "
             "| ours int madd % | ort int madd % | ort max abs diff |", "|---" * 10 + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['variant']} | {r['ours_minsn']:.2f} | {r['ort_minsn']:.2f} | "
                     f"{r['ratio']:.2f}x | {100 * r['ours_mix'].get('ymm', 0):.0f} | "
                     f"{100 * r['ort_mix'].get('ymm', 0):.0f} | {100 * r['ours_mix'].get('int_madd', 0):.1f} | "
                     f"{100 * r['ort_mix'].get('int_madd', 0):.1f} | {r['max_abs_diff_vs_ort']:.3g} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--variants", default="int8,fp32")
    ap.add_argument("--cpu", default="Haswell", help="qemu's -cpu (an AVX2 CPU without AVX-512)")
    ap.add_argument("--runs", type=int, default=2, help="counted runs after the warm-up run")
    ap.add_argument("--work", default="/tmp/compress_graph_bench_x86")
    ap.add_argument("--json", default=str(HERE / "results.json"))
    ap.add_argument("--render", metavar="JSON", help="only print the table of earlier results")
    args = ap.parse_args(argv)
    if args.render:
        print(table(json.loads(Path(args.render).read_text())["rows"]))
        return 0
    if subprocess.run(["which", "qemu-x86_64"], capture_output=True).returncode != 0:
        print("bench/x86: qemu-x86_64 not installed (apt-get install qemu-user)", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        for variant in args.variants.split(","):
            row = measure(name, variant, args.cpu, work, args.runs)
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("model", "variant", "ours_minsn", "ort_minsn", "ratio")}),
                  flush=True)
    import onnxruntime

    meta = {"onnxruntime": onnxruntime.__version__, "runs": args.runs, "qemu": f"qemu-x86_64 7.2 -cpu {args.cpu}",
            "threads": 1, "ours": "host{isa=avx2,cores=1,symbols=keep}"}
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
