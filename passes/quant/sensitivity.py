"""Per-layer sensitivity and mixed precision: keep the layers that cost the most agreement in float.

Sensitivity of a layer = how much output agreement (worst-output cosine vs. the float model) is recovered when only
that layer is left in float in an otherwise fully quantized model. Layers are then kept float in order of
sensitivity, re-measuring after each, until the drop ``1 - cosine`` is within ``budget`` (or nothing is left).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from compress_graph.ir.model import Model
from compress_graph.passes.base import PassContext
from compress_graph.passes.quant.placement import COMPUTE_OPS


def _drop(model: Model, feeds: list[dict[str, np.ndarray]], reference: list[dict[str, np.ndarray]]) -> float:
    from compress_graph.passes.quant.quantize import measure

    return 1.0 - measure(model, feeds, reference)


def layer_sensitivity(float_model: Model, setup, feeds: list[dict[str, np.ndarray]],
                      reference: list[dict[str, np.ndarray]], ctx: PassContext | None = None,
                      base_drop: float | None = None, compute_only: bool = True) -> dict[str, float]:
    """Agreement drop recovered by keeping each compute layer (or with ``compute_only=False`` each quantized node)
    alone in float (larger = more sensitive)."""
    if base_drop is None:
        base_drop = _drop(setup.build(float_model)[0], feeds, reference)
    nodes = {n.name: n for n in float_model.graph.nodes}
    candidates = [n for n in setup.plan.qnodes if nodes[n].op in COMPUTE_OPS or not compute_only]
    it = ctx.progress(candidates, "sensitivity", len(candidates)) if ctx else candidates
    out = {}
    for name in it:
        plan = setup.replan(float_model, {name})
        out[name] = base_drop - _drop(setup.build(float_model, plan)[0], feeds, reference)
    return out


def mixed_precision(float_model: Model, setup, budget: float, feeds: list[dict[str, np.ndarray]],
                    ctx: PassContext | None = None, max_float: int | None = None) -> dict[str, Any]:
    """Choose the float layers; returns ``{"plan", "float_nodes", "summary"}``."""
    from compress_graph.passes.quant.quantize import reference_outputs

    reference = reference_outputs(float_model, feeds)
    drop = _drop(setup.build(float_model)[0], feeds, reference)
    summary: dict[str, Any] = {"budget": budget, "drop_all_quantized": round(drop, 6)}
    if drop <= budget:
        summary.update(float_layers=[], drop=round(drop, 6), met=True)
        return {"plan": setup.plan, "float_nodes": [], "summary": summary}
    sens = layer_sensitivity(float_model, setup, feeds, reference, ctx, base_drop=drop)
    order = sorted(sens, key=lambda n: (-sens[n], n))
    limit = len(order) if max_float is None else min(max_float, len(order))
    chosen: list[str] = []
    plan = setup.plan
    for name in order[:limit]:
        chosen.append(name)
        plan = setup.replan(float_model, set(chosen))
        drop = _drop(setup.build(float_model, plan)[0], feeds, reference)
        if drop <= budget:
            break
    summary.update(float_layers=chosen, drop=round(drop, 6), met=drop <= budget,
                   most_sensitive={n: round(sens[n], 6) for n in order[:5]})
    if drop > budget and ctx is not None:
        ctx.warn(f"quant: budget {budget} not met even with {len(chosen)} layers in float (drop {drop:.4g})")
    return {"plan": plan, "float_nodes": chosen, "summary": summary}


def meet_metric(float_model: Model, setup, accuracy, feeds: list[dict[str, np.ndarray]],
                ctx: PassContext | None = None) -> dict[str, Any]:
    """``--max-drop``: the fewest layers kept in float, most sensitive (output agreement) first, for which the task
    metric of the quantized model stays within budget; a bisection over how many. Returns ``{"plan", "summary"}``."""
    from compress_graph.passes.quant.quantize import reference_outputs

    ok, drop = accuracy.within(setup.build(float_model)[0])
    summary: dict[str, Any] = {"metric": accuracy.name, "max_drop": accuracy.max_drop,
                               "allowed_drop": round(accuracy.limit, 4), "drop_all_quantized": round(drop, 4)}
    if ok:
        summary.update(float_layers=[], drop=round(drop, 4), met=True, evaluations=1)
        return {"plan": setup.plan, "summary": summary}
    reference = reference_outputs(float_model, feeds)
    # every quantized node, the Adds and Concats too: on a keypoint head one quantized residual Add moved more heatmap
    # peaks than any conv
    sens = layer_sensitivity(float_model, setup, feeds, reference, ctx, compute_only=False)
    order = sorted(sens, key=lambda n: (-sens[n], n))
    evaluations = 1
    lo, hi = 0, len(order)  # lo float layers: over budget; hi: within budget (or the most there is)
    best = None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        plan = setup.replan(float_model, set(order[:mid]))
        ok, d = accuracy.within(setup.build(float_model, plan)[0])
        evaluations += 1
        if ok:
            hi, best = mid, (plan, d)
        else:
            lo = mid
    if best is None:  # only "all float" is left: measure it
        plan = setup.replan(float_model, set(order))
        ok, d = accuracy.within(setup.build(float_model, plan)[0])
        evaluations += 1
        best = (plan, d)
    plan, d = best
    met = d <= accuracy.limit + 1e-9
    summary.update(float_layers=order[:hi], drop=round(d, 4), met=met, evaluations=evaluations)
    if not met and ctx is not None:
        ctx.warn(f"quant: --max-drop {accuracy.max_drop:g} not met even with every node in float (drop {d:.4g} "
                 f"{accuracy.name}: the passes before quant used the budget)")
    return {"plan": plan, "summary": summary}
