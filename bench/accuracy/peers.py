"""Peer baselines on the same models, data and split: onnxruntime's quantize_static, data-free variants.

quantize_static is run the way a user would: QDQ format, per-channel int8 weights, int8 activations,
default op coverage (graph outputs included). Its one adjustment is documented: models below opset 13 are
converted with onnx.version_converter first, because per-channel DequantizeLinear needs `axis` (opset 13)
and onnxruntime otherwise writes a graph it refuses to load.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import onnx

ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
# The option that turns a data-aware pass into its data-free / no-reconstruction baseline.
NO_DATA_OPTION = {"prune": "reconstruct=false", "lowrank": "data_aware=false"}


class _Reader:
    """onnxruntime CalibrationDataReader over an array of samples, one sample per batch.

    Supports `set_range`, which quantize_static's CalibStridedMinMax option uses to calibrate in chunks.
    """

    def __init__(self, input_name: str, samples: np.ndarray):
        self.input_name, self.samples = input_name, samples
        self.pos, self.end = 0, len(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pos, self.end = start_index, min(end_index, len(self.samples))

    def get_next(self) -> dict | None:
        if self.pos >= self.end:
            return None
        self.pos += 1
        return {self.input_name: self.samples[self.pos - 1 : self.pos]}

    def rewind(self) -> None:
        self.pos, self.end = 0, len(self.samples)


def calib_stride(n_samples: int, act_bytes: int | None, budget_bytes: float) -> int | None:
    """Chunk size for quantize_static's calibration so its stored activations fit the memory budget.

    onnxruntime's calibrators keep every intermediate tensor of every sample until the end (a 800x608
    layout detector needs ~1 GB per sample); CalibStridedMinMax collects and merges chunk by chunk.
    The stride must divide the sample count. None: no chunking needed (or activation size unknown).
    """
    per_sample = 1.5 * act_bytes if act_bytes else 0  # measured peak: about 1.5x the activation bytes
    if not per_sample or n_samples * per_sample <= budget_bytes:
        return None
    fit = max(1, int(budget_bytes // per_sample))
    return max(d for d in range(1, min(fit, n_samples) + 1) if n_samples % d == 0)


def default_opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def ort_quantize(src: Path, dst: Path, input_name: str, calib: np.ndarray, method: str,
                 stride: int | None = None) -> str:
    """Write onnxruntime's QDQ per-channel int8 model of `src` to `dst`; returns a note for the table."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(src))
    note = ""
    opset = default_opset(model)
    if opset < 13:
        model = onnx.version_converter.convert_version(model, 13)
        note = f"opset {opset}->13 converted for per-channel"
    staged = dst.with_name(dst.stem + ".fp32.onnx")
    onnx.save(model, str(staged))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static logs one warning per BatchNormalization weight
    try:
        quantize_static(
            str(staged), str(dst), _Reader(input_name, calib),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, ORT_METHODS[method]),
            extra_options={"CalibStridedMinMax": stride} if stride else {},
        )
    finally:
        root.setLevel(level)
        staged.unlink(missing_ok=True)
    if stride:
        note = "; ".join(filter(None, [note, f"calibrated in chunks of {stride} (memory)"]))
    return note


def split_pipeline(text: str) -> list[str]:
    """Split a pipeline text at top-level commas (commas inside {...} belong to options)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def with_option(text: str, passes: tuple[str, ...], option: str) -> str:
    """The pipeline text with `option` (e.g. "reconstruct=false") added to every pass named in `passes`."""
    out = []
    for part in split_pipeline(text):
        m = re.fullmatch(r"([\w-]+)\s*(?:\{(.*)\})?", part)
        if m and m.group(1) in passes:
            opts = [o for o in (m.group(2) or "").split(",") if o.strip()] + [option]
            part = f"{m.group(1)}{{{','.join(opts)}}}"
        out.append(part)
    return ",".join(out)


def default_peer_pipelines(text: str) -> list[tuple[str, str]]:
    """(label, pipeline) rows for the prune/lowrank baselines: the same pipeline without using data."""
    names = {m.group(0) for p in split_pipeline(text) if (m := re.match(r"[\w-]+", p))}
    peer = text
    for name in sorted(names & set(NO_DATA_OPTION)):
        peer = with_option(peer, (name,), NO_DATA_OPTION[name])
    return [("data-free baseline", peer)] if peer != text else []
