"""Calibration / sample data: .npz keyed by input name, a folder of .npy files, or seeded random inputs.

Arrays hold samples along the batch axis, ``[N, *input_shape[1:]]``; they are fed in batches that fit the model's
batch dimension (one sample at a time for a fixed batch of 1). Data is read lazily (``np.load(mmap_mode="r")``) so
memory stays bounded by one batch whatever the number of samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_graphsurgeon as gs
from compress_graph.ir.errors import ModelError, UsageError
from compress_graph.ir.model import Model
from compress_graph.ir.shapes import is_static

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int64": np.int64,
              "int32": np.int32, "uint8": np.uint8, "int8": np.int8, "bool": np.bool_}


def input_specs(model: Model) -> list[tuple[str, list, np.dtype]]:
    """(name, shape with symbolic dims as str/None, numpy dtype) for every real graph input."""
    specs = []
    for t in model.graph.inputs:
        if isinstance(t, gs.Constant):
            continue
        dtype = np.dtype(t.dtype) if t.dtype is not None else np.dtype(np.float32)
        specs.append((t.name, list(t.shape) if t.shape is not None else None, dtype))
    return specs


class DynamicShapeError(ModelError):
    """Random sample inputs cannot be made: an input has a dynamic non-batch dimension."""


def _show(shape) -> str:
    return "[" + ",".join(str(d) if isinstance(d, int) and d >= 0 else "?" for d in shape) + "]"


@dataclass
class InputShapes:
    """The concrete shape each input is analysed at (MACs, random sample inputs, a compiled library), and where it
    came from. The model keeps its declared (dynamic) dims; these are for analysis only."""

    shapes: dict[str, list[int]] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)  # name -> model | --input-shape | calibration data | batch 1
    declared: dict[str, list] = field(default_factory=dict)  # dynamic inputs: their declared dims (None: unknown)
    unresolved: list[str] = field(default_factory=list)

    @property
    def dynamic(self) -> bool:
        return bool(self.declared)

    def missing_message(self, what: str) -> str:
        """One line: which input is dynamic and how to give it a shape."""
        name = self.unresolved[0]
        dims = self.declared.get(name)
        shown = _show(dims) if dims is not None else "of unknown rank"
        names = ["N", "C", "H", "W"] if len(dims or []) == 4 else ["N"] * len(dims or [])
        example = ",".join(str(d) if isinstance(d, int) and d > 0 else ("1" if i == 0 else names[i])
                           for i, d in enumerate(dims or []))
        return (f"{what}: input '{name}' has a dynamic shape {shown}; give it one with --input-shape "
                f"{name}={example or 'DIMS'} or with --calib data")

    def report(self) -> dict:
        return {name: {"shape": self.shapes.get(name), "declared": _show(self.declared[name])
                       if self.declared.get(name) is not None else None, "from": self.source.get(name)}
                for name in self.declared}


def resolve_input_shapes(model: Model, given: dict[str, list[int]] | None = None,
                         calib: CalibData | None = None) -> InputShapes:
    """Concrete shapes for the model's inputs: ``given`` (``--input-shape``) first, else a calibration sample's
    shape (batch 1 where the batch is dynamic), else batch 1 for an input whose only dynamic dim is the batch.
    Inputs with other dynamic dims and none of these stay unresolved. Raises UsageError when a given shape
    contradicts the model."""
    given = dict(given or {})
    out = InputShapes()
    for name, shape, _ in input_specs(model):
        if name in given:
            dims = list(given[name])
            if shape is not None:
                if len(dims) != len(shape):
                    raise UsageError(f"--input-shape {name}: {len(dims)} dims given, the model's input has "
                                     f"{len(shape)} {_show(shape)}")
                bad = [i for i, (d, s) in enumerate(zip(dims, shape)) if isinstance(s, int) and s > 0 and s != d]
                if bad:
                    raise UsageError(f"--input-shape {name}={','.join(map(str, dims))}: dim {bad[0]} is fixed to "
                                     f"{shape[bad[0]]} in the model {_show(shape)}")
            if not is_static(shape):
                out.declared[name] = shape
            out.shapes[name], out.source[name] = dims, "--input-shape"
            continue
        if is_static(shape):
            out.shapes[name], out.source[name] = list(shape), "model"
            continue
        out.declared[name] = shape
        if calib is not None and name in calib.arrays:
            sample = list(calib.arrays[name].shape[1:])
            batch = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else 1
            out.shapes[name], out.source[name] = [batch, *sample], "calibration data"
        elif shape is not None and shape and is_static(shape[1:]):
            out.shapes[name], out.source[name] = [1, *shape[1:]], "batch 1"
        else:
            out.unresolved.append(name)
    return out


def _batch_size(shape: list | None) -> int | None:
    if not shape:
        return None
    first = shape[0]
    return first if isinstance(first, int) and first > 0 else None


class CalibData:
    """Named arrays of samples; iterate with :meth:`batches` or take :meth:`samples`."""

    def __init__(self, arrays: dict[str, np.ndarray], batch: int = 1, source: str = "memory",
                 dynamic_batch: bool = False):
        if not arrays:
            raise UsageError(f"calibration data {source}: no arrays")
        counts = {len(a) for a in arrays.values()}
        if len(counts) != 1:
            raise UsageError(f"calibration data {source}: inputs have different sample counts {sorted(counts)}")
        self.arrays = arrays
        self.batch = max(1, int(batch))
        self.source = source
        self.count = counts.pop()
        self.dynamic_batch = dynamic_batch  # the model takes any batch: a request for fewer samples is one run

    # --------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_path(cls, path, model: Model | None) -> CalibData:
        p = Path(path)
        if not p.exists():
            raise UsageError(f"calibration data '{path}' not found")
        if p.is_dir():
            files = sorted(p.glob("*.npy"))
            if not files:
                raise UsageError(f"calibration folder '{path}' holds no .npy files")
            names = [n for n, _, _ in input_specs(model)] if model is not None else []
            by_name = {f.stem: f for f in files}
            if names and all(n in by_name for n in names):
                arrays = {n: np.load(by_name[n], mmap_mode="r") for n in names}
            elif len(names) == 1:
                arrays = {names[0]: _stack_samples(files, model)}
            else:
                raise UsageError(f"calibration folder '{path}': expected one .npy per model input named {names}")
        elif p.suffix == ".npz":
            try:
                npz = np.load(p, mmap_mode="r")
                arrays = {k: npz[k] for k in npz.files}
            except Exception as exc:
                raise UsageError(f"calibration data '{path}' is not a readable .npz: {exc}") from None
        elif p.suffix == ".npy":
            if model is None or len(input_specs(model)) != 1:
                raise UsageError(f"calibration data '{path}': a single .npy needs a single-input model")
            arrays = {input_specs(model)[0][0]: np.load(p, mmap_mode="r")}
        else:
            raise UsageError(f"calibration data '{path}': expected an .npz file or a folder of .npy files")
        return cls.for_model(arrays, model, source=str(path))

    @classmethod
    def for_model(cls, arrays: dict[str, np.ndarray], model: Model | None, source: str = "memory") -> CalibData:
        """Check ``arrays`` against the model's inputs (names, per-sample shapes) and pick the batch size."""
        batch = 1
        dynamic = False
        if model is not None:
            specs = input_specs(model)
            missing = [n for n, _, _ in specs if n not in arrays]
            if missing:
                raise UsageError(f"calibration data {source}: no array for model input(s) {missing}; "
                                 f"has {sorted(arrays)}")
            arrays = {n: arrays[n] for n, _, _ in specs}
            for name, shape, _ in specs:
                arr = arrays[name]
                if shape is not None:
                    want = shape[1:]
                    got = list(arr.shape[1:])
                    if len(want) != len(got) or any(isinstance(w, int) and w > 0 and w != g
                                                    for w, g in zip(want, got)):
                        raise UsageError(f"calibration data {source}: input '{name}' samples have shape {got}, "
                                         f"model expects {want} (arrays are [N, *input_shape[1:]])")
            fixed = {_batch_size(s) for _, s, _ in specs}
            fixed.discard(None)
            count = min(len(a) for a in arrays.values()) if arrays else 1
            # a dynamic batch takes up to 8 samples per run (fewer when fewer were given)
            dynamic = not fixed
            batch = fixed.pop() if len(fixed) == 1 else (1 if fixed else max(1, min(8, count)))
        return cls(arrays, batch=batch, source=source, dynamic_batch=dynamic)

    @classmethod
    def random(cls, model: Model, count: int = 8, seed: int = 0, shapes: dict[str, list[int]] | None = None
               ) -> CalibData:
        """Seeded random inputs from the model's input shapes (standard normal floats, small non-negative ints).

        ``shapes`` (default: the model's ``annotations["input_shapes"]``) fills dynamic dims."""
        from compress_graph.ir.cost import INPUT_SHAPES_KEY

        rng = np.random.default_rng(seed)
        arrays = {}
        batch = 1
        dynamic = False
        if shapes is None:
            shapes = model.annotations.get(INPUT_SHAPES_KEY) or {}
        for name, shape, dtype in input_specs(model):
            if name in shapes and not is_static(shape):
                shape = [shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None,
                         *shapes[name][1:]]
            if shape is None:
                raise DynamicShapeError(f"input '{name}' has unknown rank; pass sample data with --calib or a "
                                        "shape with --input-shape")
            dims = []
            for i, d in enumerate(shape[1:] if shape else []):
                if not (isinstance(d, int) and d >= 0):
                    raise DynamicShapeError(f"input '{name}' has a dynamic dimension {i + 1} ('{d}'); pass sample "
                                            "data with --calib or a shape with --input-shape")
                dims.append(d)
            if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
                raise ModelError(f"input '{name}' has dtype {dtype}; random sample inputs need numeric inputs "
                                 "(pass --calib data or --no-verify)")
            b = _batch_size(shape) if shape else 1
            batch = b or 1
            dynamic = dynamic or b is None
            if np.issubdtype(dtype, np.floating):
                arr = rng.standard_normal((count, *dims)).astype(dtype)
            elif dtype == np.bool_:
                arr = rng.integers(0, 2, (count, *dims)).astype(np.bool_)
            else:
                arr = rng.integers(0, 4, (count, *dims)).astype(dtype)
            arrays[name] = arr if shape else arr.reshape(count)
        return cls(arrays, batch=batch, source=f"random(seed={seed})", dynamic_batch=dynamic)

    # --------------------------------------------------------------------------------------------- access
    def batches(self, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of ``self.batch`` samples each (the last one may be smaller only for dynamic batch models)."""
        n = self.count if limit is None else min(self.count, limit)
        batch = min(self.batch, max(n, 1)) if self.dynamic_batch else self.batch
        stop = n if self.dynamic_batch or batch == 1 else n - batch + 1
        for start in range(0, stop, batch):
            yield {k: np.ascontiguousarray(v[start:min(start + batch, n)]) for k, v in self.arrays.items()}

    def samples(self, n: int) -> list[dict[str, np.ndarray]]:
        return list(self.batches(limit=n))

    def num_batches(self, limit: int | None = None) -> int:
        n = self.count if limit is None else min(self.count, limit)
        batch = min(self.batch, max(n, 1)) if self.dynamic_batch else self.batch
        return max(0, -(-n // batch) if self.dynamic_batch else n // batch)


def _stack_samples(files: list[Path], model: Model) -> np.ndarray:
    arrays = [np.load(f) for f in files]
    name, shape, _ = input_specs(model)[0]
    rank = len(shape) if shape else arrays[0].ndim
    return np.concatenate([a if a.ndim == rank else a[None] for a in arrays], axis=0)
