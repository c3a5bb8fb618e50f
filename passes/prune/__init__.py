"""The `prune` pass (package; modules are added as the pass lands)."""
