"""Time per kernel of a built library (``--profile``), and which schedule each kernel got.

TVM 0.27's wheel has no VM profiler (``VirtualMachine(..., profile=True)`` and ``tvm.runtime.profiling`` are
gone). What its Relax VM keeps is an instrument hook, ``set_instrument``, called before and after every Call
instruction with the callee and its arguments. Before each kernel call we time that kernel on those very arguments
with TVM's ``time_evaluator`` (C++ timing loop, no Python in between; the median of REPEAT repeats of at least
MIN_REPEAT_MS each), then let the VM run it as usual. Timing the wall clock around the call from Python instead
would add a few microseconds per call, as much as a small kernel takes. A kernel writes only its outputs (the
build makes no in-place calls), so the extra runs leave the VM's own call the same inputs. VM builtins
(allocation, shape checks) are counted, not timed; the uninstrumented run time is recorded beside the sum of the
kernel times (each kernel is timed alone, with warm caches).

Only a library that runs on this machine can be timed here (``--target host``); a target module says so by having
a ``profile`` function. The arm target's counts executed instructions per kernel under qemu instead (its result
is ``{"counted": ...}``, summarized by targets/arm_profile.py, ``unit: instructions``). The others get a note
saying why there is no number (``PROFILE_NOTE`` when they have one).
Times go into report.json only: model.json and the library stay byte-identical with or without ``--profile``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

#: whole-model runs after one warm-up: at least MIN_RUNS, more while under RUN_SECONDS, at most MAX_RUNS
MIN_RUNS, MAX_RUNS, RUN_SECONDS = 3, 20, 1.0
#: per kernel call: the median of REPEAT timings, each looping the kernel for at least MIN_REPEAT_MS
REPEAT, MIN_REPEAT_MS = 3, 5
#: a kernel written by hand as TIR (scheduled from the start, never tuned), not scheduled from a TE compute
HAND_WRITTEN_ATTR = "compress_graph.hand_written"
#: report.json lists this many kernels, heaviest first; the rest are summed in ``other_kernels``
TOP_KERNELS = 40
METHOD = (f"TVM time_evaluator on each kernel call's own arguments (median of {REPEAT} repeats of at least "
          f"{MIN_REPEAT_MS} ms), called from the Relax VM's instrument hook in this process on this machine's CPU")


def kernel_sources(mod, int8_scheduled: list[str], fp32_scheduled: list[str],
                   sched_report: dict[str, Any]) -> dict[str, str]:
    """Kernel name -> where its schedule came from. ``mod``: the module after the tuning records were applied
    (a kernel scheduled there is tuned); the hand-scheduled names and ``sched_report`` say the rest."""
    import tvm
    from compress_graph.targets.schedule import is_scheduled

    default = str(sched_report.get("default", ""))
    rest = ("default (sampled)" if default.startswith("metaschedule-sample") else
            "unscheduled (schedule=none)" if default.startswith("none") else
            "default (dlight)" if default.startswith("dlight") else "default")
    sources = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            written = func.attrs is not None and HAND_WRITTEN_ATTR in func.attrs  # e.g. int8/lookup.py's tables
            sources[gv.name_hint] = ("hand-scheduled int8" if written else
                                     "tuned (records)" if is_scheduled(func) else rest)
    sources.update({name: "hand-scheduled int8" for name in int8_scheduled})
    sources.update({name: "hand-scheduled fp32" for name in fp32_scheduled})
    sources.update({name: "unscheduled" for name in sched_report.get("unscheduled") or ()})
    sources.update({name: "unscheduled (its schedule did not build)"
                    for name in sched_report.get("schedules_dropped_unbuildable") or ()})
    return dict(sorted(sources.items()))


def _source(sources: dict[str, str], name: str) -> str:
    """``name``'s schedule source; a kernel whose weight layout was folded into its constants (fp32 channel-vector
    convs: relax's SplitLayoutRewritePreproc renames it ``<kernel>_prepacked``) is its original kernel."""
    found = sources.get(name) or sources.get(name.removesuffix("_prepacked"))
    return found or "not a model kernel (runtime function)"


def measure(module, lib_path, feed: list[np.ndarray], options: dict[str, str],
            sources: dict[str, str]) -> dict[str, Any]:
    """The ``target.profile`` record: per-kernel times when ``module`` can run its library here, else a note.
    A library that fails while being timed is reported (``status: failed``), not raised: the build itself is fine."""
    run = getattr(module, "profile", None)
    if run is None:
        note = getattr(module, "PROFILE_NOTE", None) or (
            f"per-kernel time is measured on this machine for --target host only; the {module.NAME} library runs "
            "on another device")
        return {"status": "not measured", "reason": note}
    try:
        timed = run(lib_path, feed, options)
    except Exception as exc:  # noqa: BLE001 - reported in the profile record
        return {"status": "failed", "reason": ((str(exc).strip().splitlines() or [type(exc).__name__])[-1])[:300]}
    if "skipped" in timed:
        return {"status": "skipped", "reason": timed["skipped"]}
    if "counted" in timed:  # instructions per kernel (targets/arm_profile.py), not time
        from compress_graph.targets import arm_profile

        return arm_profile.summarize(timed["counted"], sources, TOP_KERNELS)
    return summarize(timed, sources)


class _CallTimer:
    """The VM instrument: before each call, time the callee on its arguments when it is a kernel of the library
    (TVM's ``time_evaluator`` of the module in the import tree that defines it), else count it as untimed."""

    def __init__(self, lib, dev):
        self.lib, self.dev = lib, dev
        self.timers: dict[str, Any] = {}
        self.calls: dict[str, list] = {}  # kernel -> [calls, seconds]
        self.untimed = 0

    def _timer(self, symbol: str):
        stack = [self.lib]
        while stack:
            mod = stack.pop()
            if mod.implements_function(symbol):
                return mod.time_evaluator(symbol, self.dev, number=1, repeat=REPEAT, min_repeat_ms=MIN_REPEAT_MS)
            stack.extend(mod.imports)
        return None  # a VM builtin or another runtime function

    def _seconds(self, symbol: str, args) -> float | None:
        if symbol not in self.timers:
            self.timers[symbol] = self._timer(symbol)
        if self.timers[symbol] is None:
            return None
        try:
            return float(self.timers[symbol](*args).median)
        except Exception:  # noqa: BLE001 - a callee the timer cannot call with these arguments: counted untimed
            self.timers[symbol] = None
            return None

    def __call__(self, func, symbol, before_run, ret_value, *args) -> int:
        if before_run:
            seconds = self._seconds(str(symbol), args)
            if seconds is None:
                self.untimed += 1
            else:
                entry = self.calls.setdefault(str(symbol), [0, 0.0])
                entry[0] += 1
                entry[1] += seconds
        return 0  # VMInstrumentReturnKind.NoOp: the VM then makes the call as usual


def time_calls(lib_path, feed: list[np.ndarray]) -> dict[str, Any]:
    """Run the library's ``main`` on ``feed`` in this process: uninstrumented runs for the run time, then one run
    that times every kernel call. Returns ``runs``, ``run_s`` (mean), ``calls`` {kernel: [calls, seconds]} and
    ``untimed_calls`` (VM builtins and other runtime functions)."""
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    lib = tvm.runtime.load_module(str(lib_path))
    vm = relax.VirtualMachine(lib, dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(x)) for x in feed]
    vm["main"](*args)  # warm-up: first-run allocations and page faults stay out
    runs, start = 0, time.perf_counter()
    while runs < MAX_RUNS and (runs < MIN_RUNS or time.perf_counter() - start < RUN_SECONDS):
        vm["main"](*args)
        runs += 1
    run_s = (time.perf_counter() - start) / runs
    timer = _CallTimer(lib, dev)
    vm.set_instrument(timer)
    vm["main"](*args)
    return {"runs": runs, "run_s": run_s, "calls": timer.calls, "untimed_calls": timer.untimed}


def summarize(timed: dict[str, Any], sources: dict[str, str]) -> dict[str, Any]:
    """Per-inference numbers: kernels heaviest first (ties by name), each with its calls, total and per-call
    microseconds, share of the kernel time and schedule source."""
    def us(seconds: float) -> float:
        return round(seconds * 1e6, 3)

    calls = timed["calls"]
    total = sum(s for _, s in calls.values())
    ranked = sorted(calls.items(), key=lambda kv: (-kv[1][1], kv[0]))
    rows = [{"name": name, "schedule": _source(sources, name), "calls": n,
             "total_us": us(s), "mean_us": us(s / n), "share": round(s / total, 4) if total else 0.0}
            for name, (n, s) in ranked[:TOP_KERNELS]]
    record = {"status": "measured", "method": METHOD, "runs": timed["runs"], "run_us": us(timed["run_s"]),
              "kernels_us": us(total), "kernel_count": len(calls), "untimed_calls": timed["untimed_calls"],
              "kernels": rows}
    rest = ranked[TOP_KERNELS:]
    if rest:
        rest_s = sum(s for _, (_, s) in rest)
        record["other_kernels"] = {"kernels": len(rest), "total_us": us(rest_s),
                                   "share": round(rest_s / total, 4) if total else 0.0}
    return record
