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
) -> tuple[Model, dict[str, Any]]:
    """Run the passes in order with instruments around each; return the new model and the report dict.

    The input model is not modified. ``preferences``: what a compile target prefers for options left at their
    default (``{"channel_block": 16}``: ``prune`` keeps channel counts a multiple of it).
    """
    from compress_graph.passes import instruments as inst
    from compress_graph.passes.report import cost_summary, versions

    passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
    original = model
    current = model.copy()
    ctx = ctx or PassContext(calib=calib, seed=seed, original=original, progress_hook=progress_hook,
                             preferences=dict(preferences or {}))
    ctx.original = original
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
    for index, p in enumerate(passes):
        record: dict[str, Any] = {"name": p.name, "text": p.text(), "options": _jsonable(p.options_dict())}
        for ins in active:
            ins.before_pass(index, p, current, record)
        try:
            result = p.run(current, ctx)
            if not isinstance(result, PassResult):
                raise TypeError(f"pass '{p.name}' returned {type(result).__name__}, not PassResult")
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
    report["warnings"] = list(ctx.warnings)
    return current, report


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
