"""Data-free activation ranges: from the BatchNorm statistics `fold-bn` recorded before folding.

A BN output is, per channel, roughly N(beta, |gamma|^2) on the data the network was trained on; so its range is
``beta +- K * |gamma|`` (clamped by a following Relu / Clip). The default (`data_free=union`) widens the ranges
observed on seeded random inputs to these where they are recorded: measured best of the three modes (ppocr_cls
cosine 0.90 vs 0.80 for BN ranges alone and 0.79 for random inputs alone; on the synthetic reference models,
whose BN statistics are random, as good as random inputs alone).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from compress_graph.ir import graph as G
from compress_graph.ir.model import Model

BN_STATS_KEY = "bn_stats"
#: Standard deviations kept on each side of the per-channel mean.
K_SIGMA = 3.0


def bn_stats(model: Model) -> dict[str, dict[str, np.ndarray]]:
    return model.annotations.get(BN_STATS_KEY, {}) or {}


def describe(model: Model, mode: str = "union") -> str:
    n = len(bn_stats(model))
    if n and mode == "bn":
        return f"data-free: BN statistics for {n} tensors, seeded random inputs elsewhere"
    if n and mode == "union":
        return f"data-free: seeded random inputs, ranges widened to BN statistics for {n} tensors"
    return "data-free: ranges from seeded random inputs (no BN statistics recorded)"


def _clip_bounds(node: gs.Node) -> tuple[float, float]:
    if node.op == "Relu":
        return 0.0, np.inf
    lo, hi = -np.inf, np.inf
    if len(node.inputs) > 1 and node.inputs[1].name:
        v = G.constant_value(node.inputs[1])
        lo = float(np.ravel(v)[0]) if v is not None and np.size(v) == 1 else lo
    if len(node.inputs) > 2 and node.inputs[2].name:
        v = G.constant_value(node.inputs[2])
        hi = float(np.ravel(v)[0]) if v is not None and np.size(v) == 1 else hi
    return lo, hi


def channel_range(stats: dict[str, np.ndarray], k: float = K_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(stats["mean"], dtype=np.float64)
    std = np.asarray(stats["std"], dtype=np.float64)
    return mean - k * std, mean + k * std


def bn_ranges(model: Model, tensors: list[str], k: float = K_SIGMA) -> dict[str, tuple[float, float]]:
    """[lo, hi] for each planned tensor that is a BN output, or a Relu/Clip chain applied to one."""
    stats = bn_stats(model)
    if not stats:
        return {}
    tmap = model.tensor_map()
    out: dict[str, tuple[float, float]] = {}
    for name in tensors:
        t = tmap.get(name)
        if t is None:
            continue
        clamps = []
        while t.name not in stats:
            prod = G.producer(t)
            if prod is None or prod.op not in ("Relu", "Clip"):
                break
            clamps.append(_clip_bounds(prod))
            t = prod.inputs[0]
        if t.name not in stats:
            continue
        lo, hi = channel_range(stats[t.name], k)
        for a, b in reversed(clamps):
            lo, hi = np.clip(lo, a, b), np.clip(hi, a, b)
        out[name] = (float(lo.min()), float(hi.max()))
    return out
