"""The in-memory model: a graphsurgeon graph plus the model-level data ONNX keeps outside the graph."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

DEFAULT_DOMAINS = ("", "ai.onnx")
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR  # its warnings go to stdout; ours go into the report


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

    def to_onnx(self, *, weights: bool = True) -> onnx.ModelProto:
        """Export to a ModelProto; deterministic for a given graph (node and tensor order are preserved).

        ``weights=False`` exports a skeleton: large constants keep name, dtype and shape but no data (for shape
        inference and costing without copying the weights).
        """
        self.graph.opset = self.opset
        if not weights:
            return self._skeleton()
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

    def constant_bytes(self) -> int:
        """Bytes of constant data in the top-level graph (weights not loaded yet count by their declared size)."""
        return sum(getattr(t._values, "nbytes", 0) for t in self.graph.tensors().values() if isinstance(t, gs.Constant))

    def is_large(self) -> bool:
        """True when a full export would approach protobuf's 2 GiB limit: exports then keep weights apart."""
        return self.constant_bytes() > LARGE_MODEL_BYTES

    def export_split(self, min_bytes: int = 1 << 20, *, as_inputs: bool = False
                     ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        """Export with top-level constants of ``min_bytes`` or more held out of the proto, for models above 2 GiB.

        Returns the proto and ``{name: array}`` of what was held out. Each held-out weight stays an initializer
        whose data is external (``location`` ``<memory>``: to be supplied by the caller, e.g. onnxruntime's
        external initializers or a data file), or with ``as_inputs=True`` becomes a graph input of its type and
        shape (a valid model for onnx.checker and shape inference).
        """
        used = {id(t) for n in self.graph.nodes for t in n.inputs if isinstance(t, gs.Constant)}
        swapped, arrays = [], {}
        for t in self.graph.tensors().values():  # not the cached map: a pass may be mid-edit
            if id(t) not in used or getattr(t._values, "nbytes", 0) < min_bytes:
                continue
            stub = onnx.TensorProto(name=t.name, data_type=_onnx_dtype(t), dims=list(t.shape))
            arrays[t.name] = t.values
            stub.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", "<memory>"), ("offset", "0"), ("length", str(arrays[t.name].nbytes))):
                stub.external_data.add(key=key, value=value)
            swapped.append((t, t._values))
            t._values = gs.ir.tensor.LazyValues(stub)
        try:
            proto = self.to_onnx()
        finally:
            for t, values in swapped:
                t._values = values
        if as_inputs:
            held = [i for i in proto.graph.initializer if i.name in arrays]
            for init in held:
                proto.graph.initializer.remove(init)
                proto.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type,
                                                                           list(init.dims)))
        return proto, arrays

    def _skeleton(self) -> onnx.ModelProto:
        swapped = []
        for t in self.graph.tensors().values():  # not the cached map: a pass may be mid-edit
            if isinstance(t, gs.Constant) and getattr(t._values, "nbytes", 0) > SKELETON_MIN_BYTES:
                stub = onnx.TensorProto(name=t.name, data_type=_onnx_dtype(t), dims=list(t.shape))
                swapped.append((t, t._values))
                t._values = gs.ir.tensor.LazyValues(stub)
        try:
            return self.to_onnx()
        finally:
            for t, values in swapped:
                t._values = values

    def copy(self) -> Model:
        """A deep copy: new graph objects and new weight arrays (lazily loaded weights share their read-only
        source; a large model's weights are shared and made read-only)."""
        share = self.is_large()  # beyond 2 GiB a copy of every weight costs too much: share them, read-only
        graph = self.graph.copy()
        for t in graph.tensors().values():
            # read-only arrays (weights memory-mapped from a large model's data file) are shared, never written
            if (isinstance(t, gs.Constant) and not isinstance(t._values, gs.ir.tensor.LazyValues)
                    and getattr(t._values, "flags", None) is not None and t._values.flags.writeable):
                if share:
                    t._values.flags.writeable = False  # passes replace weights; none may write into a shared one
                else:
                    t._values = np.array(t._values, copy=True)
        other = Model(graph, opset_imports=self.opset_imports, ir_version=self.ir_version,
                      producer_name=self.producer_name, producer_version=self.producer_version,
                      metadata=self.metadata, functions=[_copy_function(f) for f in self.functions],
                      base_dir=self.base_dir)
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


SKELETON_MIN_BYTES = 4096
#: Constants above this many bytes make a model "large" (see :meth:`Model.is_large`).
LARGE_MODEL_BYTES = 1 << 30


def _onnx_dtype(t: gs.Constant) -> int:
    values = t._values
    if isinstance(values, gs.ir.tensor.LazyValues):
        return values.tensor.data_type
    return onnx.helper.np_dtype_to_tensor_dtype(np.asarray(values).dtype)


def _copy_function(f: onnx.FunctionProto) -> onnx.FunctionProto:
    out = onnx.FunctionProto()
    out.CopyFrom(f)
    return out


def shallow_attrs(node: gs.Node) -> dict[str, Any]:
    """A copy of a node's attributes safe to edit."""
    return copy.copy(node.attrs)

