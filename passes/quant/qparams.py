"""Scale / zero-point arithmetic: activation ranges to (scale, zero point), weights to per-channel int8/int4.

Kept free of graph code so the numbers can be checked against hand-computed values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Smallest scale written: a zero-range tensor or channel still gets a valid, positive scale.
MIN_SCALE = 1e-12


@dataclass(frozen=True)
class QParams:
    """Per-tensor activation quantization: ``x_q = clip(round(x / scale) + zero_point, qmin, qmax)``."""

    scale: float
    zero_point: int
    dtype: str  # "uint8" | "int8"

    @property
    def qmin(self) -> int:
        return 0 if self.dtype == "uint8" else -128

    @property
    def qmax(self) -> int:
        return 255 if self.dtype == "uint8" else 127

    def np_dtype(self) -> type:
        return np.uint8 if self.dtype == "uint8" else np.int8

    def fake(self, x: np.ndarray) -> np.ndarray:
        """Quantize-dequantize ``x`` (what the QDQ pair computes)."""
        q = np.clip(np.round(x / self.scale) + self.zero_point, self.qmin, self.qmax)
        return ((q - self.zero_point) * self.scale).astype(np.float32)

    def range(self) -> tuple[float, float]:
        return (self.qmin - self.zero_point) * self.scale, (self.qmax - self.zero_point) * self.scale


def activation_qparams(lo: float, hi: float, dtype: str = "uint8") -> QParams:
    """(scale, zero point) for the range [lo, hi]; the range is widened to contain 0 so zero is exact.

    ``uint8``: asymmetric, ``scale = (hi - lo) / 255``, ``zp = round(-lo / scale)``.
    ``int8``: symmetric, ``scale = max(|lo|, |hi|) / 127``, ``zp = 0``.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError(f"non-finite activation range [{lo}, {hi}]")
    if dtype == "int8":
        scale = max(abs(lo), abs(hi)) / 127.0
        return QParams(float(np.float32(max(scale, MIN_SCALE))), 0, "int8")
    if dtype != "uint8":
        raise ValueError(f"unknown activation dtype {dtype}")
    scale = (hi - lo) / 255.0
    if scale <= MIN_SCALE:
        return QParams(1.0, 0, "uint8")
    scale = float(np.float32(scale))
    zp = int(np.clip(np.round(-lo / scale), 0, 255))
    return QParams(scale, zp, "uint8")


def weight_scales(w: np.ndarray, axis: int | None, bits: int = 8) -> np.ndarray:
    """Symmetric scales ``max|w| / (2^(bits-1) - 1)`` per slice along ``axis`` (per-tensor when ``axis`` is None)."""
    qmax = 2 ** (bits - 1) - 1
    w = np.asarray(w)
    if w.dtype.kind != "f":
        w = w.astype(np.float64)
    # |w| and max are exact in the weight's own float type: no float64 copy of a large weight
    if axis is None:
        amax = np.array(np.abs(w).max() if w.size else 0.0)
    else:
        amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
    scale = amax.astype(np.float64) / qmax
    # an all-zero channel: any positive scale represents it exactly
    scale = np.where(scale > MIN_SCALE, scale, 1.0)
    return scale.astype(np.float32)


def quantize_weight(w: np.ndarray, scale: np.ndarray, axis: int | None, bits: int = 8) -> np.ndarray:
    """Round ``w / scale`` to signed integers in [-(2^(b-1)-1), 2^(b-1)-1] (narrow range: symmetric around 0)."""
    qmax = 2 ** (bits - 1) - 1
    s = np.asarray(scale, dtype=np.float64)
    if axis is not None and s.ndim == 1:
        shape = [1] * w.ndim
        shape[axis] = -1
        s = s.reshape(shape)
    w = np.asarray(w)
    out = np.empty(w.shape, dtype=np.int8)
    if w.ndim == 0:
        return np.clip(np.round(np.float64(w) / s), -qmax, qmax).astype(np.int8)
    rows = max(1, (1 << 26) // max(1, 8 * w[0].size))  # float64 work in blocks of ~64 MB
    for start in range(0, w.shape[0], rows):
        sl = slice(start, start + rows)
        ss = s[sl] if (s.ndim == w.ndim and s.shape[0] == w.shape[0] and w.shape[0] > 1) else s
        out[sl] = np.clip(np.round(np.asarray(w[sl], dtype=np.float64) / ss), -qmax, qmax)
    return out


def dequantize_weight(q: np.ndarray, scale: np.ndarray, axis: int | None) -> np.ndarray:
    s = np.asarray(scale, dtype=np.float32)
    if axis is not None and s.ndim == 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        s = s.reshape(shape)
    return q.astype(np.float32) * s


def quantize_bias(b: np.ndarray, input_scale: float, w_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias with scale ``input_scale * w_scale`` (what an integer conv kernel adds to its accumulator)."""
    scale = (np.float32(input_scale) * np.asarray(w_scale, dtype=np.float32)).astype(np.float32)
    scale = np.broadcast_to(scale, np.shape(b)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(MIN_SCALE)).astype(np.float32)
    q = np.round(np.asarray(b, dtype=np.float64) / scale)
    q = np.clip(q, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    return q, scale
