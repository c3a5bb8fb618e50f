"""Table cells and small HTML pieces of the report page (report_html.py, report_target.py): every number cell
carries its report.json path (``data-key``) and exact value (``data-value``), which the tests compare."""

from __future__ import annotations

import html
import json
from typing import Any


def e(value: Any) -> str:
    return html.escape(str(value))


def num(value: Any) -> str:
    """A recorded number as shown: integers with thousands separators, floats to 6 significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return e(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.6g}"


def cell(value: Any, key: str | None = None) -> str:
    """A table cell; numbers carry ``data-key`` (their path in report.json) and ``data-value`` (the exact value)."""
    if value is None:
        return '<td class="none">-</td>'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        attrs = f' data-key="{e(key)}" data-value="{e(json.dumps(value))}"' if key else ""
        return f'<td class="n"{attrs}>{num(value)}</td>'
    return f"<td>{e(value)}</td>"


def table(header: list[str] | None, rows: list[list[str]], cls: str = "") -> str:
    """``rows`` hold ready cells (``_cell``/``<td>``); header entries are escaped here (None: no header row)."""
    head = "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    return f'<table{f" class={cls!r}" if cls else ""}>{head}<tbody>{body}</tbody></table>'


def none(text: str) -> str:
    return f'<p class="none">{e(text)}</p>'


def kv_table(items: dict[str, Any], key_prefix: str) -> str:
    """A stats dict as a two-column table: numbers as cells, flat dicts/lists as ``a: 1, b: 2``, deeper values as
    their JSON."""
    rows = []
    for k, v in items.items():
        if isinstance(v, (dict, list)) and not v:
            shown = "<td>(none)</td>"
        elif isinstance(v, dict) and all(scalar(x) for x in v.values()):
            shown = "<td>" + e(", ".join(f"{a}: {b}" for a, b in v.items())) + "</td>"
        elif isinstance(v, list) and all(scalar(x) for x in v):
            shown = "<td>" + e(", ".join(map(str, v))) + "</td>"
        elif scalar(v):
            shown = cell(v, f"{key_prefix}.{k}")
        else:
            shown = f"<td><code>{e(json.dumps(v, default=str))}</code></td>"
        rows.append([f"<td>{e(k)}</td>", shown])
    return table(["stat", "value"], rows) if rows else ""


def items(v: Any) -> list:
    """A recorded list, or nothing (a hand-edited or foreign report.json may hold anything)."""
    return v if isinstance(v, list) else []


def scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def thousands(value: Any) -> str:
    return f"{value:,}" if is_num(value) else str(value)


def change(before: Any, after: Any) -> str:
    if not (is_num(before) and is_num(after)) or not before:
        return '<td class="none">-</td>'
    return f'<td class="n">{(after - before) / before * 100:+.1f} %</td>'


def share(value: Any) -> str:
    return f'<td class="n">{value * 100:.1f} %</td>' if is_num(value) else '<td class="none">-</td>'
