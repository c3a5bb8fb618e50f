"""Input statistics for data-aware factorization: the second moment of each layer's input patches.

For a Gemm/MatMul the "patch" is the input row; for a Conv it is the im2col patch ``(c, i, j)`` at an output
position, built only at a random subset of positions so memory and time stay bounded whatever the image size.
The uncentered second moment is the right statistic: the layer's output error on an input ``x`` is
``(W - W') x``, so its expected energy is ``tr((W - W') E[x x^T] (W - W')^T)``, bias included.
"""

from __future__ import annotations

import numpy as np
from compress_graph.ir import runtime
from compress_graph.ir.model import Model
from compress_graph.passes.lowrank.layers import Layer


def patches(layer: Layer, x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``count`` input patches ``[P, D]`` of a layer from its input batch ``x`` (float64)."""
    n, c, kh, kw = layer.weight.shape
    if layer.kind != "conv":
        rows = x.reshape(-1, x.shape[-1])
        if len(rows) > count:
            rows = rows[np.sort(rng.choice(len(rows), count, replace=False))]
        return rows.astype(np.float64)
    b = x.shape[0]
    sh, sw = layer.strides
    pt, pl, pb, pr = layer.pads
    dh, dw = layer.dilations
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    h_out = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    w_out = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    total = b * h_out * w_out
    pick = np.sort(rng.choice(total, count, replace=False)) if total > count else np.arange(total)
    bi, rest = np.divmod(pick, h_out * w_out)
    hi, wi = np.divmod(rest, w_out)
    rows = hi[:, None] * sh + np.arange(kh)[None, :] * dh  # [P, kh]
    cols = wi[:, None] * sw + np.arange(kw)[None, :] * dw  # [P, kw]
    got = xp[bi[:, None, None, None], np.arange(c)[None, :, None, None], rows[:, None, :, None],
             cols[:, None, None, :]]
    return got.reshape(len(pick), c * kh * kw).astype(np.float64)


def collect_second_moments(
    model: Model,
    layers: list[Layer],
    batches: list[dict[str, np.ndarray]],
    *,
    max_patches: int = 8192,
    max_dim: int = 6144,
    budget_bytes: int = 1 << 30,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """``{layer name: (E[x x^T], E[x], patch count)}`` for every layer whose patch size is at most ``max_dim``.

    Layers are processed in chunks whose accumulators fit ``budget_bytes``; each chunk is one onnxruntime pass
    over the calibration batches, exposing only that chunk's input tensors.
    """
    wanted = [ly for ly in layers if ly.weight[0].size <= max_dim]
    graph_inputs = {t.name for t in model.graph.inputs}
    result: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    chunk: list[Layer] = []
    used = 0
    chunks: list[list[Layer]] = []
    for ly in wanted:
        size = ly.weight[0].size ** 2 * 8
        if chunk and used + size > budget_bytes:
            chunks.append(chunk)
            chunk, used = [], 0
        chunk.append(ly)
        used += size
    if chunk:
        chunks.append(chunk)
    per_batch = max(1, -(-max_patches // max(len(batches), 1)))
    for part in chunks:
        sums = {ly.name: np.zeros((ly.weight[0].size,) * 2) for ly in part}
        firsts = {ly.name: np.zeros(ly.weight[0].size) for ly in part}
        counts = dict.fromkeys(sums, 0)
        names = [ly.node.inputs[0].name for ly in part if ly.node.inputs[0].name not in graph_inputs]
        stream = runtime.activations(model, names, batches) if names else ({} for _ in batches)
        for bi, (acts, feed) in enumerate(zip(stream, batches)):
            for li, ly in enumerate(part):
                name = ly.node.inputs[0].name
                x = feed[name] if name in graph_inputs else acts[name]
                rng = np.random.default_rng((seed, bi, li))
                p = patches(ly, np.asarray(x, dtype=np.float32), per_batch, rng)
                sums[ly.name] += p.T @ p
                firsts[ly.name] += p.sum(axis=0)
                counts[ly.name] += len(p)
        for ly in part:
            if counts[ly.name]:
                n = counts[ly.name]
                result[ly.name] = (sums[ly.name] / n, firsts[ly.name] / n, n)
    return result


def shrink(cov: np.ndarray, count: int) -> np.ndarray:
    """Shrink an estimated covariance toward its diagonal by ``D / (D + count)``.

    With fewer samples than dimensions (a classifier head sees one row per image) the estimate is rank-deficient
    and a whitened SVD would discard every direction the calibration set did not happen to span; the diagonal
    (per-feature scale) is reliable with few samples, the off-diagonal structure is not.
    """
    d = cov.shape[0]
    alpha = d / (d + max(count, 1))
    out = (1.0 - alpha) * cov
    out[np.diag_indices(d)] += alpha * np.diag(cov)
    return out
