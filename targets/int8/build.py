"""Compile (and optionally tune) a lowered int8 Relax module: the recipe the bench and tests use.

The target layer (targets/build.py, another module) has its own build/tune flow; what it must do for int8
is the same as here: call :func:`prepare_for_tuning` before MetaSchedule sees a VNNI target (re-registers
the fixed ``dot_16x4_vnni`` intrinsic) and use a builder that skips the slow tensor-intrinsic import in
every worker (:func:`fast_builder`), else every candidate times out on a loaded machine.
"""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax


def preprocess(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Legalize + fuse: the form MetaSchedule extracts tasks from (identical for tuning and building)."""
    from compress_graph.targets.schedule import legalize_and_fuse

    with target:
        return tvm.transform.Sequential([
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            legalize_and_fuse(),
        ])(mod)


def prepare_for_tuning(target: tvm.target.Target) -> None:
    """Register the dot-product intrinsic of ``target``'s ISA family (targets/isa), which MetaSchedule's rules
    and the hand schedules tensorize to."""
    from compress_graph.targets import isa

    family = isa.int8_dot(target)
    if family is not None:
        family.register_intrinsic()


def fast_builder(timeout_sec: int = 120, max_workers: int | None = None):
    """A LocalBuilder whose workers do not import every tensor intrinsic (67 s under load)."""
    from compress_graph.targets.tuning import fast_build
    from tvm.s_tir import meta_schedule as ms

    return ms.builder.LocalBuilder(f_build=fast_build, timeout_sec=timeout_sec, max_workers=max_workers)


TUNED_OPS = ("conv2d", "matmul", "dense")


def tunable_tasks(mod: tvm.IRModule, target: tvm.target.Target, op_names: tuple[str, ...] | None = None):
    """MetaSchedule's tasks of ``mod`` minus kernels already scheduled (the hand-written int8 schedules),
    restricted to fused names containing one of ``op_names`` (None: all)."""
    from compress_graph.targets.tuning import unscheduled_tasks

    return [t for t in unscheduled_tasks(mod, target) if not op_names or any(op in t.task_name for op in op_names)]


def tune(mod: tvm.IRModule, target: tvm.target.Target, work_dir: str | Path, trials: int, *,
         per_task: int = 16, seed: int = 0, op_names: tuple[str, ...] | None = TUNED_OPS,
         strategy: str = "evolutionary", hand_schedules: bool = True):
    """MetaSchedule over the preprocessed ``mod``; records go to ``work_dir`` (JSON database).

    Only tasks whose fused name contains one of ``op_names`` are tuned (None: all): on small models the
    elementwise/layout tasks are cheap untuned, and a small budget is better spent on the dot products.
    With ``hand_schedules`` the kernels :func:`schedule_int8_kernels` schedules are not tuned (they are
    scheduled the same way at compile time). Returns the number of tasks tuned.
    """
    from compress_graph.targets.int8.schedule import schedule_int8_kernels
    from tvm.s_tir import meta_schedule as ms

    prepare_for_tuning(target)
    if strategy not in ("evolutionary", "random"):
        raise ValueError(f"unknown search strategy {strategy!r}")
    if hand_schedules:
        mod, _ = schedule_int8_kernels(mod, target)
    tasks = tunable_tasks(mod, target, op_names)
    if not tasks:
        return 0
    # "random" = ReplayTrace: samples the design space directly (the evolutionary search, on the small packed
    # convs of models/, stops proposing new candidates after its first round: "Got 0 candidate(s)")
    search = ms.search_strategy.ReplayTrace() if strategy == "random" else "evolutionary"
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        extracted_tasks=tasks, work_dir=str(work_dir), strategy=search, seed=seed)
    ms.tune.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=trials,
        max_trials_per_task=per_task, num_trials_per_iter=min(per_task, 16), builder=fast_builder(),
        cost_model="random" if strategy == "random" else "xgb")
    # (a smaller evolutionary population looked cheaper but starves: with the VNNI rule most random samples
    # fail postprocessing, and after the first round every task produced 0 candidates)
    return len(tasks)


def compile_module(mod: tvm.IRModule, target: tvm.target.Target, work_dir: str | Path | None = None, *,
                   hand_schedules: bool = True):
    """Preprocessed ``mod`` -> Executable, the way ``--target`` builds it: tuning records from ``work_dir``
    when present, then (with ``hand_schedules``) the hand-written schedules of the packed int8 kernels, then
    one seeded MetaSchedule sample for every kernel still unscheduled (targets/schedule.py).
    """
    from compress_graph.targets.int8.schedule import schedule_int8_kernels
    from compress_graph.targets.schedule import sample_default_schedules
    from tvm.s_tir import meta_schedule as ms

    if work_dir is not None and (Path(work_dir) / "database_workload.json").exists():
        prepare_for_tuning(target)
        db = ms.database.JSONDatabase(work_dir=str(work_dir))
        with target, db:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    if hand_schedules:
        mod, _ = schedule_int8_kernels(mod, target)
    mod = mod.clone()
    sample_default_schedules(mod, target)
    with tvm.transform.PassContext(opt_level=3):
        return relax.build(mod, target=target)
