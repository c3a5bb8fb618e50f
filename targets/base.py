"""What every target module declares, and the parsing of target text such as ``arm{cpu=cortex-a55}``.

A target module (arm.py, armv7.py, jetson.py, opencl.py, host.py) exposes the same names:
``NAME``, ``DESCRIPTION``, ``OPTIONS`` (name -> Option), ``ONNX_PASSES`` (ONNX-side passes it wants first),
``DEVICE`` ("cpu", "cuda" or "opencl"), ``ELF_MACHINE`` (what ``readelf -h`` must say about the library),
``tvm_target(options)``, ``cross_compiler(options)`` and ``verify(lib_path, feeds, options, rpc=...)``.
opencl.py serves two names (mali, adreno) through two instances of one class with those attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from compress_graph.ir.errors import UsageError


@dataclass(frozen=True)
class Option:
    """One ``key=value`` a target accepts; ``choices`` (if any) are the only valid values."""

    default: str
    help: str
    choices: tuple[str, ...] = ()


# CPU targets: how QDQ models lowered to integer kernels (targets/int8) requantize int32 results to 8 bits
REQUANT_OPTION = Option("fixed", "int8 requantization of QDQ models: fixed-point multiplier + shift (fixed) or "
                        "float32 as onnxruntime's fused CPU kernels do it (float: reproduces them where they sum "
                        "exactly, e.g. VNNI, including their near-tie roundings; ~20% slower)",
                        ("fixed", "float"))


class TargetModule(Protocol):
    NAME: str
    DESCRIPTION: str
    OPTIONS: dict[str, Option]
    ONNX_PASSES: tuple[str, ...]
    DEVICE: str
    ELF_MACHINE: str

    def tvm_target(self, options: dict[str, str]) -> Any: ...

    def cross_compiler(self, options: dict[str, str]) -> Any: ...

    def verify(self, lib_path, feeds, options: dict[str, str], *, rpc: str | None = None,
               workdir=None) -> dict[str, Any]: ...


@dataclass
class TargetSpec:
    """A parsed, validated target: its module and the full option dict (defaults filled in)."""

    module: Any
    options: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.module.NAME

    def text(self) -> str:
        """Canonical text: only the options that differ from their defaults, in declaration order."""
        changed = [f"{k}={v}" for k, v in self.options.items() if v != self.module.OPTIONS[k].default]
        return self.name + ("{" + ",".join(changed) + "}" if changed else "")


def _split(text: str) -> tuple[str, dict[str, str]]:
    try:
        from compress_graph.passes.pipeline import parse_pipeline_items
    except ImportError:  # pragma: no cover - the lead's parser is the one used in the package
        parse_pipeline_items = None
    if parse_pipeline_items is not None:
        items = parse_pipeline_items(text)
    else:  # pragma: no cover
        name, _, rest = text.partition("{")
        opts = dict(kv.split("=", 1) for kv in rest.rstrip("}").split(",") if "=" in kv)
        items = [(name.strip(), {k.strip(): v.strip() for k, v in opts.items()})]
    if len(items) != 1:
        raise UsageError(f"target '{text}': expected one target such as arm or arm{{cpu=cortex-a55}}")
    return items[0]


def parse_target(text: str, registry: dict[str, Any]) -> TargetSpec:
    """``name{k=v,...}`` -> TargetSpec; unknown names/options/values raise UsageError listing the valid ones."""
    name, opts = _split(text.strip())
    if name not in registry:
        raise UsageError(f"unknown target '{name}'; valid targets: {', '.join(registry)}")
    module = registry[name]
    options = {k: o.default for k, o in module.OPTIONS.items()}
    for key, value in opts.items():
        if key not in module.OPTIONS:
            valid = ", ".join(module.OPTIONS) or "none"
            raise UsageError(f"target '{name}' has no option '{key}'; valid options: {valid}")
        choices = module.OPTIONS[key].choices
        if choices and value not in choices:
            raise UsageError(f"target '{name}': {key}={value} is not valid; choose one of {', '.join(choices)}")
        options[key] = value
    check = getattr(module, "check_options", None)  # combinations a target refuses (e.g. arm fp16 on a72)
    if check is not None:
        check(options)
    return TargetSpec(module, options)


def int_option(options: dict[str, str], key: str, target: str) -> int:
    try:
        value = int(options[key])
    except ValueError:
        raise UsageError(f"target '{target}': {key}={options[key]} must be an integer") from None
    if value < 1:
        raise UsageError(f"target '{target}': {key} must be >= 1")
    return value
