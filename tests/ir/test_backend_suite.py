"""The ONNX backend node tests through load -> cleanup -> save (a sample here; bench/peer_suite/run.py runs all)."""

import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "peer_suite"))
import run as peer  # noqa: E402


@pytest.mark.slow
def test_backend_node_suite_sample():
    cases = peer.cases()[::7]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            results[case.name] = peer.check_case(case, Path(tmp))
    bad = {k: v for k, v in results.items() if v[0] in ("crash", "mismatch")}
    ok = sum(v[0] == "ok" for v in results.values())
    assert not bad, bad
    assert ok > 0.75 * len(results)


@pytest.mark.parametrize("name", ["test_affine_grid_2d_expanded", "test_affine_grid_2d_align_corners_expanded"])
def test_if_condition_stays_computed(name):
    """Folding these If conditions made onnxruntime type-check the taken branch and reject the saved model."""
    case = next(c for c in peer.cases() if c.name == name)
    with tempfile.TemporaryDirectory() as tmp:
        assert peer.check_case(case, Path(tmp)) == ("ok", "")
