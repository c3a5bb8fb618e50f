"""Low-rank factorizations of one layer's weight: the math, free of any graph.

Every layer is seen as ``y = W x`` with ``W`` of shape ``[N, C, kh, kw]`` (a Gemm/MatMul is ``[N, D, 1, 1]``) and
``x`` the layer's input patch (im2col order ``(c, i, j)``, matching ``W.reshape(N, -1)``). The error of an
approximation ``W'`` is the relative output energy lost, ``||(W - W') R||^2 / ||W R||^2``, where ``R R^T`` is the
input's second moment (data-aware) or the identity (data-free, then it is the relative Frobenius error and equals
``1 - energy`` of the singular values dropped). One error measure for every scheme is what lets the pass compare
schemes and ranks on the same footing.

Schemes (each returns factors in ONNX weight layout, in application order):
- ``svd`` / ``channel``: ``W ~ U_r (U_r^T W)``; a k x k conv C->r then a 1x1 conv r->N (for Gemm, two MatMuls).
  With data, ``U_r`` are the top left singular vectors of ``W R`` (the optimal output subspace on real inputs), so
  no inverse of the covariance is ever needed.
- ``spatial`` (Jaderberg et al.): ``W[n,c,i,j] ~ sum_r V[r,c,i] H[n,r,j]``: a kh x 1 conv C->r then a 1 x kw conv
  r->N. With data, ``H`` is refit by weighted least squares given ``V``.
- ``tucker`` (Tucker-2): 1x1 C->r1, k x k r1->r2, 1x1 r2->N; the core is refit by weighted least squares with data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SCHEMES = ("channel", "spatial", "tucker")


@dataclass
class Factorization:
    scheme: str
    ranks: tuple[int, ...]
    factors: list[np.ndarray]  # ONNX weight layout, in application order (float64)
    approx: np.ndarray  # the equivalent full weight, same shape as the original
    error: float  # relative output energy lost


@dataclass
class LayerMath:
    """Per-layer precomputation shared by all schemes and ranks (one SVD per scheme, not per rank)."""

    weight: np.ndarray  # [N, C, kh, kw], float64
    sqrt_cov: np.ndarray | None = None  # R with R R^T = input second moment ([D, q]); None = data-free
    _cache: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.weight.shape)  # type: ignore[return-value]

    @property
    def matrix(self) -> np.ndarray:
        return self.weight.reshape(self.weight.shape[0], -1)

    def whiten(self, mat: np.ndarray) -> np.ndarray:
        """``mat @ R`` (identity when data-free)."""
        return mat if self.sqrt_cov is None else mat @ self.sqrt_cov

    @property
    def total(self) -> float:
        if "total" not in self._cache:
            self._cache["total"] = float(np.sum(self.whiten(self.matrix) ** 2))
        return self._cache["total"]

    def error_of(self, approx: np.ndarray) -> float:
        total = self.total
        if total <= 0:
            return 0.0
        delta = self.whiten(self.matrix - approx.reshape(self.matrix.shape))
        return float(np.sum(delta**2) / total)

    # ------------------------------------------------------------------------------------------ bases
    def output_basis(self) -> tuple[np.ndarray, np.ndarray]:
        """Left singular vectors of ``W R`` and the cumulative fraction of output energy each rank keeps."""
        if "out" not in self._cache:
            u, energy = left_basis(self.whiten(self.matrix))
            total = float(energy.sum())
            kept = np.cumsum(energy) / total if total > 0 else np.ones_like(energy)
            self._cache["out"] = (u, kept)
        return self._cache["out"]

    def spatial_basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rank-1 terms of the ``[(c, i), (n, j)]`` rearrangement M of W (data-free, as in Jaderberg et al.):
        ``(vert [C kh, K], horiz [K, N kw], energy [K])`` with ``vert[:, :r] @ horiz[:r]`` the best rank-r M."""
        if "spatial" not in self._cache:
            n, c, kh, kw = self.shape
            m = self.weight.transpose(1, 2, 0, 3).reshape(c * kh, n * kw)
            if m.shape[0] <= m.shape[1]:
                u, energy = left_basis(m)
                root = np.sqrt(energy)
                inv = _safe_inverse(root)
                vert, horiz = u * root, (u.T @ m) * inv[:, None]
            else:
                v, energy = left_basis(m.T)
                root = np.sqrt(energy)
                inv = _safe_inverse(root)
                vert, horiz = (m @ v) * inv[None, :], v.T * root[:, None]
            self._cache["spatial"] = (vert, horiz, energy)
        return self._cache["spatial"]

    def input_basis(self) -> np.ndarray:
        """Left singular vectors of the mode-1 (input channel) unfolding of W (Tucker-2's input factor)."""
        if "in" not in self._cache:
            n, c, kh, kw = self.shape
            w = self.weight
            if self.sqrt_cov is not None:
                # weight the input channels by how much energy they carry on real inputs
                d = np.sqrt(np.maximum(np.sum(self.sqrt_cov**2, axis=1), 0)).reshape(1, c, kh, kw)
                w = w * d
            self._cache["in"] = left_basis(w.transpose(1, 0, 2, 3).reshape(c, -1))[0]
        return self._cache["in"]


def _safe_inverse(root: np.ndarray) -> np.ndarray:
    """1 / root, with 0 for terms that carry no energy (their vectors are noise; they never change a product)."""
    keep = root > (root.max() * 1e-12 if root.size else 0.0)
    return np.divide(1.0, root, out=np.zeros_like(root), where=keep)


def left_basis(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All ``rows`` left singular vectors of ``m`` and the squared singular values (zero-padded), descending.

    Through the eigenvectors of ``m m^T``: faster than an SVD, and a complete orthonormal basis, so ranks above
    the matrix's numerical rank still get valid factors and ``U_r U_r^T m`` stays an exact projection.
    """
    vals, vecs = np.linalg.eigh(m @ m.T)
    order = np.argsort(vals)[::-1]
    return vecs[:, order], np.maximum(vals[order], 0.0)


def full_rank(scheme: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The rank(s) at which a scheme reproduces any weight of this shape exactly."""
    n, c, kh, kw = shape
    if scheme == "channel":
        return (min(n, c * kh * kw),)
    if scheme == "spatial":
        return (min(c * kh, n * kw),)
    if scheme == "tucker":
        return (min(c, n * kh * kw), min(n, c * kh * kw))
    raise ValueError(f"unknown scheme {scheme}")


def applicable(scheme: str, shape: tuple[int, ...]) -> bool:
    _, _, kh, kw = shape
    if scheme == "spatial":
        return kh > 1 and kw > 1
    if scheme == "tucker":
        return kh * kw > 1
    return True


# ------------------------------------------------------------------------------------------------ schemes
def _balance(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rescale rank components so each has equal norm in both factors (same product; friendlier to int8)."""
    r = first.shape[0]
    a = np.linalg.norm(first.reshape(r, -1), axis=1)
    b = np.linalg.norm(second.reshape(second.shape[0], r, -1).transpose(1, 0, 2).reshape(r, -1), axis=1)
    scale = np.sqrt(np.where((a > 0) & (b > 0), a / np.where(b > 0, b, 1), 1.0))
    scale = np.where(scale > 0, scale, 1.0)
    first = first / scale.reshape(r, *([1] * (first.ndim - 1)))
    second = second * scale.reshape(1, r, *([1] * (second.ndim - 2)))
    return first, second


def channel_error(math: LayerMath, r: int) -> float:
    """Output energy lost by the channel / SVD scheme at rank r (exact, from the singular values)."""
    _, kept = math.output_basis()
    if r <= 0:
        return 1.0
    return float(max(0.0, 1.0 - kept[min(r, len(kept)) - 1]))


def channel(math: LayerMath, r: int) -> Factorization:
    """k x k conv C->r (the original conv's geometry) then 1x1 conv r->N; for a Gemm, two matrix products."""
    n, c, kh, kw = math.shape
    u, _ = math.output_basis()
    ur = u[:, :r]
    first = (ur.T @ math.matrix).reshape(r, c, kh, kw)
    second = ur.reshape(n, r, 1, 1)
    approx = (ur @ (ur.T @ math.matrix)).reshape(math.shape)
    first, second = _balance(first, second)
    return Factorization("channel", (r,), [first, second], approx, channel_error(math, r))


def spatial(math: LayerMath, r: int) -> Factorization:
    """kh x 1 conv C->r then 1 x kw conv r->N."""
    n, c, kh, kw = math.shape
    vert_all, horiz_all, _ = math.spatial_basis()
    vert = vert_all[:, :r].T.reshape(r, c, kh)  # V[r, c, i]
    horiz = horiz_all[:r].reshape(r, n, kw)  # H[r, n, j]
    if math.sqrt_cov is not None:
        horiz = _refit_horizontal(math, vert)
    r_, c_, kh_ = vert.shape
    approx = (vert.reshape(r_, -1).T @ horiz.reshape(r_, -1)).reshape(c_, kh_, n, kw).transpose(2, 0, 1, 3)
    first = vert.reshape(r, c, kh, 1)
    second = horiz.transpose(1, 0, 2).reshape(n, r, 1, kw)
    first, second = _balance(first, second)
    return Factorization("spatial", (r,), [first, second], approx, math.error_of(approx))


def _refit_horizontal(math: LayerMath, vert: np.ndarray) -> np.ndarray:
    """Weighted least squares for H given V: minimizes the output error on the calibration inputs."""
    n, c, kh, kw = math.shape
    r = vert.shape[0]
    # G[(c, i, j), (r, j')] = V[r, c, i] * delta(j, j')
    g = np.einsum("rci,jk->cijrk", vert, np.eye(kw)).reshape(c * kh * kw, r * kw)
    a = math.sqrt_cov.T @ g  # [q, r*kw]
    b = math.sqrt_cov.T @ math.matrix.T  # [q, N]
    h = _lstsq(a, b)  # [r*kw, N]
    return h.reshape(r, kw, n).transpose(0, 2, 1)


def _lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Ridge-damped normal equations (tiny damping keeps near-singular statistics stable)."""
    gram = a.T @ a
    damp = 1e-8 * max(float(np.trace(gram)) / max(gram.shape[0], 1), 1e-30)
    return np.linalg.solve(gram + damp * np.eye(gram.shape[0]), a.T @ b)


def tucker(math: LayerMath, r1: int, r2: int) -> Factorization:
    """1x1 conv C->r1, k x k conv r1->r2 (the original geometry), 1x1 conv r2->N."""
    n, c, kh, kw = math.shape
    u_in = math.input_basis()[:, :r1]  # [C, r1]
    u_out = math.output_basis()[0][:, :r2]  # [N, r2]
    if math.sqrt_cov is None:
        core = _project(math.weight, u_out, u_in)  # [r2, r1, kh, kw]
    else:
        # a = R^T P with P = U_in (x) I_kk, which maps the core's input patch (s, i, j) to the layer's (c, i, j)
        q = math.sqrt_cov.shape[1]
        rr = math.sqrt_cov.reshape(c, kh * kw * q)
        a = (u_in.T @ rr).reshape(r1, kh * kw, q).transpose(2, 0, 1).reshape(q, r1 * kh * kw)  # [q, r1 kk]
        b = math.sqrt_cov.T @ (math.matrix.T @ u_out)  # [q, r2]
        core = _lstsq(a, b).T.reshape(r2, r1, kh, kw)
    approx = _expand(core, u_out, u_in)
    first = u_in.T.reshape(r1, c, 1, 1)
    last = u_out.reshape(n, r2, 1, 1)
    return Factorization("tucker", (r1, r2), [first, core, last], approx, math.error_of(approx))


def _project(w: np.ndarray, u_out: np.ndarray, u_in: np.ndarray) -> np.ndarray:
    """Tucker-2 core ``U_out^T x_0 W x_1 U_in^T`` with BLAS products (a 3-operand einsum loops in Python)."""
    n, c, kh, kw = w.shape
    t = (u_out.T @ w.reshape(n, -1)).reshape(-1, c, kh * kw)  # [r2, C, kk]
    return np.matmul(u_in.T[None], t).reshape(-1, u_in.shape[1], kh, kw)


def _expand(core: np.ndarray, u_out: np.ndarray, u_in: np.ndarray) -> np.ndarray:
    r2, r1, kh, kw = core.shape
    t = np.matmul(u_in[None], core.reshape(r2, r1, kh * kw))  # [r2, C, kk]
    return (u_out @ t.reshape(r2, -1)).reshape(u_out.shape[0], u_in.shape[0], kh, kw)


def spatial_error(math: LayerMath, r: int) -> float:
    if math.sqrt_cov is None:
        energy = math.spatial_basis()[2]
        total = float(np.sum(energy))
        return float(max(0.0, 1.0 - np.sum(energy[:r]) / total)) if total > 0 else 0.0
    return spatial(math, r).error


def tucker_error(math: LayerMath, r1: int, r2: int) -> float:
    if math.sqrt_cov is None:
        u_in = math.input_basis()[:, :r1]
        u_out = math.output_basis()[0][:, :r2]
        core = _project(math.weight, u_out, u_in)
        total = math.total
        return float(max(0.0, 1.0 - np.sum(core**2) / total)) if total > 0 else 0.0
    return tucker(math, r1, r2).error


def factorize(math: LayerMath, scheme: str, ranks: tuple[int, ...]) -> Factorization:
    if scheme == "channel":
        return channel(math, ranks[0])
    if scheme == "spatial":
        return spatial(math, ranks[0])
    if scheme == "tucker":
        return tucker(math, ranks[0], ranks[1])
    raise ValueError(f"unknown scheme {scheme}")


def error(math: LayerMath, scheme: str, ranks: tuple[int, ...]) -> float:
    if scheme == "channel":
        return channel_error(math, ranks[0])
    if scheme == "spatial":
        return spatial_error(math, ranks[0])
    return tucker_error(math, ranks[0], ranks[1])


def sqrt_factor(cov: np.ndarray, rel_floor: float = 1e-9) -> np.ndarray:
    """``R`` with ``R R^T ~ cov``, dropping directions with (relative) energy below ``rel_floor``.

    A low-rank R keeps every later product cheap when activations span fewer dimensions than the patch size.
    """
    cov = 0.5 * (cov + cov.T)
    vals, vecs = np.linalg.eigh(cov)
    top = float(vals.max()) if vals.size else 0.0
    if top <= 0:
        return np.zeros((cov.shape[0], 1))
    keep = vals > rel_floor * top
    return vecs[:, keep] * np.sqrt(vals[keep])
