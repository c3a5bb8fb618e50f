"""Rank selection: per-layer energy targets, fixed ranks, or a global MACs budget allocated by sensitivity.

Every (scheme, rank) option of a layer is a :class:`Candidate` with its MACs and its relative output error (see
``decompose``). ``energy`` picks, per layer, the candidate with the fewest MACs whose error is at most
``1 - energy``. ``macs`` walks each layer's lower convex hull of (MACs, sensitivity x error) and greedily takes
the steps that remove the most MACs per unit of model-output error until the budget is met; the sensitivity of a
layer is measured on calibration inputs as model-output error per unit of layer error.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from compress_graph.ir import runtime
from compress_graph.ir.model import Model
from compress_graph.passes.lowrank import decompose as D
from compress_graph.passes.lowrank.layers import Layer

_SATURATING = {"Softmax", "LogSoftmax", "Sigmoid"}
_SHAPE_ONLY = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"}


@dataclass(frozen=True)
class Candidate:
    scheme: str
    ranks: tuple[int, ...]
    macs: int
    error: float


def _grid(full: int, round_to: int) -> list[int]:
    step = max(1, min(round_to, full))
    return list(range(step, full + 1, step))


def _thin(values: list, limit: int) -> list:
    """At most ``limit`` values, spread geometrically (dense at small ranks, where MACs change most)."""
    if len(values) <= limit:
        return values
    idx = np.unique(np.round(np.geomspace(1, len(values), limit)).astype(int) - 1)
    return [values[i] for i in idx]


def scheme_ranks(layer: Layer, scheme: str, round_to: int, limit: int, max_macs: float) -> list[tuple[int, ...]]:
    """Rank tuples of a scheme that cut the layer's MACs below ``max_macs``, ascending."""
    shape = layer.weight.shape
    if not D.applicable(scheme, shape):
        return []
    full = D.full_rank(scheme, shape)
    if len(full) == 1:
        ranks = [(r,) for r in _grid(full[0], round_to)]
    else:
        steps = max(len(_grid(full[0], round_to)), len(_grid(full[1], round_to)))
        ranks = []
        for k in range(1, steps + 1):
            t = k / steps
            pair = tuple(min(f, max(1, math.ceil(t * f / round_to) * round_to)) for f in full)
            if pair not in ranks:
                ranks.append(pair)
    ranks = [r for r in ranks if layer.scheme_macs(scheme, r) < max_macs]
    return ranks if scheme == "channel" else _thin(ranks, limit)


def schemes_for(layer: Layer, wanted: str) -> tuple[str, ...]:
    if layer.kind != "conv":
        return ("channel",)
    return D.SCHEMES if wanted == "auto" else (wanted,)


def candidates(layer: Layer, lm: D.LayerMath, schemes: tuple[str, ...], round_to: int, min_saving: float,
               max_error: float, limit: int = 12) -> list[Candidate]:
    """Every option of a layer (all evaluated): used by the global MACs allocation."""
    out = []
    max_macs = layer.macs * (1.0 - min_saving)
    for scheme in schemes:
        for r in scheme_ranks(layer, scheme, round_to, limit, max_macs):
            err = D.error(lm, scheme, r)
            if err <= max_error:
                out.append(Candidate(scheme, r, layer.scheme_macs(scheme, r), err))
    return out


def by_energy(layer: Layer, lm: D.LayerMath, schemes: tuple[str, ...], round_to: int, min_saving: float,
              energy: float, limit: int = 12) -> Candidate | None:
    """The fewest-MACs option whose error is at most ``1 - energy`` (binary search; error falls with rank)."""
    target = 1.0 - energy + 1e-12
    best: Candidate | None = None
    for scheme in schemes:
        ranks = scheme_ranks(layer, scheme, round_to, limit, layer.macs * (1.0 - min_saving))
        lo, hi, found = 0, len(ranks) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            err = D.error(lm, scheme, ranks[mid])
            if err <= target:
                found = Candidate(scheme, ranks[mid], layer.scheme_macs(scheme, ranks[mid]), err)
                hi = mid - 1
            else:
                lo = mid + 1
        if found is not None and (best is None or found.macs < best.macs):
            best = found
    return best


def by_rank(layer: Layer, lm: D.LayerMath, scheme: str, rank: float, round_to: int,
            min_saving: float) -> Candidate | None:
    """A fixed rank (absolute >= 1, or a fraction of the scheme's full rank), rounded up to ``round_to``."""
    scheme = "channel" if scheme == "auto" or layer.kind != "conv" else scheme
    shape = layer.weight.shape
    if not D.applicable(scheme, shape):
        return None
    full = D.full_rank(scheme, shape)
    ranks = []
    for f in full:
        r = int(rank) if rank >= 1 else math.ceil(rank * f)
        r = math.ceil(max(r, 1) / round_to) * round_to
        ranks.append(min(f, r))
    r = tuple(ranks)
    macs = layer.scheme_macs(scheme, r)
    if macs >= layer.macs * (1.0 - min_saving):
        return None
    return Candidate(scheme, r, macs, D.error(lm, scheme, r))


# ------------------------------------------------------------------------------------------------ global budget
def _hull_steps(base_macs: int, options: list[Candidate], weight: float) -> list[tuple[float, int, Candidate]]:
    """Moves along the lower convex hull from "unchanged": (error per MAC removed, MACs removed, candidate)."""
    steps = []
    cur_macs, cur_err = base_macs, 0.0
    pool = sorted(options, key=lambda c: (-c.macs, c.error))
    while True:
        best = None
        for c in pool:
            if c.macs >= cur_macs:
                continue
            slope = (weight * c.error - cur_err) / (cur_macs - c.macs)
            if best is None or slope < best[0] - 1e-15 or (abs(slope - best[0]) <= 1e-15 and c.macs < best[2].macs):
                best = (slope, cur_macs - c.macs, c)
        if best is None:
            return steps
        steps.append((max(best[0], 0.0), best[1], best[2]))
        cur_macs, cur_err = best[2].macs, weight * best[2].error


def allocate(layers: list[Layer], options: dict[str, list[Candidate]], sensitivity: dict[str, float],
             need: int) -> dict[str, Candidate]:
    """Greedy: repeatedly take the hull step with the least weighted error per MAC removed, until ``need`` MACs
    are removed (or no step is left)."""
    hulls = {ly.name: _hull_steps(ly.macs, options.get(ly.name, []), sensitivity.get(ly.name, 1.0)) for ly in layers}
    heap = [(steps[0][0], i, name, 0) for i, (name, steps) in enumerate(hulls.items()) if steps]
    heapq.heapify(heap)
    order = {name: i for i, name in enumerate(hulls)}
    chosen: dict[str, Candidate] = {}
    saved = 0
    last = None
    while heap and saved < need:
        _, _, name, k = heapq.heappop(heap)
        _, removed, cand = hulls[name][k]
        chosen[name] = cand
        saved += removed
        last = name
        if k + 1 < len(hulls[name]):
            heapq.heappush(heap, (hulls[name][k + 1][0], order[name], name, k + 1))
    if last is not None and saved > need:
        # the last step may overshoot the budget: take the least-error option of that layer that still meets it
        base = {ly.name: ly.macs for ly in layers}[last]
        slack = saved - need
        cur = chosen[last]
        fits = [c for c in options.get(last, []) if c.macs <= cur.macs + slack and c.error < cur.error]
        if base <= cur.macs + slack:
            del chosen[last]
        elif fits:
            chosen[last] = min(fits, key=lambda c: (c.error, c.macs))
    return chosen


def _weight_layout(layer: Layer, approx: np.ndarray) -> np.ndarray:
    """A full-rank-shaped approximation back in the node's own weight layout and dtype."""
    if layer.kind == "conv":
        return approx.astype(layer.dtype)
    mat = approx[:, :, 0, 0].T  # [D, N]
    if layer.kind == "gemm":
        mat = mat / float(layer.node.attrs.get("alpha", 1.0))
        if int(layer.node.attrs.get("transB", 0)):
            mat = mat.T
    return np.ascontiguousarray(mat.astype(layer.dtype))


def _logits(t: gs.Tensor) -> str:
    """The tensor a graph output is a saturating activation of (through shape-only ops), else the output itself."""
    cur = t
    while cur.inputs and cur.inputs[0].op in _SHAPE_ONLY and cur.inputs[0].inputs:
        cur = cur.inputs[0].inputs[0]
    if cur.inputs and cur.inputs[0].op in _SATURATING:
        return cur.inputs[0].inputs[0].name
    return t.name


def measure_sensitivity(model: Model, layers: list[Layer], maths: dict[str, D.LayerMath],
                        feeds: list[dict[str, np.ndarray]], probe: float = 0.05,
                        floor_fraction: float = 0.05) -> dict[str, float]:
    """Model-output error per unit of layer error, one layer perturbed at a time (rank-reduced weight).

    The weights become graph inputs of one onnxruntime session, so probing a layer is one more feed, not a new
    model; the output error is the relative squared error averaged over the model's outputs (each normalized on
    its own, so a box output in pixels does not drown a score output).
    """
    work = model.copy()
    by_name = {(n.name or n.outputs[0].name): n for n in work.graph.nodes}
    weight_inputs: dict[str, str] = {}
    originals: dict[str, np.ndarray] = {}
    for ly in layers:
        node = by_name[ly.name]
        value = np.asarray(ly.node.inputs[1].values if isinstance(ly.node.inputs[1], gs.Constant)
                           else _weight_layout(ly, ly.weight))
        var = gs.Variable(work.unique_name(f"{ly.name}.probe_weight"), dtype=value.dtype, shape=list(value.shape))
        node.inputs[1] = var
        work.graph.inputs.append(var)
        weight_inputs[ly.name] = var.name
        originals[var.name] = value
    work.graph.cleanup(remove_unused_graph_inputs=False)
    # Saturating output activations (softmax probabilities, sigmoid scores) hide perturbations on a few samples:
    # judge the logits feeding them instead.
    outputs = list(dict.fromkeys(_logits(t) for t in work.graph.outputs))
    sess = runtime.session(work, outputs, threads=0)
    reference = [sess.run(outputs, {**f, **originals}) for f in feeds]
    result: dict[str, float] = {}
    for ly in layers:
        lm = maths[ly.name]
        _, kept = lm.output_basis()
        r = int(np.searchsorted(kept, 1.0 - probe - 1e-12) + 1)
        r = min(max(r, 1), len(kept) - 1) if len(kept) > 1 else 1
        fact = D.channel(lm, r)
        if fact.error <= 0:
            result[ly.name] = 1.0
            continue
        feed_w = dict(originals)
        feed_w[weight_inputs[ly.name]] = _weight_layout(ly, fact.approx)
        errs = []
        for f, ref in zip(feeds, reference):
            got = sess.run(outputs, {**f, **feed_w})
            errs.append([(float(np.sum((g.astype(np.float64) - a) ** 2)), float(np.sum(np.square(a, dtype=np.float64))))
                         for g, a in zip(got, ref)])
        per_output = []
        for k in range(len(outputs)):
            num = sum(e[k][0] for e in errs)
            den = sum(e[k][1] for e in errs)
            per_output.append(num / den if den > 0 else 0.0)
        result[ly.name] = float(np.mean(per_output)) / fact.error
    # a few probe samples can show no effect at all; never treat a layer as free to cut
    floor = floor_fraction * float(np.mean(list(result.values()))) if result else 0.0
    return {k: max(v, floor) for k, v in result.items()}
