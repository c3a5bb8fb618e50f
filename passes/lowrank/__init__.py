"""The `lowrank` pass: low-rank factorization of Conv / Gemm / MatMul layers (data-free or data-aware)."""

from compress_graph.passes.lowrank import lowrank_pass  # noqa: F401  (registers the pass)
from compress_graph.passes.lowrank.lowrank_pass import LowRank

__all__ = ["LowRank"]
