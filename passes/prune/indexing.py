"""Prune handlers for ops that move channels around: Concat (offsets), Split/Slice on the channel axis, Pad on the
channel axis (BlazeFace-style channel growth), Transpose (the channel axis moves), reductions over other axes."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from compress_graph.passes.prune.handlers import Handler, _rank, block_unhandled, const, set_const


class Concat(Handler):
    def analyze(self, node, an):
        y = node.outputs[0]
        ry = _rank(y)
        infos = [an.get(t) for t in node.inputs]
        if ry is None or not infos or infos[0] is None:
            block_unhandled(node, an, "Concat: input layout unknown")
            return
        axis = int(node.attrs.get("axis", 0)) % ry
        ch = infos[0].axis
        if axis != ch:
            yi = an.declare(y, ch, infos[0].size)
            if yi is None:
                return
            for t in node.inputs:
                if const(t) is not None or an.get(t) is None or not an.tie_same(t, y):
                    block_unhandled(node, an, "Concat along a non-channel axis with mismatched inputs")
                    return
            return
        sizes = []
        for t, ti in zip(node.inputs, infos):
            if ti is not None:
                sizes.append(ti.size)
            elif t.shape is not None and isinstance(t.shape[axis], int):
                sizes.append(int(t.shape[axis]))
            else:
                block_unhandled(node, an, "Concat: an input has unknown channel count")
                return
        yi = an.declare(y, axis, sum(sizes))
        if yi is None:
            return
        off = 0
        for t, ti, n in zip(node.inputs, infos, sizes):
            if ti is None or ti.axis != axis:
                an.block(y, "Concat of a constant or unknown-layout input", np.arange(off, off + n))
            else:
                an.tie(t, np.arange(n), y, np.arange(off, off + n))
            off += n


class Split(Handler):
    def _sizes(self, node, total: int, opset: int) -> list[int] | None:
        if len(node.inputs) > 1 and node.inputs[1].name:
            v = const(node.inputs[1])
            return None if v is None else [int(s) for s in v]
        if "split" in node.attrs:
            return [int(s) for s in node.attrs["split"]]
        n = len(node.outputs)
        return [total // n] * n if total % n == 0 else None

    def analyze(self, node, an):
        x = node.inputs[0]
        xi = an.get(x)
        if xi is None:
            return
        axis = int(node.attrs.get("axis", 0)) % xi.rank
        if axis != xi.axis:
            for t in node.outputs:
                if an.declare(t, xi.axis, xi.size) is not None:
                    an.tie_same(x, t)
            return
        sizes = self._sizes(node, xi.size, an.model.opset)
        if sizes is None or sum(sizes) != xi.size:
            block_unhandled(node, an, "Split sizes unknown")
            return
        off = 0
        for t, n in zip(node.outputs, sizes):
            if an.declare(t, axis, n) is not None:
                an.tie(x, np.arange(off, off + n), t, np.arange(n))
            off += n

    def apply(self, node, plan, model):
        if plan.kept(node.inputs[0]) is None:
            return
        info = plan.an.get(node.inputs[0])
        if int(node.attrs.get("axis", 0)) % info.rank != info.axis:
            return
        sizes = np.array([len(plan.kept(t)) if plan.kept(t) is not None else plan.an.get(t).size
                          for t in node.outputs], dtype=np.int64)
        if model.opset >= 13:
            node.attrs.pop("num_outputs", None)
            node.attrs.pop("split", None)
            const_t = gs.Constant(model.unique_name(f"{node.name}.split_pruned"), sizes)
            if len(node.inputs) > 1:
                node.inputs[1] = const_t
            else:
                node.inputs.append(const_t)
        else:
            node.attrs["split"] = [int(s) for s in sizes]


class Slice(Handler):
    def _params(self, node, info):
        vals = [const(node.inputs[i]) if len(node.inputs) > i and node.inputs[i].name else None for i in range(1, 5)]
        starts, ends, axes, steps = vals
        if starts is None or ends is None:
            return None
        axes = list(range(len(starts))) if axes is None else [int(a) % info.rank for a in axes]
        steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
        return [int(s) for s in starts], [int(e) for e in ends], axes, steps

    def analyze(self, node, an):
        x, y = node.inputs[0], node.outputs[0]
        xi = an.get(x)
        if xi is None:
            return
        p = self._params(node, xi)
        if p is None:
            block_unhandled(node, an, "Slice bounds are not constant")
            return
        starts, ends, axes, steps = p
        if xi.axis not in axes:
            if an.declare(y, xi.axis, xi.size) is not None:
                an.tie_same(x, y)
            return
        k = axes.index(xi.axis)
        if steps[k] != 1:
            block_unhandled(node, an, "Slice with a step on the channel axis")
            return
        start, stop, _ = slice(starts[k], ends[k]).indices(xi.size)
        n = max(0, stop - start)
        if an.declare(y, xi.axis, n) is not None and n:
            an.tie(x, np.arange(start, stop), y, np.arange(n))

    def apply(self, node, plan, model):
        x = node.inputs[0]
        kx = plan.kept(x)
        if kx is None:
            return
        info = plan.an.get(x)
        starts, ends, axes, _ = self._params(node, info)
        if info.axis not in axes:
            return
        k = axes.index(info.axis)
        start, stop, _ = slice(starts[k], ends[k]).indices(info.size)
        new_start = int(np.sum(kx < start))
        new_stop = new_start + int(np.sum((kx >= start) & (kx < stop)))
        s, e = np.array(starts, np.int64), np.array(ends, np.int64)
        s[k], e[k] = new_start, new_stop
        set_const(node, 1, s, model, "starts")
        set_const(node, 2, e, model, "ends")


class Pad(Handler):
    """Constant-mode Pad: channel c moves to c + pad_begin; padded channels are removable (the pads shrink)."""

    def _pads(self, node):
        if len(node.inputs) > 1 and node.inputs[1].name:
            v = const(node.inputs[1])
            return None if v is None else [int(p) for p in v]
        return [int(p) for p in node.attrs.get("pads", [])] or None

    def analyze(self, node, an):
        x, y = node.inputs[0], node.outputs[0]
        xi = an.get(x)
        if xi is None:
            return
        pads = self._pads(node)
        if pads is None or (len(node.inputs) > 3 and node.inputs[3].name):
            block_unhandled(node, an, "Pad with non-constant pads or axes")
            return
        p0, p1 = pads[xi.axis], pads[xi.axis + xi.rank]
        if (p0 or p1) and node.attrs.get("mode", "constant") not in ("constant", b"constant"):
            block_unhandled(node, an, "non-constant Pad mode on the channel axis")
            return
        if p0 < 0 or p1 < 0:
            block_unhandled(node, an, "negative Pad on the channel axis")
            return
        if an.declare(y, xi.axis, xi.size + p0 + p1) is not None:
            an.tie(x, np.arange(xi.size), y, np.arange(xi.size) + p0)

    def apply(self, node, plan, model):
        ky = plan.kept(node.outputs[0])
        if ky is None:
            return
        xi = plan.an.get(node.inputs[0])
        pads = self._pads(node)
        p0 = pads[xi.axis]
        pads[xi.axis] = int(np.sum(ky < p0))
        pads[xi.axis + xi.rank] = int(np.sum(ky >= p0 + xi.size))
        if len(node.inputs) > 1 and node.inputs[1].name:
            set_const(node, 1, np.array(pads, np.int64), model, "pads")
        else:
            node.attrs["pads"] = pads


class Transpose(Handler):
    def analyze(self, node, an):
        x, y = node.inputs[0], node.outputs[0]
        xi = an.get(x)
        if xi is None:
            return
        perm = list(node.attrs.get("perm", list(range(xi.rank))[::-1]))
        if perm[0] != 0:
            block_unhandled(node, an, "Transpose moves the batch axis")
            return
        if an.declare(y, perm.index(xi.axis), xi.size) is not None:
            an.tie_same(x, y)


class Reduce(Handler):
    def analyze(self, node, an):
        x, y = node.inputs[0], node.outputs[0]
        xi = an.get(x)
        if xi is None:
            return
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
            v = const(node.inputs[1])
            axes = None if v is None else [int(a) for a in v]
        if axes is None:
            block_unhandled(node, an, f"{node.op} over all axes")
            return
        axes = [a % xi.rank for a in axes]
        if xi.axis in axes:
            block_unhandled(node, an, f"{node.op} reduces over channels")
            return
        keep = int(node.attrs.get("keepdims", 1))
        axis = xi.axis if keep else xi.axis - sum(a < xi.axis for a in axes)
        if an.declare(y, axis, xi.size) is not None:
            an.tie_same(x, y)
