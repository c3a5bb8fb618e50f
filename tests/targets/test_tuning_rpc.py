"""Tuning records and reproducible rebuilds; MetaSchedule through an RPC tracker on loopback (issue 6)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("tvm")
pytest.importorskip("xgboost")  # MetaSchedule imports it even for random search

from compress_graph.targets import build_for_target  # noqa: E402


@pytest.mark.slow
def test_tuning_db_rebuild_does_no_tuning_and_is_byte_identical(tmp_path, tiny_model):
    lines: list[str] = []
    tuned = build_for_target(tiny_model(), "host{cores=2}", tmp_path / "a", tune_trials=1, progress=lines.append)
    db = tmp_path / "a" / "host" / "tuning"
    assert (db / "database_tuning_record.json").stat().st_size > 0
    assert tuned["tuning"]["trials"] == 3 and any(line.startswith("tune [3/3]") for line in lines)
    rebuilt = build_for_target(tiny_model(), "host{cores=2}", tmp_path / "b", tuning_db=db)
    assert "trials" not in rebuilt["tuning"]  # compiled from records only
    assert rebuilt["schedule"]["from_tuning_records"] == rebuilt["schedule"]["kernels"] == 3
    assert rebuilt["library_sha256"] == tuned["library_sha256"]
    assert (tmp_path / "b" / "host" / "model.so").read_bytes() == (tmp_path / "a" / "host" / "model.so").read_bytes()
    assert (tmp_path / "b" / "host" / "tuning" / "database_tuning_record.json").is_file()  # records travel along


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_key(port: int, key: str, timeout_s: float = 30.0) -> None:
    from tvm import rpc

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            summary = rpc.connect_tracker("127.0.0.1", port).summary()
            if any(key in str(q) for q in summary.get("queue_info", {})):
                return
        except Exception:  # noqa: BLE001 - tracker still starting
            pass
        time.sleep(0.5)
    pytest.fail(f"RPC server did not register '{key}' at the tracker within {timeout_s} s")


@pytest.mark.slow
def test_rpc_tuning_and_verification_on_loopback(tmp_path, tiny_model):
    port = _free_port()
    key = "cg-loopback"
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                               "--port", str(port), "--port-end", str(port + 1), "--silent"])]
    try:
        time.sleep(1.0)
        procs.append(subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                                       "--port", str(port + 10), "--port-end", str(port + 90),
                                       "--tracker", f"127.0.0.1:{port}", "--key", key, "--silent"]))
        _wait_for_key(port, key)
        section = build_for_target(tiny_model(), "host{cores=2}", tmp_path, tune_trials=1,
                                   rpc=f"127.0.0.1:{port}:{key}", verify_target=True)
        assert section["tuning"]["trials"] == 3 and section["tuning"]["failed_trials"] == 0
        assert section["verification"]["method"] == f"rpc:{key}"
        assert section["verification"]["status"] == "passed"
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
