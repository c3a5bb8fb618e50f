"""Compile (and optionally tune) a lowered int8 Relax module: the recipe the bench and tests use.

The target layer (targets/build.py, another module) has its own build/tune flow; what it must do for int8
is the same as here: call :func:`prepare_for_tuning` before MetaSchedule sees a VNNI target (re-registers
the fixed ``dot_16x4_vnni`` intrinsic) and use a builder that skips the slow tensor-intrinsic import in
every worker (:func:`fast_builder`), else every candidate times out on a loaded machine.
"""

from __future__ import annotations

from pathlib import Path

import tvm
from compress_graph.targets.int8.packed import has_vnni, register_vnni_intrinsic
from tvm import relax


def preprocess(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Legalize + fuse: the form MetaSchedule extracts tasks from (identical for tuning and building)."""
    with target:
        return tvm.transform.Sequential([
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.get_pipeline("zero"),
        ])(mod)


def prepare_for_tuning(target: tvm.target.Target) -> None:
    """Register what MetaSchedule needs to reach dot-product instructions on ``target``."""
    if has_vnni(target):
        register_vnni_intrinsic()


def _fast_build(mod, target, _params):
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def fast_builder(timeout_sec: int = 120, max_workers: int | None = None):
    """A LocalBuilder whose workers do not import every tensor intrinsic (67 s under load)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.builder.LocalBuilder(f_build=_fast_build, timeout_sec=timeout_sec, max_workers=max_workers)


TUNED_OPS = ("conv2d", "matmul", "dense")


def tune(mod: tvm.IRModule, target: tvm.target.Target, work_dir: str | Path, trials: int, *,
         per_task: int = 16, seed: int = 0, op_names: tuple[str, ...] | None = TUNED_OPS,
         strategy: str = "evolutionary"):
    """MetaSchedule over the preprocessed ``mod``; records go to ``work_dir`` (JSON database).

    Only tasks whose fused name contains one of ``op_names`` are tuned (None: all): on small models the
    elementwise/layout tasks are cheap untuned, and a small budget is better spent on the dot products.
    """
    from tvm.s_tir import meta_schedule as ms

    prepare_for_tuning(target)
    if strategy not in ("evolutionary", "random"):
        raise ValueError(f"unknown search strategy {strategy!r}")
    # "random" = ReplayTrace: samples the design space directly (the evolutionary search, on the small packed
    # convs of models/, stops proposing new candidates after its first round: "Got 0 candidate(s)")
    search = ms.search_strategy.ReplayTrace() if strategy == "random" else "evolutionary"
    return ms.relax_integration.tune_relax(
        mod=mod, params={}, target=target, work_dir=str(work_dir), max_trials_global=trials,
        max_trials_per_task=per_task, num_trials_per_iter=min(per_task, 16),
        cost_model="random" if strategy == "random" else "xgb", seed=seed, strategy=search,
        builder=fast_builder(), op_names=list(op_names) if op_names else None)
    # (a smaller evolutionary population looked cheaper but starves: with the VNNI rule most random samples
    # fail postprocessing, and after the first round every task produced 0 candidates)


def compile_module(mod: tvm.IRModule, target: tvm.target.Target, work_dir: str | Path | None = None):
    """Preprocessed ``mod`` -> Executable, applying tuning records from ``work_dir`` when present.

    Kernels without a record are scheduled by dlight's CPU rules where they apply, else left as they are.
    """
    from tvm.s_tir import dlight
    from tvm.s_tir import meta_schedule as ms

    if work_dir is not None and (Path(work_dir) / "database_workload.json").exists():
        prepare_for_tuning(target)
        db = ms.database.JSONDatabase(work_dir=str(work_dir))
        with target, db:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    with target:
        mod = dlight.ApplyDefaultSchedule(dlight.cpu.GEMV(), dlight.cpu.Reduction())(mod)
    return relax.build(mod, target=target)
