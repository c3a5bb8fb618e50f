"""Crash safety, determinism across processes/hash seeds/threads, and time limits."""

import os
import signal
import subprocess
import sys
import time

import onnx
import pytest
from cg_testutil import MODELS
from compress_graph.passes import REGISTRY

YOLO = str(MODELS / "yolo_s.onnx")
CODE = "import sys; from compress_graph.cli import main; sys.exit(main(sys.argv[1:]))"


def _cmd(*args):
    return [sys.executable, "-c", CODE, *map(str, args)]


def _pipeline() -> str:
    wanted = ["fold-bn", "prune", "quant", "cleanup"]
    return ",".join(p for p in wanted if p in REGISTRY.names())


def test_deterministic_across_hash_seeds_and_threads(tmp_path):
    outs = []
    for i, (seed, threads) in enumerate([("1", "1"), ("12345", "2")]):
        out = tmp_path / f"o{i}"
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": threads}
        r = subprocess.run(_cmd(YOLO, "--passes", _pipeline(), "-o", out, "-q"), env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        outs.append((out / "model.onnx").read_bytes())
    assert outs[0] == outs[1]


SLOW_PLUGIN = """
import time
from compress_graph.passes import Pass, PassResult, register_pass

@register_pass
class Sleep(Pass):
    name = "sleep-pass"
    description = "sleeps 30 s (test plugin)"

    def run(self, model, ctx):
        time.sleep(30)
        return PassResult(model, False, {})
"""


@pytest.mark.parametrize("flag", ["--timeout", "--pass-timeout"])
def test_timeouts_exit_6_nothing_written(tmp_path, flag):
    plugin = tmp_path.parent / f"{tmp_path.name}_sleep.py"
    plugin.write_text(SLOW_PLUGIN)
    out = tmp_path / "o"
    start = time.monotonic()
    r = subprocess.run(_cmd(YOLO, "--plugin", plugin, "--passes", "fold-bn,sleep-pass", flag, "2", "-o", out),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 6, r.stderr
    assert "exceeded" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - start < 25
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigkill_leaves_previous_or_new_output(tmp_path):
    """Kill the process at several points: the output folder holds the previous complete run or the new one."""
    out = tmp_path / "o"
    first = subprocess.run(_cmd(YOLO, "--passes", "", "-o", out, "-q"), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    previous = (out / "model.onnx").read_bytes()
    final = tmp_path / "final"
    ref = subprocess.run(_cmd(YOLO, "--passes", "fold-bn,cleanup", "-o", final, "-q"), capture_output=True, text=True)
    assert ref.returncode == 0
    new = (final / "model.onnx").read_bytes()
    for delay in (0.2, 0.8, 1.4, 2.0, 2.6, 3.5):
        proc = subprocess.Popen(_cmd(YOLO, "--passes", "fold-bn,cleanup", "-o", out, "-q"), stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = (out / "model.onnx").read_bytes()
        assert data in (previous, new), f"partial output after kill at {delay}s"
        onnx.checker.check_model(onnx.load_from_string(data))
        assert (out / "report.json").is_file()
