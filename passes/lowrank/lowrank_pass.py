"""The registered ``lowrank`` pass: factorize Conv / Gemm / MatMul layers where that removes MACs at bounded error."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from compress_graph.ir.cost import model_cost
from compress_graph.ir.errors import UsageError
from compress_graph.ir.model import Model
from compress_graph.passes.base import Pass, PassContext, PassResult, option, register_pass
from compress_graph.passes.cleanup import eliminate_dead
from compress_graph.passes.data import CalibData
from compress_graph.passes.lowrank import decompose as D
from compress_graph.passes.lowrank import layers as L
from compress_graph.passes.lowrank import rank as R
from compress_graph.passes.lowrank.whiten import collect_second_moments, shrink

DEFAULT_ENERGY = 0.98


@register_pass
class LowRank(Pass):
    name = "lowrank"
    description = "Low-rank factorization of Conv/Gemm/MatMul (SVD, channel, spatial, Tucker-2; data-aware with calib)"

    @dataclass
    class Options:
        energy: float | None = option(None, "fraction of (output) singular-value energy kept per layer; "
                                             f"{DEFAULT_ENERGY} when neither rank nor macs is given")
        rank: float | None = option(None, "fixed rank per layer: an int >= 1, or a fraction (0, 1) of its full rank")
        macs: float | None = option(None, "global target: fraction of the model's MACs kept, allocated across "
                                           "layers by sensitivity")
        scheme: str = option("auto", "conv decomposition (auto = fewest MACs meeting the error target)",
                             choices=("auto", "channel", "spatial", "tucker"))
        round_to: int = option(4, "ranks are multiples of this (hardware-friendly channel counts)")
        exclude: list[str] = option([], "fnmatch patterns of node names left alone, '|'-separated")
        min_saving: float = option(0.1, "factorize a layer only if its MACs drop by at least this fraction")
        max_error: float = option(0.25, "never pick an option losing more than this fraction of a layer's output "
                                                  "energy")
        calib: str | None = option(None, "calibration data (.npz / .npy folder); overrides --calib")
        data_aware: bool = option(True, "whiten by the input statistics when calibration data is given (data is "
                                        "still used for sensitivity when false)")
        samples: int = option(32, "calibration samples used for statistics and sensitivity")
        patches: int = option(8192, "input patches sampled per conv layer for its statistics")
        sensitivity: bool = option(True, "macs mode: weight layers by measured model-output sensitivity")
        bias_correction: bool = option(True, "data-aware: factorize against the centered input statistics and "
                                             "move the mean output error into the bias")

    def _check(self) -> None:
        o = self.options
        if o.energy is not None and not 0 < o.energy <= 1:
            raise UsageError(f"pass 'lowrank': energy must be in (0, 1]; got {o.energy}")
        if o.macs is not None and not 0 < o.macs <= 1:
            raise UsageError(f"pass 'lowrank': macs must be in (0, 1]; got {o.macs}")
        if o.rank is not None and o.rank <= 0:
            raise UsageError(f"pass 'lowrank': rank must be > 0; got {o.rank}")
        if o.round_to < 1:
            raise UsageError(f"pass 'lowrank': round_to must be >= 1; got {o.round_to}")
        if sum(v is not None for v in (o.energy, o.rank, o.macs)) > 1:
            raise UsageError("pass 'lowrank': give at most one of energy, rank, macs")

    def milder(self, level: float) -> LowRank | None:
        o = self.options
        if o.macs is not None:
            return self.with_options(macs=1.0 - level * (1.0 - o.macs))
        if o.rank is not None:
            return self.with_options(rank=1.0 - level * (1.0 - o.rank)) if o.rank < 1 else None
        energy = o.energy if o.energy is not None else DEFAULT_ENERGY
        return self.with_options(energy=1.0 - level * (1.0 - energy))

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        self._check()
        o = self.options
        calib = ctx.calib_data(o.calib, model)
        feeds = calib.samples(max(1, o.samples // max(calib.batch, 1))) if calib is not None else []
        shapes = L.infer_shapes(model, {k: v.shape for k, v in feeds[0].items()} if feeds else None)
        layers, skipped = L.find_layers(model, shapes, o.exclude)
        stats: dict = {"mode": self._mode(), "layers_considered": len(layers),
                       "skipped": dict(Counter(skipped.values()))}
        if not layers:
            stats["factorized"] = 0
            return PassResult(model, False, stats)

        moments = {}
        if feeds and o.data_aware:
            moments = collect_second_moments(model, layers, feeds, max_patches=o.patches, seed=ctx.seed)
            # non-finite activations (NaN/Inf upstream) leave that layer data-free rather than breaking the SVD
            moments = {k: v for k, v in moments.items()
                       if all(np.isfinite(np.asarray(x, dtype=np.float64)).all() for x in v)}
        stats["data_aware"] = bool(moments)
        maths = {ly.name: D.LayerMath(ly.weight, D.sqrt_factor(self._statistic(moments[ly.name]))
                                      if ly.name in moments else None)
                 for ly in layers}

        chosen = self._select(model, layers, maths, feeds, ctx, stats)
        before = model_cost(model).macs
        details = []
        for ly in ctx.progress(layers, "lowrank", len(layers)):
            cand = chosen.get(ly.name)
            if cand is None:
                continue
            fact = D.factorize(maths[ly.name], cand.scheme, cand.ranks)
            shift = None
            if o.bias_correction and ly.name in moments:
                delta = ly.weight.reshape(ly.weight.shape[0], -1) - fact.approx.reshape(ly.weight.shape[0], -1)
                shift = delta @ moments[ly.name][1]
            nodes = L.apply(model, ly, fact, shift)
            extra = ly.rows * ly.weight.shape[0] if shift is not None and ly.kind == "matmul" else 0  # the Add
            details.append({"node": ly.name, "scheme": cand.scheme if ly.kind == "conv" else "svd",
                            "ranks": list(cand.ranks), "macs_before": ly.macs, "macs_after": cand.macs + extra,
                            "error": round(fact.error, 6), "new_nodes": [n.name for n in nodes]})
        if details:
            eliminate_dead(model)
        stats["factorized"] = len(details)
        stats["layers"] = details
        stats["macs_before"] = before
        stats["macs_after"] = model_cost(model).macs if details else before
        return PassResult(model, bool(details), stats)

    def _statistic(self, moment: tuple) -> np.ndarray:
        """The matrix whose square root whitens: centered covariance when the bias absorbs the mean error."""
        second, mean, count = moment
        return shrink(second - np.outer(mean, mean) if self.options.bias_correction else second, count)

    def _mode(self) -> str:
        o = self.options
        if o.macs is not None:
            return f"macs={o.macs}"
        if o.rank is not None:
            return f"rank={o.rank}"
        return f"energy={o.energy if o.energy is not None else DEFAULT_ENERGY}"

    def _select(self, model: Model, layers: list[L.Layer], maths: dict, feeds: list, ctx: PassContext,
                stats: dict) -> dict[str, R.Candidate]:
        o = self.options
        chosen: dict[str, R.Candidate] = {}
        if o.macs is None:
            for ly in ctx.progress(layers, "lowrank: ranks", len(layers)):
                lm = maths[ly.name]
                if o.rank is not None:
                    cand = R.by_rank(ly, lm, o.scheme, o.rank, o.round_to, o.min_saving)
                else:
                    energy = o.energy if o.energy is not None else DEFAULT_ENERGY
                    cand = R.by_energy(ly, lm, R.schemes_for(ly, o.scheme), o.round_to, o.min_saving, energy)
                if cand is not None:
                    chosen[ly.name] = cand
            return chosen
        total = model_cost(model).macs
        need = int(total * (1.0 - o.macs))
        options = {ly.name: R.candidates(ly, maths[ly.name], R.schemes_for(ly, o.scheme), o.round_to,
                                         o.min_saving, o.max_error)
                   for ly in ctx.progress(layers, "lowrank: candidates", len(layers))}
        sens: dict[str, float] = {}
        if o.sensitivity and need > 0:
            probe_feeds = feeds[: max(1, min(len(feeds), 8))]
            if not probe_feeds:
                try:
                    probe_feeds = CalibData.random(model, count=4, seed=ctx.seed).samples(4)
                except Exception as exc:  # dynamic shapes without data: fall back to equal weights
                    ctx.warn(f"lowrank: sensitivity not measured ({exc}); layers weighted equally")
            if probe_feeds:
                probed = [ly for ly in layers if options[ly.name]]
                sens = R.measure_sensitivity(model, probed, maths, probe_feeds)
                stats["sensitivity"] = {k: round(v, 6) for k, v in sens.items()}
        chosen = R.allocate(layers, options, sens, need)
        removed = sum(ly.macs - chosen[ly.name].macs for ly in layers if ly.name in chosen)
        if removed < need:
            ctx.warn(f"lowrank: MACs target {o.macs} not reached: removed {removed} of the {need} MACs asked "
                     f"(options limited by min_saving={o.min_saving}, max_error={o.max_error})")
        return chosen
