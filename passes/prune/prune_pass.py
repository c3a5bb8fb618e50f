"""The registered ``prune`` pass: structured channel pruning with optional least-squares reconstruction."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from compress_graph.ir.cost import model_cost
from compress_graph.ir.errors import UsageError
from compress_graph.ir.model import Model
from compress_graph.passes.base import Pass, PassContext, PassResult, option, register_pass
from compress_graph.passes.cleanup import fold_constants
from compress_graph.passes.prune import allocate, criteria
from compress_graph.passes.prune.groups import analyze
from compress_graph.passes.prune.surgery import apply_plan, refresh_shapes


def name_nodes(model: Model) -> None:
    """Handlers and reports refer to nodes by name: give unnamed (or duplicate-named) nodes unique ones."""
    seen: set[str] = set()
    for node in model.graph.nodes:
        if not node.name or node.name in seen:
            node.name = model.unique_name(f"{node.op}")
        seen.add(node.name)


@register_pass
class Prune(Pass):
    name = "prune"
    description = "Structured channel pruning (dependency groups, l1/l2/bn/fpgm/data criteria, LS reconstruction)"

    @dataclass
    class Options:
        ratio: float = option(0.3, "fraction of channels removed per group (ignored when macs is set)")
        macs: float | None = option(None, "fraction of the model's MACs to keep (e.g. 0.7), allocated by sensitivity")
        criterion: str = option("auto", "channel importance (auto: output with calibration data, else l2)",
                                choices=criteria.CRITERIA)
        min_channels: int = option(1, "never leave a tensor with fewer channels than this")
        round_to: int = option(1, "keep channel counts a multiple of this (e.g. 8 or 16 for NEON/GPU kernels); "
                               "left at 1, a --target sets its kernels' channel block (16 for the CPU targets)")
        exclude: list[str] = option([], "node-name patterns (fnmatch, |-separated) whose channels are kept")
        reconstruct: bool = option(True, "least-squares refit of the consumers on calibration data (needs data)")
        refit: str = option("sequential", "reconstruction inputs: local (original activations, one pass) or sequential "
                            "(pruned-model activations, one pass per dependency level)",
                            choices=("local", "sequential"))
        calib: str | None = option(None, "calibration data (.npz / .npy folder); overrides --calib")
        samples: int = option(32, "calibration samples used for statistics and reconstruction")
        sensitivity_samples: int = option(2, "samples per sensitivity measurement (macs mode)")

    def milder(self, level: float) -> Prune:
        o = self.options
        if o.macs is not None:
            return self.with_options(macs=1.0 - level * (1.0 - o.macs))
        return self.with_options(ratio=level * o.ratio)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        o = self.options
        if o.macs is not None and not 0.0 < o.macs <= 1.0:
            raise UsageError(f"pass 'prune': macs must be in (0, 1] (fraction of MACs kept); got {o.macs}")
        if o.macs is None and not 0.0 <= o.ratio < 1.0:
            raise UsageError(f"pass 'prune': ratio must be in [0, 1); got {o.ratio}")
        if o.round_to < 1 or o.min_channels < 0 or o.samples < 1:
            raise UsageError("pass 'prune': round_to and samples must be >= 1, min_channels >= 0")
        round_to = o.round_to
        if "round_to" not in dict(self.given):  # the target's packed kernels fill whole channel blocks
            round_to = int(ctx.preferences.get("channel_block", round_to))
        t0 = time.perf_counter()
        fold_constants(model)  # weights in Constant nodes, constant-only shape chains (Paddle exports)
        model = refresh_shapes(model, {})
        name_nodes(model)
        data = ctx.calib_data(o.calib, model)
        feeds = data.samples(o.samples) if data is not None else None
        original = model.copy() if feeds and o.reconstruct else None
        an = analyze(model, o.exclude)
        groups, dead = an.build_groups()
        crit = o.criterion
        if crit == "auto":
            crit = "output" if feeds else "l2"
        if crit in criteria.DATA_CRITERIA and not feeds:
            ctx.warn(f"prune: criterion '{crit}' needs calibration data (--calib); using l2")
            crit = "l2"
        stats_data = criteria.collect_stats(model, an, feeds) if crit in criteria.DATA_CRITERIA else None
        scores = criteria.unit_importance(an, groups, crit, stats_data, model.annotations.get("bn_stats"), ctx.seed)
        orders = {g.gid: allocate.removal_order(g, scores[g.gid], an, o.min_channels) for g in groups}
        before = model_cost(model)
        stats: dict = {"criterion": crit, "groups": len(groups),
                       "units": sum(len(g.units) for g in groups), "round_to": round_to}
        if round_to != o.round_to:
            stats["round_to_from"] = "target channel block"
        if o.macs is not None:
            pruned, removed, alloc = self._by_macs(model, an, groups, orders, data, ctx, before.macs, round_to)
            stats.update(alloc)
        else:
            removed = allocate.by_ratio(groups, orders, an, o.ratio, round_to)
            pruned = apply_plan(model, an, removed)
        if original is not None and removed:
            from compress_graph.passes.prune.reconstruct import reconstruct

            stats["reconstruction"] = reconstruct(original, pruned, an, removed, feeds, seed=ctx.seed,
                                                   mode=o.refit)
        after = model_cost(pruned)
        stats.update({
            "units_removed": len(removed),
            "cuts": allocate.group_cuts(groups, removed, an),
            "tensors_changed": len({t for u in removed for t in u.members}),
            "macs_before": before.macs, "macs_after": after.macs,
            "macs_kept": round(after.macs / before.macs, 4) if before.macs else 1.0,
            "params_before": before.params, "params_after": after.params,
            "blocked_groups": len(dead),
            "blocked_reasons": dict(Counter(r for g in groups + dead for r in g.blocked).most_common(10)),
            "ops_without_handler": dict(sorted(an.unhandled.items())),
            "time_s": round(time.perf_counter() - t0, 3),
        })
        if o.macs is not None and before.macs and after.macs > o.macs * before.macs * 1.001:
            ctx.warn(f"prune: MAC target macs={o.macs} not reached (kept {after.macs / before.macs:.3f}): too few "
                     "prunable channels (see blocked_reasons)")
        if an.unhandled:
            ctx.warn("prune: ops without a prune handler (their channels are kept): "
                     + ", ".join(f"{k} x{v}" for k, v in sorted(an.unhandled.items())))
        return PassResult(pruned, bool(removed), stats)

    def _by_macs(self, model, an, groups, orders, data, ctx, total_macs, round_to: int):
        """Allocate by sensitivity; re-run the greedy with a larger need until the real MAC count meets the target."""
        from compress_graph.passes.data import CalibData

        o = self.options
        target = o.macs * total_macs
        if not groups:
            return model, [], {"target_macs": int(target), "allocation_rounds": 0}
        sens_data = data if data is not None else CalibData.random(model, count=o.sensitivity_samples, seed=ctx.seed)
        masked = allocate.MaskedModel(model, an, groups, sens_data.samples(o.sensitivity_samples))
        curves = allocate.sensitivity(masked, groups, orders, progress=ctx.progress)
        savings = allocate.unit_savings(model, an, groups)

        def plan(need: float):
            removed = allocate.by_macs(groups, orders, savings, curves, need, an, round_to)
            pruned = apply_plan(model.copy(), an, removed)
            return pruned, removed, model_cost(pruned).macs

        # The allocator's savings are first order (they overestimate), so the real count decides: grow the request
        # until the target is met, then bisect between the last request short of it and the first that met it, so
        # the result lands just under the target rather than wherever one greedy round stopped.
        need, lo, hi = total_macs - target, 0.0, None
        best = last = None
        rounds = 0
        while rounds < MAX_ROUNDS:
            rounds += 1
            last = plan(need)
            macs = last[2]
            if macs <= target:
                hi = need
                if best is None or macs > best[2]:
                    best = last
                if target - macs <= CLOSE_ENOUGH * total_macs:
                    break
            else:
                lo = need
            if hi is None:
                need += (macs - target) * 1.2 + 0.002 * total_macs
            elif hi - lo <= 1e-4 * total_macs:
                break
            else:
                need = (lo + hi) / 2
        pruned, removed, macs = best if best is not None else last
        kept = macs / total_macs if total_macs else 1.0
        off = kept - o.macs
        if off < -TOLERANCE:
            ctx.warn(f"prune: macs={o.macs} landed at {kept:.3f} of the MACs: the nearest cut at or under the target "
                     f"with round_to={round_to} over {len(groups)} dependency group(s)")
        return pruned, removed, {"target_macs": int(target), "allocation_rounds": rounds,
                                 "macs_kept_vs_target": round(off, 4),
                                 "sensitivity": {g.name: [round(e, 5) for _, e in curves[g.gid]] for g in groups[:50]}}


#: ``macs=`` lands within this fraction of the model's MACs under the target when the channel steps allow it;
#: further off, the pass warns (the test of the budget contract: 0.67-0.73 for macs=0.7)
TOLERANCE = 0.03
#: stop refining once this close under the target
CLOSE_ENOUGH = 0.005
MAX_ROUNDS = 14
