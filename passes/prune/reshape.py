"""Reshape / Flatten / Squeeze / Unsqueeze handler: channel indices are mapped through the reshape with label arrays.

A label array holds, for every element of the input (batch excluded), the channel it belongs to; reshaping it like the
data tells which channel each flattened feature comes from. Because the input's channel axis is tracked through
Transpose, a ``Transpose -> Reshape -> Gemm`` (MTCNN-style flatten in (W, H, C) order) maps to the right Gemm rows
instead of assuming (C, H, W) order. The ShuffleNet channel shuffle (Reshape to [N, g, C/g, H, W], Transpose
[0, 2, 1, 3, 4], Reshape back) is recognized as one pattern: it permutes channels and needs the same number of
channels removed from each of the g groups.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from compress_graph.ir.model import Model
from compress_graph.passes.prune.groups import Analysis
from compress_graph.passes.prune.handlers import Handler, Plan, block_unhandled, const, set_const


def _static(shape) -> list[int] | None:
    if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None
    return [int(d) for d in shape]


def _target(node: gs.Node) -> np.ndarray | None:
    if node.op != "Reshape":
        return None
    v = const(node.inputs[1]) if len(node.inputs) > 1 else None
    return None if v is None else np.array(v, dtype=np.int64).reshape(-1)


def _out_shape(node: gs.Node, xs: list[int]) -> list[int] | None:
    y = node.outputs[0]
    ys = list(y.shape) if y.shape is not None else None
    if ys is not None and all(isinstance(d, int) and d >= 0 for d in ys[1:]):
        return ys
    t = _target(node)
    if t is None:
        return None
    out = [xs[i] if d == 0 else int(d) for i, d in enumerate(t.tolist())]
    if out.count(-1) == 1:
        known = int(np.prod([d for d in out if d != -1]))
        out[out.index(-1)] = int(np.prod(xs)) // max(known, 1)
    return out


def _single_consumer(t: gs.Tensor, op: str) -> gs.Node | None:
    return t.outputs[0] if len(t.outputs) == 1 and t.outputs[0].op == op else None


class ReshapeLike(Handler):
    def analyze(self, node: gs.Node, an: Analysis) -> None:
        x, y = node.inputs[0], node.outputs[0]
        xi = an.get(x)
        if xi is None:
            return
        xs = _static(x.shape)
        if xs is None:
            block_unhandled(node, an, f"{node.op}: input shape not static")
            return
        if node.op == "Reshape" and _target(node) is None:
            block_unhandled(node, an, "Reshape with a non-constant shape")
            return
        ys = _out_shape(node, xs)
        if ys is None or len(ys) < 1 or ys[0] != xs[0] or int(np.prod(ys)) != int(np.prod(xs)):
            block_unhandled(node, an, f"{node.op}: output shape unknown or batch axis changed")
            return
        if self._shuffle(node, an, xi, xs, ys):
            return
        shape = [1] * (len(xs) - 1)
        shape[xi.axis - 1] = xi.size
        labels = np.broadcast_to(np.arange(xi.size).reshape(shape), xs[1:]).reshape(ys[1:])
        if len(ys) == 2:
            feats = labels.reshape(-1)
            if an.declare(y, 1, feats.size, rank=2) is not None:
                an.tie(x, feats, y, np.arange(feats.size))
            return
        for b in range(1, len(ys)):
            if ys[b] != xi.size:
                continue
            shape = [1] * (len(ys) - 1)
            shape[b - 1] = xi.size
            if np.array_equal(labels, np.broadcast_to(np.arange(xi.size).reshape(shape), ys[1:])):
                if an.declare(y, b, xi.size, rank=len(ys)) is not None:
                    an.tie_same(x, y)
                return
        block_unhandled(node, an, f"{node.op} mixes channels with other axes")

    def _shuffle(self, node, an: Analysis, xi, xs, ys) -> bool:
        """Recognize Reshape [N,C,H,W]->[N,g,C/g,H,W] -> Transpose(0,2,1,3,4) -> Reshape [N,C,H,W]."""
        if node.op != "Reshape" or len(xs) != 4 or len(ys) != 5 or xi.axis != 1:
            return False
        g, n = ys[1], ys[2]
        if g * n != xi.size or ys[3:] != xs[2:]:
            return False
        tr = _single_consumer(node.outputs[0], "Transpose")
        if tr is None or list(tr.attrs.get("perm", [])) != [0, 2, 1, 3, 4]:
            return False
        back = _single_consumer(tr.outputs[0], "Reshape")
        if back is None or _target(back) is None:
            return False
        z = back.outputs[0]
        zs = _out_shape(back, [xs[0], n, g, *xs[2:]])
        if zs is None or zs != xs:
            return False
        an.current = back  # z is written by the last node of the pattern
        if an.declare(z, 1, xi.size) is None:
            return False
        gi, j = np.meshgrid(np.arange(g), np.arange(n), indexing="ij")
        an.tie(node.inputs[0], (gi * n + j).ravel(), z, (j * g + gi).ravel())
        an.tie_within(node.inputs[0], np.arange(xi.size).reshape(g, n))
        an.claimed.update({id(tr), id(back)})
        an.shuffles[node.name] = ("head", g, n, node.inputs[0].name)
        an.shuffles[back.name] = ("tail", g, n, node.inputs[0].name)
        return True

    def apply(self, node: gs.Node, plan: Plan, model: Model) -> None:
        shuffle = plan.an.shuffles.get(node.name)
        if shuffle is not None:
            role, g, n, xname = shuffle
            kx = plan.kept_by_name(xname)
            if kx is None:
                return
            n_new = int(np.sum(kx < n))
            t = _target(node).copy()
            if role == "head":
                t[2] = n_new
            elif t[1] > 0:
                t[1] = g * n_new
            set_const(node, 1, t, model, "shape")
            return
        ky = plan.kept(node.outputs[0])
        t = _target(node)
        if ky is None or t is None:
            return
        info = plan.an.get(node.outputs[0])
        t = t.copy()
        if info.rank == 2:
            if t[0] == -1:
                t[1] = len(ky)
            else:
                t[1] = -1
        elif t[info.axis] > 0:
            t[info.axis] = len(ky)
        set_const(node, 1, t, model, "shape")
