"""The ONNX backend node tests (shipped with the onnx package) pushed through load -> cleanup -> save.

For every test case onnxruntime can run, the round-tripped model must give the same outputs as the original
(exact for integer/bool outputs, 1e-6 relative for float). Cases compress-graph refuses (exit-3 errors) are counted
with their reason; a crash (any other exception) or a mismatch is a bug.

    python bench/peer_suite/run.py [--every N] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return [c for c in collect_testcases() if c.kind == "node" and c.data_sets]


def _run(model: onnx.ModelProto, inputs: list) -> list:
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, inputs)))


def _equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating):
        return bool(np.allclose(a.astype(np.complex128), b.astype(np.complex128), rtol=1e-6, atol=1e-7,
                                equal_nan=True))
    return bool(np.array_equal(a, b))


def check_case(case, tmp: Path) -> tuple[str, str]:
    """Return (status, detail): ok | refused | skipped (ORT cannot run the original) | mismatch | crash."""
    from compress_graph import load, run_pipeline, save
    from compress_graph.ir.errors import CompressGraphError

    inputs = list(case.data_sets[0][0])
    try:
        ref = _run(case.model, inputs)
    except Exception:
        return "skipped", "onnxruntime cannot run the original"
    src = tmp / "in.onnx"
    onnx.save(case.model, src)
    try:
        model = load(src)
        model, _ = run_pipeline(model, "cleanup", verify=False)
        save(model, tmp / "out.onnx")
    except CompressGraphError as exc:
        return "refused", str(exc).split(": ", 1)[-1][:90]
    except Exception as exc:  # a bug
        return "crash", f"{type(exc).__name__}: {exc}"[:120]
    try:
        got = _run(onnx.load(tmp / "out.onnx"), inputs)
    except Exception as exc:
        return "mismatch", f"output model does not run: {str(exc)[:100]}"
    if len(got) != len(ref) or not all(_equal(r, g) for r, g in zip(ref, got)):
        return "mismatch", "outputs differ"
    return "ok", ""


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--every", type=int, default=1, help="run every N-th case (CI runs a sample)")
    ap.add_argument("--json", help="write per-case results here")
    args = ap.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases()[:: args.every]:
            results[case.name] = check_case(case, Path(tmp))
    counts = collections.Counter(s for s, _ in results.values())
    print(f"{len(results)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    reasons = collections.Counter(d for s, d in results.values() if s == "refused")
    for reason, n in reasons.most_common(12):
        print(f"  refused x{n}: {reason}")
    for name, (s, d) in sorted(results.items()):
        if s in ("crash", "mismatch"):
            print(f"  {s}: {name}: {d}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return results


if __name__ == "__main__":
    main()
