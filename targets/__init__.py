"""Compile a (compressed) ONNX model with Apache TVM for ARM CPUs and edge GPUs: ``build_for_target``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from compress_graph.targets import arm, armv7, host, jetson, opencl
from compress_graph.targets.base import Option, TargetSpec, parse_target

REGISTRY: dict[str, Any] = {m.NAME: m for m in (arm, armv7, jetson, opencl.MALI, opencl.ADRENO, host)}

__all__ = ["REGISTRY", "Option", "TargetSpec", "build_for_target", "list_targets", "parse_target", "onnx_passes",
           "preferences", "require_tvm"]


def require_tvm() -> None:
    """Raise UsageError (exit 2) naming the install command when Apache TVM (the ``tvm`` extra) is missing."""
    from compress_graph.ir.errors import UsageError

    try:
        import tvm  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"--target needs Apache TVM, which is not installed ({exc}): "
                         "pip install 'compress-graph[tvm]'") from None


def list_targets() -> list[dict[str, Any]]:
    """Name, description, options (default, help, choices) and wanted ONNX passes of every target."""
    return [{"name": m.NAME, "description": m.DESCRIPTION, "onnx_passes": list(m.ONNX_PASSES),
             "options": {k: {"default": o.default, "help": o.help, "choices": list(o.choices)}
                         for k, o in m.OPTIONS.items()}} for m in REGISTRY.values()]


def preferences(target_text: str) -> dict[str, Any]:
    """What the target's kernels prefer of the compression passes (``channel_block``: pruned channel counts
    should be a multiple of it; an unaligned count pads to the next block and saves nothing there;
    ``weight_bits``: quant's weight width, where narrower weights reach a faster int8 step)."""
    spec = parse_target(target_text, REGISTRY)
    block = getattr(spec.module, "CHANNEL_BLOCK", None)
    prefs: dict[str, Any] = {"channel_block": block} if block else {}
    if hasattr(spec.module, "preferences"):  # e.g. host: quant's weight_bits for its int8 family
        prefs.update(spec.module.preferences(spec.options))
    return prefs


def onnx_passes(target_text: str) -> list[str]:
    """ONNX-side passes the target wants run before import (the CLI runs them; unknown names are its concern)."""
    return list(parse_target(target_text, REGISTRY).module.ONNX_PASSES)


def build_for_target(onnx_model: onnx.ModelProto, target_text: str, out_dir: Path, *, tune_trials: int = 0,
                     tuning_db: Path | None = None, rpc: str | None = None, verify_target: bool = False,
                     sample_inputs: list[dict[str, np.ndarray]] | None = None,
                     time_budget_s: float | None = None, progress=None, int8: bool = True,
                     input_shapes: dict[str, dict] | None = None, profile: bool = False) -> dict[str, Any]:
    """Build ``onnx_model`` for ``target_text`` into ``out_dir/<target>/`` (model.so, model.json, tuning/).

    Returns the report section. Raises UsageError (exit 2) for an unknown target/option and TargetError (exit 5)
    when import, tuning or build fails. A failed on-target comparison is *not* raised: it is reported as
    ``section["verification"]["status"] == "failed"`` so the caller can write the report, then exit 4.
    ``int8``: lower QDQ models to integer kernels on CPU targets (targets/int8); off = float fake-quant.
    ``profile``: time each kernel on this machine into ``section["profile"]`` (host only; other targets get a note).
    """
    from compress_graph.ir.errors import UsageError
    from compress_graph.targets.build import build

    spec = parse_target(target_text, REGISTRY)
    if tune_trials < 0:
        raise UsageError("--tune must be >= 0")
    if rpc:
        from compress_graph.targets.runners import parse_rpc

        parse_rpc(rpc)
    elif tune_trials > 0 and spec.name not in ("host",):
        from compress_graph.ir.errors import TargetError

        raise TargetError(f"tuning for '{spec.name}' measures on the device: pass --rpc tracker_host:port:key "
                          "(a board, or a qemu/board RPC server registered at the tracker)")
    return build(spec, onnx_model, Path(out_dir), tune_trials=tune_trials, tuning_db=tuning_db, rpc=rpc,
                 verify_target=verify_target, sample_inputs=sample_inputs, time_budget_s=time_budget_s,
                 progress=progress, int8=int8, input_shapes=input_shapes, profile=profile)
