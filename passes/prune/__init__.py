"""The `prune` pass: structured channel pruning on ONNX graphs (dependency groups, criteria, allocation, refit)."""

from compress_graph.passes.prune import prune_pass  # noqa: F401  (registers the pass)
