"""How many units each group loses: a fixed ``ratio`` per group, or a global MAC target allocated by sensitivity.

Sensitivity is measured on one onnxruntime session of a *masked* copy of the model: every consumer input that reads
prunable channels is multiplied by a per-channel mask fed as a graph input, so "prune the k least important units of
group g" is one run with zeros in the mask, not a rebuilt model. A greedy allocator then takes, step by step, the
cheapest remaining cut (output error added per MAC saved) until the target is met.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs
from compress_graph.ir import runtime
from compress_graph.ir.model import Model
from compress_graph.passes.prune.groups import Analysis, ChannelGroup, Unit

LEVELS = (0.25, 0.5, 0.75)


def removal_order(group: ChannelGroup, scores: np.ndarray, an: Analysis, min_channels: int) -> list[int]:
    """Unit indices in the order they may be removed (least important first), skipping any unit whose removal would
    leave a tensor with fewer than ``min_channels`` (at least 1) channels."""
    remaining = {t: an.info[t].size for t in group.tensors}
    floor = {t: min(s, max(1, min_channels)) for t, s in remaining.items()}
    order = []
    for i in np.argsort(scores, kind="stable").tolist():
        u = group.units[i]
        if all(remaining[t] - len(idx) >= floor[t] for t, idx in u.members.items()):
            for t, idx in u.members.items():
                remaining[t] -= len(idx)
            order.append(i)
    return order


def _primary_size(group: ChannelGroup, an: Analysis) -> int:
    return max(an.info[t].size for u in group.units for t in u.members)


def group_cuts(groups: list[ChannelGroup], removed: list[Unit], an: Analysis) -> list[dict[str, Any]]:
    """The cut chosen per group, in group order, for the report: ``channels`` of its widest tensor before and
    ``kept`` after, ``units`` (removable sets) and ``units_cut`` (sensitivity curves' x is ``units_cut / units``)."""
    gone = {id(u) for u in removed}
    cuts = []
    for g in groups:
        members = {t for u in g.units for t in u.members}
        widest = max((t for t in g.tensors if t in members), key=lambda t: an.info[t].size)
        cut = [u for u in g.units if id(u) in gone]
        size = an.info[widest].size
        cuts.append({"group": g.name, "channels": size,
                     "kept": size - sum(len(u.members.get(widest, ())) for u in cut),
                     "units": len(g.units), "units_cut": len(cut)})
    return cuts


def by_ratio(groups: list[ChannelGroup], orders: dict[int, list[int]], an: Analysis, ratio: float,
             round_to: int) -> list[Unit]:
    """Remove ``ratio`` of each group's units; with ``round_to`` the widest tensor keeps a multiple of it."""
    removed = []
    for g in groups:
        order = orders[g.gid]
        r = int(np.floor(ratio * len(g.units) + 1e-9))
        if round_to > 1:
            size = _primary_size(g, an)
            kept = max(round_to, int(round((size - r) / round_to)) * round_to)
            r = size - kept
        r = max(0, min(r, len(order)))
        removed.extend(g.units[i] for i in order[:r])
    return removed


# ----------------------------------------------------------------------------------------------- MAC savings
def unit_savings(model: Model, an: Analysis, groups: list[ChannelGroup]) -> dict[int, np.ndarray]:
    """First-order MACs saved by removing each unit: per node, its MACs times the largest fraction of channels the unit
    takes from any of the node's tensors (a depthwise conv losing input and output channel c saves 1/C, not 2/C)."""
    from compress_graph.ir.cost import model_cost

    index = np.full(an.total, -1, dtype=np.int64)
    k = 0
    spans = {}
    for g in groups:
        spans[g.gid] = (k, k + len(g.units))
        for u in g.units:
            for t, idx in u.members.items():
                index[an.info[t].offset + idx] = k
            k += 1
    saving = np.zeros(k)
    macs = {nc.name: nc.macs for nc in model_cost(model).per_node}
    for node in model.graph.nodes:
        m = macs.get(node.name, 0)
        if not m:
            continue
        frac = None
        for t in list(node.inputs) + list(node.outputs):
            info = an.info.get(t.name)
            if info is None:
                continue
            u = index[info.offset: info.offset + info.size]
            ok = u >= 0
            if not ok.any():
                continue
            f = np.bincount(u[ok], minlength=k) / info.size
            frac = f if frac is None else np.maximum(frac, f)
        if frac is not None:
            saving += m * frac
    return {gid: saving[a:b] for gid, (a, b) in spans.items()}


# ----------------------------------------------------------------------------------------------- sensitivity
class MaskedModel:
    """One session of the model with a channel mask on every consumer input that reads prunable channels."""

    def __init__(self, model: Model, an: Analysis, groups: list[ChannelGroup], feeds: list[dict]):
        m = model.copy()
        tmap = m.tensor_map()
        nodes = {n.name: n for n in m.graph.nodes}
        self.masks: dict[str, tuple[str, np.ndarray]] = {}
        wanted = {t for g in groups for u in g.units for t in u.members}
        for node_name, tname in an.sinks:
            if tname not in wanted:
                continue
            info = an.info[tname]
            if tname not in self.masks:
                shape = [1] * info.rank
                shape[info.axis] = info.size
                mask = gs.Variable(m.unique_name(f"{tname}__mask"), dtype=np.float32, shape=shape)
                masked = gs.Variable(m.unique_name(f"{tname}__masked"), dtype=tmap[tname].dtype)
                m.graph.nodes.append(gs.Node("Mul", m.unique_name(f"{tname}__mask_mul"),
                                             inputs=[tmap[tname], mask], outputs=[masked]))
                m.graph.inputs.append(mask)
                self.masks[tname] = (mask.name, np.ones(shape, dtype=np.float32), masked)
            node = nodes[node_name]
            masked = self.masks[tname][2]
            for i, t in enumerate(node.inputs):
                if t.name == tname:
                    node.inputs[i] = masked
        from compress_graph.ir import graph as G

        G.toposort(m.graph)
        self.sess = runtime.session(m)
        self.feeds = feeds
        self.reference = [self._run(f, {}) for f in feeds]

    def _run(self, feed: dict, zeros: dict[str, np.ndarray]) -> list[np.ndarray]:
        full = dict(feed)
        for tname, (mname, ones, _) in self.masks.items():
            if tname in zeros:
                mk = ones.copy().reshape(-1)
                mk[zeros[tname]] = 0.0
                full[mname] = mk.reshape(ones.shape)
            else:
                full[mname] = ones
        return [np.asarray(v, dtype=np.float64) for v in self.sess.run(None, full)]

    def error(self, units: list[Unit]) -> float:
        """Relative squared output error with ``units`` zeroed: per output (its error over its own energy, so a
        detector's small score output counts as much as its large box regressors), averaged over outputs and
        samples."""
        zeros: dict[str, list] = {}
        for u in units:
            for t, idx in u.members.items():
                if t in self.masks:
                    zeros.setdefault(t, []).append(idx)
        zeros = {t: np.concatenate(v) for t, v in zeros.items()}
        errs = []
        for feed, ref in zip(self.feeds, self.reference):
            got = self._run(feed, zeros)
            errs.append(np.mean([float(np.sum((a - b) ** 2)) / (float(np.sum(b**2)) or 1.0)
                                 for a, b in zip(got, ref)]))
        if not errs:
            raise ValueError("prune sensitivity: no sample inputs to measure on")
        return float(np.mean(errs))


def sensitivity(masked: MaskedModel, groups: list[ChannelGroup], orders: dict[int, list[int]],
                levels=LEVELS, progress=None) -> dict[int, list[tuple[int, float]]]:
    """gid -> [(units removed, output error)] at each level, monotone (a bigger cut never reads as safer)."""
    curves = {}
    items = progress(groups, "prune sensitivity", len(groups)) if progress else groups
    for g in items:
        order = orders[g.gid]
        points = [(0, 0.0)]
        for lv in levels:
            r = min(len(order), max(1, int(round(lv * len(g.units)))))
            if r <= points[-1][0]:
                continue
            e = masked.error([g.units[i] for i in order[:r]])
            points.append((r, max(e, points[-1][1])))
        curves[g.gid] = points
    return curves


def _interp(points: list[tuple[int, float]], r: int) -> float:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    if r <= xs[-1]:
        return float(np.interp(r, xs, ys))
    slope = (ys[-1] - ys[-2]) / max(xs[-1] - xs[-2], 1) if len(xs) > 1 else 0.0
    return ys[-1] + slope * (r - xs[-1]) * 2.0  # beyond the last measurement: assume it gets worse faster


def by_macs(groups: list[ChannelGroup], orders: dict[int, list[int]], savings: dict[int, np.ndarray],
            curves: dict[int, list[tuple[int, float]]], need: float, an: Analysis, round_to: int,
            max_fraction: float = 0.9) -> list[Unit]:
    """Greedy: repeatedly take the group step with the least added error per MAC saved until ``need`` MACs are saved."""
    state: dict[int, int] = {}
    heap: list[tuple[float, int, int]] = []
    by_id = {g.gid: g for g in groups}
    steps: dict[int, list[int]] = {}
    for g in groups:
        order = orders[g.gid]
        cap = min(len(order), int(max_fraction * len(g.units)))
        step = max(1, len(g.units) // 64)  # fine steps: a model of one or two groups still lands near its target
        if round_to > 1:
            size = _primary_size(g, an)
            first = size % round_to
            cands = [r for r in range(first, cap + 1, round_to) if r > 0]
        else:
            cands = list(range(step, cap + 1, step))
        steps[g.gid] = cands
        state[g.gid] = 0
        _push(heap, g.gid, 0, cands, order, savings, curves)
    saved = 0.0
    while heap and saved < need:
        _, gid, target = heapq.heappop(heap)
        cur = state[gid]
        if target <= cur:
            continue
        order = orders[gid]
        saved += float(savings[gid][order[cur:target]].sum())
        state[gid] = target
        nxt = [r for r in steps[gid] if r > target]
        _push(heap, gid, target, nxt, order, savings, curves)
    removed = []
    for gid, r in state.items():
        removed.extend(by_id[gid].units[i] for i in orders[gid][:r])
    return removed


def _push(heap, gid, cur, cands, order, savings, curves) -> None:
    if not cands:
        return
    nxt = cands[0]
    gain = float(savings[gid][order[cur:nxt]].sum())
    cost = _interp(curves[gid], nxt) - _interp(curves[gid], cur)
    heapq.heappush(heap, (max(cost, 0.0) / max(gain, 1e-9), gid, nxt))
