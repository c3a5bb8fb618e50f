import os

import pytest
from fuzz.fuzz_models import fuzz  # tests/ is on sys.path (conftest.py)

SECONDS = float(os.environ.get("COMPRESS_GRAPH_FUZZ_SECONDS", "60"))


@pytest.mark.slow
def test_mutated_models_never_crash():
    """load -> pass -> save on mutated bundled models: a valid model or a one-line error, never a crash."""
    cases, crashes = fuzz(SECONDS, seed=int(os.environ.get("COMPRESS_GRAPH_FUZZ_SEED", "0")))
    assert cases > 10
    assert not crashes, "\n".join(f"seed {s}: {what}\n{problem}" for s, what, problem in crashes)
