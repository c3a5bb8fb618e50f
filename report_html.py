"""The HTML report: ``OUT/report.html``, one self-contained page built from ``OUT/report.json`` (and the model files).

Written by ``compress-graph report OUT/`` and by a run with ``--html``. Every number on the page is read from
report.json, or counted from ``OUT/model.onnx`` and the input model with the same cost model the report uses (and
shown only when those totals agree with report.json's). Charts are PNGs drawn with matplotlib's Agg canvas
(report_charts.py) and inlined as base64; the CSS is inline; there is no script and no network reference, so the
file opens offline in any browser. What the report does not record is said so under its heading, never left out
silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compress_graph.ir.errors import UsageError
from compress_graph.report_cells import cell as _cell
from compress_graph.report_cells import change as _change
from compress_graph.report_cells import e as _e
from compress_graph.report_cells import is_num as _is_num
from compress_graph.report_cells import items as _items
from compress_graph.report_cells import kv_table as _kv_table
from compress_graph.report_cells import none as _none
from compress_graph.report_cells import table as _table
from compress_graph.report_cells import thousands as _thousands
from compress_graph.report_charts import AFTER_COLOR, BEFORE_COLOR, PRUNE_LEVELS, Charts
from compress_graph.report_target import target_section, tuning_section

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
#: the per-layer chart shows layers with at least this share of the input model's MACs, at most MAX_LAYERS of them
#: (the heaviest), in graph order
MIN_LAYER_SHARE = 0.005
MAX_LAYERS = 30
#: the prune chart of channels kept shows at most this many groups (those cut the most, in graph order)
MAX_PRUNE_GROUPS = 40

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d232a}
main{max-width:1100px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:2px solid #d0d7de;
padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}h4{font-size:13px;margin:12px 0 4px;color:#444}
section.pass{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:4px 14px 10px;margin:10px 0}
table{border-collapse:collapse;margin:6px 0 10px;background:#fff}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#eef1f4}td code{word-break:break-all}
.none{color:#6a737d;font-style:italic}.bad{color:#b42318;font-weight:600}.ok{color:#1a7f37;font-weight:600}
img{display:block;max-width:100%;height:auto;margin:6px 0}code{font-size:12px;background:#eef1f4;padding:1px 3px}
ul{margin:4px 0 8px}nav a{margin-right:12px}
"""


# --------------------------------------------------------------------------------------------- entry points
def load_report(out_dir: str | Path) -> dict[str, Any]:
    """``OUT/report.json`` as a dict; a missing, unreadable or foreign file is a UsageError (exit 2)."""
    path = Path(out_dir) / REPORT_JSON
    if not Path(out_dir).is_dir():
        raise UsageError(f"'{out_dir}' is not an output folder (write one with: compress-graph MODEL --passes ... "
                         f"-o {out_dir})")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no {REPORT_JSON} in '{out_dir}' (write one with: compress-graph MODEL --passes ... "
                         f"-o {out_dir})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("passes"), list) \
            or not isinstance(report.get("before"), dict) or not isinstance(report.get("after"), dict):
        raise UsageError(f"{path} is not a compress-graph report (no 'passes', 'before' and 'after')")
    return report


def write_html_report(out_dir: str | Path, model_path: str | Path | None = None) -> Path:
    """Render ``OUT/report.json`` to ``OUT/report.html`` (temp file + rename). ``model_path``, the run's input model,
    adds the per-layer MACs before/after chart."""
    from compress_graph.ir.io import atomic_write_bytes

    out_dir = Path(out_dir)
    report = load_report(out_dir)
    if model_path is None and report.get("input_model") and Path(report["input_model"]).is_file():
        model_path = report["input_model"]  # the run recorded where its input was
    page = render_html(report, out_dir, model_path)
    target = out_dir / REPORT_HTML
    atomic_write_bytes(target, page.encode("utf-8"))
    return target


def render_html(report: dict[str, Any], out_dir: str | Path | None = None,
                model_path: str | Path | None = None) -> str:
    """The page as a string. ``out_dir`` (holding model.onnx) and ``model_path`` enable the per-layer chart."""
    charts = Charts()
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>compress-graph report: {_e(report.get('pipeline', ''))}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<h1>compress-graph report</h1>",
        '<nav><a href="#summary">Summary</a><a href="#cost">Cost per pass</a><a href="#layers">Per layer</a>'
        '<a href="#passes">Passes</a><a href="#target">Target</a><a href="#tuning">Tuning</a></nav>',
        _summary(report, model_path),
        _cost_per_pass(report, charts),
        _per_layer(report, charts, out_dir, model_path),
        _passes(report, charts),
        target_section(report.get("target"), charts),
        tuning_section(report.get("target"), charts),
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------- sections
def _summary(report: dict[str, Any], model_path: str | Path | None) -> str:
    out = ['<h2 id="summary">Summary</h2>']
    status = report.get("status")
    status_html = (f'<span class="{"ok" if status == "ok" else "bad"}">{_e(status)}</span>' if status is not None
                   else '<span class="none">not recorded</span>')
    rows = [
        ["<td>input model</td>", f"<td>{_e(model_path)}</td>" if model_path else
         '<td class="none">not recorded (report.json does not name it; give --model to `compress-graph report`)</td>'],
        ["<td>pipeline</td>", f"<td><code>{_e(report.get('pipeline', ''))}</code></td>"],
        ["<td>status</td>", f"<td>{status_html}</td>"],
    ]
    target = report.get("target")
    if isinstance(target, dict):
        check = target.get("verification") if isinstance(target.get("verification"), dict) else {}
        rows.append(["<td>target</td>", f"<td>{_e(target.get('target_text', target.get('target', '')))} - "
                     f"verification: {_e(check.get('status', 'not recorded'))}</td>"])
    else:
        rows.append(["<td>target</td>", '<td class="none">not recorded (no --target)</td>'])
    versions = report.get("versions")
    if isinstance(versions, dict):
        rows.append(["<td>versions</td>", "<td>" + _e(", ".join(f"{k} {v}" for k, v in versions.items())) + "</td>"])
    out.append(_table(None, rows))

    before, after = report["before"], report["after"]
    keys = [k for k in ("params", "macs", "bytes", "act_bytes") if k in before or k in after]
    cost_rows = [["<td>before</td>"] + [_cell(before.get(k), f"before.{k}") for k in keys],
                 ["<td>after</td>"] + [_cell(after.get(k), f"after.{k}") for k in keys],
                 ["<td>change</td>"] + [_change(before.get(k), after.get(k)) for k in keys]]
    out.append("<h3>Size and compute</h3>" + _table([""] + keys, cost_rows))

    out.append("<h3>Output agreement</h3>")
    verified = [(i, r) for i, r in enumerate(report["passes"])
                if isinstance(r, dict) and isinstance((r.get("verify") or {}).get("worst"), dict)]
    if verified:
        i, last = verified[-1]
        worst = last["verify"]["worst"]
        cells = [_cell(worst.get(k), f"passes.{i}.verify.worst.{k}") for k in ("cosine", "max_abs", "top1_agreement")]
        out.append(f"<p>Final model against the original, after pass {i + 1} (<code>{_e(last.get('text'))}</code>), "
                   f"on {_e(last['verify'].get('samples', '?'))} samples ({_e(last['verify'].get('data', '?'))}):</p>")
        out.append(_table(["cosine", "max |d|", "top-1 agreement"], [cells]))
    else:
        out.append(_none("not recorded (no pass was verified: --no-verify or no passes)"))

    out.append("<h3>Task metric</h3>")
    acc = report.get("accuracy")
    if isinstance(acc, dict):
        keys = ["original", "compressed", "drop", "max_drop", "met", "samples"]
        out.append(f"<p>{_e(acc.get('metric', ''))} on {_e(acc.get('eval_data', ''))}</p>")
        out.append(_table(keys, [[_cell(acc.get(k), f"accuracy.{k}") if k != "met" else
                                  f'<td class="{"ok" if acc.get("met") else "bad"}">{_e(acc.get("met"))}</td>'
                                  for k in keys]]))
    else:
        out.append(_none("not recorded (no --metric)"))

    out.append("<h3>Input shapes</h3>")
    shapes = report.get("input_shapes")
    if isinstance(shapes, dict) and shapes:
        rows = [[f"<td>{_e(name)}</td>", f"<td>{_e(s.get('declared'))}</td>", f"<td>{_e(s.get('shape'))}</td>",
                 f"<td>{_e(s.get('from'))}</td>"] for name, s in shapes.items() if isinstance(s, dict)]
        out.append(_table(["input", "declared", "analysed at", "from"], rows))
    else:
        out.append(_none("not recorded (every input has a fixed shape)"))

    out.append("<h3>Warnings</h3>")
    warnings = report.get("warnings")
    if isinstance(warnings, list) and warnings:
        out.append("<ul>" + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>")
    else:
        out.append(_none("none recorded"))
    return "\n".join(out)


def _pass_label(record: dict[str, Any], i: int) -> str:
    text = (record.get("accuracy_control") or {}).get("applied") or record.get("text") or record.get("name", "?")
    return f"{i + 1}. {text}"


def _cost_per_pass(report: dict[str, Any], charts: Charts) -> str:
    out = ['<h2 id="cost">Cost per pass</h2>']
    passes = [r for r in report["passes"] if isinstance(r, dict)]
    labels = ["(input)"] + [_pass_label(r, i) for i, r in enumerate(passes)]
    costs = [report["before"]] + [r.get("after") or {} for r in passes]
    macs = [c.get("macs") for c in costs]
    size = [c.get("bytes") for c in costs]
    if all(_is_num(v) for v in macs + size):
        import numpy as np

        fig, axes = charts.figure(10, max(2.4, 0.32 * len(labels) + 1.4), cols=2)
        y = np.arange(len(labels))
        for k, (values, name, scale) in enumerate(((macs, "MACs (millions)", 1e6), (size, "weight bytes (KiB)", 1024))):
            ax = axes[k]
            ax.barh(y, [v / scale for v in values], color=[BEFORE_COLOR] + [AFTER_COLOR] * (len(values) - 1))
            ax.set_yticks(y, labels if k == 0 else [""] * len(labels), fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel(name)
            ax.grid(axis="x", alpha=0.3)
        fig.suptitle("MACs and weight bytes after each pass", fontsize=11)
        out.append(charts.img(fig, "MACs and weight bytes after each pass"))
    else:
        out.append(_none("not recorded (a pass has no MACs or bytes in its 'after' cost)"))
    return "\n".join(out)


def _lowrank_expansion(report: dict[str, Any]) -> dict[str, list[str]]:
    """node -> the nodes lowrank replaced it with (from the passes' recorded ``layers[].new_nodes``)."""
    mapping: dict[str, list[str]] = {}
    for r in report["passes"]:
        layers = (r.get("stats") or {}).get("layers") if isinstance(r, dict) else None
        for layer in layers if isinstance(layers, list) else ():
            if isinstance(layer, dict) and isinstance(layer.get("new_nodes"), list) and layer.get("node"):
                mapping[str(layer["node"])] = [str(n) for n in layer["new_nodes"]]
    return mapping


def _per_layer(report: dict[str, Any], charts: Charts, out_dir: str | Path | None,
               model_path: str | Path | None) -> str:
    out = ['<h2 id="layers">Per layer: MACs before and after</h2>']
    if model_path is None:
        out.append(_none("not recorded: report.json holds totals only and does not name the input model (give "
                         "--model to `compress-graph report`, or use --html on the run)"))
        return "\n".join(out)
    final = Path(out_dir) / "model.onnx" if out_dir is not None else None
    if final is None or not final.is_file():
        out.append(_none(f"not recorded: no model.onnx in {out_dir}"))
        return "\n".join(out)
    from compress_graph.ir import io
    from compress_graph.ir.cost import model_cost

    shapes = {k: v["shape"] for k, v in (report.get("input_shapes") or {}).items()
              if isinstance(v, dict) and isinstance(v.get("shape"), list)} or None
    before = model_cost(io.load(model_path), shapes)
    after = model_cost(io.load(final), shapes)
    for name, cost, recorded in (("input model", before, report["before"]), ("model.onnx", after, report["after"])):
        if cost.macs != recorded.get("macs"):
            path = model_path if name == "input model" else final
            out.append(_none(f"not shown: the {name}'s MACs counted now ({cost.macs:,}) differ from report.json's "
                             f"({_thousands(recorded.get('macs'))}); is {path} the run's {name}?"))
            return "\n".join(out)
    after_macs = {c.name: c.macs for c in after.per_node}
    expansion = _lowrank_expansion(report)

    def macs_after(name: str) -> int | None:
        names, found, total = [name], False, 0
        while names:
            n = names.pop()
            if n in after_macs:
                found, total = True, total + after_macs[n]
            names.extend(expansion.get(n, ()))
        return total if found else None

    heavy = [c for c in before.per_node if c.macs > 0 and c.macs >= MIN_LAYER_SHARE * before.macs]
    if not heavy:
        out.append(_none("not recorded: the input model's cost model counts no MACs per layer"))
        return "\n".join(out)
    shown = sorted(sorted(range(len(heavy)), key=lambda i: -heavy[i].macs)[:MAX_LAYERS])
    rows, labels, b_vals, a_vals = [], [], [], []
    for i in shown:
        c = heavy[i]
        a = macs_after(c.name)
        labels.append(c.name)
        b_vals.append(c.macs / 1e6)
        a_vals.append((a or 0) / 1e6)
        rows.append([f"<td>{_e(c.name)}</td>", f"<td>{_e(c.op)}</td>", _cell(c.macs, f"layers.{c.name}.before"),
                     _cell(a, f"layers.{c.name}.after") if a is not None
                     else '<td class="none">not in the output (folded, removed or renamed)</td>',
                     _change(c.macs, a)])
    note = f", the {len(shown)} heaviest of them" if len(heavy) > len(shown) else ""
    out.append(f"<p>Layers with at least {MIN_LAYER_SHARE:.1%} of the input model's MACs{_e(note)}, counted from "
               "the input model and model.onnx with the report's cost model (their totals match report.json's); a "
               "factorized layer's after value is the sum of the nodes that replaced it.</p>")
    out.append(charts.before_after(labels, b_vals, a_vals, "MACs per layer", "MACs (millions)"))
    out.append(_table(["layer", "op", "MACs before", "MACs after", "change"], rows))
    return "\n".join(out)


def _passes(report: dict[str, Any], charts: Charts) -> str:
    out = ['<h2 id="passes">Passes</h2>']
    passes = report["passes"]
    if not passes:
        out.append(_none("not recorded (the pipeline ran no pass)"))
        return "\n".join(out)
    has_metric = any(isinstance(r, dict) and isinstance(r.get("metric"), dict) for r in passes)
    header = ["#", "pass", "time (s)", "params", "MACs", "bytes", "cosine", "max |d|", "top-1"]
    header += ["metric", "metric drop"] if has_metric else []
    b = report["before"]
    rows = [['<td></td>', "<td>(input)</td>", "<td></td>"]
            + [_cell(b.get(k), f"before.{k}") for k in ("params", "macs", "bytes")] + ["<td></td>"] * 3
            + (["<td></td>"] * 2 if has_metric else [])]
    for i, r in enumerate(passes):
        if not isinstance(r, dict):
            continue
        a = r.get("after") or {}
        v = r.get("verify") or {}
        worst = v.get("worst") if isinstance(v.get("worst"), dict) else {}
        row = [f'<td class="n">{i + 1}</td>', f"<td><code>{_e(_pass_label(r, i).split('. ', 1)[1])}</code></td>",
               _cell(r.get("time_s"), f"passes.{i}.time_s")]
        row += [_cell(a.get(k), f"passes.{i}.after.{k}") for k in ("params", "macs", "bytes")]
        if "skipped" in v:
            row += [f'<td colspan="3" class="none">verification skipped: {_e(v["skipped"])}</td>']
        elif v and v.get("checker") not in (None, "ok"):
            row += [f'<td colspan="3" class="bad">checker: {_e(v.get("checker"))}</td>']
        else:
            row += [_cell(worst.get(k), f"passes.{i}.verify.worst.{k}")
                    for k in ("cosine", "max_abs", "top1_agreement")]
        if has_metric:
            m = r.get("metric") if isinstance(r.get("metric"), dict) else {}
            row += [_cell(m.get("score"), f"passes.{i}.metric.score"), _cell(m.get("drop"), f"passes.{i}.metric.drop")]
        rows.append(row)
    out.append(_table(header, rows, "passes"))
    for i, r in enumerate(passes):
        if isinstance(r, dict):
            out.append(_pass_section(i, r, charts))
    return "\n".join(out)


def _pass_section(i: int, record: dict[str, Any], charts: Charts) -> str:
    stats = record.get("stats") if isinstance(record.get("stats"), dict) else {}
    out = [f'<section class="pass" id="pass-{i + 1}"><h3>{_e(_pass_label(record, i))}</h3>']
    shown: set[str] = set()  # stats drawn above the generic table
    sens = stats.get("sensitivity")
    prune_sens = isinstance(sens, dict) and sens and all(isinstance(v, list) for v in sens.values())
    if prune_sens or _prune_cuts(stats):
        out.append(_prune_charts(i, stats, charts))
        shown.update(k for k, ok in (("sensitivity", prune_sens), ("cuts", _prune_cuts(stats))) if ok)
    if isinstance(stats.get("layers"), list):
        out.append(_lowrank_charts(i, stats, charts))
        shown.add("layers")
        if isinstance(sens, dict) and sens and all(_is_num(v) for v in sens.values()):
            shown.add("sensitivity")
    if "quantized_nodes" in stats:
        out.append(_quant_charts(i, stats, charts))
        shown.update(k for k in ("mixed_precision", "accuracy_control") if isinstance(stats.get(k), dict))
    control = record.get("accuracy_control")
    if isinstance(control, dict) and isinstance(control.get("tries"), list):
        out.append(f"<h4>--max-drop back-off (allowed drop {_e(control.get('allowed_drop'))}; applied "
                   f"<code>{_e(control.get('applied'))}</code>)</h4>")
        rows = [[_cell(t.get("level")), f"<td><code>{_e(t.get('text', record.get('text')))}</code></td>",
                 _cell(t.get("drop"))] for t in control["tries"] if isinstance(t, dict)]
        out.append(_table(["level", "pass", "metric drop"], rows))
    table = _kv_table({k: v for k, v in stats.items() if k not in shown}, f"passes.{i}.stats")
    if table:
        out.append("<h4>Recorded stats</h4>" + table)
    elif not stats:
        out.append(_none("no stats recorded"))
    out.append("</section>")
    return "\n".join(out)


def _prune_cuts(stats: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(index in report.json, entry) of the prune pass's ``cuts`` entries that carry every number drawn."""
    cuts = stats.get("cuts")
    keys = ("channels", "kept", "units", "units_cut")
    return [(k, c) for k, c in enumerate(cuts) if isinstance(c, dict) and all(_is_num(c.get(x)) for x in keys)
            and c["units"] > 0] if isinstance(cuts, list) else []


def _prune_charts(i: int, stats: dict[str, Any], charts: Charts) -> str:
    out = []
    cuts = _prune_cuts(stats)
    chosen = {str(c.get("group")): 100.0 * c["units_cut"] / c["units"] for _, c in cuts}
    sens = stats.get("sensitivity")
    if isinstance(sens, dict) and sens and all(isinstance(v, list) for v in sens.values()):
        out.append("<h4>Sensitivity per channel group</h4>")
        full = {g: v for g, v in sens.items() if len(v) == len(PRUNE_LEVELS) and all(_is_num(x) for x in v)}
        if full:
            out.append(charts.sensitivity(full, {g: x for g, x in chosen.items() if g in full}))
        rows = [[f"<td>{_e(g)}</td>"] + [_cell(x) for x in v] + ["<td></td>"] * (len(PRUNE_LEVELS) - len(v))
                + [f'<td class="n">{chosen[g]:.1f} %</td>' if g in chosen else '<td class="none">-</td>']
                for g, v in sens.items()]
        out.append(_table(["group"] + [f"{p} % cut" for p in PRUNE_LEVELS] + ["chosen cut"], rows))
        if len(full) < len(sens):
            out.append(_none(f"{len(sens) - len(full)} group(s) too small for every measurement are in the table "
                             "only."))
        out.append(_none("A star marks the cut the allocation chose per group (units cut / units), on the curve "
                         "between the measured points, past 75 % on the last segment's line." if cuts else
                         "The cut chosen per group is not recorded in this report (only the total: units_removed)."))
    if cuts:
        out.append(_prune_kept(i, cuts, charts))
    return "\n".join(out)


def _prune_kept(i: int, cuts: list[tuple[int, dict[str, Any]]], charts: Charts) -> str:
    """Channels per group before and kept: a chart (the groups cut the most, at most MAX_PRUNE_GROUPS) and a table."""
    out = ["<h4>Channels kept per prune group</h4>"]
    shown = [c for _, c in cuts]
    if len(shown) > MAX_PRUNE_GROUPS:
        most = sorted(range(len(shown)), key=lambda k: shown[k]["kept"] - shown[k]["channels"])[:MAX_PRUNE_GROUPS]
        shown = [shown[k] for k in sorted(most)]
        out.append(_none(f"The chart shows the {MAX_PRUNE_GROUPS} groups cut the most of {len(cuts)}; the table "
                         "lists all."))
    out.append(charts.before_after([str(c.get("group")) for c in shown], [c["channels"] for c in shown],
                                   [c["kept"] for c in shown], "channels per prune group (its widest tensor)",
                                   "channels"))
    rows = [[f"<td>{_e(c.get('group'))}</td>", _cell(c["channels"], f"passes.{i}.stats.cuts.{k}.channels"),
             _cell(c["kept"], f"passes.{i}.stats.cuts.{k}.kept"), _change(c["channels"], c["kept"]),
             _cell(c["units_cut"], f"passes.{i}.stats.cuts.{k}.units_cut"),
             _cell(c["units"], f"passes.{i}.stats.cuts.{k}.units")] for k, c in cuts]
    out.append(_table(["group", "channels", "kept", "change", "units cut", "units"], rows))
    return "\n".join(out)


def _lowrank_charts(i: int, stats: dict[str, Any], charts: Charts) -> str:
    out = []
    layers = [x for x in stats["layers"] if isinstance(x, dict) and _is_num(x.get("macs_before"))
              and _is_num(x.get("macs_after"))]
    if layers:
        out.append("<h4>Factorized layers</h4>")
        out.append(charts.before_after([str(x.get("node")) for x in layers], [x["macs_before"] / 1e6 for x in layers],
                                       [x["macs_after"] / 1e6 for x in layers], "MACs per factorized layer",
                                       "MACs (millions)"))
        rows = [[f"<td>{_e(x.get('node'))}</td>", f"<td>{_e(x.get('scheme', ''))}</td>",
                 f"<td>{_e(', '.join(map(str, x.get('ranks') or [])))}</td>",
                 _cell(x["macs_before"], f"passes.{i}.stats.layers.{k}.macs_before"),
                 _cell(x["macs_after"], f"passes.{i}.stats.layers.{k}.macs_after"),
                 _change(x["macs_before"], x["macs_after"]), _cell(x.get("error"))]
                for k, x in enumerate(layers)]
        out.append(_table(["layer", "scheme", "rank", "MACs before", "MACs after", "change", "error"], rows))
    else:
        out.append(_none("no layer was factorized"))
    sens = stats.get("sensitivity")
    if isinstance(sens, dict) and sens and all(_is_num(v) for v in sens.values()):
        chosen = {str(x.get("node")) for x in layers}
        out.append("<h4>Sensitivity per layer</h4>")
        out.append(charts.bars(list(sens), list(sens.values()), "lowrank sensitivity (model output error weight)",
                               "sensitivity", highlight=chosen, highlight_label="factorized"))
    return "\n".join(out)


def _quant_charts(i: int, stats: dict[str, Any], charts: Charts) -> str:
    """int8 vs float: the counts, and every node kept in float with the reason the report gives."""
    reasons: dict[str, str] = {}
    for name in _items(stats.get("float_head")):
        reasons[str(name)] = "keep_head: the model's last layer stays float"
    mixed = stats.get("mixed_precision") if isinstance(stats.get("mixed_precision"), dict) else {}
    control = stats.get("accuracy_control") if isinstance(stats.get("accuracy_control"), dict) else {}
    for name in _items(mixed.get("float_layers")):
        reasons[str(name)] = f"mixed precision: quant{{budget={mixed.get('budget')}}} (output drop)"
    for name in _items(control.get("float_layers")):
        reasons[str(name)] = f"--max-drop {control.get('max_drop')} ({control.get('metric', 'task metric')})"
    for name in _items(stats.get("excluded")):
        reasons.setdefault(str(name), "exclude= option")
    skipped = stats.get("skipped") if isinstance(stats.get("skipped"), dict) else {}
    for name, why in skipped.items():
        reasons.setdefault(str(name), f"not quantized: {why}")
    out = ["<h4>int8 and float nodes</h4>"]
    quantized = stats.get("quantized_nodes")
    if _is_num(quantized):
        fig, ax = charts.figure(10, 1.9)
        ax.barh([0, 1], [quantized, len(reasons)], color=[AFTER_COLOR, BEFORE_COLOR], height=0.6)
        ax.set_yticks([0, 1], ["int8 (QDQ)", "kept in float"])
        ax.invert_yaxis()
        ax.set_xlabel("nodes")
        ax.set_title("quant placement", fontsize=11)
        for y, v in enumerate((quantized, len(reasons))):
            ax.text(v, y, f" {v}", va="center", fontsize=9)
        out.append(charts.img(fig, "quant placement: int8 vs float nodes"))
    if reasons:
        out.append(_table(["node kept in float", "why"], [[f"<td>{_e(n)}</td>", f"<td>{_e(w)}</td>"]
                                                          for n, w in reasons.items()]))
    else:
        out.append("<p>The placement records no node kept in float (float_head, excluded and skipped are empty)."
                   "</p>")
    sens = mixed.get("most_sensitive")
    if isinstance(sens, dict) and sens and all(_is_num(v) for v in sens.values()):
        out.append(charts.bars(list(sens), list(sens.values()), "quant: most sensitive layers (output drop)",
                               "drop when quantized alone", highlight=set(mixed.get("float_layers") or []),
                               highlight_label="kept in float"))
    for key, data in (("mixed_precision", mixed), ("accuracy_control", control)):
        if data:
            out.append(f"<h4>{_e(key)}</h4>" + _kv_table(data, f"passes.{i}.stats.{key}"))
    return "\n".join(out)
