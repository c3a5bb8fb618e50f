"""Channel dependency analysis: which channels of which tensors must be removed together.

Every channel of every tensor that carries channels is an *element*. Op handlers (``handlers.py``) tie elements
that must go together (a Relu's input and output channel c, Concat offsets, a group conv's local channel j in every
group, a flattened feature and the channel it came from) and block elements that cannot be removed (graph inputs and
outputs, ops without a handler). A union-find over elements gives *units* (the smallest removable sets of channels);
units that share tensors form a :class:`ChannelGroup`. Everything is one walk over the nodes plus near-linear
union-find, so it stays fast on big graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
from compress_graph.ir import graph as G
from compress_graph.ir.model import Model


@dataclass
class TensorInfo:
    """A tensor whose axis ``axis`` holds ``size`` channels, numbered ``offset .. offset+size-1`` as elements."""

    name: str
    axis: int
    size: int
    offset: int
    rank: int


@dataclass
class WeightSlice:
    """Weights indexed by the channels of ``tensor`` along ``axis`` of ``array`` (kept as a view, never copied).

    ``kind`` is "out" (a filter producing the channel), "in" (a consumer's weights reading it) or "bn" (a per-channel
    scale, e.g. BN gamma); criteria turn these into importances.
    """

    node: str
    tensor: str
    kind: str
    array: np.ndarray
    axis: int = 0

    def reduce(self, how: str) -> np.ndarray:
        """Per-channel sum of |w| ("l1") or w^2 ("l2") over every other axis."""
        others = tuple(i for i in range(self.array.ndim) if i != self.axis)
        a = self.array
        v = np.abs(a).sum(axis=others) if how == "l1" else np.square(a).sum(axis=others)
        return np.asarray(v, dtype=np.float64).reshape(-1)

    def rows(self) -> np.ndarray:
        """[channels, rest] float64 copy (only FPGM needs the full rows)."""
        a = np.moveaxis(self.array, self.axis, 0)
        return np.asarray(a.reshape(a.shape[0], -1), dtype=np.float64)


@dataclass
class Unit:
    """The smallest removable set of channels: ``members`` maps tensor name -> channel indices."""

    uid: int
    members: dict[str, np.ndarray]


@dataclass
class ChannelGroup:
    """Units coupled through shared tensors; pruning budgets (ratio, MACs) are allocated per group."""

    gid: int
    tensors: list[str]
    units: list[Unit]
    blocked: list[str] = field(default_factory=list)  # reasons some of its channels cannot be removed

    @property
    def name(self) -> str:
        return self.tensors[0]


class Analysis:
    """Built by :func:`analyze`; handlers call :meth:`declare`, :meth:`tie`, :meth:`block` and :meth:`add_weights`."""

    def __init__(self, model: Model):
        self.model = model
        self.info: dict[str, TensorInfo] = {}
        self.total = 0
        self._edges_a: list[np.ndarray] = []
        self._edges_b: list[np.ndarray] = []
        self.blocked: dict[str, list[tuple[np.ndarray | None, str]]] = {}
        self.weights: list[WeightSlice] = []
        self.sinks: list[tuple[str, str]] = []  # (node name, input tensor name): consumers whose weights read channels
        self.claimed: set[int] = set()  # id() of nodes a pattern handler already took care of
        self.unhandled: dict[str, int] = {}  # op type -> count of nodes without a handler
        self.node_by_name: dict[str, gs.Node] = {}
        self.current: gs.Node | None = None  # the node whose handler is running
        self.shuffles: dict[str, tuple] = {}  # channel-shuffle Reshape nodes (see reshape.py): name -> pattern data

    # ------------------------------------------------------------------ declarations
    def get(self, t: gs.Tensor | None) -> TensorInfo | None:
        if t is None:
            return None
        return self.info.get(t.name)

    def declare(self, t: gs.Tensor, axis: int, size: int | None = None, rank: int | None = None) -> TensorInfo | None:
        """Give ``t`` channels along ``axis`` (size from its shape unless given). Returns None if unknown."""
        existing = self.info.get(t.name)
        if existing is not None:
            if existing.axis != axis or (size is not None and existing.size != size):
                self.block(t, f"tensor '{t.name}' is used with two different channel layouts")
            return existing
        shape = t.shape
        rank = len(shape) if shape is not None else rank
        if rank is None or rank < 1 or (shape is None and size is None):
            return None
        if axis < 0:
            axis += rank
        if size is None:
            if not 0 <= axis < rank or not isinstance(shape[axis], int) or shape[axis] <= 0:
                return None
            size = int(shape[axis])
        info = TensorInfo(t.name, axis, int(size), self.total, rank)
        self.total += info.size
        self.info[t.name] = info
        prod = t.inputs[0] if t.inputs else None
        if prod is not None and prod is not self.current:
            # its producer did not track channels (no handler, or a layout it refused): keep them all
            self.block(t, f"produced by {prod.op} '{prod.name}', whose channels are not tracked")
        return info

    def tie(self, a: gs.Tensor, ia, b: gs.Tensor, ib) -> None:
        """Channels ``ia`` of ``a`` and ``ib`` of ``b`` (index arrays of equal length) must be removed together."""
        ta, tb = self.info[a.name], self.info[b.name]
        ia, ib = np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)
        self._edges_a.append(ia + ta.offset)
        self._edges_b.append(ib + tb.offset)

    def tie_same(self, a: gs.Tensor, b: gs.Tensor) -> bool:
        """Tie channel c of ``a`` to channel c of ``b``; False (and both blocked) if their sizes differ."""
        ta, tb = self.info.get(a.name), self.info.get(b.name)
        if ta is None or tb is None:
            return False
        if ta.size != tb.size:
            self.block(a, f"'{a.name}' and '{b.name}' have different channel counts")
            self.block(b, f"'{a.name}' and '{b.name}' have different channel counts")
            return False
        idx = np.arange(ta.size)
        self.tie(a, idx, b, idx)
        return True

    def tie_within(self, t: gs.Tensor, groups: np.ndarray) -> None:
        """Tie every column of ``groups`` (shape [k, n]: row r is one copy) together, e.g. local j of each group."""
        groups = np.asarray(groups, dtype=np.int64)
        for r in range(1, groups.shape[0]):
            self.tie(t, groups[0], t, groups[r])

    def block(self, t: gs.Tensor | None, reason: str, idx=None) -> None:
        """Channels of ``t`` (all, or ``idx``) cannot be removed; ``reason`` is reported."""
        if t is None or t.name not in self.info:
            return
        self.blocked.setdefault(t.name, []).append((None if idx is None else np.asarray(idx, np.int64), reason))

    def add_weights(self, node: gs.Node, t: gs.Tensor, kind: str, array: np.ndarray, axis: int = 0) -> None:
        """Register weights whose ``axis`` runs over the channels of ``t`` (for importance and MAC savings)."""
        info = self.info.get(t.name)
        if info is None or array.ndim == 0 or array.shape[axis] != info.size:
            return
        self.weights.append(WeightSlice(node.name, t.name, kind, array, axis))

    def add_sink(self, node: gs.Node, t: gs.Tensor) -> None:
        if t.name in self.info:
            self.sinks.append((node.name, t.name))

    # ------------------------------------------------------------------ units and groups
    def roots(self) -> np.ndarray:
        """Union-find over all ties; returns the root element of every element."""
        parent = np.arange(self.total, dtype=np.int64)
        if self._edges_a:
            a = np.concatenate(self._edges_a).tolist()
            b = np.concatenate(self._edges_b).tolist()
            par = parent.tolist()

            def find(x: int) -> int:
                while par[x] != x:
                    par[x] = par[par[x]]
                    x = par[x]
                return x

            for x, y in zip(a, b):
                rx, ry = find(x), find(y)
                if rx != ry:
                    if rx < ry:
                        par[ry] = rx
                    else:
                        par[rx] = ry
            parent = np.array([find(x) for x in range(self.total)], dtype=np.int64)
        return parent

    def build_groups(self) -> tuple[list[ChannelGroup], list[ChannelGroup]]:
        """(prunable groups, fully blocked groups); units with a blocked element or without weights are dropped."""
        if self.total == 0:
            return [], []
        root = self.roots()
        names = list(self.info)
        offsets = np.array([self.info[n].offset for n in names], dtype=np.int64)
        elem_tensor = np.searchsorted(offsets, np.arange(self.total), side="right") - 1
        blocked_root: dict[int, str] = {}
        for tname, entries in self.blocked.items():
            info = self.info[tname]
            for idx, reason in entries:
                elems = info.offset + (np.arange(info.size) if idx is None else idx)
                for r in np.unique(root[elems]).tolist():
                    blocked_root.setdefault(r, reason)
        weighted = np.zeros(self.total, dtype=bool)
        for w in self.weights:
            info = self.info[w.tensor]
            weighted[info.offset: info.offset + info.size] = True
        # unit id per element = its root; tensors sharing a unit form a group (second union-find over tensors)
        order = np.lexsort((np.arange(self.total), elem_tensor, root))
        r_sorted, t_sorted = root[order], elem_tensor[order]
        new_unit = np.r_[True, r_sorted[1:] != r_sorted[:-1]]
        new_pair = new_unit | np.r_[True, t_sorted[1:] != t_sorted[:-1]]
        pair_starts = np.flatnonzero(new_pair)
        pair_ends = np.r_[pair_starts[1:], self.total]
        tparent = list(range(len(names)))

        def tfind(x: int) -> int:
            while tparent[x] != x:
                tparent[x] = tparent[tparent[x]]
                x = tparent[x]
            return x

        pair_t = t_sorted[pair_starts].tolist()
        pair_new_unit = new_unit[pair_starts].tolist()
        for i in range(1, len(pair_t)):
            if not pair_new_unit[i]:
                ra, rb = tfind(pair_t[i - 1]), tfind(pair_t[i])
                if ra != rb:
                    tparent[rb] = ra
        group_of_tensor = [tfind(i) for i in range(len(names))]
        by_group: dict[int, ChannelGroup] = {}
        for i, name in enumerate(names):
            g = by_group.setdefault(group_of_tensor[i], ChannelGroup(len(by_group), [], []))
            g.tensors.append(name)
        unit_weighted = np.add.reduceat(weighted[order].astype(np.int64), np.flatnonzero(new_unit)) > 0
        offs = [self.info[n].offset for n in names]
        members: dict[str, np.ndarray] = {}
        k = -1
        r_list = r_sorted[pair_starts].tolist()
        for i, (s, e) in enumerate(zip(pair_starts.tolist(), pair_ends.tolist())):
            if pair_new_unit[i]:
                k += 1
                members = {}
                r = r_list[i]
                g = by_group[group_of_tensor[pair_t[i]]]
                skip = r in blocked_root or not unit_weighted[k]
                if r in blocked_root and blocked_root[r] not in g.blocked:
                    g.blocked.append(blocked_root[r])
                if not skip:
                    g.units.append(Unit(r, members))
            if not skip:
                members[names[pair_t[i]]] = order[s:e] - offs[pair_t[i]]
        groups = sorted(by_group.values(), key=lambda g: g.gid)
        prunable = [g for g in groups if g.units]
        dead = [g for g in groups if not g.units and g.blocked]
        for i, g in enumerate(prunable):
            g.gid = i
        return prunable, dead


def analyze(model: Model, exclude: list[str] | None = None) -> Analysis:
    """Run every node's handler in topological order and return the analysis (ties, blocks, weights)."""
    from fnmatch import fnmatch

    from compress_graph.passes.prune.handlers import block_unhandled
    from compress_graph.passes.prune.table import HANDLERS

    G.toposort(model.graph)
    an = Analysis(model)
    graph = model.graph
    for t in graph.inputs:
        if an.declare(t, 1) is not None:
            an.block(t, f"graph input '{t.name}'")
    patterns = [p for p in (exclude or []) if p]
    for node in graph.nodes:
        if node.name:
            an.node_by_name[node.name] = node
        if id(node) in an.claimed:
            continue
        an.current = node
        handler = HANDLERS.get(node.op) if (node.domain or "") in ("", "ai.onnx") else None
        if handler is None:
            an.unhandled[node.op] = an.unhandled.get(node.op, 0) + 1
            block_unhandled(node, an, f"op {node.op} has no prune handler")
            continue
        handler.analyze(node, an)
        _check_outputs(node, an)
        if patterns and node.name and any(fnmatch(node.name, p) for p in patterns):
            for t in list(node.inputs) + list(node.outputs):
                an.block(t, f"node '{node.name}' is excluded")
    for t in graph.outputs:
        an.block(t, f"graph output '{t.name}'")
    return an


def _check_outputs(node: gs.Node, an: Analysis) -> None:
    """Safety net: if a handler tracked none of a used output while inputs carry channels, keep those channels."""
    if node.name in an.shuffles:
        return
    lost = [t for t in node.outputs if t.name and t.name not in an.info and (t.outputs or t in an.model.graph.outputs)]
    if lost:
        for t in node.inputs:
            an.block(t, f"{node.op} '{node.name}': output channel layout unknown")
