"""Passes: the pass contract, registry, pipeline runner, instruments and the built-in transformations."""

from compress_graph.passes import cleanup, fold_bn, lowrank, prune, quant  # noqa: F401  (built-ins register on import)
from compress_graph.passes.base import Pass, PassContext, PassResult, option, register_pass
from compress_graph.passes.pipeline import parse_pipeline, parse_pipeline_items, pipeline_text, run_pipeline
from compress_graph.passes.registry import REGISTRY, load_plugin

__all__ = [
    "Pass",
    "PassContext",
    "PassResult",
    "option",
    "register_pass",
    "parse_pipeline",
    "parse_pipeline_items",
    "pipeline_text",
    "run_pipeline",
    "REGISTRY",
    "load_plugin",
]
