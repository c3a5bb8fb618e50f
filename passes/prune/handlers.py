"""Per-op prune handlers, keyed by op type: how channels propagate through an op, and how to cut its weights.

``analyze(node, an)`` ties/blocks channels (see ``groups.py``) and registers weights; ``apply(node, plan, model)``
rewrites the node's constants once the kept channels of every tensor are known (``plan.kept(name)`` is None when a
tensor keeps all its channels). A new op is supported by adding a handler here, never by editing the pass.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from compress_graph.ir import graph as G
from compress_graph.ir.model import Model
from compress_graph.passes.prune.groups import Analysis


class Plan:
    """Kept channel indices per tensor name (only tensors that lose channels are listed)."""

    def __init__(self, kept: dict[str, np.ndarray], an: Analysis):
        self._kept = kept
        self.an = an

    def kept(self, t: gs.Tensor | None) -> np.ndarray | None:
        return None if t is None else self._kept.get(t.name)

    def kept_by_name(self, name: str) -> np.ndarray | None:
        return self._kept.get(name)


def const(t: gs.Tensor | None) -> np.ndarray | None:
    """Value of a constant input (initializer or Constant node), else None."""
    if t is None or (not isinstance(t, gs.Constant) and not t.inputs):
        return None
    return G.constant_value(t)


def set_const(node: gs.Node, i: int, value: np.ndarray, model: Model, tag: str) -> None:
    """Replace input ``i`` by a fresh constant (never edit a constant in place: it may be shared)."""
    old = node.inputs[i]
    name = model.unique_name(f"{node.name or node.op}.{tag}_pruned" if not old.name else old.name + "_pruned")
    node.inputs[i] = gs.Constant(name, np.ascontiguousarray(value))


def block_unhandled(node: gs.Node, an: Analysis, reason: str) -> None:
    for t in list(node.inputs) + list(node.outputs):
        an.block(t, reason)


def _rank(t: gs.Tensor) -> int | None:
    return len(t.shape) if t.shape is not None else None


class Handler:
    def analyze(self, node: gs.Node, an: Analysis) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, node: gs.Node, plan: Plan, model: Model) -> None:
        """Default: nothing to rewrite (the op adapts to its inputs)."""


# ----------------------------------------------------------------------------------------------- passthrough
class Unary(Handler):
    """Output channel c depends on input channel c only (activations, pooling, Resize, Identity, ...)."""

    def analyze(self, node, an):
        if not node.inputs or not node.outputs:
            return
        x, y = node.inputs[0], node.outputs[0]
        xi = an.get(x)
        if xi is None:
            return
        if len(node.outputs) > 1 and any(t.outputs for t in node.outputs[1:]):
            block_unhandled(node, an, f"{node.op} with a used second output")
            return
        if _rank(y) not in (None, xi.rank):
            block_unhandled(node, an, f"{node.op} changes the rank")
            return
        if an.declare(y, xi.axis, xi.size) is not None:
            an.tie_same(x, y)


class Resize(Unary):
    def analyze(self, node, an):
        xi = an.get(node.inputs[0])
        if xi is None:
            return
        for i in (2, 3):  # scales, sizes: the channel entry must stay 1 / C
            v = const(node.inputs[i]) if len(node.inputs) > i and node.inputs[i].name else None
            if v is not None and v.size == xi.rank and i == 2 and float(v[xi.axis]) != 1.0:
                block_unhandled(node, an, "Resize scales the channel axis")
                return
        super().analyze(node, an)

    def apply(self, node, plan, model):
        k = plan.kept(node.outputs[0])
        if k is None or len(node.inputs) < 4 or not node.inputs[3].name:
            return
        sizes = const(node.inputs[3])
        if sizes is not None:
            info = plan.an.get(node.outputs[0])
            sizes = np.array(sizes, dtype=np.int64)
            sizes[info.axis] = len(k)
            set_const(node, 3, sizes, model, "sizes")


class Softmax(Unary):
    def analyze(self, node, an):
        xi = an.get(node.inputs[0])
        if xi is not None and int(node.attrs.get("axis", -1)) % xi.rank == xi.axis:
            block_unhandled(node, an, f"{node.op} normalizes over the channel axis")
            return
        super().analyze(node, an)


class PerChannelParams(Unary):
    """Unary op with per-channel constant inputs (BatchNormalization, InstanceNormalization, PRelu slope)."""

    def __init__(self, params: tuple[int, ...], right_aligned: bool = False):
        self.params = params
        self.right_aligned = right_aligned  # PRelu: slope broadcasts from the right; BN/IN: 1-D [C]

    def _axis_in(self, v: np.ndarray, info) -> int | None:
        if not self.right_aligned:
            return 0 if v.ndim == 1 else None
        pos = info.axis - (info.rank - v.ndim)
        return pos if pos >= 0 else None

    def analyze(self, node, an):
        xi = an.get(node.inputs[0])
        if xi is None:
            return
        for i in self.params:
            if i >= len(node.inputs):
                continue
            v = const(node.inputs[i])
            if v is None:
                block_unhandled(node, an, f"{node.op} parameters are not constant")
                return
            pos = self._axis_in(v, xi)
            if v.size > 1 and (pos is None or v.shape[pos] not in (1, xi.size)):
                block_unhandled(node, an, f"{node.op} parameter shape {list(v.shape)} does not broadcast per channel")
                return
        super().analyze(node, an)
        if node.op == "BatchNormalization" and an.get(node.outputs[0]) is not None:
            an.add_weights(node, node.outputs[0], "bn", np.abs(const(node.inputs[1])))

    def apply(self, node, plan, model):
        k = plan.kept(node.inputs[0])
        if k is None:
            return
        info = plan.an.get(node.inputs[0])
        for i in self.params:
            if i >= len(node.inputs):
                continue
            v = const(node.inputs[i])
            pos = self._axis_in(v, info)
            if v.size > 1 and pos is not None and v.shape[pos] == info.size:
                set_const(node, i, np.take(v, k, axis=pos), model, f"p{i}")


class GroupNorm(PerChannelParams):
    """Safe only when every channel is its own group (then it is an instance norm)."""

    def __init__(self):
        super().__init__((1, 2))

    def analyze(self, node, an):
        xi = an.get(node.inputs[0])
        if xi is not None and int(node.attrs.get("num_groups", 0)) != xi.size:
            block_unhandled(node, an, "GroupNormalization with channels per group > 1 (statistics would change)")
            return
        super().analyze(node, an)

    def apply(self, node, plan, model):
        k = plan.kept(node.inputs[0])
        if k is not None:
            node.attrs["num_groups"] = len(k)
        super().apply(node, plan, model)


class Elementwise(Handler):
    """Broadcasting n-ary ops: full-channel inputs are tied to the output; constants are sliced per channel."""

    def analyze(self, node, an):
        y = node.outputs[0]
        ry = _rank(y)
        ref = None
        for t in node.inputs:
            ti = an.get(t)
            if ti is not None and ti.size > 1 and ry is not None and ti.axis + (ry - ti.rank) >= 0:
                ref = ti if ref is None or ti.rank >= ref.rank else ref
        if ref is None or ry is None:
            if ry is not None and any(an.get(t) is not None and an.get(t).size > 1 for t in node.inputs):
                block_unhandled(node, an, f"{node.op}: channel layout of the output is unknown")
            return
        axis = ref.axis + (ry - ref.rank)
        yi = an.declare(y, axis, ref.size)
        if yi is None:
            block_unhandled(node, an, f"{node.op}: output shape unknown")
            return
        for t in node.inputs:
            if t.name == "":
                continue
            v = const(t)
            if v is not None:
                pos = axis - (ry - v.ndim)
                if pos >= 0 and v.shape[pos] not in (1, yi.size):
                    block_unhandled(node, an, f"{node.op}: constant of shape {list(v.shape)} mixes channels")
                    return
                continue
            ti = an.get(t)
            if ti is None:
                block_unhandled(node, an, f"{node.op}: an input has an unknown channel layout")
                return
            if ti.size == 1:
                continue  # broadcast along channels (spatial attention maps, scalars)
            if ti.axis + (ry - ti.rank) != axis or ti.size != yi.size:
                block_unhandled(node, an, f"{node.op}: inputs disagree on the channel axis")
                return
            an.tie_same(t, y)

    def apply(self, node, plan, model):
        k = plan.kept(node.outputs[0])
        if k is None:
            return
        info = plan.an.get(node.outputs[0])
        for i, t in enumerate(node.inputs):
            v = const(t) if t.name else None
            if v is None:
                continue
            pos = info.axis - (info.rank - v.ndim)
            if pos >= 0 and v.shape[pos] == info.size and info.size > 1:
                set_const(node, i, np.take(v, k, axis=pos), model, f"c{i}")


# ----------------------------------------------------------------------------------------------- weights
class Conv(Handler):
    """Conv: rows of W are output channels; columns (per group) input channels. Depthwise ties input to output."""

    def analyze(self, node, an):
        x, y = node.inputs[0], node.outputs[0]
        w = const(node.inputs[1])
        b = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        if w is None or (b is not None and const(b) is None):
            an.declare(x, 1)
            an.declare(y, 1)
            block_unhandled(node, an, f"{node.op} weights are not constant")
            return
        g = int(node.attrs.get("group", 1))
        cout, cin_g = w.shape[0], w.shape[1]
        if g < 1 or cout % g:
            an.declare(x, 1)
            an.declare(y, 1)
            block_unhandled(node, an, f"{node.op}: group={g} does not divide {cout} output channels")
            return
        xi, yi = an.declare(x, 1, cin_g * g), an.declare(y, 1, cout)
        if xi is None or yi is None:
            block_unhandled(node, an, f"{node.op}: channel counts unknown")
            return
        if g == 1:
            an.add_weights(node, y, "out", w)
            an.add_weights(node, x, "in", w, 1)
            an.add_sink(node, x)
        elif cin_g == 1:  # depthwise (with channel multiplier m)
            m = cout // g
            for r in range(m):
                an.tie(x, np.arange(g), y, np.arange(g) * m + r)
            an.add_weights(node, y, "out", w)
        else:
            cout_g = cout // g
            an.tie_within(x, np.arange(cin_g * g).reshape(g, cin_g))
            if cout_g == 1:
                an.block(y, "group conv with one output channel per group")
            else:
                an.tie_within(y, np.arange(cout).reshape(g, cout_g))
            an.add_weights(node, y, "out", w)
            an.add_sink(node, x)

    def apply(self, node, plan, model):
        x, y = node.inputs[0], node.outputs[0]
        kx, ky = plan.kept(x), plan.kept(y)
        if kx is None and ky is None:
            return
        w = const(node.inputs[1])
        g = int(node.attrs.get("group", 1))
        cin_g = w.shape[1]
        if g > 1 and cin_g == 1:
            if kx is not None:
                node.attrs["group"] = len(kx)
        elif kx is not None:
            local = kx[kx < cin_g] if g > 1 else kx
            w = w[:, local]
        if ky is not None:
            w = w[ky]
            if len(node.inputs) > 2 and node.inputs[2].name:
                set_const(node, 2, const(node.inputs[2])[ky], model, "bias")
        set_const(node, 1, w, model, "weight")


class ConvTranspose(Handler):
    """ConvTranspose: W is [Cin, Cout/g, k...]; rows are input channels, columns (per group) output channels."""

    def analyze(self, node, an):
        x, y = node.inputs[0], node.outputs[0]
        w = const(node.inputs[1])
        b = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        if w is None or (b is not None and const(b) is None):
            block_unhandled(node, an, "ConvTranspose weights are not constant")
            return
        g = int(node.attrs.get("group", 1))
        cin, cout_g = w.shape[0], w.shape[1]
        xi, yi = an.declare(x, 1, cin), an.declare(y, 1, cout_g * g)
        if xi is None or yi is None:
            block_unhandled(node, an, "ConvTranspose: channel counts unknown")
            return
        if g == 1:
            an.add_weights(node, y, "out", w, 1)
            an.add_weights(node, x, "in", w)
            an.add_sink(node, x)
        elif cin // g == 1 and cout_g == 1:  # depthwise
            an.tie(x, np.arange(cin), y, np.arange(cin))
            an.add_weights(node, y, "out", w)
        else:
            block_unhandled(node, an, "grouped ConvTranspose")

    def apply(self, node, plan, model):
        x, y = node.inputs[0], node.outputs[0]
        kx, ky = plan.kept(x), plan.kept(y)
        if kx is None and ky is None:
            return
        w = const(node.inputs[1])
        g = int(node.attrs.get("group", 1))
        if g > 1:
            node.attrs["group"] = len(kx)
            w = w[kx]
        else:
            if kx is not None:
                w = w[kx]
            if ky is not None:
                w = w[:, ky]
        if ky is not None and len(node.inputs) > 2 and node.inputs[2].name:
            set_const(node, 2, const(node.inputs[2])[ky], model, "bias")
        set_const(node, 1, w, model, "weight")


class Gemm(Handler):
    """Gemm / MatMul with a constant 2-D weight and a 2-D input: input features in, output features out."""

    def _layout(self, node):
        w = const(node.inputs[1])
        if w is None or w.ndim != 2 or _rank(node.inputs[0]) != 2:
            return None
        if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
            return None
        trans_b = node.op == "Gemm" and int(node.attrs.get("transB", 0))
        return w, trans_b

    def analyze(self, node, an):
        x, y = node.inputs[0], node.outputs[0]
        layout = self._layout(node)
        c = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        if layout is None or (c is not None and const(c) is None):
            block_unhandled(node, an, f"{node.op}: weight not a constant 2-D matrix or input not 2-D")
            return
        w, trans_b = layout
        wk = w.T if trans_b else w  # [K, M]
        xi, yi = an.declare(x, 1, wk.shape[0]), an.declare(y, 1, wk.shape[1])
        if xi is None or yi is None:
            block_unhandled(node, an, f"{node.op}: feature counts unknown")
            return
        an.add_weights(node, x, "in", w, 1 if trans_b else 0)
        an.add_weights(node, y, "out", w, 0 if trans_b else 1)
        an.add_sink(node, x)

    def apply(self, node, plan, model):
        x, y = node.inputs[0], node.outputs[0]
        kx, ky = plan.kept(x), plan.kept(y)
        if kx is None and ky is None:
            return
        w, trans_b = self._layout(node)
        wk = w.T if trans_b else w
        if kx is not None:
            wk = wk[kx]
        if ky is not None:
            wk = wk[:, ky]
            if len(node.inputs) > 2 and node.inputs[2].name:
                c = const(node.inputs[2])
                if c.ndim >= 1 and c.shape[-1] > 1:
                    set_const(node, 2, np.take(c, ky, axis=-1), model, "bias")
        set_const(node, 1, wk.T if trans_b else wk, model, "weight")
