"""The registered passes: `quant` (static QDQ post-training quantization) and `quant-weights` (weight-only).

`quant` = prepare (fold constants, fold leftover BNs) -> cross-layer equalization (depthwise models) -> placement
-> one streaming calibration run (min/max + histogram per tensor) -> scales -> Q/DQ insertion -> mixed precision
(`budget`) -> bias correction. The `auto` choices (range method, bias correction) are made by measurement: each
candidate is built and the one that agrees best with the float model on the calibration samples is kept (no single
setting won on every trained model measured; see bench/quant/README.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from compress_graph.ir.errors import ModelError, UsageError
from compress_graph.ir.model import Model
from compress_graph.passes.base import Pass, PassContext, PassResult, option, register_pass
from compress_graph.passes.data import CalibData
from compress_graph.passes.quant import calibrate, cle, datafree, qdq
from compress_graph.passes.quant import placement as P
from compress_graph.passes.quant.qparams import QParams, activation_qparams

#: Candidates of method=auto (entropy clipped too hard on every trained model measured; see bench/quant/README.md).
AUTO_METHODS = ("minmax", "percentile", "mse")


def prepare(model: Model) -> dict[str, Any]:
    """Fold BatchNorms left in the graph (recording their statistics) and constants; name every node."""
    from compress_graph.passes.cleanup import fold_constants
    from compress_graph.passes.fold_bn import fold_batchnorm, record_bn_stats

    stats: dict[str, Any] = {"constants_folded": fold_constants(model)["folded"]}
    if any(n.op == "BatchNormalization" for n in model.graph.nodes):
        record_bn_stats(model)
        stats["bn_folded"] = sum(fold_batchnorm(model)["folded"].values())
    P.name_nodes(model)
    model.invalidate()
    return stats


def group_ranges(plan: P.Plan, ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Shared-scale groups take the union of their members' ranges."""
    out: dict[str, tuple[float, float]] = {}
    for members in plan.group_members().values():
        have = [ranges[m] for m in members if m in ranges]
        if not have:
            continue
        r = (min(lo for lo, _ in have), max(hi for _, hi in have))
        for m in members:
            out[m] = r
    return out


def qparams_for(plan: P.Plan, ranges: dict[str, tuple[float, float]], act_dtype: str) -> dict[str, QParams]:
    return {t: activation_qparams(lo, hi, act_dtype) for t, (lo, hi) in group_ranges(plan, ranges).items()}


@dataclass
class QuantSetup:
    """Everything needed to (re)build the quantized model from the float one."""

    plan: P.Plan
    ranges: dict[str, tuple[float, float]]
    act_dtype: str
    plan_kwargs: dict[str, Any]
    weight_bits: int = 8

    def replan(self, float_model: Model, float_nodes: set[str]) -> P.Plan:
        return P.plan_quantization(float_model, float_nodes=float_nodes, **self.plan_kwargs)

    def build(self, float_model: Model, plan: P.Plan | None = None) -> tuple[Model, dict]:
        plan = plan or self.plan
        q = float_model.copy()
        counts = qdq.materialize(q, plan, qparams_for(plan, self.ranges, self.act_dtype),
                                 weight_bits=self.weight_bits)
        return q, counts


@register_pass
class Quantize(Pass):
    name = "quant"
    description = "Static int8 quantization: Q/DQ pairs from calibration data (or data-free ranges), fused-kernel ready"

    @dataclass
    class Options:
        calib: str | None = option(None, "calibration data (.npz / .npy folder); overrides --calib")
        method: str = option("auto", "activation range calibration; auto: the best of minmax/percentile/mse by "
                             "agreement on the calibration samples", choices=("auto",) + calibrate.METHODS)
        percentile: float = option(99.99, "percentile kept by method=percentile")
        act_dtype: str = option("uint8", "activation type: uint8 asymmetric or int8 symmetric",
                                choices=("uint8", "int8"))
        per_channel: bool = option(True, "per-output-channel weight scales (else per-tensor)")
        cle: str = option("auto", "cross-layer equalization: auto (on for models with depthwise convs), on, off",
                          choices=("auto", "on", "off"))
        bias_correction: str = option("auto", "correct per-channel output mean shifts: weights (weight rounding), "
                                      "full (also input clipping), off, or auto (whichever agrees best on the "
                                      "calibration samples)", choices=("auto", "weights", "full", "off"))
        budget: float | None = option(None, "largest allowed drop in output cosine agreement; the most sensitive "
                                      "layers stay float until it is met")
        exclude: list[str] = option([], "node-name / op-type patterns kept in float (fnmatch, |-separated)")
        keep_head: bool = option(True, "keep graph outputs and the final decoding subgraph in float")
        data_free: str = option("union", "without calibration data: ranges observed on seeded random inputs, widened "
                                "to the BN-statistics range where recorded (union), BN ranges replacing them (bn), "
                                "or random inputs only (random)", choices=("union", "bn", "random"))
        weight_only: bool = option(False, "only store Gemm/MatMul weights in int8/int4 (no activation Q/DQ, no data)")
        weight_bits: int = option(8, "weight bits: 8 or 7 (codes within +-63: x86 without VNNI multiplies them "
                                  "with vpmaddubsw and no saturation; left at 8, a --target that prefers 7 sets it), "
                                  "weight_only: 8 or 4 (4 raises the opset to 21)")
        samples: int = option(128, "largest number of calibration samples used")
        sens_samples: int = option(16, "samples used to measure agreement for bias correction and mixed precision")

    meets_accuracy_budget = True  # --max-drop: the most sensitive layers stay float (see sensitivity.meet_metric)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        o = self.options
        if o.samples < 1 or o.sens_samples < 1:
            raise UsageError("pass 'quant': samples and sens_samples must be >= 1")
        if not 50.0 < o.percentile <= 100.0:
            raise UsageError("pass 'quant': percentile must be in (50, 100]")
        if o.weight_only:
            return QuantizeWeights(weight_bits=o.weight_bits, per_channel=o.per_channel,
                                   exclude=list(o.exclude)).run(model, ctx)
        if o.weight_bits not in (7, 8):
            raise UsageError(f"pass 'quant': weight_bits must be 8 or 7 (4 only with weight_only=true); got "
                             f"{o.weight_bits}")
        weight_bits = o.weight_bits
        if "weight_bits" not in dict(self.given):  # the target's int8 kernels may want narrower weights
            weight_bits = int(ctx.preferences.get("weight_bits", weight_bits))
        _require_float32(model)
        t0 = time.perf_counter()
        stats: dict[str, Any] = {"prepare": prepare(model), "weight_bits": weight_bits}
        data = ctx.calib_data(o.calib, model)
        if data is None:
            data = CalibData.random(model, count=min(o.samples, 32), seed=ctx.seed)
            stats["calibration"] = datafree.describe(model, o.data_free)
            ctx.warn("quant: no calibration data; activation ranges are estimated data-free ("
                     f"{stats['calibration']}); pass --calib for better accuracy")
            data_free = True
        else:
            stats["calibration"] = f"{data.source} ({min(data.count, o.samples)} samples)"
            data_free = False
        limit = o.samples

        use_cle = o.cle == "on" or (o.cle == "auto" and cle.has_depthwise(model))
        if use_cle:
            stats["cle"] = cle.equalize(model, data.batches(limit=min(limit, 32)))
        plan_kwargs = {"exclude": o.exclude, "keep_head": o.keep_head, "per_channel": o.per_channel}
        plan = P.plan_quantization(model, **plan_kwargs)

        t1 = time.perf_counter()
        methods = [o.method] if o.method != "auto" else (["percentile"] if data_free else list(AUTO_METHODS))
        observers, _ = calibrate.observe(model, plan.tensors, data.batches(limit=limit), method=methods[-1],
                                         progress=ctx.progress, total=data.num_batches(limit))
        stats["calibration_s"] = round(time.perf_counter() - t1, 3)
        sens_feeds = data.samples(min(o.sens_samples, data.count))
        reference = reference_outputs(model, sens_feeds)
        scores: dict[str, float] = {}
        setup = None
        for method in methods:
            ranges = {t: ob.range(method, percentile=o.percentile, dtype=o.act_dtype) for t, ob in observers.items()}
            if data_free and o.data_free == "bn":
                ranges.update(datafree.bn_ranges(model, plan.tensors))
            elif data_free and o.data_free == "union":
                for t, (lo, hi) in datafree.bn_ranges(model, plan.tensors).items():
                    a, b = ranges.get(t, (lo, hi))
                    ranges[t] = (min(a, lo), max(b, hi))
            candidate = QuantSetup(plan, ranges, o.act_dtype, plan_kwargs, weight_bits)
            if len(methods) > 1:
                scores[method] = measure(candidate.build(model)[0], sens_feeds, reference)
                if setup is not None and scores[method] <= max(v for k, v in scores.items() if k != method):
                    continue
            setup, stats["method"] = candidate, method
        if scores:
            stats["method_agreement"] = {k: round(v, 6) for k, v in scores.items()}
        if o.budget is not None:
            from compress_graph.passes.quant import sensitivity

            result = sensitivity.mixed_precision(model, setup, o.budget, sens_feeds, ctx)
            stats["mixed_precision"] = result["summary"]
            setup.plan = result["plan"]
        if ctx.accuracy is not None and ctx.accuracy.max_drop is not None:
            from compress_graph.passes.quant import sensitivity

            result = sensitivity.meet_metric(model, setup, ctx.accuracy, sens_feeds, ctx)
            stats["accuracy_control"] = result["summary"]
            setup.plan = result["plan"]
        qmodel, counts = setup.build(model)
        bc = o.bias_correction
        if bc == "auto" and data_free:
            bc = "off"  # random inputs say little about the real per-channel means
        if bc != "off":
            plain = (qmodel, counts)
            model, qmodel, counts, stats["bias_correction"] = self._bias_correction(
                model, qmodel, counts, setup, bc, sens_feeds, reference)
            budget = ctx.accuracy if ctx.accuracy is not None and ctx.accuracy.max_drop is not None else None
            if budget is not None and stats["bias_correction"]["applied"] != "off" and not budget.within(qmodel)[0]:
                # chosen by output agreement, it cost task metric the float placement was measured without
                qmodel, counts = plain
                stats["bias_correction"]["applied"] = "off (over --max-drop with it)"
        stats.update(placement_stats(setup.plan, counts))
        stats["time_s"] = round(time.perf_counter() - t0, 3)
        return PassResult(qmodel, True, stats)

    @staticmethod
    def _bias_correction(model, qmodel, counts, setup, mode, feeds, reference):
        """Apply bias correction (``weights`` / ``full``), or for ``auto`` keep whichever of none/weights/full agrees
        best with the float model on ``feeds``."""
        from compress_graph.passes.quant import bias_correction

        modes = ["weights", "full"] if mode == "auto" else [mode]
        best = (measure(qmodel, feeds, reference) if mode == "auto" else -np.inf, "off", model, qmodel, counts)
        scores = {"off": round(best[0], 6)} if mode == "auto" else {}
        for m in modes:
            corrected = model.copy()
            bias_correction.correct(corrected, qmodel, setup.plan, feeds, include_input=m == "full")
            q, c = setup.build(corrected)
            score = measure(q, feeds, reference) if mode == "auto" else 0.0
            scores[m] = round(score, 6)
            if score > best[0]:
                best = (score, m, corrected, q, c)
        summary = {"applied": best[1], **({"agreement": scores} if mode == "auto" else {})}
        return best[2], best[3], best[4], summary


#: Output squashing ops looked through when measuring agreement: saturated probabilities hide differences.
SQUASH_OPS = ("Softmax", "LogSoftmax", "Sigmoid")
PASS_THROUGH = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity")


def agreement_tensors(model: Model) -> list[str]:
    """The tensors agreement is measured on: graph outputs, or the logits under a final Softmax/Sigmoid."""
    from compress_graph.ir import graph as G

    names = []
    for t in model.graph.outputs:
        node = G.producer(t)
        while node is not None and node.op in PASS_THROUGH and node.inputs:
            node = G.producer(node.inputs[0])
        names.append(node.inputs[0].name if node is not None and node.op in SQUASH_OPS else t.name)
    return list(dict.fromkeys(names))


def reference_outputs(model: Model, feeds: list[dict[str, np.ndarray]],
                      names: list[str] | None = None) -> list[dict[str, np.ndarray]]:
    from compress_graph.ir import runtime

    names = names or agreement_tensors(model)
    sess = runtime.session(model, names)
    return [runtime.run(sess, f, names) for f in feeds]


def measure(qmodel: Model, feeds: list[dict[str, np.ndarray]], reference: list[dict[str, np.ndarray]]) -> float:
    """Worst cosine of ``qmodel`` against the float reference on the agreement tensors (same names)."""
    return agreement(reference, reference_outputs(qmodel, feeds, list(reference[0])))


def placement_stats(plan: P.Plan, counts: dict) -> dict[str, Any]:
    return {
        "quantized_nodes": len(plan.qnodes),
        "qdq_activations": counts["activations"],
        "int8_weights": counts["weights"],
        "int32_biases": counts["biases"],
        "fused_activations": len(plan.absorbed),
        "float_head": plan.head,
        "excluded": plan.excluded,
        "skipped": plan.skipped,
    }


@register_pass
class QuantizeWeights(Pass):
    name = "quant-weights"
    description = "Weight-only quantization of Gemm/MatMul (and optionally Conv) weights to int8 or int4"

    @dataclass
    class Options:
        weight_bits: int = option(8, "weight bits: 8 or 4 (4 raises the opset to 21)")
        per_channel: bool = option(True, "per-output-channel weight scales (else per-tensor)")
        ops: list[str] = option(["Gemm", "MatMul"], "op types whose constant weights are quantized")
        exclude: list[str] = option([], "node-name / op-type patterns kept in float (fnmatch, |-separated)")

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        from compress_graph.passes.quant import weightonly

        o = self.options
        if o.weight_bits not in (4, 8):
            raise UsageError("pass 'quant-weights': weight_bits must be 4 or 8")
        prepare(model)
        model, stats = weightonly.quantize_weights(model, bits=o.weight_bits, per_channel=o.per_channel,
                                                   ops=list(o.ops), exclude=list(o.exclude))
        return PassResult(model, stats["weights"] > 0, stats)


def _require_float32(model: Model) -> None:
    """int8 QDQ here starts from float32 (QuantizeLinear takes float16 only from opset 19, and onnxruntime's fused
    integer kernels expect float32 around them): refuse other float types with one line."""
    import onnx_graphsurgeon as gs

    for t in model.tensor_map().values():
        dtype = t.values.dtype if isinstance(t, gs.Constant) else (np.dtype(t.dtype) if t.dtype is not None else None)
        if dtype is not None and np.issubdtype(dtype, np.floating) and dtype != np.float32:
            raise ModelError(f"pass 'quant': tensor '{t.name}' is {dtype}; quantization needs a float32 model "
                             "(convert it first)")


def agreement(reference: list[dict[str, np.ndarray]], actual: list[dict[str, np.ndarray]]) -> float:
    """Worst cosine similarity over outputs (the number `budget` is measured in)."""
    from compress_graph.passes.instruments import compare_outputs, worst

    return float(worst(compare_outputs(reference, actual)).get("cosine", 1.0))
