"""The in-memory model: a graphsurgeon graph plus the model-level data ONNX keeps outside the graph."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import onnx_graphsurgeon as gs

DEFAULT_DOMAINS = ("", "ai.onnx")


class Model:
    """A model under compression.

    ``graph`` is an ``onnx_graphsurgeon.Graph``; passes edit it in place. Analyses (topological order, tensor map,
    channel groups, ...) are cached through :meth:`analysis` and dropped by :meth:`invalidate`, which the pipeline
    calls whenever a pass reports ``modified=True``.
    """

    def __init__(
        self,
        graph: gs.Graph,
        *,
        opset_imports: dict[str, int] | None = None,
        ir_version: int = onnx.IR_VERSION,
        producer_name: str = "compress-graph",
        producer_version: str = "",
        metadata: dict[str, str] | None = None,
        functions: list[onnx.FunctionProto] | None = None,
        base_dir: Path | None = None,
    ):
        self.graph = graph
        self.opset_imports = dict(opset_imports or {"": graph.opset})
        self.ir_version = ir_version
        self.producer_name = producer_name
        self.producer_version = producer_version
        self.metadata = dict(metadata or {})
        self.functions = list(functions or [])
        self.base_dir = base_dir
        # Side data passes hand to later passes (e.g. BN statistics recorded before folding); not saved to the file.
        self.annotations: dict[str, Any] = {}
        self._cache: dict[str, Any] = {}
        self._names: set[str] | None = None
        self._name_counters: dict[str, int] = {}

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_onnx(cls, proto: onnx.ModelProto, base_dir: Path | None = None) -> Model:
        opsets = {(imp.domain if imp.domain != "ai.onnx" else ""): imp.version for imp in proto.opset_import}
        graph = gs.import_onnx(proto)
        graph.opset = opsets.get("", graph.opset)
        return cls(
            graph,
            opset_imports=opsets,
            ir_version=proto.ir_version,
            producer_name=proto.producer_name,
            producer_version=proto.producer_version,
            metadata={p.key: p.value for p in proto.metadata_props},
            functions=list(proto.functions),
            base_dir=base_dir,
        )

    def to_onnx(self) -> onnx.ModelProto:
        """Export to a ModelProto; deterministic for a given graph (node and tensor order are preserved)."""
        self.graph.opset = self.opset
        proto = gs.export_onnx(self.graph, do_type_check=False)
        del proto.opset_import[:]
        for domain in sorted(self.opset_imports):
            proto.opset_import.append(onnx.helper.make_opsetid(domain, self.opset_imports[domain]))
        used_domains = {n.domain for n in proto.graph.node} - {"", "ai.onnx"}
        for domain in sorted(used_domains - set(self.opset_imports)):
            proto.opset_import.append(onnx.helper.make_opsetid(domain, 1))
        proto.ir_version = self.ir_version
        proto.producer_name = self.producer_name
        proto.producer_version = self.producer_version
        del proto.metadata_props[:]
        for key in sorted(self.metadata):
            proto.metadata_props.add(key=key, value=self.metadata[key])
        del proto.functions[:]
        proto.functions.extend(self.functions)
        return proto

    def copy(self) -> Model:
        """A deep copy (weights included)."""
        other = Model.from_onnx(self.to_onnx(), base_dir=self.base_dir)
        other.metadata = dict(self.metadata)
        other.annotations = copy.deepcopy(self.annotations)
        return other

    # ------------------------------------------------------------------ properties
    @property
    def opset(self) -> int:
        return int(self.opset_imports.get("", self.graph.opset))

    @opset.setter
    def opset(self, value: int) -> None:
        self.opset_imports[""] = int(value)
        self.graph.opset = int(value)

    # ------------------------------------------------------------------ analyses
    def analysis(self, key: str, compute: Callable[[Model], Any]) -> Any:
        """Return the cached analysis ``key``, computing it with ``compute(model)`` on first use."""
        if key not in self._cache:
            self._cache[key] = compute(self)
        return self._cache[key]

    def invalidate(self) -> None:
        """Drop every cached analysis (call after changing the graph)."""
        self._cache.clear()
        self._names = None

    def tensor_map(self) -> dict[str, gs.Tensor]:
        """Name -> tensor for the whole graph (cached; rebuilt after :meth:`invalidate`)."""
        return self.analysis("tensor_map", lambda m: m.graph.tensors())

    # ------------------------------------------------------------------ names
    def unique_name(self, prefix: str) -> str:
        """A tensor/node name not used anywhere in the graph yet; every generated name is remembered."""
        if self._names is None:
            self._names = set(self.graph.tensors().keys())
            self._names.update(n.name for n in self.graph.nodes if n.name)
        base = prefix or "t"
        if base not in self._names:
            self._names.add(base)
            return base
        count = self._name_counters.get(base, 0)
        while True:
            count += 1
            candidate = f"{base}_{count}"
            if candidate not in self._names:
                self._name_counters[base] = count
                self._names.add(candidate)
                return candidate

    def __deepcopy__(self, memo):  # graphsurgeon graphs deep-copy slowly and lose links; go through ONNX
        return self.copy()

    def __repr__(self) -> str:
        return f"Model(nodes={len(self.graph.nodes)}, opset={self.opset}, inputs={[t.name for t in self.graph.inputs]})"


def shallow_attrs(node: gs.Node) -> dict[str, Any]:
    """A copy of a node's attributes safe to edit."""
    return copy.copy(node.attrs)
