"""Scales and zero points against hand-computed values, for every calibration method and the weight/bias rules."""

from __future__ import annotations

import numpy as np
import pytest
from compress_graph.passes.quant import calibrate as C
from compress_graph.passes.quant.qparams import (
    activation_qparams,
    quantize_bias,
    quantize_weight,
    weight_scales,
)


def observed(x, method="percentile", batches=4):
    ob = C.Observer(method != "minmax")
    for part in np.array_split(np.asarray(x, np.float32), batches):
        ob.update(part)
    return ob


def test_activation_qparams_by_hand():
    qp = activation_qparams(-1.0, 3.0, "uint8")
    assert qp.scale == pytest.approx(4 / 255) and qp.zero_point == 64  # round(1 / (4/255)) = round(63.75)
    qp = activation_qparams(0.5, 6.0, "uint8")  # the range is widened to hold 0 exactly
    assert qp.scale == pytest.approx(6 / 255) and qp.zero_point == 0
    qp = activation_qparams(-2.0, 3.0, "int8")
    assert qp.scale == pytest.approx(3 / 127) and qp.zero_point == 0
    assert activation_qparams(0.0, 0.0).scale > 0


def test_weight_per_channel_symmetric_and_bias_int32():
    w = np.array([[[[0.5, -1.27]]], [[[-0.03, 0.01]]]], np.float32)  # 2 output channels
    s = weight_scales(w, 0)
    np.testing.assert_allclose(s, [1.27 / 127, 0.03 / 127], rtol=1e-6)
    q = quantize_weight(w, s, 0)
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q.ravel(), [50, -127, -127, 42])  # 0.5/0.01 = 50; 0.01/(0.03/127) = 42.3
    # all-zero channel: valid scale, zeros
    s0 = weight_scales(np.zeros((2, 3)), 0)
    assert np.all(s0 > 0)
    b, bs = quantize_bias(np.array([0.1, -0.2], np.float32), 0.05, s)
    np.testing.assert_allclose(bs, 0.05 * s, rtol=1e-6)
    np.testing.assert_array_equal(b, np.round(np.array([0.1, -0.2]) / (0.05 * s)).astype(np.int32))
    assert b.dtype == np.int32


def test_minmax():
    x = np.concatenate([np.linspace(-1, 2, 1000), [5.0]])
    ob = observed(x, "minmax")
    assert ob.range("minmax") == (pytest.approx(-1.0), pytest.approx(5.0))


def test_histogram_streams_exactly_when_the_range_grows():
    rng = np.random.default_rng(0)
    parts = [rng.normal(0, 0.01, 5000), rng.normal(0, 1, 5000), rng.normal(0, 50, 5000)]
    h = C.Histogram()
    for p in parts:
        h.add(p.astype(np.float32))
    allx = np.concatenate(parts)
    assert h.counts.sum() == allx.size and h.counts.size <= C.MAX_BINS
    for q in (0.01, 0.5, 0.99):
        assert h.quantile(q) == pytest.approx(np.quantile(allx, q), abs=2 * h.width)


def test_percentile_matches_numpy():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0, 1, 100_000), [40.0, 50.0]]).astype(np.float32)
    ob = observed(x)
    lo, hi = ob.range("percentile", percentile=99.9)
    assert lo == pytest.approx(x.min())  # a side that never goes below 0 is not clipped
    assert hi == pytest.approx(np.percentile(x, 99.9), abs=2 * ob.hist.width)
    y = rng.normal(0, 1, 200_000).astype(np.float32)
    lo, hi = observed(y).range("percentile", percentile=99.0)
    assert lo == pytest.approx(np.percentile(y, 1.0), abs=0.01)
    assert hi == pytest.approx(np.percentile(y, 99.0), abs=0.01)


def test_entropy_clips_a_rare_outlier():
    rng = np.random.default_rng(2)
    x = np.concatenate([np.abs(rng.normal(0, 1, 200_000)), np.full(5, 30.0)]).astype(np.float32)
    lo, hi = observed(x, "entropy").range("entropy")
    assert lo == pytest.approx(x.min())
    assert 2.5 <= hi <= 8.0  # the bulk (|N(0, 1)|) is kept, the outliers at 30 are clipped


def test_kl_threshold_by_hand():
    # 256 levels over 256 non-empty bins: nothing to merge, threshold = everything
    counts = np.ones(256, np.int64)
    assert C.kl_threshold(counts, 0.5, 256) == pytest.approx(128.0)


def _raw_mse(x, lo, hi):
    qp = activation_qparams(lo, hi, "uint8")
    return float(np.mean((x - qp.fake(x)) ** 2))


def test_mse_is_at_least_as_good_as_a_brute_force_search():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.laplace(0, 1, 100_000), [25.0, -30.0]]).astype(np.float32)
    lo, hi = observed(x, "mse").range("mse")
    alphas = np.linspace(0.01, 1.0, 100)
    brute = min(_raw_mse(x, a * x.min(), a * x.max()) for a in alphas)
    assert _raw_mse(x, lo, hi) <= brute * 1.02
    assert _raw_mse(x, lo, hi) < 0.9 * _raw_mse(x, x.min(), x.max())


@pytest.mark.parametrize("method", C.METHODS)
def test_every_method_stays_inside_the_observed_range(method):
    rng = np.random.default_rng(4)
    x = rng.normal(1.0, 2.0, 20_000).astype(np.float32)
    lo, hi = observed(x, method).range(method)
    assert x.min() - 1e-6 <= lo <= hi <= x.max() + 1e-6
