"""Least-squares reconstruction: refit each consumer whose inputs lost channels so that, fed the *pruned* model's
activations, it reproduces the *original* model's outputs (ThiNet / He et al. 2017 / AIMET channel pruning).

Consumers are refit in topological order, in a few rounds: each round runs the pruned model as refit so far, so later
layers also absorb the error of earlier ones. The normal equations are accumulated batch by batch (memory: one
[D, D] matrix per layer, D = kept inputs x kernel size), with a ridge term that pulls towards the pruned weights
so that few samples cannot over-fit; a refit that does not lower the calibration error is dropped.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from compress_graph.ir import runtime
from compress_graph.ir.model import Model
from compress_graph.passes.prune.groups import Analysis, Unit
from compress_graph.passes.prune.handlers import const
from compress_graph.passes.prune.surgery import kept_channels

MAX_ROWS = 256  # sampled output positions per sample and layer
MAX_DIM = 6000  # skip layers whose patch size (inputs x kernel) exceeds this
RIDGE = 1e-3


def _conv_layout(node: gs.Node) -> dict | None:
    w = const(node.inputs[1])
    if w is None or w.ndim != 4 or int(node.attrs.get("group", 1)) != 1:
        return None
    auto = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto not in ("NOTSET", "VALID"):
        return None
    kh, kw = w.shape[2:]
    return {"k": (kh, kw), "s": list(node.attrs.get("strides", [1, 1])),
            "d": list(node.attrs.get("dilations", [1, 1])),
            "p": list(node.attrs.get("pads", [0, 0, 0, 0])) if auto == "NOTSET" else [0, 0, 0, 0]}


def _patches(x: np.ndarray, lay: dict, out_hw: tuple[int, int], rng: np.random.Generator) -> tuple:
    """Rows of im2col at up to MAX_ROWS random output positions per sample: (A [R, C*kh*kw], (n, h, w) indices)."""
    n, c = x.shape[:2]
    ph0, pw0, ph1, pw1 = lay["p"]
    xp = np.pad(x, ((0, 0), (0, 0), (ph0, ph1), (pw0, pw1)))
    ho, wo = out_hw
    total = n * ho * wo
    pick = rng.choice(total, size=min(total, MAX_ROWS * n), replace=False) if total > MAX_ROWS * n else np.arange(total)
    ni, rem = np.divmod(pick, ho * wo)
    hi, wi = np.divmod(rem, wo)
    kh, kw = lay["k"]
    (sh, sw), (dh, dw) = lay["s"], lay["d"]
    hh = hi[:, None, None] * sh + np.arange(kh)[None, :, None] * dh
    ww = wi[:, None, None] * sw + np.arange(kw)[None, None, :] * dw
    a = xp[ni[:, None, None], :, hh, ww]  # [R, kh, kw, C]
    return a.transpose(0, 3, 1, 2).reshape(len(pick), c * kh * kw), (ni, hi, wi)


class _Layer:
    """Normal equations of one consumer: G = [A 1]^T [A 1], H = [A 1]^T Y, plus ||Y||^2 for the error check."""

    def __init__(self, node: gs.Node, kind: str, lay: dict | None):
        self.node, self.kind, self.lay = node, kind, lay
        self.bias = node.op != "MatMul"  # MatMul has no bias input: fit without an intercept
        self.g = self.h = None
        self.yy = 0.0
        self.rows = 0

    def add(self, a: np.ndarray, y: np.ndarray) -> None:
        a = a.astype(np.float64)
        if self.bias:
            a = np.hstack([a, np.ones((a.shape[0], 1))])
        y = y.astype(np.float64)
        if self.g is None:
            self.g = np.zeros((a.shape[1], a.shape[1]))
            self.h = np.zeros((a.shape[1], y.shape[1]))
        self.g += a.T @ a
        self.h += a.T @ y
        self.yy += float((y * y).sum())
        self.rows += a.shape[0]

    def current(self) -> np.ndarray:
        """Current weights as a [D + 1, M] matrix (last row: bias)."""
        node = self.node
        w = np.asarray(const(node.inputs[1]), dtype=np.float64)
        b = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        b = None if b is None else np.asarray(b, dtype=np.float64)
        if self.kind == "conv":
            m = w.reshape(w.shape[0], -1).T
            bias = np.zeros(w.shape[0]) if b is None else b
        else:
            alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
            trans_b = node.op == "Gemm" and int(node.attrs.get("transB", 0))
            m = (w.T if trans_b else w) * alpha
            beta = float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0
            bias = np.zeros(m.shape[1]) if b is None else np.broadcast_to(b * beta, (m.shape[1],))
        return np.vstack([m, bias[None, :]]) if self.bias else m

    def solve(self, model: Model) -> dict | None:
        if self.g is None:
            return None
        w0 = self.current()
        if w0.shape[0] != self.g.shape[0]:
            return None
        d = self.g.shape[0]
        # ridge towards the pruned weights, scaled per input (like Levenberg-Marquardt): every input is shrunk by the
        # same relative amount whatever its scale; directions the data does not see keep the pruned weights
        lam = RIDGE * np.diag(self.g) + 1e-12 * (np.trace(self.g) / d + 1e-30)
        try:
            w = np.linalg.solve(self.g + np.diag(lam), self.h + lam[:, None] * w0)
        except np.linalg.LinAlgError:
            return None

        def err(m):
            return float(np.einsum("ij,ij->", m, self.g @ m) - 2 * np.einsum("ij,ij->", m, self.h) + self.yy)

        e0, e1 = err(w0), err(w)
        if not e1 < e0:
            return {"node": self.node.name, "kept": False}
        self._write(w, model)
        return {"node": self.node.name, "kept": True, "rel_err_before": round(e0 / max(self.yy, 1e-30), 6),
                "rel_err_after": round(e1 / max(self.yy, 1e-30), 6)}

    def _write(self, w: np.ndarray, model: Model) -> None:
        node = self.node
        dtype = const(node.inputs[1]).dtype
        mat, bias = (w[:-1], w[-1]) if self.bias else (w, None)
        name = node.name
        if self.kind == "conv":
            shape = const(node.inputs[1]).shape
            node.inputs[1] = gs.Constant(model.unique_name(f"{name}.weight_refit"),
                                         mat.T.reshape(shape).astype(dtype))
        else:
            alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
            trans_b = node.op == "Gemm" and int(node.attrs.get("transB", 0))
            mat = mat / alpha
            node.inputs[1] = gs.Constant(model.unique_name(f"{name}.weight_refit"),
                                         (mat.T if trans_b else mat).astype(dtype))
            if node.op == "Gemm":
                node.attrs["beta"] = 1.0
        if bias is None:
            return
        bias_t = gs.Constant(model.unique_name(f"{name}.bias_refit"), bias.astype(dtype))
        if len(node.inputs) > 2:
            node.inputs[2] = bias_t
        else:
            node.inputs.append(bias_t)


def _levels(model: Model, layers: list[_Layer]) -> list[int]:
    """Refit depth of each layer: how many refit layers lie upstream on the longest path (same depth = independent)."""
    refit = {id(la.node) for la in layers}
    depth: dict[str, int] = {}
    level: dict[int, int] = {}
    for node in model.graph.nodes:
        d = max((depth.get(t.name, 0) for t in node.inputs), default=0)
        if id(node) in refit:
            level[id(node)] = d
            d += 1
        for t in node.outputs:
            depth[t.name] = d
    return [level[id(la.node)] for la in layers]


def _chunks(layers: list[_Layer], budget: float = 1.5e9) -> list[list[_Layer]]:
    """Split so that the normal equations of one chunk fit in ``budget`` bytes."""
    out, cur, used = [], [], 0.0
    for la in layers:
        size = 8.0 * la.dim ** 2
        if cur and used + size > budget:
            out.append(cur)
            cur, used = [], 0.0
        cur.append(la)
        used += size
    return out + ([cur] if cur else [])


def reconstruct(original: Model, pruned: Model, an: Analysis, removed: list[Unit], feeds: list[dict],
                *, seed: int = 0, mode: str = "sequential") -> dict:
    """Refit (in place, on ``pruned``) every Conv (group 1) / Gemm / MatMul whose input lost channels.

    ``local``: each layer is fit on the original model's activations (its kept input channels -> its original
    output); one pass over the data, no error feedback between layers, no over-correction.
    ``sequential``: layers are fit on the pruned model's activations, one dependency level at a time, so each level
    also absorbs the remaining error of the levels above it (slower: one pass per level).
    """
    kept = kept_channels(an, removed)
    nodes = {n.name: n for n in pruned.graph.nodes}
    layers: list[_Layer] = []
    for node_name, tname in dict.fromkeys(an.sinks):
        node = nodes.get(node_name)
        if node is None or tname not in kept or node.inputs[0].name != tname:
            continue
        if node.op == "Conv":
            lay = _conv_layout(node)
            if lay is None or len(kept[tname]) * lay["k"][0] * lay["k"][1] > MAX_DIM:
                continue
            la = _Layer(node, "conv", lay)
            la.dim = len(kept[tname]) * lay["k"][0] * lay["k"][1] + 1
        elif node.op in ("Gemm", "MatMul") and len(kept[tname]) <= MAX_DIM:
            la = _Layer(node, "gemm", None)
            la.dim = len(kept[tname]) + 1
        else:
            continue
        layers.append(la)
    if not layers:
        return {"layers": 0, "mode": mode}
    order = {n.name: i for i, n in enumerate(pruned.graph.nodes)}
    layers.sort(key=lambda la: order[la.node.name])
    rng = np.random.default_rng(seed)
    if mode == "sequential":
        levels = _levels(pruned, layers)
        rounds = [[la for la, lv in zip(layers, levels) if lv == k] for k in sorted(set(levels))]
        rounds = [c for r in rounds for c in _chunks(r)]
    else:
        rounds = _chunks(layers)
    results = []
    ref_names = [la.node.outputs[0].name for la in layers]
    if mode != "sequential":
        ref_names += [la.node.inputs[0].name for la in layers]
    ref_sess = runtime.session(original, ref_names)
    for batch in rounds:
        out_names = [la.node.outputs[0].name for la in batch]
        in_names = [la.node.inputs[0].name for la in batch]
        sess = runtime.session(pruned, in_names) if mode == "sequential" else None
        for feed in feeds:
            ys = runtime.run(ref_sess, feed, out_names + ([] if sess else in_names))
            xs = runtime.run(sess, feed, in_names) if sess else ys
            for la in batch:
                x, y = xs[la.node.inputs[0].name], ys[la.node.outputs[0].name]
                kx, ky = kept.get(la.node.inputs[0].name), kept.get(la.node.outputs[0].name)
                if sess is None and kx is not None:
                    x = x[:, kx]
                if la.kind == "conv":
                    a, (ni, hi, wi) = _patches(x, la.lay, y.shape[2:], rng)
                    y = y[ni, :, hi, wi]
                else:
                    a, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
                la.add(a, y if ky is None else y[:, ky])
        for la in batch:
            r = la.solve(pruned)
            la.g = la.h = None
            if r is not None:
                results.append(r)
    return {"layers": len(layers), "mode": mode, "rounds": len(rounds),
            "refit": sum(1 for r in results if r.get("kept")), "details": results[:200]}
