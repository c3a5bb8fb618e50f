"""A time-boxed mutation fuzzer: load -> each pass -> save on mutated bundled models.

Mutations are structural (protobuf fields: dims, op types, attributes, inputs, names, opsets, dtypes) and raw
(byte flips, truncation, splices). The contract under test: every outcome is a saved valid model or a
CompressGraphError (one-line message, exit code 2/3); anything else is a crash. Seeded, so a failure replays:

    python tests/fuzz/fuzz_models.py --seconds 120 --seed 7      # prints cases/s and any crash with its seed

CI runs a fixed number of cases (tests/fuzz/test_fuzz.py), so its result does not depend on the machine's speed;
explore with longer time-boxed runs and other seeds, and add every crash found to REGRESSIONS there.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import traceback
from pathlib import Path

import onnx

MODELS = Path(__file__).resolve().parents[2] / "models"
PIPELINES = ["fold-bn,cleanup", "prune{ratio=0.3}", "lowrank{energy=0.9}", "quant", "fold-bn,prune,quant"]
OPS = ["Relu", "Conv", "Add", "Concat", "Reshape", "MatMul", "Gemm", "Split", "Resize", "Transpose", "Foo", ""]


def _structural(model: onnx.ModelProto, rng: random.Random) -> None:
    g = model.graph
    choice = rng.randrange(9)
    if choice == 0 and g.initializer:
        t = rng.choice(g.initializer)
        if t.dims:
            i = rng.randrange(len(t.dims))
            t.dims[i] = rng.choice([0, 1, t.dims[i] + 1, max(t.dims[i] - 1, 0), 7])
    elif choice == 1 and g.node:
        rng.choice(g.node).op_type = rng.choice(OPS)
    elif choice == 2 and g.node:
        n = rng.choice(g.node)
        if n.input:
            n.input[rng.randrange(len(n.input))] = rng.choice([""] + [x.name for x in g.value_info] + ["ghost"])
    elif choice == 3 and g.node:
        n = rng.choice(g.node)
        for a in n.attribute:
            if a.ints:
                a.ints[rng.randrange(len(a.ints))] = rng.choice([0, -1, 2, 3, 99])
            elif a.type == onnx.AttributeProto.INT:
                a.i = rng.choice([0, -1, 2, 99])
    elif choice == 4 and g.node:
        del g.node[rng.randrange(len(g.node))]
    elif choice == 5:
        model.opset_import[0].version = rng.choice([1, 7, 9, 11, 12, 13, 19, 21, 30])
    elif choice == 6 and g.initializer:
        rng.choice(g.initializer).data_type = rng.choice([1, 2, 3, 6, 7, 10, 11, 16])
    elif choice == 7 and g.input:
        dims = g.input[0].type.tensor_type.shape.dim
        if dims:
            d = dims[rng.randrange(len(dims))]
            if rng.random() < 0.5:
                d.dim_param = "N"
            else:
                d.dim_value = rng.choice([0, 1, 3, 1000])
    elif choice == 8 and len(g.node) > 1:
        a, b = rng.sample(range(len(g.node)), 2)
        na, nb = onnx.NodeProto(), onnx.NodeProto()
        na.CopyFrom(g.node[a])
        nb.CopyFrom(g.node[b])
        g.node[a].CopyFrom(nb)
        g.node[b].CopyFrom(na)


def _raw(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(3)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        b = b[: rng.randrange(len(b))]
    else:
        i, j = sorted(rng.sample(range(len(b)), 2))
        b = b[:i] + b[j:] + b[i:j]
    return bytes(b)


def mutate(source: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.25:
        return _raw(source, rng)
    model = onnx.load_from_string(source)
    for _ in range(rng.randint(1, 3)):
        _structural(model, rng)
    return model.SerializeToString()


def run_case(data: bytes, pipeline: str, tmp: Path) -> str | None:
    """None if the contract held, else a description of the crash."""
    from compress_graph import load, run_pipeline, save
    from compress_graph.ir.errors import CompressGraphError

    src = tmp / "m.onnx"
    src.write_bytes(data)
    try:
        model = load(src)
        model, _ = run_pipeline(model, pipeline, verify=False)
        save(model, tmp / "out.onnx")
        onnx.checker.check_model(onnx.load(tmp / "out.onnx"))
    except CompressGraphError as exc:
        if exc.exit_code == 1 or "\n" in str(exc):
            return f"bad error ({exc.exit_code}): {exc}"
        return None
    except Exception:
        return traceback.format_exc(limit=4)
    return None


def fuzz(seconds: float, seed: int = 0, stop_on_crash: bool = True,
         max_cases: int | None = None) -> tuple[int, list[tuple[int, str, str]]]:
    """Run seeded cases until ``seconds`` pass or ``max_cases`` ran. The case sequence depends on ``seed`` only, so
    a case budget makes the run identical on every machine; a time budget explores further on faster ones."""
    rng = random.Random(seed)
    sources = {p.stem: p.read_bytes() for p in sorted(MODELS.glob("*.onnx"))}
    crashes: list[tuple[int, str, str]] = []
    cases = 0
    deadline = time.monotonic() + seconds
    with tempfile.TemporaryDirectory() as d:
        while time.monotonic() < deadline and (max_cases is None or cases < max_cases):
            case_seed = rng.randrange(2**31)
            crng = random.Random(case_seed)
            name = crng.choice(sorted(sources))
            pipeline = crng.choice(PIPELINES)
            problem = run_case(mutate(sources[name], crng), pipeline, Path(d))
            cases += 1
            if problem:
                crashes.append((case_seed, f"{name} / {pipeline}", problem))
                if stop_on_crash:
                    break
    return cases, crashes


def replay(case_seed: int) -> str | None:
    sources = {p.stem: p.read_bytes() for p in sorted(MODELS.glob("*.onnx"))}
    crng = random.Random(case_seed)
    name = crng.choice(sorted(sources))
    pipeline = crng.choice(PIPELINES)
    with tempfile.TemporaryDirectory() as d:
        return run_case(mutate(sources[name], crng), pipeline, Path(d))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, help="stop after this many cases (a run that is the same on every machine)")
    ap.add_argument("--keep-going", action="store_true")
    args = ap.parse_args()
    n, found = fuzz(args.seconds, args.seed, stop_on_crash=not args.keep_going, max_cases=args.cases)
    print(f"{n} cases in {args.seconds:g}s, {len(found)} crash(es)")
    for case_seed, what, problem in found:
        print(f"--- case seed {case_seed}: {what}\n{problem}")
