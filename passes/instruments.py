"""Instruments run around every pass: timing, verification against the original model, IR dumps, reproducers."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from compress_graph.ir import runtime
from compress_graph.ir.io import save
from compress_graph.ir.model import Model
from compress_graph.passes.base import Pass, PassContext


class Instrument:
    def before_pass(self, index: int, p: Pass, model: Model, record: dict) -> None:
        pass

    def after_pass(self, index: int, p: Pass, model: Model, record: dict) -> None:
        pass

    def on_failure(self, index: int, p: Pass, model: Model, record: dict, exc: BaseException) -> None:
        pass


class Deadline(Instrument):
    """Per-pass time limit (SIGALRM; main thread only): a pass over ``seconds`` raises TimeoutExceeded."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def before_pass(self, index, p, model, record):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return

        def expire(signum, frame):
            from compress_graph.ir.errors import TimeoutExceeded

            raise TimeoutExceeded(f"pass '{p.name}' exceeded --pass-timeout {self.seconds:g}s")

        self._previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def _disarm(self):
        import signal

        if hasattr(self, "_previous"):
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)
            del self._previous

    def after_pass(self, index, p, model, record):
        self._disarm()

    def on_failure(self, index, p, model, record, exc):
        self._disarm()


class CostTracker(Instrument):
    """Params / MACs / bytes after every modifying pass (what the per-pass table shows)."""

    def after_pass(self, index, p, model, record):
        from compress_graph.ir.cost import model_cost

        if record.get("modified"):
            record["after"] = model_cost(model).summary()


class Timing(Instrument):
    def before_pass(self, index, p, model, record):
        self._start = time.perf_counter()

    def after_pass(self, index, p, model, record):
        record["time_s"] = round(time.perf_counter() - self._start, 4)

    def on_failure(self, index, p, model, record, exc):
        self.after_pass(index, p, model, record)


def compare_outputs(reference: list[dict[str, np.ndarray]], actual: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """max-abs error, cosine similarity and (for [N, C] classifier-like outputs) top-1 agreement, per output."""
    metrics: dict[str, Any] = {}
    with np.errstate(all="ignore"):  # NaN/Inf in a model's outputs are reported, not warned about
        for name in reference[0]:
            metrics[name] = _compare_one(name, reference, actual)
    return metrics


def _compare_one(name: str, reference: list[dict], actual: list[dict]) -> dict[str, Any]:
    first = np.asarray(reference[0][name])
    if not (np.issubdtype(first.dtype, np.number) or first.dtype == np.bool_):
        same = all(np.array_equal(r[name], a[name]) for r, a in zip(reference, actual))
        return {"max_abs": 0.0 if same else float("inf"), "max_rel": 0.0 if same else float("inf"),
                "cosine": 1.0 if same else 0.0}
    ref = np.concatenate([np.asarray(r[name], np.float64).reshape(len(r[name]), -1) for r in reference])
    got = np.concatenate([np.asarray(a[name], np.float64).reshape(len(a[name]), -1) for a in actual])
    if ref.shape != got.shape:
        return {"error": f"shape changed {ref.shape} -> {got.shape}"}
    diff = np.abs(ref - got)
    denom = np.linalg.norm(ref) * np.linalg.norm(got)
    cos = float(np.dot(ref.ravel(), got.ravel()) / denom) if denom > 0 else float(np.allclose(ref, got))
    m = {
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "max_rel": float(diff.max() / max(np.abs(ref).max(), 1e-12)) if diff.size else 0.0,
        "cosine": round(cos, 8),
    }
    ref_norm = float(np.linalg.norm(ref))
    # each output on its own scale: a detector's small score output next to its large box regressors
    m["normalized_error"] = round(float(np.linalg.norm(ref - got)) / ref_norm, 8) if ref_norm > 0 else \
        (0.0 if not diff.size or diff.max() == 0 else float("inf"))
    if first.ndim == 2 and first.shape[1] > 1:
        m["top1_agreement"] = float(np.mean(ref.argmax(1) == got.argmax(1)))
    if ref.size and ref.min() >= 0.0 and ref.max() <= 1.0 and not np.all(np.isin(ref, (0.0, 1.0))):
        # probabilities (sigmoid / softmax scores): which side of the detection threshold each one is on
        m["score_agreement"] = float(np.mean((ref > SCORE_THRESHOLD) == (got > SCORE_THRESHOLD)))
    return m


#: the threshold score outputs (values in [0, 1]) are compared at: which scores pass it before and after
SCORE_THRESHOLD = 0.5


def worst(metrics: dict[str, Any]) -> dict[str, float]:
    """The worst value of each metric over all outputs."""
    out: dict[str, float] = {}
    for m in metrics.values():
        if "error" in m:
            out["error"] = 1.0
            continue
        out["max_abs"] = max(out.get("max_abs", 0.0), m["max_abs"])
        out["max_rel"] = max(out.get("max_rel", 0.0), m["max_rel"])
        out["cosine"] = min(out.get("cosine", 1.0), m["cosine"])
        if "top1_agreement" in m:
            out["top1_agreement"] = min(out.get("top1_agreement", 1.0), m["top1_agreement"])
        if "normalized_error" in m:
            out["normalized_error"] = max(out.get("normalized_error", 0.0), m["normalized_error"])
        if "score_agreement" in m:
            out["score_agreement"] = min(out.get("score_agreement", 1.0), m["score_agreement"])
    return out


#: Below this cosine between onnxruntime's fused int8 kernels and the QDQ semantics (or when they add more error
#: than quantization itself), the run warns.
FUSED_WARN_COSINE = 0.999


class Verify(Instrument):
    """After each modifying pass: onnx.checker + onnxruntime run vs. the original model on sample inputs."""

    def __init__(self, original: Model, ctx: PassContext, samples: int = 8):
        import onnx
        from compress_graph.passes.data import CalibData, DynamicShapeError

        self._onnx = onnx
        self._ctx = ctx
        self._fused_warned = False
        self.skipped: str | None = None
        data = ctx.calib_data(None, original)
        if data is None:
            try:
                shapes = ctx.input_shapes.shapes if ctx.input_shapes is not None else None
                data = CalibData.random(original, count=samples, seed=ctx.seed, shapes=shapes)
            except DynamicShapeError as exc:
                self.skipped = f"verification skipped: {exc}"
                ctx.warn(self.skipped)
                return
        self.feeds = data.samples(samples)
        sess = runtime.session(original)
        self.reference = [runtime.run(sess, f) for f in self.feeds]
        self.source = data.source

    def after_pass(self, index, p, model, record):
        if not record.get("modified"):
            return
        if self.skipped:
            record["verify"] = {"skipped": self.skipped}
            return
        large = model.is_large()
        # above 2 GiB the checker sees the weights as typed inputs (it cannot take them in one protobuf)
        proto = model.export_split(as_inputs=True)[0] if large else model.to_onnx()
        try:
            self._onnx.checker.check_model(proto)
        except Exception as exc:
            record["verify"] = {"checker": f"failed: {str(exc).splitlines()[0]}"}
            return
        sess = runtime.session(model if large else proto)
        names = [o.name for o in sess.get_outputs()]
        actual = [runtime.run(sess, f, names) for f in self.feeds]
        metrics = compare_outputs(self.reference, actual)
        record["verify"] = {"checker": "ok", "samples": len(self.feeds), "data": self.source,
                            "outputs": metrics, "worst": worst(metrics)}
        if not large and runtime.is_quantized(proto):
            record["verify"]["onnxruntime_fused"] = self._fused_report(proto, actual, names,
                                                                       record["verify"]["worst"].get("max_abs", 0.0))

    def _fused_report(self, proto, reference: list[dict], names: list[str], own_error: float) -> dict:
        """What onnxruntime's fused integer kernels on *this* CPU make of the quantized model, against its QDQ
        semantics (reported only: these kernels differ between CPUs, so nothing is decided on them)."""
        try:
            sess = runtime.session(proto, fused=True)
            fused = [runtime.run(sess, f, names) for f in self.feeds]
        except Exception as exc:  # noqa: BLE001 - informational; the model itself already ran
            return {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        w = worst(compare_outputs(reference, fused))
        bad = w.get("cosine", 1.0) < FUSED_WARN_COSINE or w.get("max_abs", 0.0) > own_error
        if bad and not self._fused_warned:
            self._fused_warned = True
            self._ctx.warn(f"onnxruntime's fused int8 kernels on this CPU deviate from the quantized model's QDQ "
                           f"semantics (cosine {w.get('cosine', 1.0):.4f}, max|d| {w.get('max_abs', 0.0):.3g}; "
                           f"quantization itself moved the outputs by max|d| {own_error:.3g}): onnxruntime on this "
                           "machine runs the model less accurately than it is (x86 without VNNI saturates int16 pair "
                           "sums); the QDQ semantics stay the reference")
        return {"max_abs_vs_qdq": w.get("max_abs", 0.0), "cosine_vs_qdq": w.get("cosine", 1.0),
                "note": "onnxruntime's fused int8 kernels on this CPU (x86 without VNNI saturates int16 pair sums); "
                        "reported only, the QDQ semantics are the reference"}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60]


class DumpIR(Instrument):
    """Write the model after every pass as ``NNN_<pass>.onnx``."""

    def __init__(self, folder: Path):
        self.folder = folder

    def after_pass(self, index, p, model, record):
        path = self.folder / f"{index + 1:03d}_{_slug(p.name)}.onnx"
        save(model, path)
        record["dump"] = str(path)


class Reproducer(Instrument):
    """On a crash, save the pipeline text and the input model so the failure can be replayed."""

    def __init__(self, original: Model, folder: Path | None, passes: list[Pass]):
        self.original = original
        self.folder = folder
        self.passes = passes

    def on_failure(self, index, p, model, record, exc):
        from compress_graph.ir.errors import CompressGraphError

        if self.folder is None or isinstance(exc, CompressGraphError):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        save(self.original, self.folder / "input.onnx")
        text = ",".join(q.text() for q in self.passes[: index + 1])
        info = {"pipeline": text, "failed_pass": p.text(), "failed_pass_index": index,
                "error": f"{type(exc).__name__}: {exc}",
                "replay": f"compress-graph {self.folder / 'input.onnx'} --passes '{text}' -o OUT"}
        (self.folder / "reproducer.json").write_text(json.dumps(info, indent=2) + "\n")
        record["reproducer"] = str(self.folder)
