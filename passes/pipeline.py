"""Pipeline text (MLIR-style ``fold-bn,prune{ratio=0.3,criterion=l2},quant{calib="a b.npz"}``) and the runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress_graph.ir.errors import CompressGraphError, UsageError
from compress_graph.ir.model import Model
from compress_graph.passes.base import Pass, PassContext, PassResult
from compress_graph.passes.registry import REGISTRY


class PassFailure(CompressGraphError):
    """A pass crashed (a bug, not a user error): exit 1, with the reproducer's location in the message."""

    exit_code = 1


# --------------------------------------------------------------------------------------------- parsing
def _parse(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    items: list[tuple[str, list[tuple[str, str]]]] = []
    i, n = 0, len(text)

    def skip_ws() -> None:
        nonlocal i
        while i < n and text[i].isspace():
            i += 1

    def word(stop: str) -> str:
        nonlocal i
        start = i
        while i < n and text[i] not in stop:
            i += 1
        return text[start:i].strip()

    def value() -> str:
        nonlocal i
        skip_ws()
        if i < n and text[i] == '"':
            i += 1
            out = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                out.append(text[i])
                i += 1
            if i >= n:
                raise UsageError(f"pipeline '{text}': unterminated quote")
            i += 1
            skip_ws()
            return "".join(out)
        return word(",}")

    while True:
        skip_ws()
        if i >= n:
            break
        name = word(",{}")
        if not name:
            raise UsageError(f"pipeline '{text}': empty pass name at position {i}")
        opts: list[tuple[str, str]] = []
        skip_ws()
        if i < n and text[i] == "{":
            i += 1
            while True:
                skip_ws()
                if i < n and text[i] == "}":
                    i += 1
                    break
                key = word("=,}")
                if i >= n or text[i] != "=" or not key:
                    raise UsageError(f"pipeline '{text}': expected key=value in the options of '{name}'")
                i += 1
                if any(k == key for k, _ in opts):
                    raise UsageError(f"pipeline '{text}': option '{key}' of '{name}' given twice")
                opts.append((key, value()))
                skip_ws()
                if i < n and text[i] == ",":
                    i += 1
                elif i < n and text[i] == "}":
                    i += 1
                    break
                else:
                    raise UsageError(f"pipeline '{text}': missing '}}' after the options of '{name}'")
        skip_ws()
        if i < n:
            if text[i] != ",":
                raise UsageError(f"pipeline '{text}': unexpected '{text[i]}' at position {i}")
            i += 1
        items.append((name, opts))
    return items


def parse_pipeline_items(text: str) -> list[tuple[str, dict[str, str]]]:
    """Generic ``name{k=v,...},...`` parser (also used for target text such as ``arm{cpu=cortex-a55}``)."""
    return [(name, dict(opts)) for name, opts in _parse(text)]


def parse_pipeline(text: str) -> list[Pass]:
    """Pipeline text -> pass objects with validated, typed options. Unknown pass/option -> UsageError (exit 2)."""
    passes = []
    for name, opts in _parse(text):
        passes.append(REGISTRY.get(name).from_items(opts))
    return passes


def pipeline_text(passes: list[Pass]) -> str:
    return ",".join(p.text() for p in passes)


# --------------------------------------------------------------------------------------------- running
def run_pipeline(
    model: Model,
    pipeline: str | list[Pass],
    *,
    calib: Any = None,
    verify: bool = True,
    seed: int = 0,
    dump_ir: str | Path | None = None,
    reproducer_dir: str | Path | None = None,
    instruments: list | None = None,
    progress_hook=None,
    pass_timeout: float | None = None,
    ctx: PassContext | None = None,
    preferences: dict[str, Any] | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    shapes_needed_by: str | None = None,
    accuracy: Any = None,
) -> tuple[Model, dict[str, Any]]:
    """Run the passes in order with instruments around each; return the new model and the report dict.

    The input model is not modified. ``preferences``: what a compile target prefers for options left at their
    default (``{"channel_block": 16}``: ``prune`` keeps channel counts a multiple of it). ``input_shapes``
    (``--input-shape``): the shapes dynamic inputs are analysed at; else the calibration data's, else batch 1 for a
    dynamic batch alone. The written model keeps its dynamic dims. ``shapes_needed_by`` (e.g. ``--target arm``):
    what else needs every input resolved (a UsageError names the input otherwise). ``accuracy``: a
    :class:`compress_graph.passes.metric.AccuracyBudget` (``--metric`` / ``--max-drop``): the task metric is recorded
    after every modifying pass, and with a ``max_drop`` a pass that overshoots it is re-run milder (bisected) until
    the metric drop from the original model is within budget; quant meets it itself by keeping layers in float.
    """
    from compress_graph.passes import instruments as inst
    from compress_graph.passes.report import cost_summary, versions

    passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
    original = model
    current = model.copy()
    ctx = ctx or PassContext(calib=calib, seed=seed, original=original, progress_hook=progress_hook,
                             preferences=dict(preferences or {}))
    ctx.original = original
    ctx.accuracy = accuracy if accuracy is not None else ctx.accuracy
    shapes = _resolve_shapes(current, passes, ctx, input_shapes, shapes_needed_by)
    active = list(instruments or [])
    active.insert(0, inst.Timing())
    if pass_timeout:
        active.insert(0, inst.Deadline(pass_timeout))
    active.append(inst.CostTracker())
    if verify:
        active.append(inst.Verify(original, ctx))
    if dump_ir:
        active.append(inst.DumpIR(Path(dump_ir)))
    active.append(inst.Reproducer(original, Path(reproducer_dir) if reproducer_dir else None, passes))

    report: dict[str, Any] = {
        "pipeline": pipeline_text(passes),
        "passes": [],
        "before": cost_summary(current),
        "versions": versions(),
    }
    if shapes.dynamic:
        report["input_shapes"] = shapes.report()
    budgeted = [ctx.accuracy is not None and ctx.accuracy.max_drop is not None
                and (q.meets_accuracy_budget or q.milder(0.5) is not None) for q in passes]
    last_score = ctx.accuracy.baseline if ctx.accuracy is not None else 0.0
    for index, p in enumerate(passes):
        record: dict[str, Any] = {"name": p.name, "text": p.text(), "options": _jsonable(p.options_dict())}
        for ins in active:
            ins.before_pass(index, p, current, record)
        controlled = budgeted[index] and not p.meets_accuracy_budget
        before = current.copy() if controlled else None
        if budgeted[index]:  # an even share of what is left for this and the later budget-aware passes
            spent = ctx.accuracy.baseline - last_score
            ctx.accuracy.limit = spent + (ctx.accuracy.max_drop - spent) / sum(budgeted[index:])
        try:
            result = p.run(current, ctx)
            if not isinstance(result, PassResult):
                raise TypeError(f"pass '{p.name}' returned {type(result).__name__}, not PassResult")
            if ctx.accuracy is not None and result.modified:
                ok, drop = ctx.accuracy.within(result.model)
                record["metric"] = {"name": ctx.accuracy.name, "score": round(ctx.accuracy.baseline - drop, 4),
                                    "drop": round(drop, 4)}
                if controlled and not ok:
                    result = _back_off(p, before, result, drop, ctx, record)
                last_score = ctx.accuracy.baseline - (record["metric"]["drop"])
        except BaseException as exc:
            for ins in active:
                ins.on_failure(index, p, current, record, exc)
            if isinstance(exc, CompressGraphError):
                raise
            if isinstance(exc, (KeyboardInterrupt, SystemExit, MemoryError)):
                raise
            where = record.get("reproducer")
            hint = f"; reproducer saved to {where}" if where else ""
            raise PassFailure(f"pass '{p.name}' failed: {type(exc).__name__}: {exc}{hint}") from exc
        current = result.model
        if result.modified:
            current.invalidate()
        record["modified"] = bool(result.modified)
        record["stats"] = _jsonable(result.stats)
        for ins in active:
            ins.after_pass(index, p, current, record)
        record.setdefault("after", report["passes"][-1]["after"] if report["passes"] else report["before"])
        report["passes"].append(record)
    report["after"] = report["passes"][-1]["after"] if report["passes"] else report["before"]
    if ctx.accuracy is not None:
        report["accuracy"] = _accuracy_summary(ctx.accuracy, report["passes"])
    report["warnings"] = list(dict.fromkeys(ctx.warnings))  # a pass re-run by --max-drop warns once
    return current, report


#: bisection steps over a pass's strength when it overshoots --max-drop (the level is known to 1/32)
BACK_OFF_STEPS = 5


def _back_off(p: Pass, before: Model, result: PassResult, drop: float, ctx: PassContext, record: dict) -> PassResult:
    """Bisect the strength of pass ``p`` (its :meth:`Pass.milder` level) for the strongest cut whose task-metric
    drop from the original model is within ``--max-drop``; the pass is left out when no level is."""
    acc = ctx.accuracy
    lo, hi = 0.0, 1.0
    best: tuple[Pass, PassResult, float] | None = None
    tries = [{"level": 1.0, "drop": round(drop, 4)}]
    for _ in range(BACK_OFF_STEPS):
        level = (lo + hi) / 2
        q = p.milder(level)
        res = q.run(before.copy(), ctx)
        ok, d = acc.within(res.model) if res.modified else (True, 0.0)
        tries.append({"level": level, "text": q.text(), "drop": round(d, 4)})
        if ok:
            lo, best = level, (q, res, d)
        else:
            hi = level
    control: dict[str, Any] = {"max_drop": acc.max_drop, "allowed_drop": round(acc.limit, 4), "tries": tries}
    if best is None:
        ctx.warn(f"{p.text()}: every cut tried loses more than its share ({acc.limit:.3g}) of --max-drop "
                 f"{acc.max_drop:g} {acc.name}; pass left out")
        control.update(level=0.0, applied="(none)")
        record["accuracy_control"] = control
        record["metric"] = {"name": acc.name, "score": round(acc.baseline, 4), "drop": 0.0}
        return PassResult(before, False, {"left_out": "over --max-drop at every level tried"})
    q, res, d = best
    control.update(level=lo, applied=q.text())
    record["accuracy_control"] = control
    record["metric"] = {"name": acc.name, "score": round(acc.baseline - d, 4), "drop": round(d, 4)}
    res.stats = {**res.stats, "backed_off_to": q.text()}
    return res


def _accuracy_summary(acc, records: list[dict]) -> dict[str, Any]:
    last = next((r["metric"] for r in reversed(records) if "metric" in r), None)
    score = last["score"] if last else round(acc.baseline, 4)
    drop = round(acc.baseline - score, 4)
    return {"metric": acc.name, "eval_data": acc.evaluator.path, "samples": acc.evaluator.data.count,
            "original": round(acc.baseline, 4), "compressed": score, "drop": drop, "max_drop": acc.max_drop,
            "met": acc.max_drop is None or drop <= acc.max_drop + 1e-9, "evaluations": acc.evaluator.evaluations}


def _resolve_shapes(model: Model, passes: list[Pass], ctx: PassContext, given: dict[str, list[int]] | None,
                    needed_by: str | None):
    """Resolve the shapes dynamic inputs are analysed at and record them on ``model`` (costs) and ``ctx``."""
    from compress_graph.ir.cost import INPUT_SHAPES_KEY
    from compress_graph.passes.data import resolve_input_shapes

    calib = None
    if ctx.calib is not None and any(s is None for s in _declared(model)):
        calib = ctx.calib_data(None, model)
    shapes = resolve_input_shapes(model, given, calib)
    ctx.input_shapes = shapes
    if shapes.dynamic:
        model.annotations[INPUT_SHAPES_KEY] = dict(shapes.shapes)
    if shapes.unresolved:
        needing = [p for p in passes if p.needs_macs()]
        if needing:
            raise UsageError(shapes.missing_message(f"{needing[0].text()} needs the model's MACs"))
        if needed_by:
            raise UsageError(shapes.missing_message(f"{needed_by} needs static shapes"))
        ctx.warn(shapes.missing_message("MACs are not counted"))
    return shapes


def _declared(model: Model) -> list:
    """Each input's declared shape, None where any dim is dynamic."""
    from compress_graph.ir.shapes import is_static
    from compress_graph.passes.data import input_specs

    return [s if is_static(s) else None for _, s, _ in input_specs(model)]


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value
