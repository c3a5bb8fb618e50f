"""The Target and Tuning sections of the report page: the compiled library, its verification, kernels by schedule
source, per-kernel time (host) or executed instructions (arm, under qemu) from ``--profile``, and the tuning curve."""

from __future__ import annotations

import json
from typing import Any

from compress_graph.report_cells import cell as _cell
from compress_graph.report_cells import e as _e
from compress_graph.report_cells import is_num as _is_num
from compress_graph.report_cells import items as _items
from compress_graph.report_cells import kv_table as _kv_table
from compress_graph.report_cells import none as _none
from compress_graph.report_cells import share as _share
from compress_graph.report_cells import table as _table
from compress_graph.report_charts import AFTER_COLOR, Charts

#: the time-per-kernel chart shows this many kernels, heaviest first (the table lists all report.json holds)
MAX_KERNEL_BARS = 20
#: the tuning chart draws this many tasks' curves (the heaviest by weight x best latency)
MAX_TUNING_TASKS = 10


def target_section(target: Any, charts: Charts) -> str:
    out = ['<h2 id="target">Target</h2>']
    if not isinstance(target, dict):
        out.append(_none("not recorded (the run had no --target)"))
        return "\n".join(out)
    rows = [[f"<td>{_e(k)}</td>", f"<td>{_e(target.get(k))}</td>"]
            for k in ("target_text", "library", "library_sha256", "elf_machine") if k in target]
    if isinstance(target.get("tvm_target"), dict):
        rows.append(["<td>tvm_target</td>", f"<td><code>{_e(json.dumps(target['tvm_target']))}</code></td>"])
    out.append(_table(None, rows))

    out.append("<h3>Verification</h3>")
    check = target.get("verification")
    out.append(_kv_table(check, "target.verification") if isinstance(check, dict) and check
               else _none("not recorded"))

    out.append("<h3>Kernels and schedules</h3>")
    sched = target.get("schedule")
    if isinstance(sched, dict) and sched:
        sources = [(label, sched.get(key)) for key, label in (
            ("from_tuning_records", "tuned (records)"), ("int8_hand_scheduled", "hand-scheduled int8"),
            ("fp32_hand_scheduled", "hand-scheduled fp32"), ("sampled", "default (sampled)"))
            if _is_num(sched.get(key))]
        unscheduled = sched.get("unscheduled")
        if isinstance(unscheduled, list):
            sources.append(("unscheduled", len(unscheduled)))
        if sources:
            fig, ax = charts.figure(10, max(1.8, 0.35 * len(sources) + 1.0))
            ax.barh(range(len(sources)), [v for _, v in sources], color=AFTER_COLOR, height=0.6)
            ax.set_yticks(range(len(sources)), [s for s, _ in sources])
            ax.invert_yaxis()
            ax.set_xlabel("kernels")
            ax.set_title(f"how the {sched.get('kernels', '?')} kernels were scheduled", fontsize=11)
            for y, (_, v) in enumerate(sources):
                ax.text(v, y, f" {v}", va="center", fontsize=9)
            out.append(charts.img(fig, "kernels by schedule source"))
        out.append(_kv_table(sched, "target.schedule"))
    else:
        out.append(_none("not recorded"))
    out.append(_kernel_times(target, charts))

    int8 = target.get("int8")
    out.append("<h3>int8 lowering</h3>")
    out.append(_kv_table(int8, "target.int8") if isinstance(int8, dict) and int8
               else _none("not recorded (float library or --no-int8)"))
    half = target.get("fp16")
    if isinstance(half, dict) and half:  # arm{fp16=true}: whether the float model went float16, and why not
        out.append("<h3>float16 (fp16=true)</h3>")
        out.append(_kv_table(half, "target.fp16"))
    timings = target.get("timings")
    out.append("<h3>Build timings</h3>")
    out.append(_kv_table(timings, "target.timings") if isinstance(timings, dict) and timings
               else _none("not recorded"))
    return "\n".join(out)


def _kernel_times(target: dict[str, Any], charts: Charts) -> str:
    """``target.profile`` (--profile): run time, a chart of the heaviest kernels and a table of all recorded; without
    one, why not, and the kernel list with each kernel's schedule source (``target.kernel_schedules``)."""
    prof = target.get("profile") if isinstance(target.get("profile"), dict) else {}
    if prof.get("unit") == "instructions":
        return _kernel_counts(prof, charts)
    out = ["<h3>Time per kernel</h3>"]
    kernels = [(k, r) for k, r in enumerate(prof.get("kernels") or []) if isinstance(r, dict)
               and _is_num(r.get("total_us"))] if isinstance(prof.get("kernels"), list) else []
    if prof.get("status") == "measured" and kernels:
        out.append(f"<p>{_e(prof.get('method', ''))}. Microseconds per inference; the whole run is the mean of "
                   f"{_e(prof.get('runs'))} runs without the hook, VM builtin calls (allocation, shape checks) are "
                   "counted, not timed.</p>")
        keys = ("run_us", "kernels_us", "kernel_count", "untimed_calls")
        out.append(_table(["whole run (us)", "sum of kernels (us)", "kernels called", "VM builtin calls"],
                          [[_cell(prof.get(k), f"target.profile.{k}") for k in keys]]))
        out.append(_heaviest(kernels, "total_us", charts, "time per kernel"))
        rows = [[*_named(r), _cell(r.get("calls"), f"target.profile.kernels.{k}.calls"),
                 _cell(r["total_us"], f"target.profile.kernels.{k}.total_us"),
                 _cell(r.get("mean_us"), f"target.profile.kernels.{k}.mean_us"), _share(r.get("share"))]
                for k, r in kernels]
        other = prof.get("other_kernels")
        if isinstance(other, dict):
            rows.append([f"<td>({_e(other.get('kernels'))} more kernels)</td>", "<td></td>", "<td></td>",
                         _cell(other.get("total_us"), "target.profile.other_kernels.total_us"), "<td></td>",
                         _share(other.get("share"))])
        out.append(_table(["kernel", "schedule", "calls", "total (us)", "per call (us)", "share"], rows))
        return "\n".join(out)
    if prof.get("reason"):
        status = prof.get("status", "not measured")
        out.append(_none(prof["reason"] if status == "not measured" else f"{status}: {prof['reason']}"))
    else:
        out.append(_none("not recorded (--profile: time per kernel on a --target host build, instructions per kernel "
                         "under qemu on an arm{symbols=keep} build)"))
    sources = target.get("kernel_schedules")
    if isinstance(sources, dict) and sources:
        out.append(f"<p>The library's {len(sources)} kernels and where each one's schedule came from:</p>")
        out.append(_table(["kernel", "schedule"], [[f"<td><code>{_e(n)}</code></td>", f"<td>{_e(src)}</td>"]
                                                   for n, src in sources.items()]))
    return "\n".join(out)


def _kernel_counts(prof: dict[str, Any], charts: Charts) -> str:
    """``target.profile`` of an arm library (targets/arm_profile.py): executed instructions per kernel under qemu."""
    out = ["<h3>Instructions per kernel</h3>", f"<p>{_e(prof.get('method', ''))}.</p>"]
    kernels = [(k, r) for k, r in enumerate(prof.get("kernels") or []) if isinstance(r, dict)
               and _is_num(r.get("instructions"))] if isinstance(prof.get("kernels"), list) else []
    keys = ("instructions", "kernels_instructions", "kernel_count")
    out.append(_table(["whole run (instructions)", "in the kernels", "kernels"],
                      [[_cell(prof.get(k), f"target.profile.{k}") for k in keys]]))
    if not kernels:
        out.append(_none("no kernel was attributed"))
        return "\n".join(out)
    out.append(_heaviest(kernels, "instructions", charts, "instructions per kernel",
                         unit="executed aarch64 instructions per inference (qemu)"))
    rows = [[*_named(r), _cell(r["instructions"], f"target.profile.kernels.{k}.instructions"), _share(r.get("share"))]
            for k, r in kernels]
    other = prof.get("other_kernels")
    if isinstance(other, dict):
        rows.append([f"<td>({_e(other.get('kernels'))} more kernels)</td>", "<td></td>",
                     _cell(other.get("instructions"), "target.profile.other_kernels.instructions"),
                     _share(other.get("share"))])
    runtime = prof.get("runtime")
    if isinstance(runtime, dict):
        rows += [[f"<td>{_e(name)} (runtime)</td>", "<td></td>", _cell(n),  # file names hold dots: no key path
                  "<td></td>"] for name, n in runtime.items()]
    out.append(_table(["kernel", "schedule", "instructions", "share"], rows))
    mix = prof.get("mix")
    if isinstance(mix, dict) and mix:
        out.append(_kv_table(mix, "target.profile.mix"))
    return "\n".join(out)


def tuning_section(target: Any, charts: Charts) -> str:
    out = ['<h2 id="tuning">Tuning</h2>']
    tuning = target.get("tuning") if isinstance(target, dict) else None
    if not isinstance(tuning, dict) or not tuning:
        out.append(_none("not recorded (no --target)"))
        return "\n".join(out)
    if not tuning.get("trials_per_task"):
        out.append(_none("no tuning ran (--tune 0); kernels come from hand schedules, records or defaults"))
    out.append(_kv_table({k: v for k, v in tuning.items() if k != "curve"}, "target.tuning"))
    if not tuning.get("trials_per_task"):
        return "\n".join(out)
    out.append("<h3>Best latency vs trials</h3>")
    curve = tuning.get("curve")
    if tuning.get("tasks") == 0:
        out.append(_none("no kernel was left to tune (every kernel had a hand schedule)"))
    elif not isinstance(curve, dict) or not isinstance(curve.get("points"), list):
        out.append(_none("not recorded (this report keeps tuning totals only)"))
    elif not curve["points"]:
        out.append(_none("no batch of trials was measured"))
    else:
        out.append(_tuning_curve(curve, charts))
    return "\n".join(out)


def _heaviest(kernels: list[tuple[int, dict[str, Any]]], key: str, charts: Charts, what: str, **unit: str) -> str:
    """The bar chart of the MAX_KERNEL_BARS heaviest profile rows by ``key``, coloured by schedule source."""
    top = [r for _, r in kernels[:MAX_KERNEL_BARS]]
    return charts.kernel_times([str(r.get("name")) for r in top], [r[key] for r in top],
                               [str(r.get("schedule", "")) for r in top], f"{what}: the {len(top)} heaviest", **unit)


def _named(row: dict[str, Any]) -> list[str]:
    """A profile row's kernel name and schedule source cells."""
    return [f"<td><code>{_e(row.get('name'))}</code></td>", f"<td>{_e(row.get('schedule', ''))}</td>"]


def _tuning_curve(curve: dict[str, Any], charts: Charts) -> str:
    """``target.tuning.curve``: one point per measured batch. A chart (the weighted sum once every task has a
    candidate; the heaviest tasks' best so far) and per task its trials, first and final best."""
    tasks = [t if isinstance(t, dict) else {} for t in _items(curve.get("tasks"))]
    points = [(k, p) for k, p in enumerate(curve["points"]) if isinstance(p, dict) and _is_num(p.get("trials"))
              and isinstance(p.get("task"), int) and 0 <= p["task"] < len(tasks)]
    per_task: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for k, p in points:
        per_task.setdefault(p["task"], []).append((k, p))
    model = [(p["trials"], p["model_us"]) for _, p in points if _is_num(p.get("model_us"))]

    def final(t: int) -> float:
        best = [p["best_us"] for _, p in per_task[t] if _is_num(p.get("best_us"))]
        weight = tasks[t].get("weight")
        return (best[-1] if best else 0.0) * (weight if _is_num(weight) else 1.0)

    heavy = sorted(per_task, key=lambda t: -final(t))[:MAX_TUNING_TASKS]
    lines = {str(tasks[t].get("name", t)): [(p["trials"], p["best_us"]) for _, p in per_task[t]
                                            if _is_num(p.get("best_us"))] for t in sorted(heavy)}
    out = [charts.tuning_curve(model, lines)]
    if model:
        k, last = [(k, p) for k, p in points if _is_num(p.get("model_us"))][-1]
        out.append(_table(["after trials", "tuned kernels, weighted sum of best (us)"],
                          [[_cell(last["trials"], f"target.tuning.curve.points.{k}.trials"),
                            _cell(last["model_us"], f"target.tuning.curve.points.{k}.model_us")]]))
    rows = [_tuning_task_row(t, tasks[t], per_task[t]) for t in sorted(per_task)]
    out.append(_table(["task", "weight", "trials", "first best (us)", "final best (us)"], rows))
    return "\n".join(out)


def _tuning_task_row(t: int, task: dict[str, Any], points: list[tuple[int, dict[str, Any]]]) -> list[str]:
    measured = [(k, p) for k, p in points if _is_num(p.get("best_us"))]
    trials = sum(p["batch_trials"] for _, p in points if _is_num(p.get("batch_trials")))
    best = [_cell(p["best_us"], f"target.tuning.curve.points.{k}.best_us") for k, p in (measured[0], measured[-1])] \
        if measured else ['<td class="none">no valid candidate</td>'] * 2
    return [f"<td><code>{_e(task.get('name', t))}</code></td>",
            _cell(task.get("weight"), f"target.tuning.curve.tasks.{t}.weight"), _cell(trials), *best]
