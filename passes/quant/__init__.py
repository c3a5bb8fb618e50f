"""The `quant` pass (static QDQ quantization with calibration) and `quant-weights` (weight-only int8/int4)."""

from compress_graph.passes.quant import quantize  # noqa: F401  (registers the passes)
