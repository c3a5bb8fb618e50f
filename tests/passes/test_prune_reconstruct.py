"""Least-squares reconstruction: a removed channel that duplicates a kept one is absorbed exactly by the refit
(strided, padded, dilated conv and Gemm consumers), and the refit never makes a layer worse."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from compress_graph import run_pipeline  # noqa: E402
from compress_graph.passes.data import CalibData  # noqa: E402
from prune_helpers import Builder, run_ort  # noqa: E402


def _duplicate_model(tmp_path, consumer: str):
    b = Builder(21)
    c1 = b.conv("x", 3, 8, k=3, strides=[2, 2])
    w, bias = b.inits[f"{c1}.weight"], b.inits[f"{c1}.bias"]
    w[2] *= 0.2
    w[3] = w[2]
    bias[3] = bias[2]
    r = b.node("Relu", [c1])
    if consumer == "conv":
        b.conv(r, 8, 5, k=3, dilations=[2, 2], pads=[2, 2, 2, 2], out="y")
    else:
        f = b.node("Flatten", [b.node("GlobalAveragePool", [r])], axis=1)
        b.gemm(f, 8, 5, out="y")
    return b.model(tmp_path, [1, 3, 12, 12], ["y"], name=f"dup_{consumer}.onnx")


@pytest.mark.parametrize("consumer", ["conv", "gemm"])
@pytest.mark.parametrize("mode", ["sequential", "local"])
def test_duplicate_channel_is_absorbed(tmp_path, consumer, mode):
    m = _duplicate_model(tmp_path, consumer)
    calib = CalibData.random(m, count=16, seed=4)
    feed = {"x": np.random.default_rng(9).standard_normal((1, 3, 12, 12)).astype(np.float32)}
    ref = run_ort(m.to_onnx(), feed)[0]
    errs = {}
    for refit in ("false", "true"):
        out, rep = run_pipeline(m, f"prune{{ratio=0.125,criterion=l1,reconstruct={refit},refit={mode}}}",
                                calib=calib, verify=False)
        assert rep["passes"][-1]["stats"]["units_removed"] == 1
        got = run_ort(out.to_onnx(), feed)[0]
        errs[refit] = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert errs["true"] < 1e-3
    assert errs["true"] < errs["false"] / 10
