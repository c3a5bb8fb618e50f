"""Importance of units (sets of coupled channels): weight norms, BN scale, FPGM, and data-driven criteria.

A unit's importance aggregates over every weight that touches it (the filters producing it, the consumer columns
reading it, BN scales), each normalized by its layer's mean so layers of different scale count alike.
Data-driven criteria use per-channel statistics of the consumers' inputs on calibration data:
``act`` (mean |activation|), ``apoz`` (1 - average percentage of zeros) and ``output`` (the energy a channel adds
to the next layer's output, E[x_c^2] * ||W[:, c]||^2: "effect on the next layer", the one that survives without
retraining on trained models).
"""

from __future__ import annotations

import numpy as np
from compress_graph.passes.prune.groups import Analysis, ChannelGroup

WEIGHT_CRITERIA = ("l1", "l2", "bn-scale", "fpgm")
DATA_CRITERIA = ("act", "apoz", "output")
CRITERIA = ("auto", *WEIGHT_CRITERIA, *DATA_CRITERIA)

ChannelStats = dict[str, dict[str, np.ndarray]]  # tensor -> {"abs": mean |x|, "sq": mean x^2, "zero": zero fraction}


def collect_stats(model, an: Analysis, feeds: list[dict]) -> ChannelStats:
    """Per-channel statistics of every consumer input (sink) tensor, streamed batch by batch."""
    from compress_graph.ir.runtime import activations

    names = sorted({t for _, t in an.sinks})
    acc: dict[str, list] = {}
    for batch in activations(model, names, feeds):
        for name, value in batch.items():
            info = an.info[name]
            x = np.moveaxis(np.asarray(value, dtype=np.float64), info.axis, 0).reshape(info.size, -1)
            a = acc.setdefault(name, [np.zeros(info.size), np.zeros(info.size), np.zeros(info.size), 0])
            a[0] += np.abs(x).sum(1)
            a[1] += (x * x).sum(1)
            a[2] += (x <= 0).sum(1)
            a[3] += x.shape[1]
    return {n: {"abs": a[0] / a[3], "sq": a[1] / a[3], "zero": a[2] / a[3]} for n, a in acc.items() if a[3]}


def _unit_index(an: Analysis, groups: list[ChannelGroup]) -> tuple[np.ndarray, int]:
    index = np.full(an.total, -1, dtype=np.int64)
    k = 0
    for g in groups:
        for u in g.units:
            for t, idx in u.members.items():
                index[an.info[t].offset + idx] = k
            k += 1
    return index, k


def _fpgm_rows(m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sum of distances of each row to all others (small = close to the geometric median = redundant)."""
    if m.shape[1] > 256 and m.shape[0] * m.shape[0] * m.shape[1] > 2e8:
        m = m @ (rng.standard_normal((m.shape[1], 256)) / 16.0)  # distance-preserving projection
    sq = (m * m).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (m @ m.T), 0.0)
    return np.sqrt(d2).sum(1)


def _per_channel(ws, criterion: str, stats: ChannelStats, rng) -> np.ndarray | None:
    """Per-channel score of one weight slice (squared-norm-like for l2/output, additive for the others)."""
    if criterion in ("l1", "l2"):
        return ws.reduce(criterion)
    if criterion == "bn-scale":
        return ws.reduce("l1") if ws.kind == "bn" else None
    if criterion == "fpgm":
        return _fpgm_rows(ws.rows(), rng) if ws.kind == "out" and ws.array.shape[ws.axis] > 1 else None
    st = stats.get(ws.tensor)
    if ws.kind != "in" or st is None:
        return None
    if criterion == "act":
        return st["abs"]
    if criterion == "apoz":
        return 1.0 - st["zero"]
    if criterion == "output":
        return st["sq"] * ws.reduce("l2")
    raise ValueError(criterion)


def unit_importance(an: Analysis, groups: list[ChannelGroup], criterion: str, stats: ChannelStats | None = None,
                    bn_stats: dict | None = None, seed: int = 0) -> dict[int, np.ndarray]:
    """gid -> importance of each unit of that group (same order as ``group.units``).

    Groups where the criterion has nothing to measure (no BN for ``bn-scale``, no data for data criteria) fall back to
    ``l2``, so every group gets a ranking.
    """
    rng = np.random.default_rng(seed)
    index, n_units = _unit_index(an, groups)
    slices = list(an.weights)
    if criterion == "bn-scale" and bn_stats:
        from compress_graph.passes.prune.groups import WeightSlice

        for name, st in bn_stats.items():
            info = an.info.get(name)
            std = np.asarray(st.get("std", []), dtype=np.float64)
            if info is not None and std.size == info.size:
                slices.append(WeightSlice("bn_stats", name, "bn", std))

    def score(crit: str) -> tuple[np.ndarray, np.ndarray]:
        total = np.zeros(n_units)
        count = np.zeros(n_units)
        for ws in slices:
            s = _per_channel(ws, crit, stats or {}, rng)
            if s is None:
                continue
            info = an.info[ws.tensor]
            u = index[info.offset: info.offset + info.size]
            ok = u >= 0
            if not ok.any():
                continue
            raw = np.bincount(u[ok], weights=s[ok], minlength=n_units)
            if crit in ("l2", "output"):
                raw = np.sqrt(raw)
            present = np.bincount(u[ok], minlength=n_units) > 0
            mean = raw[present].mean()
            if mean <= 0:
                mean = 1.0
            total[present] += raw[present] / mean
            count[present] += 1
        return total, count

    main, main_count = score(criterion)
    fallback = score("l2") if criterion != "l2" else (main, main_count)
    out: dict[int, np.ndarray] = {}
    k = 0
    for g in groups:
        sl = slice(k, k + len(g.units))
        k += len(g.units)
        use_main = bool(np.all(main_count[sl] > 0))
        tot, cnt = (main[sl], main_count[sl]) if use_main else (fallback[0][sl], fallback[1][sl])
        out[g.gid] = tot / np.maximum(cnt, 1)
    return out
