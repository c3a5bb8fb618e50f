"""Task metrics: what a user's model is for, measured on the user's labeled evaluation data.

A metric is a function ``fn(outputs, labels) -> float`` (higher is better):

- ``outputs``: the model's outputs over all evaluation samples, ``{output name: array}`` stacked along axis 0 (one
  row per sample); an output whose per-run shape varies (detections after NMS) comes as a list of per-run arrays;
- ``labels``: the evaluation file's arrays that are not model inputs (``{"label": [N]}``, ``{"boxes": ...}``).

``--max-drop`` is in the metric's own units; the built-in metrics return percent, so ``--max-drop 1`` is one point.
Metrics are named as ``file.py:fn``, ``module:fn``, a built-in name (``top1``, ``top5``) or an entry point of the
group ``compress_graph.metrics``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from compress_graph.ir.errors import UsageError
from compress_graph.ir.model import Model

MetricFn = Callable[[dict[str, Any], dict[str, np.ndarray]], float]


# --------------------------------------------------------------------------------------------- built-in metrics
def _labels_1d(labels: dict[str, np.ndarray]) -> np.ndarray:
    if "label" in labels:
        return np.asarray(labels["label"]).reshape(-1)
    if len(labels) == 1:
        return np.asarray(next(iter(labels.values()))).reshape(-1)
    raise ValueError(f"expected a 'label' array in the evaluation data; has {sorted(labels)}")


def _logits(outputs: dict[str, Any]) -> np.ndarray:
    first = next(iter(outputs.values()))
    if isinstance(first, list):
        first = np.concatenate(first)
    return np.asarray(first).reshape(len(first), -1)


def top1(outputs: dict[str, Any], labels: dict[str, np.ndarray]) -> float:
    """Percent of samples whose largest score (first output, [N, classes]) is the label."""
    logits, y = _logits(outputs), _labels_1d(labels)
    return float(100.0 * np.mean(logits.argmax(1) == y))


def top5(outputs: dict[str, Any], labels: dict[str, np.ndarray]) -> float:
    """Percent of samples whose label is among the 5 largest scores of the first output."""
    logits, y = _logits(outputs), _labels_1d(labels)
    best = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    return float(100.0 * np.mean((best == y[:, None]).any(1)))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [n, 4] with every box in ``b`` [m, 4], boxes as x1, y1, x2, y2."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def detection_f1(predicted: list[np.ndarray], truth: list[np.ndarray], iou: float = 0.5) -> float:
    """F1 (percent) of detections at IoU ``iou``, one-to-one greedy matching by IoU, per image.

    ``predicted`` / ``truth``: per image, boxes [n, 4] (x1, y1, x2, y2) already decoded and thresholded — for an
    SSD/YOLO-style head, decode (anchors, score threshold, NMS) in the plugin metric and call this."""
    tp = fp = fn = 0
    for pred, ref in zip(predicted, truth, strict=True):
        pred, ref = np.asarray(pred).reshape(-1, 4), np.asarray(ref).reshape(-1, 4)
        matched = 0
        if len(pred) and len(ref):
            m = iou_matrix(pred, ref)
            used_p, used_r = set(), set()
            for flat in np.argsort(-m, axis=None, kind="stable"):
                i, j = divmod(int(flat), m.shape[1])
                if m[i, j] < iou:
                    break
                if i in used_p or j in used_r:
                    continue
                used_p.add(i)
                used_r.add(j)
            matched = len(used_p)
        tp += matched
        fp += len(pred) - matched
        fn += len(ref) - matched
    return 100.0 if tp + fp + fn == 0 else float(100.0 * 2 * tp / (2 * tp + fp + fn))


BUILTIN: dict[str, MetricFn] = {"top1": top1, "top5": top5}
ENTRY_POINT_GROUP = "compress_graph.metrics"


# --------------------------------------------------------------------------------------------- loading
@dataclass
class Metric:
    name: str
    fn: MetricFn


def load_metric(spec: str) -> Metric:
    """A built-in name, an entry point of ``compress_graph.metrics``, ``file.py:fn`` or ``module:fn``."""
    if spec in BUILTIN:
        return Metric(spec, BUILTIN[spec])
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            try:
                return Metric(spec, _callable(ep.load(), spec))
            except UsageError:
                raise
            except Exception as exc:
                raise UsageError(f"metric '{spec}' failed to load: {type(exc).__name__}: {exc}") from None
    target, sep, attr = spec.rpartition(":")
    if not sep or not attr:
        raise UsageError(f"metric '{spec}': expected a built-in ({', '.join(BUILTIN)}), an entry point of "
                         f"{ENTRY_POINT_GROUP}, file.py:function or module:function")
    from compress_graph.passes.registry import import_source

    module = import_source(target, "metric", "compress_graph_metric_")
    if not hasattr(module, attr):
        raise UsageError(f"metric '{spec}': '{target}' has no function '{attr}'")
    return Metric(spec, _callable(getattr(module, attr), spec))


def _callable(obj: Any, spec: str) -> MetricFn:
    if not callable(obj):
        raise UsageError(f"metric '{spec}' is not a function")
    return obj


# --------------------------------------------------------------------------------------------- evaluation
class Evaluator:
    """Scores models with a metric on labeled evaluation data (a .npz: model inputs by name + label arrays).

    Models run with the ONNX semantics (``ir.runtime.session``: quantized graphs op by op), so the score is the same
    on every build machine."""

    def __init__(self, metric: Metric, path: str | Path | dict[str, np.ndarray], model: Model,
                 batch: int | None = None):
        """``path``: the .npz, or the arrays themselves (inputs by name and labels)."""
        from compress_graph.passes.data import CalibData, input_specs

        if isinstance(path, dict):
            arrays, path = dict(path), "memory"
        else:
            p = Path(path)
            if not p.is_file() or p.suffix != ".npz":
                raise UsageError(f"evaluation data '{path}': expected an .npz file with the model's inputs and "
                                 "labels")
            try:
                npz = np.load(p)
                arrays = {k: npz[k] for k in npz.files}
            except Exception as exc:
                raise UsageError(f"evaluation data '{path}' is not a readable .npz: {exc}") from None
        names = [n for n, _, _ in input_specs(model)]
        self.labels = {k: v for k, v in arrays.items() if k not in names}
        self.data = CalibData.for_model({k: v for k, v in arrays.items() if k in names}, model, source=str(path))
        if batch:
            self.data.batch = batch
        self.metric = metric
        self.path = str(path)
        self.evaluations = 0

    def outputs(self, model: Model) -> dict[str, Any]:
        from compress_graph.ir import runtime

        sess = runtime.session(model)
        runs = [runtime.run(sess, feed) for feed in self.data.batches()]
        if not runs:
            raise UsageError(f"evaluation data '{self.path}' holds fewer samples than one batch")
        out: dict[str, Any] = {}
        for name in runs[0]:
            parts = [np.asarray(r[name]) for r in runs]
            same = all(p.ndim >= 1 and p.shape[1:] == parts[0].shape[1:] for p in parts)
            out[name] = np.concatenate(parts) if same else parts
        return out

    def score(self, model: Model) -> float:
        self.evaluations += 1
        try:
            value = self.metric.fn(self.outputs(model), self.labels)
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(f"metric '{self.metric.name}' failed: {type(exc).__name__}: {exc}") from None
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"metric '{self.metric.name}' returned {type(value).__name__}, not a number") from None
        if not np.isfinite(value):
            raise UsageError(f"metric '{self.metric.name}' returned {value}")
        return value


class AccuracyBudget:
    """``--max-drop``: the metric of the original model, and whether a compressed one stays within the drop."""

    def __init__(self, evaluator: Evaluator, original: Model, max_drop: float | None):
        self.evaluator = evaluator
        self.max_drop = max_drop
        self.baseline = evaluator.score(original)
        # the drop the pass now running may reach: the pipeline gives each budget-aware pass an even share of what
        # the passes before it left, so the first one does not spend the whole budget
        self.limit = max_drop

    @property
    def name(self) -> str:
        return self.evaluator.metric.name

    def drop(self, model: Model) -> float:
        return self.baseline - self.evaluator.score(model)

    def within(self, model: Model) -> tuple[bool, float]:
        d = self.drop(model)
        return (self.limit is None or d <= self.limit + 1e-9), d
