"""Streaming range observers (minmax, percentile, entropy/KL, MSE) and the calibration run that feeds them.

Memory stays bounded whatever the number of samples: each observed tensor keeps its min/max and one histogram of at
most ``MAX_BINS`` bins. The histogram is anchored at 0 with a power-of-two-coarsened bin width, so batches whose
values fall outside the current range are merged exactly (two adjacent bins become one) instead of being re-binned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from compress_graph.ir import runtime
from compress_graph.ir.model import Model
from compress_graph.passes.quant.qparams import activation_qparams

METHODS = ("minmax", "percentile", "entropy", "mse")
MAX_BINS = 4096
#: The first batch spans about this many bins; coarsening halves the resolution only when the range grows.
START_BINS = 2048


class Histogram:
    """Counts over bins ``[i * width, (i + 1) * width)`` for integer ``i`` in ``[lo_index, lo_index + len)``."""

    def __init__(self) -> None:
        self.width: float | None = None
        self.lo_index = 0
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, x: np.ndarray) -> None:
        x = x[np.isfinite(x)]
        if x.size == 0:
            return
        amax = float(np.abs(x).max())
        if self.width is None:
            if amax == 0.0:
                self._add_indices(np.zeros(x.size, dtype=np.int64), fresh_width=1e-6)
                return
            self.width = amax / (START_BINS / 2)
        idx = np.floor(x / self.width).astype(np.int64)
        self._add_indices(idx)

    def _add_indices(self, idx: np.ndarray, fresh_width: float | None = None) -> None:
        if self.width is None:
            self.width = fresh_width
        lo, hi = int(idx.min()), int(idx.max())
        if self.counts.size:
            lo, hi = min(lo, self.lo_index), max(hi, self.lo_index + self.counts.size - 1)
        while hi - lo + 1 > MAX_BINS:
            self._coarsen()
            idx = np.floor_divide(idx, 2)
            lo, hi = int(idx.min()), int(idx.max())
            if self.counts.size:
                lo, hi = min(lo, self.lo_index), max(hi, self.lo_index + self.counts.size - 1)
        grown = np.zeros(hi - lo + 1, dtype=np.int64)
        if self.counts.size:
            start = self.lo_index - lo
            grown[start:start + self.counts.size] = self.counts
        grown += np.bincount(idx - lo, minlength=grown.size)
        self.counts, self.lo_index = grown, lo

    def _coarsen(self) -> None:
        """Merge bins pairwise: bin ``i`` of the new grid is ``2i`` and ``2i+1`` of the old one."""
        assert self.width is not None
        if self.counts.size:
            first = self.lo_index - (self.lo_index % 2)
            pad_front = self.lo_index - first
            c = np.concatenate([np.zeros(pad_front, np.int64), self.counts])
            if c.size % 2:
                c = np.concatenate([c, np.zeros(1, np.int64)])
            self.counts = c.reshape(-1, 2).sum(axis=1)
            self.lo_index = first // 2
        self.width *= 2

    # ---------------------------------------------------------------------------------------- views
    def edges(self) -> np.ndarray:
        return (self.lo_index + np.arange(self.counts.size + 1)) * self.width

    def centers(self) -> np.ndarray:
        return (self.lo_index + np.arange(self.counts.size) + 0.5) * self.width

    def quantile(self, q: float) -> float:
        """Value below which a fraction ``q`` of the counts lie (linear inside a bin)."""
        cum = np.cumsum(self.counts)
        total = cum[-1]
        target = q * total
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, self.counts.size - 1)
        before = cum[i - 1] if i > 0 else 0
        inside = (target - before) / self.counts[i] if self.counts[i] else 0.0
        return float((self.lo_index + i + inside) * self.width)

    def folded_abs(self) -> np.ndarray:
        """Counts of ``|x|`` on bins ``[k * width, (k + 1) * width)``, k >= 0."""
        n_pos = max(self.lo_index + self.counts.size, 0)
        n_neg = max(-self.lo_index, 0)
        out = np.zeros(max(n_pos, n_neg), dtype=np.int64)
        idx = self.lo_index + np.arange(self.counts.size)
        pos = idx >= 0
        np.add.at(out, idx[pos], self.counts[pos])
        np.add.at(out, -idx[~pos] - 1, self.counts[~pos])
        return out


class Observer:
    """Running min/max and (when the method needs it) a histogram of one tensor."""

    def __init__(self, with_histogram: bool):
        self.min = np.inf
        self.max = -np.inf
        self.count = 0
        self.hist = Histogram() if with_histogram else None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).ravel()
        if x.size == 0:
            return
        finite = x[np.isfinite(x)]
        if finite.size == 0:
            return
        self.min = min(self.min, float(finite.min()))
        self.max = max(self.max, float(finite.max()))
        self.count += finite.size
        if self.hist is not None:
            self.hist.add(finite)

    def range(self, method: str, *, percentile: float = 99.99, dtype: str = "uint8") -> tuple[float, float]:
        """The calibrated [lo, hi] for ``method``; always inside the observed [min, max]."""
        if self.count == 0:
            return 0.0, 0.0
        if method == "minmax" or self.hist is None or self.max == self.min:
            return self.min, self.max
        if method == "percentile":
            return percentile_range(self.hist, self.min, self.max, percentile)
        if method == "entropy":
            return entropy_range(self.hist, self.min, self.max, dtype)
        if method == "mse":
            return mse_range(self.hist, self.min, self.max, dtype)
        raise ValueError(f"unknown calibration method {method}")


# --------------------------------------------------------------------------------------------- methods
def percentile_range(hist: Histogram, vmin: float, vmax: float, pct: float) -> tuple[float, float]:
    """[q(1 - p), q(p)]: clips the rarest ``1 - p`` of values on each side (a side that never goes below 0 keeps 0)."""
    p = pct / 100.0
    hi = min(vmax, hist.quantile(p)) if vmax > 0 else vmax
    lo = max(vmin, hist.quantile(1.0 - p)) if vmin < 0 else vmin
    return lo, hi


def kl_threshold(abs_counts: np.ndarray, width: float, levels: int, candidates: int = 256) -> float:
    """TensorRT-style entropy calibration: the |x| clipping threshold minimizing KL(P || Q).

    P: the histogram clipped at the threshold (outliers added to the last bin); Q: P quantized to ``levels``
    levels (each level's mass spread evenly over the bins that were non-empty).
    """
    counts = abs_counts.astype(np.float64)
    nz = np.nonzero(counts)[0]
    if nz.size == 0:
        return 0.0
    n = int(nz[-1]) + 1
    counts = counts[:n]
    if n <= levels:
        return n * width
    best_i, best_kl = n, np.inf
    step = max(1, (n - levels) // candidates)
    tail = np.cumsum(counts[::-1])[::-1]  # tail[i] = sum(counts[i:])
    for i in range(levels, n + 1, step):
        p = counts[:i].copy()
        if i < n:
            p[-1] += tail[i]
        nonzero = counts[:i] > 0
        # split the first i bins into `levels` chunks
        edges = np.linspace(0, i, levels + 1).astype(np.int64)
        chunk_sum = np.add.reduceat(counts[:i], edges[:-1])
        chunk_nz = np.add.reduceat(nonzero.astype(np.float64), edges[:-1])
        for_each = np.divide(chunk_sum, chunk_nz, out=np.zeros_like(chunk_sum), where=chunk_nz > 0)
        q = np.repeat(for_each, np.diff(edges)) * nonzero
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        pn, qn = p / ps, q / qs
        mask = pn > 0
        if np.any(qn[mask] == 0):
            kl = np.inf
        else:
            kl = float(np.sum(pn[mask] * np.log(pn[mask] / qn[mask])))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i * width


def entropy_range(hist: Histogram, vmin: float, vmax: float, dtype: str) -> tuple[float, float]:
    """KL threshold on |x|: 256 levels for a non-negative tensor in uint8, else 128 (one sign's worth)."""
    levels = 256 if (vmin >= 0 and dtype == "uint8") else 128
    t = kl_threshold(hist.folded_abs(), hist.width, levels)
    return max(vmin, -t), min(vmax, t)


def _fake_error(centers: np.ndarray, counts: np.ndarray, lo: float, hi: float, dtype: str) -> float:
    qp = activation_qparams(lo, hi, dtype)
    diff = centers - qp.fake(centers).astype(np.float64)
    return float(np.sum(counts * diff * diff))


def mse_range(hist: Histogram, vmin: float, vmax: float, dtype: str, steps: int = 100) -> tuple[float, float]:
    """The clipping range minimizing the expected squared quantize-dequantize error over the histogram.

    First one factor shrinks both ends together, then each end is refined on its own.
    """
    centers, counts = hist.centers(), hist.counts.astype(np.float64)
    keep = counts > 0
    centers, counts = centers[keep], counts[keep]
    alphas = np.linspace(1.0 / steps, 1.0, steps)
    errs = [_fake_error(centers, counts, a * vmin, a * vmax, dtype) for a in alphas]
    a = float(alphas[int(np.argmin(errs))])
    lo, hi = a * vmin, a * vmax
    if vmax > 0:
        errs = [_fake_error(centers, counts, lo, b * vmax, dtype) for b in alphas]
        hi = float(alphas[int(np.argmin(errs))]) * vmax
    if vmin < 0:
        errs = [_fake_error(centers, counts, b * vmin, hi, dtype) for b in alphas]
        lo = float(alphas[int(np.argmin(errs))]) * vmin
    return lo, hi


# --------------------------------------------------------------------------------------------- the run
def observe(
    model: Model,
    names: Iterable[str],
    feeds: Iterable[dict[str, np.ndarray]],
    *,
    method: str = "minmax",
    progress: Callable[[Iterable, str, int | None], Iterable] | None = None,
    total: int | None = None,
    channel_max: Iterable[str] = (),
) -> tuple[dict[str, Observer], dict[str, np.ndarray]]:
    """Stream ``feeds`` through ``model`` and observe the named tensors batch by batch.

    Returns the per-tensor observers and, for the tensors in ``channel_max``, the per-channel (axis 1) max of |x|.
    """
    names = list(dict.fromkeys(names))
    channel_names = list(dict.fromkeys(channel_max))
    inputs = {t.name for t in model.graph.inputs}
    observers = {n: Observer(method != "minmax") for n in names}
    cmax: dict[str, np.ndarray] = {}
    internal = [n for n in dict.fromkeys(names + channel_names) if n not in inputs]
    feeds = iter(feeds)
    first = next(feeds, None)
    if first is None:
        return observers, cmax

    def all_feeds():
        yield first
        yield from feeds

    batches = progress(all_feeds(), "calibrating", total) if progress else all_feeds()
    # the session is only built when there is at least one batch
    pending: list[dict[str, np.ndarray]] = []

    def stream():
        for feed in batches:
            pending.append(feed)
            yield feed

    for values in runtime.activations(model, internal, stream()):
        feed = pending.pop()
        values = {**{k: v for k, v in feed.items() if k in inputs}, **values}
        for n in names:
            if n in values:
                observers[n].update(values[n])
        for n in channel_names:
            v = values.get(n)
            if v is None or np.ndim(v) < 2:
                continue
            m = np.abs(np.moveaxis(np.asarray(v, np.float32), 1, 0)).reshape(v.shape[1], -1).max(axis=1)
            cmax[n] = m if n not in cmax else np.maximum(cmax[n], m)
    return observers, cmax
