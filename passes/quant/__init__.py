"""The `quant` pass (package; modules are added as the pass lands)."""
