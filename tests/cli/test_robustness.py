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
    # the next run clears what the killed ones left beside the output
    again = subprocess.run(_cmd(YOLO, "--passes", "fold-bn,cleanup", "-o", out, "-q"), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "o"]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temp_folders_of_dead_runs_are_cleared(tmp_path):
    """A run killed mid-swap left the previous output in '.o.old-PID' and no 'o': it is put back, then replaced;
    temp folders of dead runs go; a live process's temp folder is left alone."""
    dead = _dead_pid()
    out = tmp_path / "o"
    old = tmp_path / f".o.old-{dead}"
    old.mkdir()
    (old / "model.onnx").write_bytes(b"previous")
    (tmp_path / f".o.tmp-{dead}-abc").mkdir()
    live = tmp_path / f".o.tmp-{os.getpid()}-xyz"
    live.mkdir()
    r = subprocess.run(_cmd(YOLO, "--passes", "cleanup", "-o", out, "-q"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["o", live.name])
    onnx.checker.check_model(onnx.load(out / "model.onnx"))


@pytest.mark.slow
def test_kill_during_tuning_leaves_nothing_behind(tmp_path):
    """SIGKILL while MetaSchedule tunes: no output folder, no worker left running, nothing written outside the
    output's parent folder (TVM's builders write to the temp dir: ours points inside the run's temp folder), and
    the next run clears the killed run's temp folder."""
    pytest.importorskip("tvm")
    psutil = pytest.importorskip("psutil")
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    out = tmp_path / "o"
    env = {**os.environ, "TMPDIR": str(systmp)}
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        proc = subprocess.Popen(_cmd(str(MODELS / "resnet_s.onnx"), "--passes", "", "--target", "host",
                                     "--tune", "64", "-o", out), stderr=fh, stdout=fh, env=env)
    deadline = time.monotonic() + 300
    while "tuning" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, log.read_text()
    time.sleep(4)  # builders and runners are at work now
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, [p.cmdline() for p in alive]
    assert not out.exists()
    # onnxruntime's native library keeps one session-id file ('.ses', 51 bytes, reused) in the temp dir at import
    assert [p.name for p in systmp.iterdir() if p.name != ".ses"] == []
    r = subprocess.run(_cmd(YOLO, "--passes", "", "-o", out, "-q"), capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "o", "systmp"]


@pytest.mark.slow
def test_library_is_deterministic_across_hash_seeds_and_threads(tmp_path):
    """The compiled library (and model.json with its sha256) is byte-identical across processes, hash seeds and
    thread counts."""
    pytest.importorskip("tvm")
    libs = []
    for i, (seed, threads) in enumerate([("1", "1"), ("4242", "2")]):
        out = tmp_path / f"o{i}"
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": threads, "TVM_NUM_THREADS": threads}
        r = subprocess.run(_cmd(str(MODELS / "face_s.onnx"), "--passes", "fold-bn", "--target", "host", "-o", out,
                                "-q"), env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr
        files = sorted(p for p in (out / "host").rglob("*") if p.is_file() and p.suffix in (".so", ".json"))
        assert any(p.suffix == ".so" for p in files)
        libs.append({p.relative_to(out).as_posix(): p.read_bytes() for p in files})
    assert libs[0].keys() == libs[1].keys()
    different = [k for k in libs[0] if libs[0][k] != libs[1][k]]
    assert not different, different
