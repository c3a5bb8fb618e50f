"""Loading (validate, normalize, resolve external data safely) and saving (atomic, deterministic)."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from compress_graph.ir.errors import ModelError
from compress_graph.ir.model import Model
from compress_graph.ir.shapes import infer_shapes
from google.protobuf.message import DecodeError
from onnx import external_data_helper, numpy_helper, version_converter

#: Models below this default-domain opset are upgraded with onnx.version_converter on load. 13 is the first opset with
#: per-axis QuantizeLinear/DequantizeLinear, which per-channel int8 weights need.
MIN_OPSET = 13
#: Protobuf cannot serialize more than 2 GiB; above this many bytes of weights, save() writes external data.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------- loading
#: Above this many bytes of external data, large weights are read only after checking and shape inference (which
#: serialize the model and would hit protobuf's 2 GiB limit); below it everything is read up front.
DEFER_EXTERNAL_ABOVE = 1 << 30
EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay inside the .onnx file when saving with external data
DEFER_TENSOR_MIN = 1 << 20


class _Deferred:
    """Large top-level weights held out of the proto while it is checked: each becomes a typed graph input of its
    shape (so the checker and shape inference see a valid model well under 2 GiB). :meth:`restore` puts them back
    as initializers without data and :meth:`attach` gives the imported constants read-only memory maps of the data
    file, so the weights are never copied into protobuf or anonymous memory."""

    def __init__(self) -> None:
        self.tensors: dict[str, tuple[onnx.TensorProto, Path, int, int]] = {}

    def hold(self, proto: onnx.ModelProto, tensor: onnx.TensorProto, target: Path, offset: int, length: int) -> None:
        proto.graph.initializer.remove(tensor)
        if tensor.name not in {i.name for i in proto.graph.input}:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                                       list(tensor.dims)))
        tensor.ClearField("raw_data")
        self.tensors[tensor.name] = (tensor, target, offset, length)

    def restore(self, proto: onnx.ModelProto) -> None:
        if not self.tensors:
            return
        keep = [i for i in proto.graph.input if i.name not in self.tensors]
        del proto.graph.input[:]
        proto.graph.input.extend(keep)
        for tensor, *_ in self.tensors.values():
            proto.graph.initializer.append(tensor)

    def attach(self, model: Model, where: str) -> None:
        if not self.tensors:
            return
        for t in model.graph.tensors().values():
            spec = self.tensors.get(t.name)
            if spec is None:
                continue  # (an unused weight is not imported at all)
            if not isinstance(t, gs.Constant):  # it must not stay in the graph without its data
                raise ModelError(f"{where}: weight '{t.name}' is not a constant after loading")
            tensor, target, offset, length = spec
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
            try:
                t._values = np.memmap(target, dtype=dtype, mode="r", offset=offset, shape=tuple(tensor.dims))
            except (OSError, ValueError) as exc:
                raise ModelError(f"{where}: tensor '{t.name}': cannot map external data: {_first_line(exc)}") from None


def _memmappable(tensor: onnx.TensorProto) -> bool:
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT4,
                            onnx.TensorProto.UINT4) or tensor.data_type >= onnx.TensorProto.FLOAT8E4M3FN:
        return False
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except Exception:
        return False
    n = 1
    for d in tensor.dims:
        n *= d
    return n > 0 and dtype.itemsize > 0


def _resolve_external_data(proto: onnx.ModelProto, base_dir: Path, where: str) -> _Deferred:
    """Read external tensor data, refusing any location that escapes ``base_dir`` (``..``, absolute, symlinks).

    For models with more than ``DEFER_EXTERNAL_ABOVE`` bytes of external data, top-level weights of
    ``DEFER_TENSOR_MIN`` bytes or more are held back (see :class:`_Deferred`) and read after normalization.
    """
    root = base_dir.resolve()
    found = []
    for tensor in external_data_helper._get_all_tensors(proto):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        loc = info.location or ""
        if not loc or os.path.isabs(loc) or Path(loc).drive:
            raise ModelError(f"{where}: tensor '{tensor.name}': external data location '{loc}' must be relative")
        target = (root / loc).resolve()
        if root != target and root not in target.parents:
            raise ModelError(f"{where}: tensor '{tensor.name}': external data '{loc}' points outside the model folder")
        if not target.is_file():
            raise ModelError(f"{where}: tensor '{tensor.name}': external data file '{loc}' is missing")
        offset = int(info.offset or 0)
        size = target.stat().st_size
        length = int(info.length) if info.length else size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelError(
                f"{where}: tensor '{tensor.name}': external data '{loc}' is shorter than offset+length "
                f"({offset}+{length} > {size} bytes)"
            )
        found.append((tensor, target, offset, length))
    deferred = _Deferred()
    defer = sum(f[3] for f in found) > DEFER_EXTERNAL_ABOVE
    top = {id(t) for t in proto.graph.initializer}
    names = Counter(t.name for t in proto.graph.initializer)
    for tensor, target, offset, length in found:
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
        if (defer and length >= DEFER_TENSOR_MIN and id(tensor) in top and names[tensor.name] == 1
                and _memmappable(tensor)):
            _check_tensor_data(tensor, where, nbytes=length)
            deferred.hold(proto, tensor, target, offset, length)
            continue
        with open(target, "rb") as fh:
            fh.seek(offset)
            tensor.raw_data = fh.read(length)
    return deferred


def _check_strings(message, where: str) -> None:
    """Protobuf hands back ``bytes`` for a string field that is not valid UTF-8; names must be text."""
    from google.protobuf.descriptor import FieldDescriptor

    def items(field, value):  # protobuf < 5.28 has no is_repeated; >= 7 has no label
        repeated = getattr(field, "is_repeated", None)
        if repeated is None:
            repeated = field.label == FieldDescriptor.LABEL_REPEATED
        return value if repeated else [value]

    stack = [message]
    while stack:
        msg = stack.pop()
        for field, value in msg.ListFields():
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                stack.extend(items(field, value))
            elif field.type == FieldDescriptor.TYPE_STRING:
                for v in items(field, value):
                    if not isinstance(v, str):
                        raise ModelError(f"{where}: {type(msg).__name__}.{field.name} is not valid UTF-8: "
                                         f"{bytes(v)[:40]!r}")


def _drop_initializer_inputs(proto: onnx.ModelProto) -> None:
    """Old exports (IR < 4) list every weight as a graph input too; make them plain initializers."""
    inits = {t.name for t in proto.graph.initializer}
    if not inits:
        return
    keep = [i for i in proto.graph.input if i.name not in inits]
    if len(keep) != len(proto.graph.input):
        proto.ir_version = max(proto.ir_version, 4)
        del proto.graph.input[:]
        proto.graph.input.extend(keep)


def _unknown_negative_dims(proto: onnx.ModelProto) -> None:
    """Paddle's exporter writes dynamic dims as ``dim_value: -1``, which ONNX does not allow; strict shape inference
    then fails as soon as a folded shape makes the dim known ("(1) vs (-1)"). Such a dim is an unknown one."""
    for vi in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        for dim in tt.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.ClearField("dim_value")


def _default_opset(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def _interface(proto: onnx.ModelProto) -> list[tuple[str, int, int]]:
    """Names, element types and ranks of inputs and outputs (the converter may make symbolic dims concrete)."""
    inits = {t.name for t in proto.graph.initializer}
    out = []
    for v in list(proto.graph.input) + list(proto.graph.output):
        if v.name in inits:
            continue
        tt = v.type.tensor_type
        out.append((v.name, tt.elem_type, len(tt.shape.dim) if tt.HasField("shape") else -1))
    return out


def normalize(proto: onnx.ModelProto, where: str = "model", *, min_opset: int = MIN_OPSET) -> onnx.ModelProto:
    """Check, upgrade to ``min_opset`` and shape-infer a ModelProto. Raises ModelError with one line."""
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelError(f"{where}: not an ONNX model (no graph or no opset_import)")
    _check_strings(proto, where)
    if proto.ir_version > onnx.IR_VERSION:
        raise ModelError(f"{where}: IR version {proto.ir_version} is newer than supported ({onnx.IR_VERSION})")
    opset = _default_opset(proto)
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ModelError(f"{where}: opset {opset} is newer than this onnx supports ({newest})")
    _drop_initializer_inputs(proto)
    _unknown_negative_dims(proto)
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelError(f"{where}: invalid model: {_first_line(exc)}") from None
    if 0 < opset < min_opset:
        proto.ir_version = max(proto.ir_version, 7)
        try:
            upgraded = version_converter.convert_version(proto, min_opset)
        except Exception as exc:  # the converter raises bare RuntimeErrors
            raise ModelError(f"{where}: cannot upgrade opset {opset} to {min_opset}: {_first_line(exc)}") from None
        upgraded.ir_version = max(upgraded.ir_version, proto.ir_version)
        if _interface(upgraded) != _interface(proto):
            raise ModelError(f"{where}: upgrading opset {opset} to {min_opset} changes the model's inputs/outputs "
                             "(old Scan/Loop semantics); re-export the model with opset >= 13")
        proto = upgraded
    try:
        proto = infer_shapes(proto, strict=True)
    except Exception as exc:
        raise ModelError(f"{where}: shape inference failed: {_first_line(exc)}") from None
    _check_tensor_types(proto, where)
    _check_required_inputs(proto, where)
    _check_weight_shapes(proto, where)
    _drop_control_flow_shapes(proto)
    return proto


def _drop_control_flow_shapes(proto: onnx.ModelProto) -> None:
    """ONNX shape inference merges If branches wrongly in places (a scalar from one branch becomes [1]); onnxruntime
    then rejects the saved value_info. Keep no inferred shapes for control-flow outputs: runtimes infer them."""
    outs = {o for n in proto.graph.node if n.op_type in ("If", "Loop", "Scan") for o in n.output}
    if outs:
        keep = [vi for vi in proto.graph.value_info if vi.name not in outs]
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(keep)


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _check_tensor_types(proto: onnx.ModelProto, where: str) -> None:
    """The IR (graphsurgeon) holds tensors only: refuse sequence / optional / map values with a clear message."""
    for graph in _graphs(proto.graph):
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            kind = vi.type.WhichOneof("value")
            if kind not in (None, "tensor_type"):
                raise ModelError(f"{where}: value '{vi.name}' has {kind.replace('_type', '')} type; only tensor "
                                 "values are supported")


def _check_required_inputs(proto: onnx.ModelProto, where: str) -> None:
    """An empty input name means "absent"; the checker accepts it anywhere, runtimes and passes do not."""
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    for graph in _graphs(proto.graph):
        for node in graph.node:
            if "" not in node.input:
                continue
            domain = node.domain or "ai.onnx"
            try:
                schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, 1),
                                              "" if domain == "ai.onnx" else domain)
            except Exception:
                continue  # unknown op: refused elsewhere or passed through untouched
            formal = list(schema.inputs)
            for i, name in enumerate(node.input):
                if name or not formal:
                    continue
                param = formal[min(i, len(formal) - 1)]
                if param.option != onnx.defs.OpSchema.FormalParameterOption.Optional:
                    raise ModelError(f"{where}: node '{node.name or node.op_type}': input {i} ({param.name}) of "
                                     f"{node.op_type} is empty but not optional")


_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _check_tensor_data(tensor: onnx.TensorProto, where: str, nbytes: int | None = None) -> None:
    """A weight's stored data must match its declared dims (else every consumer reads garbage or crashes).
    ``nbytes``: the size of data not read yet."""
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED) or tensor.data_location == 1:
        return
    n = 1
    for d in tensor.dims:
        if d < 0:
            raise ModelError(f"{where}: tensor '{tensor.name}' has a negative dimension {list(tensor.dims)}")
        n *= d
    if tensor.HasField("raw_data") or nbytes is not None:
        bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(tensor.data_type)
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        except Exception:
            return
        expected = (n * bits + 7) // 8 if bits else n * itemsize
        got = len(tensor.raw_data) if nbytes is None else nbytes
    else:
        got = max(len(getattr(tensor, f)) for f in _TYPED_FIELDS)
        expected = n
        if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
            expected = 2 * n
        if got == 0 and n != 0 and not tensor.HasField("raw_data"):
            return  # values elsewhere (segments, sparse) or genuinely empty: the checker's concern
    if got != expected:
        unit = "bytes" if tensor.HasField("raw_data") else "values"
        raise ModelError(f"{where}: tensor '{tensor.name}' holds {got} {unit} but its shape {list(tensor.dims)} "
                         f"needs {expected}")


def _check_weight_shapes(proto: onnx.ModelProto, where: str) -> None:
    """Catch what shape inference lets through: Conv weights whose channels do not match the input."""
    dims: dict[str, list] = {}
    for vi in list(proto.graph.input) + list(proto.graph.value_info):
        shape = vi.type.tensor_type.shape
        dims[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
    for init in proto.graph.initializer:
        dims[init.name] = list(init.dims)
    for tensor in external_data_helper._get_all_tensors(proto):
        _check_tensor_data(tensor, where)
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2:
            continue
        x, w = dims.get(node.input[0]), dims.get(node.input[1])
        if not x or not w or len(x) < 2 or x[1] is None or len(w) != len(x):
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group < 1 or (w[0] % group if node.op_type == "Conv" else x[1] % group):
            raise ModelError(f"{where}: node '{node.name or node.op_type}': group={group} does not divide its "
                             f"channels (weight {w})")
        expected = w[1] * group if node.op_type == "Conv" else w[0]
        if expected != x[1]:
            raise ModelError(f"{where}: node '{node.name or node.op_type}': weight {w} expects {expected} input "
                             f"channels, input has {x[1]}")


def load(path: str | os.PathLike, *, min_opset: int = MIN_OPSET) -> Model:
    """Load, validate and normalize an ONNX file into a :class:`Model`."""
    p = Path(path)
    where = str(p)
    if not p.is_file():
        raise ModelError(f"{where}: no such file")
    data = p.read_bytes()
    if not data:
        raise ModelError(f"{where}: empty file")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{where}: not an ONNX model (protobuf parse failed: {_first_line(exc)})") from None
    external = any(external_data_helper.uses_external_data(t)
                   for t in external_data_helper._get_all_tensors(proto))
    deferred = _resolve_external_data(proto, p.parent, where)
    proto = normalize(proto, where, min_opset=min_opset)
    deferred.restore(proto)
    try:
        model = Model.from_onnx(proto, base_dir=p.parent)
    except Exception as exc:
        raise ModelError(f"{where}: cannot import graph: {_first_line(exc)}") from None
    deferred.attach(model, where)
    if external:
        model.annotations["external_data"] = True
    return model


# --------------------------------------------------------------------------------------------- saving
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask: from /proc (Linux), else by setting and restoring it (briefly racy with threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, chunks) -> None:
    """Write ``chunks`` (bytes or an iterable of bytes) to ``path`` via a temp file in the same folder + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; the file gets what open() would give it
        with os.fdopen(fd, "wb") as fh:
            if isinstance(chunks, (bytes, bytearray, memoryview)):
                fh.write(chunks)
            else:
                for chunk in chunks:
                    fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _weight_bytes(proto: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or t.ByteSize() for t in external_data_helper._get_all_tensors(proto))


def _set_external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    tensor.data_location = onnx.TensorProto.EXTERNAL


def save(model: Model | onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None) -> None:
    """Save atomically and deterministically.

    External data (one ``<name>.data`` file beside the model) is used automatically when the weights approach the
    2 GiB protobuf limit or the model was loaded from a file with external data, or when ``external_data=True``.
    A :class:`Model` is then written from its arrays, one tensor at a time, without building a full protobuf.
    """
    p = Path(path)
    if isinstance(model, Model):
        if external_data is None:  # a model loaded with external data keeps that layout
            external_data = (bool(model.annotations.get("external_data"))
                             or model.constant_bytes() > EXTERNAL_DATA_THRESHOLD)
        if not external_data:
            atomic_write_bytes(p, model.to_onnx().SerializeToString(deterministic=True))
            return
        proto, arrays = model.export_split(min_bytes=EXTERNAL_MIN_BYTES)
    else:
        if external_data is None:
            external_data = _weight_bytes(model) > EXTERNAL_DATA_THRESHOLD
        if not external_data:
            atomic_write_bytes(p, model.SerializeToString(deterministic=True))
            return
        proto, arrays = _copy_proto(model), {}
    data_name = p.name + ".data"
    layout: list[tuple[onnx.TensorProto, object]] = []
    for tensor in external_data_helper._get_all_tensors(proto):
        if tensor.name in arrays and tensor.data_location == onnx.TensorProto.EXTERNAL:
            layout.append((tensor, arrays[tensor.name]))
            continue
        if not tensor.HasField("raw_data"):
            arr = numpy_helper.to_array(tensor)
            if arr.nbytes < EXTERNAL_MIN_BYTES:
                continue
            tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), tensor.name))
        if len(tensor.raw_data) < EXTERNAL_MIN_BYTES:
            continue
        layout.append((tensor, None))

    offsets = []
    offset = 0
    for tensor, arr in layout:
        n = arr.nbytes if arr is not None else len(tensor.raw_data)
        offset += (-offset) % (4096 if n >= 65536 else 64)  # page-aligned: onnxruntime memory-maps such tensors
        offsets.append((offset, n))
        offset += n

    def chunks():
        pos = 0
        for (tensor, arr), (start, n) in zip(layout, offsets):
            if start > pos:
                yield b"\0" * (start - pos)
            if arr is not None:
                yield memoryview(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))).cast("B")
            else:
                yield tensor.raw_data
                tensor.ClearField("raw_data")
            pos = start + n

    atomic_write_bytes(p.with_name(data_name), chunks())
    for (tensor, _), (start, n) in zip(layout, offsets):
        tensor.ClearField("raw_data")
        _set_external(tensor, data_name, start, n)
    atomic_write_bytes(p, proto.SerializeToString(deterministic=True))


def _copy_proto(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out
