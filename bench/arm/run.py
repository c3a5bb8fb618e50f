"""Instructions per inference of compress-graph's aarch64 libraries next to onnxruntime's aarch64 wheel, under
qemu-aarch64 (no board needed; counts are deterministic). See bench/arm/README.md.

    python bench/arm/run.py                                   # 5 bundled models x a53/a72/a76 x fp32/int8
    python bench/arm/run.py --models resnet_s --cpus cortex-a76 --variants int8

Variants: fp32 = `fold-bn` (onnxruntime runs the same BN-folded model); fp16 = the same model built with
`arm{fp16=true}` (float16 inside; Armv8.2 cores only), against onnxruntime fp32 on it; int8 = `fold-bn,quant` (the
project's QDQ model; onnxruntime runs that QDQ model with its fused integer kernels); headline =
`fold-bn,prune{macs=0.7},quant` with the target's channel block, as `--target arm` runs it, against onnxruntime fp32
on the *original* model (what a user compares with). Our side is built the way
`compress-graph MODEL --passes ... --target arm{cpu=CPU,cores=1}` builds it (no tuning).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import insn  # noqa: E402

MODELS = ["resnet_s", "mobilenetv2_s", "yolo_s", "pose_s", "face_s"]
CPUS = ["cortex-a53", "cortex-a72", "cortex-a76"]
PIPELINES = {"fp32": "fold-bn", "fp16": "fold-bn", "int8": "fold-bn,quant",
             "headline": "fold-bn,prune{macs=0.7},quant"}
#: target options a variant adds (fp16: the float model built with arm{fp16=true}, against onnxruntime fp32)
EXTRA = {"fp16": "fp16=true"}


def compressed(model_path: Path, variant: str, work: Path, seed: int = 0) -> Path:
    """The ONNX model of a variant (what both runtimes get), written once per model and variant."""
    return insn.compressed(model_path, PIPELINES[variant], work / f"{model_path.stem}.{variant}.onnx", "arm", seed)


def ours(onnx_path: Path, cpu: str, work: Path, extra: str = "") -> tuple[Path, dict]:
    """Our library for ``cpu`` (1 thread), built as --target arm{cpu=...} builds it."""
    from compress_graph.targets import build_for_target

    text = f"arm{{cpu={cpu},cores=1,symbols=keep{',' + extra if extra else ''}}}"
    section = build_for_target(onnx.load(str(onnx_path)), text, work)
    return Path(section["library"]), section


def int8_conv_macs(onnx_path: Path) -> int:
    """MACs of the convs / matmuls whose inputs are 8-bit in the QDQ model (what dot products could do)."""
    from compress_graph import load
    from compress_graph.ir.cost import model_cost

    proto = onnx.load(str(onnx_path))
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    quantized = {n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")
                 and n.input and producers.get(n.input[0]) == "DequantizeLinear"}
    return sum(c.macs for c in model_cost(load(onnx_path)).per_node if c.name in quantized)


def measure(model: str, variant: str, cpu: str, work: Path, runs: int, seed: int = 0) -> dict:
    """One row; ``model``: a bundled model's name or the path of an .onnx with static input shapes (the real
    models of bench/accuracy: ``~/.cache/compress-graph/accuracy/models/NAME.onnx`` after its fetch.py)."""
    src = Path(model) if model.endswith(".onnx") else insn.REPO / "models" / f"{model}.onnx"
    model = src.stem
    path = compressed(src, variant, work, seed)
    feeds = insn.seeded_inputs(onnx.load(str(path)), seed)
    t0 = time.monotonic()
    lib, section = ours(path, cpu, work / f"{model}.{variant}.{cpu}", EXTRA.get(variant, ""))
    build_s = time.monotonic() - t0
    mine = insn.count_library(lib, list(feeds.values()), cpu, work / f"{model}.{variant}.{cpu}.run", runs=runs)
    peer_model = src if variant == "headline" else path  # the headline compares with the uncompressed model
    peer = insn.count_onnxruntime(peer_model, feeds, cpu, work / f"{model}.{variant}.{cpu}.ort", runs=runs)
    diff = insn.max_abs_diff(peer["outputs"], mine["outputs"])
    row = {"model": model, "variant": variant, "cpu": cpu,
           "ours_minsn": round(mine["instructions"] / 1e6, 3), "ort_minsn": round(peer["instructions"] / 1e6, 3),
           "ratio": round(mine["instructions"] / peer["instructions"], 3),
           "ours_mix": mine["mix"], "ort_mix": peer["mix"],
           "ours_top_ops": dict(list(mine["ops"].items())[:12]), "ort_top_ops": dict(list(peer["ops"].items())[:12]),
           "ours_functions": {k: round(v) for k, v in list(mine.get("functions", {}).items())[:25]},
           "threads_started": {"ours": mine["threads_started"], "ort": peer["threads_started"]},
           "max_abs_diff_vs_ort": diff, "build_s": round(build_s, 1),
           "int8_hand_scheduled": section.get("schedule", {}).get("int8_hand_scheduled", 0)}
    if variant in ("int8", "headline"):
        macs = int8_conv_macs(path)
        row["int8_conv_macs"] = macs
        row["dot_mac_share"] = {"ours": round(insn.dot_macs(mine["ops"]) / macs, 3) if macs else 0.0,
                                "ort": round(insn.dot_macs(peer["ops"]) / macs, 3) if macs else 0.0}
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | variant | cpu | ours (M insn) | onnxruntime (M insn) | ours / ort | ours vector % | ours dot % "
             "| ort vector % | ort dot % |", "|---" * 10 + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['variant']} | {r['cpu']} | {r['ours_minsn']:.2f} | {r['ort_minsn']:.2f} | "
                     f"{r['ratio']:.2f}x | {100 * r['ours_mix'].get('vector', 0):.0f} | "
                     f"{100 * r['ours_mix'].get('dot', 0):.1f} | {100 * r['ort_mix'].get('vector', 0):.0f} | "
                     f"{100 * r['ort_mix'].get('dot', 0):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="bundled model names or .onnx paths")
    ap.add_argument("--cpus", default=",".join(CPUS))
    ap.add_argument("--variants", default="fp32,int8")
    ap.add_argument("--runs", type=int, default=3, help="counted runs after the warm-up run")
    ap.add_argument("--work", default="/tmp/compress_graph_bench_arm")
    ap.add_argument("--json", default=str(HERE / "results.json"))
    ap.add_argument("--render", metavar="JSON", help="only print the table of earlier results")
    args = ap.parse_args(argv)
    if args.render:
        print(table(json.loads(Path(args.render).read_text())["rows"]))
        return 0
    reason = insn.missing()
    if reason:
        print(f"bench/arm: {reason}", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models.split(","):
        for variant in args.variants.split(","):
            for cpu in args.cpus.split(","):
                row = measure(model, variant, cpu, work, args.runs)
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("model", "variant", "cpu", "ours_minsn", "ort_minsn", "ratio")}),
                      flush=True)
    import onnxruntime

    meta = {"onnxruntime": onnxruntime.__version__, "runs": args.runs, "qemu": "qemu-aarch64 7.2 (TCG plugin)",
            "threads": 1}
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
