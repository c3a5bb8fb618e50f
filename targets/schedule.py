"""A usable CPU default without tuning records: one MetaSchedule design-space sample per kernel, no measurement.

Why: ``relax.build`` leaves CPU kernels unscheduled (plain loop nests), and TVM's rule-based CPU schedules
(``s_tir.dlight.cpu``: GEMV, Reduction) only parallelize the outer loop. MetaSchedule's CPU design space
(multi-level tiling with cache-write, parallel/vectorize/unroll annotations) contains much better programs, and
any valid point of it is usually several times faster than the unscheduled loop nest. Sampling one point per
kernel with a fixed seed needs no board and no timing runs, so it works for cross targets too, and the same
model and seed always give the same program (reproducible libraries). Measured numbers: bench/tvm/README.md.
"""

from __future__ import annotations

from typing import Any

SEED = 20240611
SCHEDULED_ATTR = "tirx.is_scheduled"  # set by MetaScheduleApplyDatabase; TVM skips re-scheduling such kernels
ATTEMPTS = 8  # samples tried per kernel until one passes MetaSchedule's post-processors
FUSE_PATTERN_ATTR = "compress_graph.op_pattern"  # legalize_and_fuse: the fuser's op pattern of a hand-written kernel


def light_tensor_intrinsics(device: str = "cpu") -> None:
    """Register only the tensor intrinsics ``device`` can use before MetaSchedule asks for all of them.

    ``TuneContext`` runs ``import tvm.s_tir.tensor_intrin``, which registers every backend's intrinsics and takes
    ~25 s (CUDA alone ~18 s) -- longer than scheduling a whole small model. We register the package module first
    with only the CPU (x86, Arm) or CUDA submodules loaded, so that import becomes a no-op.
    """
    import importlib
    import importlib.util
    import sys

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        package = importlib.util.module_from_spec(spec)  # not executed: its __init__ imports every backend
        sys.modules[name] = package
    for sub in ("x86", "arm_cpu") if device == "cpu" else ("cuda",) if device == "cuda" else ():
        importlib.import_module(f"{name}.{sub}")


def legalize_and_fuse():
    """Relax's "zero" pipeline (legalize, op patterns, constants folded, fuse, a current tuning database applied)
    with one change: a hand-written kernel that declares its op pattern (FUSE_PATTERN_ATTR) keeps it. TVM's
    analysis reads vector code written in TIR as opaque, and an opaque kernel is never fused, though
    targets/int8/lookup.packed_lookup_func is elementwise and belongs in its producer's kernel."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    @tvm.transform.module_pass(opt_level=0, name="DeclaredOpPatterns")
    def declared(mod, _ctx):
        updates = {gv: f.with_attr("op_pattern", int(f.attrs[FUSE_PATTERN_ATTR]))
                   for gv, f in mod.functions_items()
                   if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and FUSE_PATTERN_ATTR in f.attrs}
        if updates:
            mod = mod.clone()
            for gv, f in updates.items():
                mod[gv] = f
        return mod

    @tvm.transform.module_pass(opt_level=0, name="LegalizeAndFuse")
    def run(mod, _ctx):
        mod = tvm.transform.Sequential([
            relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), declared,
            relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()])(mod)
        if ms.Database.current():
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        return mod

    return run


def is_scheduled(func) -> bool:
    attrs = func.attrs
    return attrs is not None and any(k in attrs and bool(attrs[k]) for k in (SCHEDULED_ATTR, "tir.is_scheduled"))


def sample_default_schedules(mod, target, *, seed: int = SEED, progress=None) -> dict[str, Any]:
    """Schedule, in place, every not-yet-scheduled PrimFunc of ``mod``; return counts for the report."""
    import tvm
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    light_tensor_intrinsics("cpu")
    stats = {"kernels": 0, "sampled": 0, "left_unscheduled": []}
    funcs = sorted(((gv.name_hint, gv, f) for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)),
                   key=lambda item: item[0])
    for name, gv, func in funcs:
        if is_scheduled(func):
            continue
        stats["kernels"] += 1
        task = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        ctx = ms.TuneContext(mod=task, target=target, space_generator="post-order-apply",
                             search_strategy="replay-trace", task_name=name, rand_state=seed, num_threads=1)
        try:
            spaces = ctx.generate_design_space()
        except Exception:  # noqa: BLE001 - a kernel MetaSchedule cannot handle keeps its plain schedule
            stats["left_unscheduled"].append(name)
            continue
        postprocs = list(ctx.space_generator.postprocs)
        chosen = None
        for attempt in range(ATTEMPTS):
            trace = spaces[attempt % len(spaces)].trace.simplified(remove_postproc=True)
            sch = s_tir.Schedule(task, seed=seed + attempt)
            try:
                trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=lambda *_: None)
                if all(p.apply(sch) for p in postprocs):
                    chosen = sch
                    break
            except Exception:  # noqa: BLE001 - an invalid sample; try the next seed
                continue
        if chosen is None:
            stats["left_unscheduled"].append(name)
            continue
        mod[gv] = chosen.mod["main"].with_attr("global_symbol", name).with_attr(SCHEDULED_ATTR, True)
        stats["sampled"] += 1
        if progress:
            progress(f"default schedule {stats['sampled']}: {name}")
    return stats


def hand_schedule(mod, schedules, not_this_kind: type[Exception]) -> tuple[Any, dict[str, Any]]:
    """Apply, in a new module, the first of ``schedules`` (PrimFunc -> scheduled PrimFunc) that fits each
    not-yet-scheduled kernel of ``mod``; a schedule raises ``not_this_kind`` for a kernel it is not for.

    Returns (module, stats): ``scheduled`` kernel names, ``failed`` {name: reason} for kernels of the right kind
    that a schedule could not take (they keep what the caller does next).
    """
    import tvm

    stats: dict[str, Any] = {"scheduled": [], "failed": {}}
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or is_scheduled(func):
            continue
        for fn in schedules:
            try:
                updates[gv] = fn(func)
                stats["scheduled"].append(gv.name_hint)
            except not_this_kind:
                continue
            except Exception as exc:  # noqa: BLE001 - the kernel keeps the caller's default schedule
                stats["failed"][gv.name_hint] = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
            break
    if updates:
        mod = mod.clone()
        for gv, func in updates.items():
            mod[gv] = func
    stats["scheduled"].sort()
    return mod, stats


def unbuildable_kernels(mod, target) -> list:
    """The scheduled kernels of ``mod`` that TVM fails to compile on their own (global vars)."""
    import tvm

    bad = []
    for gv, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or not is_scheduled(func):
            continue
        try:
            with tvm.transform.PassContext(opt_level=3):
                tvm.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
        except Exception:  # noqa: BLE001 - any failure to compile marks the schedule unusable
            bad.append(gv)
    return bad
