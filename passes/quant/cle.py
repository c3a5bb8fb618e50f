"""Cross-layer equalization (Nagel et al., data-free quantization): rescale Conv -> act -> Conv channel pairs.

For a channel ``i`` between two convs, ``W1[i] /= s_i`` (and ``b1[i]``) and ``W2[:, i] *= s_i`` leave the function
unchanged through a positively homogeneous activation (Relu, or none; PRelu/LeakyRelu pairs are not touched).
Data-free, ``r1_i`` is conv1's weight range and ``s_i = sqrt(r1_i / r2_i)`` makes both weight ranges
``sqrt(r1_i * r2_i)``. With calibration data ``r1_i`` is the observed range of activation channel ``i`` instead:
with per-channel weight scales it is the per-tensor *activation* scale that an outlier channel ruins, so the
activation ranges and conv2's input-column ranges are balanced (normalized so the scales' geometric mean is 1).

Clip(lo=0, hi=c) (ReLU6) is not homogeneous: ``clip(x / s) != clip(x) / s`` once the clip is reached. A channel
whose pre-activation reaches ``c`` on the calibration data keeps ``s_i = 1``; any other channel is only scaled with
``s_i >= max_i / c`` so it still stays below the clip. Without data (or for channels never observed) Clip pairs are
left alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_graphsurgeon as gs
from compress_graph.ir import graph as G
from compress_graph.ir.model import Model

#: Iterations over all pairs (scales of a chain converge in a few rounds).
ROUNDS = 8
#: Bound on one channel's scale so near-zero channels are not blown up.
S_MIN, S_MAX = 1e-3, 1e3


def has_depthwise(model: Model) -> bool:
    for n in model.graph.nodes:
        if n.op == "Conv" and int(n.attrs.get("group", 1)) > 1 and len(n.inputs) > 1:
            w = G.constant_value(n.inputs[1])
            if w is not None and w.shape[1] == 1:
                return True
    return False


def _private_const(t: gs.Tensor, owner: gs.Node) -> bool:
    return isinstance(t, gs.Constant) and all(c is owner for c in t.outputs)


def _conv_ok(n: gs.Node) -> bool:
    return (n.op == "Conv" and len(n.inputs) > 1 and _private_const(n.inputs[1], n)
            and (len(n.inputs) < 3 or not n.inputs[2].name or _private_const(n.inputs[2], n)))


def find_pairs(model: Model) -> list[tuple[gs.Node, gs.Node, gs.Node | None]]:
    """(conv1, conv2, activation or None) where conv1's output reaches only conv2, through at most one Relu/Clip."""
    graph = model.graph
    pairs = []
    for c1 in graph.nodes:
        if not _conv_ok(c1) or int(c1.attrs.get("group", 1)) != 1 and not _depthwise(c1):
            continue
        t = c1.outputs[0]
        act = None
        if len(t.outputs) != 1 or G.is_graph_output(graph, t):
            continue
        nxt = t.outputs[0]
        if nxt.op in ("Relu", "Clip"):
            act = nxt
            if act.op == "Clip" and not _clip_zero_lo(act):
                continue
            t = act.outputs[0]
            if len(t.outputs) != 1 or G.is_graph_output(graph, t):
                continue
            nxt = t.outputs[0]
        if not _conv_ok(nxt) or nxt.inputs[0] is not t:
            continue
        g2 = int(nxt.attrs.get("group", 1))
        if g2 != 1 and not _depthwise(nxt):
            continue
        pairs.append((c1, nxt, act))
    return pairs


def _depthwise(n: gs.Node) -> bool:
    w = np.asarray(n.inputs[1].values)
    return int(n.attrs.get("group", 1)) == w.shape[0] and w.shape[1] == 1


def _clip_zero_lo(node: gs.Node) -> bool:
    lo = G.constant_value(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else None
    return lo is not None and np.size(lo) == 1 and float(np.ravel(lo)[0]) == 0.0


def _clip_hi(node: gs.Node) -> float:
    hi = G.constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    return float(np.ravel(hi)[0]) if hi is not None and np.size(hi) == 1 else np.inf


def _ranges(c1: gs.Node, c2: gs.Node) -> tuple[np.ndarray, np.ndarray]:
    w1 = np.abs(np.asarray(c1.inputs[1].values, dtype=np.float64))
    w2 = np.abs(np.asarray(c2.inputs[1].values, dtype=np.float64))
    r1 = w1.reshape(w1.shape[0], -1).max(axis=1)
    if _depthwise(c2):
        r2 = w2.reshape(w2.shape[0], -1).max(axis=1)
    else:
        r2 = np.moveaxis(w2, 1, 0).reshape(w2.shape[1], -1).max(axis=1)
    return r1, r2


def _apply(c1: gs.Node, c2: gs.Node, s: np.ndarray) -> None:
    w1 = np.asarray(c1.inputs[1].values)
    c1.inputs[1].values = (w1 / s.reshape(-1, *([1] * (w1.ndim - 1)))).astype(w1.dtype)
    if len(c1.inputs) > 2 and c1.inputs[2].name:
        b1 = np.asarray(c1.inputs[2].values)
        c1.inputs[2].values = (b1 / s).astype(b1.dtype)
    w2 = np.asarray(c2.inputs[1].values)
    if _depthwise(c2):
        c2.inputs[1].values = (w2 * s.reshape(-1, *([1] * (w2.ndim - 1)))).astype(w2.dtype)
    else:
        c2.inputs[1].values = (w2 * s.reshape(1, -1, *([1] * (w2.ndim - 2)))).astype(w2.dtype)


def equalize(model: Model, feeds: Iterable[dict[str, np.ndarray]] | None = None, rounds: int = ROUNDS) -> dict:
    """Equalize every Conv -> [Relu|Clip(0,c)] -> Conv pair in place; returns counts for the report.

    With data, a channel's range on the first side is its observed activation range (what the per-tensor activation
    scale sees); without, conv1's weight range stands in for it (classic data-free CLE).
    """
    pairs = find_pairs(model)
    if not pairs:
        return {"pairs": 0}
    act_max: dict[str, np.ndarray] = {}
    if feeds is not None:
        from compress_graph.passes.quant.calibrate import observe

        _, act_max = observe(model, [], feeds, channel_max=[c2.inputs[0].name for _, c2, _ in pairs])
    # per pair: the bounds on the channel scales, and the current activation range (None: use weight ranges)
    state: dict[int, list] = {}
    skipped_clip = 0
    for c1, c2, act in pairs:
        n = np.asarray(c1.inputs[1].values).shape[0]
        lo, hi = np.full(n, S_MIN), np.full(n, S_MAX)
        a = act_max.get(c2.inputs[0].name)
        if a is not None and a.shape[0] != n:
            a = None
        if act is not None and act.op == "Clip":
            cap = _clip_hi(act)
            if np.isfinite(cap):
                if a is None:
                    lo[:] = hi[:] = 1.0
                    skipped_clip += 1
                else:
                    active = a >= cap * 0.999
                    lo = np.maximum(lo, np.where(active, 1.0, a / cap))
                    hi = np.where(active, 1.0, hi)
        state[id(c1)] = [lo, hi, None if a is None else a.astype(np.float64)]
    done = 0
    for _ in range(rounds):
        worst = 1.0
        for c1, c2, _ in pairs:
            lo, hi, a = state[id(c1)]
            r1, r2 = _ranges(c1, c2)
            if a is not None:
                r1 = a
            with np.errstate(divide="ignore", invalid="ignore"):
                s = np.sqrt(r1 / r2)
                ok = np.isfinite(s) & (s > 0)
                s = np.where(ok, s, 1.0)
                if a is not None and ok.any():
                    s = s / np.exp(np.mean(np.log(s[ok])))  # only relative scales matter for activations
            s = np.clip(s, lo, hi)
            # the bounds are on the total scale: what is left for later rounds shrinks by what was applied
            state[id(c1)] = [lo / s, hi / s, None if a is None else a / s]
            _apply(c1, c2, s)
            worst = max(worst, float(np.max(np.maximum(s, 1 / s))))
        done += 1
        if worst < 1.01:
            break
    model.invalidate()
    clip_pairs = sum(1 for _, _, act in pairs if act is not None and act.op == "Clip")
    return {"pairs": len(pairs), "rounds": done, "data_aware": bool(act_max), "clip_pairs": clip_pairs,
            "clip_pairs_skipped": skipped_clip}
