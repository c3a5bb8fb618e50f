"""Time and peak memory of load + fold-bn + save on a ResNet-50-sized model (~25.6 M parameters), next to
onnxslim and onnxsim doing their own BN fusion/simplification on the same file. Each tool runs in a fresh
subprocess; peak RSS is the child's ru_maxrss.

    python bench/foldbn/run.py [--repeat 3] [--out bench/foldbn/results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def resnet50(seed: int = 0) -> onnx.ModelProto:
    """ResNet-50 (bottleneck blocks 3-4-6-3, BN after every conv) with seeded random weights."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    count = [0]

    def name(prefix):
        count[0] += 1
        return f"{prefix}{count[0]}"

    def conv_bn(x, cin, cout, k, stride, relu=True):
        w = name("w")
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(np.float32), w))
        c = name("conv")
        nodes.append(helper.make_node("Conv", [x, w], [c], kernel_shape=[k, k], strides=[stride] * 2,
                                      pads=[k // 2] * 4, name=c))
        bn = [name(p) for p in ("g", "b", "m", "v")]
        for p, arr in zip(bn, (rng.uniform(0.5, 1.5, cout), rng.normal(0, 0.1, cout), rng.normal(0, 0.1, cout),
                               rng.uniform(0.5, 2, cout))):
            inits.append(numpy_helper.from_array(arr.astype(np.float32), p))
        y = name("bn")
        nodes.append(helper.make_node("BatchNormalization", [c, *bn], [y], name=y))
        if relu:
            r = name("relu")
            nodes.append(helper.make_node("Relu", [y], [r], name=r))
            return r
        return y

    x = conv_bn("input", 3, 64, 7, 2)
    p = name("pool")
    nodes.append(helper.make_node("MaxPool", [x], [p], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, cin = p, 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for b in range(blocks):
            stride = 2 if (b == 0 and stage > 0) else 1
            h = conv_bn(x, cin, width, 1, 1)
            h = conv_bn(h, width, width, 3, stride)
            h = conv_bn(h, width, width * 4, 1, 1, relu=False)
            short = conv_bn(x, cin, width * 4, 1, stride, relu=False) if b == 0 else x
            a = name("add")
            nodes.append(helper.make_node("Add", [h, short], [a], name=a))
            r = name("relu")
            nodes.append(helper.make_node("Relu", [a], [r], name=r))
            x, cin = r, width * 4
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    inits.append(numpy_helper.from_array((rng.standard_normal((1000, 2048)) * 0.02).astype(np.float32), "fc_w"))
    inits.append(numpy_helper.from_array(np.zeros(1000, np.float32), "fc_b"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1))
    graph = helper.make_graph(nodes, "resnet50", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                              [1, 3, 224, 224])], [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                              [1, 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


TOOLS = {
    "compress-graph": (
        "from compress_graph import load, save, run_pipeline\n"
        "m = load(SRC); m, _ = run_pipeline(m, 'fold-bn', verify=False); save(m, DST)\n"
    ),
    "onnxslim": "import onnxslim, onnx\nonnx.save(onnxslim.slim(onnx.load(SRC)), DST)\n",
    "onnxsim": "import onnxsim, onnx\nm, ok = onnxsim.simplify(onnx.load(SRC))\nonnx.save(m, DST)\n",
}

CHILD = """
import resource, sys, time
SRC, DST = sys.argv[1], sys.argv[2]
t = time.perf_counter()
{code}
el = time.perf_counter() - t
print(el, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_tool(tool: str, src: Path, dst: Path) -> tuple[float, float] | None:
    proc = subprocess.run([sys.executable, "-c", CHILD.format(code=TOOLS[tool]), str(src), str(dst)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if proc.returncode != 0:
        print(f"  {tool}: failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else '?'}")
        return None
    el, rss_kb = proc.stdout.split()[-2:]
    return float(el), int(rss_kb) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "resnet50.onnx"
        model = resnet50()
        onnx.save(model, src)
        params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        print(f"model: ResNet-50, {params / 1e6:.1f} M parameters, {src.stat().st_size / 1e6:.0f} MB, "
              f"{len(model.graph.node)} nodes")
        rows = []
        for tool in TOOLS:
            runs = [run_tool(tool, src, Path(tmp) / f"{tool}.onnx") for _ in range(args.repeat)]
            runs = [r for r in runs if r]
            if not runs:
                continue
            out = onnx.load(Path(tmp) / f"{tool}.onnx")
            bns = sum(n.op_type == "BatchNormalization" for n in out.graph.node)
            rows.append({"tool": tool, "time_s": min(r[0] for r in runs), "peak_rss_mb": max(r[1] for r in runs),
                         "bn_left": bns, "nodes": len(out.graph.node)})
    base = rows[0]["time_s"]
    print(f"| tool | time (s, best of {args.repeat}) | x compress-graph | peak RSS (MB) | BN left | nodes |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tool']} | {r['time_s']:.2f} | {r['time_s'] / base:.2f} | {r['peak_rss_mb']:.0f} | "
              f"{r['bn_left']} | {r['nodes']} |")
    Path(args.out).write_text(json.dumps({"model": "resnet50", "params": params, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
