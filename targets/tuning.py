"""MetaSchedule tuning into a JSON database, on the local machine or on a board through an RPC tracker."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from compress_graph.ir.errors import TargetError

BUILDER_TIMEOUT_S = 120


def fast_build(mod, target, _params):
    """MetaSchedule's default builder minus its ``import tvm.s_tir.tensor_intrin`` (30-60 s per worker batch,
    beyond the 30 s builder timeout: every candidate would fail and tuning would silently produce nothing)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


class _CrossExport:
    """Picklable ``f_export``: a shared library linked by the target's cross compiler (the board needs none)."""

    def __init__(self, compiler: str | None):
        self.compiler = compiler

    def __call__(self, mod) -> str:
        import os
        import tempfile

        from tvm.support import cc

        path = os.path.join(tempfile.mkdtemp(prefix="cg-tune-"), "tuned.so")
        mod.export_library(path, fcompile=cc.cross_compiler(self.compiler) if self.compiler else None)
        return path


def database(db_dir: Path):
    from tvm.s_tir import meta_schedule as ms

    db_dir.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(db_dir), module_equality="structural")


def has_records(db_dir: Path | None) -> bool:
    return db_dir is not None and (db_dir / "database_tuning_record.json").is_file()


def _progress_callback(progress, total: int, deadline: float | None, stats: dict):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            stats["trials"] += len(measure_candidates)
            ok = [r for r in runner_results if r.error_msg is None and r.run_secs]
            stats["failed"] += len(runner_results) - len(ok)
            task = task_scheduler.tasks_[task_id]
            best = min((sum(float(s) for s in r.run_secs) / len(r.run_secs) for r in ok), default=None)
            _record_batch(stats, task_scheduler.tasks_, task_id, len(measure_candidates), best)
            if progress:
                best_txt = f"{best * 1e3:.3f} ms" if best is not None else "no valid candidate"
                progress(f"tune [{stats['trials']}/{total}] task {task_id} {task.ctx.task_name}: "
                         f"{len(measure_candidates)} trials, batch best {best_txt}")
            if deadline is not None and time.monotonic() > deadline:
                stats["stopped"] = True
                # Only idle tasks: MetaSchedule asserts that the task being joined (task_id) is still live.
                for i, rec in enumerate(task_scheduler.tasks_):
                    if i != task_id and not rec.is_terminated and rec.runner_futures is None:
                        task_scheduler.terminate_task(i)

    return Progress()


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e6, 3)


def _record_batch(stats: dict, tasks, task_id: int, trials: int, best: float | None) -> None:
    """One point of the tuning curve per measured batch: trials so far, the task's best latency so far, and the
    tuned kernels' weighted sum (task weight x best; MetaSchedule's weight is how often the model calls the
    kernel) once every task has a valid candidate. Both only go down as trials go up."""
    if not stats["tasks"]:
        stats["tasks"] = [{"name": str(t.ctx.task_name), "weight": float(t.task_weight)} for t in tasks]
    bests = stats["best_s"]
    if best is not None and (task_id not in bests or best < bests[task_id]):
        bests[task_id] = best
    model = sum(stats["tasks"][i]["weight"] * b for i, b in bests.items()) if len(bests) == len(tasks) else None
    stats["curve"].append({"trials": stats["trials"], "task": task_id, "batch_trials": trials,
                           "best_us": _us(bests.get(task_id)), "model_us": _us(model)})


def search_strategy(trials_per_task: int):
    """Small budgets: plain random sampling of the design space (evolutionary search spends ~20-60 s per task
    evolving a 2048-program population and training XGBoost, which a 1-8 trial budget cannot repay)."""
    from tvm.s_tir import meta_schedule as ms

    if trials_per_task <= 8:
        return ms.search_strategy.ReplayTrace(), "random"
    population = min(512, max(64, 16 * trials_per_task))
    return ms.search_strategy.EvolutionarySearch(population_size=population, init_min_unmeasured=population // 4,
                                                 genetic_num_iters=3), "xgb"


def runner_for(rpc: str | None):
    from tvm.s_tir import meta_schedule as ms

    if not rpc:
        return ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1))
    from compress_graph.targets.runners import parse_rpc

    host, port, key = parse_rpc(rpc)
    return ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                       session_priority=1, session_timeout_sec=120),
        evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1), max_workers=1)


def unscheduled_tasks(mod, target) -> list:
    """MetaSchedule's tuning tasks of ``mod`` except kernels already scheduled (the hand-written int8 ones)."""
    from compress_graph.targets.schedule import is_scheduled
    from tvm.s_tir import meta_schedule as ms

    return [t for t in ms.relax_integration.extract_tasks(mod, target)
            if not any(is_scheduled(f) for disp in t.dispatched for _, f in disp.functions_items())]


def tune(mod, target, db_dir: Path, trials_per_task: int, *, rpc: str | None = None,
         compiler: str | None = None, time_budget_s: float | None = None, progress=None,
         seed: int = 0) -> dict[str, Any]:
    """Tune every kernel of ``mod`` (already legalized and fused) ``trials_per_task`` times; records go to
    ``db_dir`` (appended to what is there). ``compiler`` links candidates for a board reached through RPC.
    ``time_budget_s`` stops the remaining tasks once a batch finishes past the deadline (records so far are kept)."""
    import tvm
    from compress_graph.targets.schedule import light_tensor_intrinsics
    from tvm.s_tir import meta_schedule as ms

    # MetaSchedule echoes its task tables to stdout at INFO; keep them in db_dir/logs only (progress() reports).
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_logger.setLevel(logging.WARNING)
    # MetaSchedule re-lists the logger's handlers by name in a logging.dictConfig; an unnamed handler someone else
    # attached (pytest's log capture after a first tuning run) makes it fail ("'NoneType' ... 'format'"). dictConfig
    # replaces the logger's handlers anyway.
    for handler in [h for h in ms_logger.handlers if h.get_name() is None]:
        ms_logger.removeHandler(handler)
    light_tensor_intrinsics("cuda" if target.kind.name == "cuda" else "cpu" if target.kind.name == "llvm" else "")
    tasks = unscheduled_tasks(mod, target)
    if not tasks:
        return {"tasks": 0, "trials": 0, "seconds": 0.0, "db": str(db_dir)}
    total = trials_per_task * len(tasks)
    stats = {"trials": 0, "failed": 0, "stopped": False, "tasks": [], "best_s": {}, "curve": []}
    deadline = time.monotonic() + time_budget_s if time_budget_s else None
    builder = ms.builder.LocalBuilder(f_build=fast_build, f_export=_CrossExport(compiler) if rpc else None,
                                      timeout_sec=BUILDER_TIMEOUT_S, max_workers=1)
    strategy, cost_model = search_strategy(trials_per_task)
    # The time budget is checked as batches finish; the first round (one batch per task) always runs, so with a
    # budget the batches are smaller and the rounds more.
    per_iter = min(trials_per_task, 4 if time_budget_s else 16)
    callbacks = [*ms.measure_callback.MeasureCallback.create("default"),
                 _progress_callback(progress, total, deadline, stats)]
    if progress:
        progress(f"tuning {len(tasks)} tasks x {trials_per_task} trials on {'RPC ' + rpc if rpc else 'this machine'}")
    start = time.monotonic()
    try:
        with tvm.transform.PassContext(opt_level=3):
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                extracted_tasks=tasks, work_dir=str(db_dir), strategy=strategy, seed=seed)
            ms.tune.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=str(db_dir), max_trials_global=total,
                max_trials_per_task=trials_per_task, num_trials_per_iter=per_iter,
                builder=builder, runner=runner_for(rpc), database=database(db_dir), cost_model=cost_model,
                measure_callbacks=callbacks)
    except (TargetError, KeyboardInterrupt):
        raise
    except Exception as exc:
        last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise TargetError(f"tuning failed: {last[:300]}") from None
    if stats["trials"] and stats["failed"] == stats["trials"]:
        raise TargetError(f"tuning failed: all {stats['trials']} candidates failed to build or run "
                          f"({'RPC ' + rpc if rpc else 'local runner'})")
    return {"tasks": len(tasks), "trials": stats["trials"], "failed_trials": stats["failed"],
            "stopped_by_time_budget": stats["stopped"], "seconds": round(time.monotonic() - start, 1),
            "db": str(db_dir), "curve": {"tasks": stats["tasks"], "points": stats["curve"]}}
