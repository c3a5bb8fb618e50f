"""Report pieces shared by the pipeline and the front end: cost summaries, tool versions and the per-pass table."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from compress_graph.ir.cost import model_cost
from compress_graph.ir.model import Model


def cost_summary(model: Model) -> dict[str, int]:
    return model_cost(model).summary()


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for key, dist in (("compress-graph", "compress-graph"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                      ("onnx-graphsurgeon", "onnx_graphsurgeon"), ("tvm", "apache-tvm"), ("numpy", "numpy")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = None
    return out


def fmt_count(n: int | None) -> str:
    """12345678 -> '12.35M' (the stderr table and `inspect`)."""
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def verify_cell(record: dict) -> str:
    """One pass's verification in a table cell."""
    v = record.get("verify")
    if not v:
        return "-"
    if "skipped" in v:
        return "skipped"
    if v.get("checker") != "ok":
        return str(v.get("checker"))
    w = v.get("worst", {})
    cell = f"cos={w.get('cosine', 1.0):.6f} max|d|={w.get('max_abs', 0.0):.3g}"
    if "top1_agreement" in w:
        cell += f" top1={w['top1_agreement']:.3f}"
    if "score_agreement" in w:
        cell += f" score@0.5={w['score_agreement']:.3f}"
    return cell


def format_table(report: dict) -> str:
    """The per-pass table the CLI prints on stderr, from a pipeline report."""
    acc = report.get("accuracy")
    rows = [("pass", "time", "params", "MACs", "bytes", "verify") + ((acc["metric"],) if acc else ())]
    b = report["before"]
    rows.append(("(input)", "", fmt_count(b["params"]), fmt_count(b["macs"]), fmt_count(b["bytes"]), "")
                + ((f"{acc['original']:.4g}",) if acc else ()))
    for rec in report["passes"]:
        a = rec.get("after", {})
        text = rec.get("accuracy_control", {}).get("applied", rec["text"])
        m = rec.get("metric")
        rows.append((text, f"{rec.get('time_s', 0):.2f}s", fmt_count(a.get("params")), fmt_count(a.get("macs")),
                     fmt_count(a.get("bytes")), verify_cell(rec))
                    + ((f"{m['score']:.4g} ({-m['drop']:+.3g})" if m else "",) if acc else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
