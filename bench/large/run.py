"""A model above the 2 GB protobuf limit through the command line: load, fold-bn, cleanup, verify, save.

Builds a seeded 9-layer 1x1-conv network with BatchNorm after every conv (8192 channels: 9 x 256 MiB of weights,
2.4 GB in one external data file beside the model), runs `compress-graph model.onnx --passes P -o out` in a fresh
subprocess for each pipeline P, and reports wall time and the child's own peak RSS (wait4) next to the model size,
then runs the saved model (external data beside it, inside out/) in onnxruntime against the original.

    python bench/large/run.py [--passes fold-bn,cleanup --passes fold-bn,prune ...] [--no-verify] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(folder: Path, channels: int, layers: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    for i in range(layers):
        w = (rng.standard_normal((channels, channels, 1, 1), dtype=np.float32) * np.float32(1 / np.sqrt(channels)))
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        del w
        for name, value in (("g", rng.uniform(0.5, 1.5, channels)), ("b", rng.normal(0, 0.1, channels)),
                            ("m", rng.normal(0, 0.1, channels)), ("v", rng.uniform(0.5, 1.5, channels))):
            inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}"),
                  helper.make_node("BatchNormalization", [f"c{i}", f"g{i}", f"b{i}", f"m{i}", f"v{i}"], [f"n{i}"],
                                   name=f"bn{i}"),
                  helper.make_node("Relu", [f"n{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                            [1, channels, 2, 2])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, channels, 2, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "large.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="large.onnx.data", size_threshold=1024)
    return path


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _run_command(model: Path, out: Path, passes: str, verify: bool, log: Path) -> dict:
    cmd = [sys.executable, "-m", "compress_graph.cli", "run", str(model), "--passes", passes, "-o", str(out)]
    cmd += [] if verify else ["--no-verify"]
    t0 = time.perf_counter()
    with open(log, "w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
        code = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    wall = time.perf_counter() - t0
    if code != 0:
        sys.exit(f"compress-graph failed ({code}): {stderr.strip()[-500:]}")
    files = sorted(p.name for p in out.iterdir())
    return {"passes": passes, "verify": verify, "wall_s": round(wall, 1), "peak_rss_bytes": usage.ru_maxrss * 1024,
            "out_files": files,
            "out_bytes": sum((out / n).stat().st_size for n in files if n.startswith("model.onnx"))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--channels", type=int, default=8192)
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--passes", action="append", help="pipeline(s) to run (default: fold-bn,cleanup)")
    ap.add_argument("--no-verify", action="store_true", help="pass --no-verify to the command (no onnxruntime run)")
    ap.add_argument("--keep", help="build and write here instead of a temporary folder")
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--build-only", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build_only:
        build(Path(args.build_only), args.channels, args.layers)
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        src = root / "src"
        src.mkdir(parents=True, exist_ok=True)
        # built in its own process: a child forked from a parent holding the model would inherit its RSS figure
        subprocess.run([sys.executable, __file__, "--build-only", str(src), "--channels", str(args.channels),
                        "--layers", str(args.layers)], check=True)
        model = src / "large.onnx"
        result = {"model_bytes": _size(src), "channels": args.channels, "layers": args.layers, "runs": []}
        for i, passes in enumerate(args.passes or ["fold-bn,cleanup"]):
            out = root / f"out{i}"
            run = _run_command(model, out, passes, not args.no_verify, root / f"stderr{i}.txt")
            run["peak_over_model"] = round(run["peak_rss_bytes"] / result["model_bytes"], 2)
            # the output must run; its relative difference from the original, checked in a fresh process
            check = subprocess.run([sys.executable, "-c", _CHECK % args.channels, str(model), str(out / "model.onnx")],
                                   capture_output=True, text=True)
            run["rel_diff"] = float(check.stdout.strip()) if check.returncode == 0 else check.stderr[-300:]
            result["runs"].append(run)
            shutil.rmtree(out)
            print(json.dumps(run), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


_CHECK = """
import sys, numpy as np, onnxruntime as ort
x = np.random.default_rng(1).standard_normal((1, %s, 2, 2)).astype(np.float32)
a = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
b = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
print(float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-12)))
"""


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
