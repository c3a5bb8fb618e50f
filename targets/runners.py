"""Running a built library: in this process (host), under qemu-user (ARM on x86), or on a board through RPC.

Each returns ``{"method": ..., "outputs": [[np.ndarray per output] per sample]}`` or, via ``skipped``,
``{"method": "none", "skipped": reason}``; build.py compares the outputs with onnxruntime.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from compress_graph.ir.errors import TargetError, UsageError

QEMU_TIMEOUT_S = 600
# Runs inside the emulated aarch64 Python: load the library, run every sample, save the outputs.
_QEMU_SCRIPT = """
import sys
import numpy as np
import tvm
from tvm import relax

lib = tvm.runtime.load_module(sys.argv[1])
vm = relax.VirtualMachine(lib, tvm.cpu())
data = np.load(sys.argv[2])
n_samples, n_inputs = (int(v) for v in data["meta"])
out = {}
for s in range(n_samples):
    args = [tvm.runtime.tensor(data[f"s{s}_i{i}"]) for i in range(n_inputs)]
    res = vm["main"](*args)
    res = [res] if hasattr(res, "numpy") else list(res)
    for k, r in enumerate(res):
        out[f"s{s}_o{k}"] = r.numpy()
np.savez(sys.argv[3], **out)
"""


def skipped(reason: str) -> dict[str, Any]:
    return {"method": "none", "skipped": reason}


def _flatten(res) -> list[np.ndarray]:
    return [res.numpy()] if hasattr(res, "numpy") else [r.numpy() for r in res]


def run_local(lib_path: Path, feeds: list[list[np.ndarray]]) -> dict[str, Any]:
    """Host library in this process."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), tvm.cpu())
    outs = [_flatten(vm["main"](*[tvm.runtime.tensor(x) for x in feed])) for feed in feeds]
    return {"method": "local", "outputs": outs}


def sysroot_dir(arch: str = "aarch64") -> Path:
    base = Path(os.environ.get("COMPRESS_GRAPH_SYSROOT_DIR", Path.home() / ".cache" / "compress-graph"))
    return base / f"sysroot-{arch}"


def qemu_available(arch: str = "aarch64") -> str | None:
    """None when qemu-user and the sysroot are ready, else the reason they are not."""
    if shutil.which(f"qemu-{arch}") is None:
        return f"qemu-{arch} not installed (run .ci/setup_arm.sh)"
    if not (sysroot_dir(arch) / ".stamp").is_file():
        return f"no {arch} Python+TVM sysroot at {sysroot_dir(arch)} (run .ci/setup_arm.sh)"
    return None


_DL_CODES = {"i": 0, "u": 1, "f": 2, "b": 6}
_RUNNER_SOURCE = Path(__file__).resolve().parent / "deploy" / "io_runner.cc"
_TRIPLES = {"aarch64": "aarch64-linux-gnu"}


def _to_dl(dtype: np.dtype) -> str:
    return f"{_DL_CODES[dtype.kind]}.{dtype.itemsize * 8}.1"


def _from_dl(text: str) -> np.dtype:
    code, bits, _lanes = (int(v) for v in text.split("."))
    kind = {0: "int", 1: "uint", 2: "float", 6: "bool"}[code]
    return np.dtype("bool" if kind == "bool" else f"{kind}{bits}")


def io_runner(arch: str = "aarch64") -> Path | None:
    """The compiled ``deploy/io_runner.cc`` for ``arch``, built once against the sysroot's TVM runtime and cached
    there (keyed by the source's hash); None when it cannot be built (then the Python runner is used)."""
    import hashlib

    root = sysroot_dir(arch)
    source = _RUNNER_SOURCE.read_bytes()
    exe = root / "opt" / f"cg-io-runner-{hashlib.sha256(source).hexdigest()[:12]}"
    if exe.is_file():
        return exe
    compiler = f"{_TRIPLES.get(arch, arch)}-g++"
    site = root / "opt" / "site"
    if shutil.which(compiler) is None or not (site / "tvm_ffi" / "include").is_dir():
        return None
    tmp = exe.with_name(exe.name + f".{os.getpid()}.tmp")
    proc = subprocess.run([compiler, "-std=c++17", "-O2", str(_RUNNER_SOURCE), "-o", str(tmp),
                           f"-I{site / 'tvm_ffi' / 'include'}", f"-L{site / 'tvm' / 'lib'}",
                           f"-L{site / 'tvm_ffi' / 'lib'}", "-ltvm_runtime", "-ltvm_ffi"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        return None
    tmp.replace(exe)
    return exe


def _qemu(cmd: list[str], env: dict, arch: str) -> None:
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=QEMU_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise TargetError(f"qemu-{arch} run timed out after {QEMU_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TargetError(f"the library failed under qemu-{arch}: {last[:300]}")


def run_qemu(lib_path: Path, feeds: list[list[np.ndarray]], *, arch: str = "aarch64",
             workdir: Path | None = None) -> dict[str, Any]:
    """Run the library against the sysroot's TVM runtime under qemu-user (emulation: numbers, not speed).

    Uses the compiled io_runner (about 2 s per sample under emulation) when it builds, else the sysroot's Python.
    """
    reason = qemu_available(arch)
    if reason:
        raise TargetError(f"cannot verify under qemu: {reason}")
    root = sysroot_dir(arch)
    site = root / "opt" / "site"
    lib = str(Path(lib_path).resolve())
    runner = io_runner(arch)
    env = dict(os.environ, QEMU_LD_PREFIX=str(root))
    env.pop("PYTHONHOME", None)
    with tempfile.TemporaryDirectory(prefix="cg-qemu-", dir=workdir) as tmp:
        tmp = Path(tmp)
        outs = []
        if runner is not None:
            libs = f"{site / 'tvm' / 'lib'}:{site / 'tvm_ffi' / 'lib'}"
            for s, feed in enumerate(feeds):
                args = []
                for i, x in enumerate(feed):
                    x = np.ascontiguousarray(x)
                    x.tofile(tmp / f"s{s}_i{i}.bin")
                    args.append(f"{tmp / f's{s}_i{i}.bin'}:{_to_dl(x.dtype)}:{','.join(map(str, x.shape))}")
                out_dir = tmp / f"s{s}"
                out_dir.mkdir()
                _qemu([f"qemu-{arch}", "-L", str(root), "-E", f"LD_LIBRARY_PATH={libs}", str(runner), lib,
                       str(out_dir), *args], env, arch)
                values = []
                for k in range(len(list(out_dir.glob("out*.txt")))):
                    dtype, dims = (out_dir / f"out{k}.txt").read_text().split()
                    shape = tuple(int(d) for d in dims.split(",") if d)
                    values.append(np.fromfile(out_dir / f"out{k}.bin", dtype=_from_dl(dtype)).reshape(shape))
                outs.append(values)
            return {"method": f"qemu-{arch}", "outputs": outs}
        (tmp / "run.py").write_text(_QEMU_SCRIPT)
        arrays = {"meta": np.array([len(feeds), len(feeds[0]) if feeds else 0])}
        for s, feed in enumerate(feeds):
            arrays.update({f"s{s}_i{i}": x for i, x in enumerate(feed)})
        np.savez(tmp / "in.npz", **arrays)
        env.update(PYTHONPATH=str(site), PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1")
        _qemu([f"qemu-{arch}", "-L", str(root), str(root / "usr" / "bin" / "python3.11"), str(tmp / "run.py"),
               lib, str(tmp / "in.npz"), str(tmp / "out.npz")], env, arch)
        data = np.load(tmp / "out.npz")
        for s in range(len(feeds)):
            keys = sorted((k for k in data.files if k.startswith(f"s{s}_o")), key=lambda k: int(k.split("_o")[1]))
            outs.append([data[k] for k in keys])
    return {"method": f"qemu-{arch} (python)", "outputs": outs}


def parse_rpc(rpc: str) -> tuple[str, int, str]:
    """``host:port:key`` of an RPC tracker."""
    parts = rpc.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[0] or not parts[2]:
        raise UsageError(f"--rpc '{rpc}': expected tracker_host:port:key, e.g. 127.0.0.1:9190:rk3588")
    return parts[0], int(parts[1]), parts[2]


def run_rpc(lib_path: Path, feeds: list[list[np.ndarray]], rpc: str, *, device: str = "cpu",
            session_timeout_s: int = 300) -> dict[str, Any]:
    """Upload the library to a board registered at the tracker under ``key`` and run it there."""
    import tvm
    from tvm import relax
    from tvm import rpc as tvm_rpc

    host, port, key = parse_rpc(rpc)
    try:
        tracker = tvm_rpc.connect_tracker(host, port)
        sess = tracker.request(key, priority=1, session_timeout=session_timeout_s)
        sess.upload(str(lib_path))
        rlib = sess.load_module(Path(lib_path).name)
        dev = {"cpu": sess.cpu, "cuda": sess.cuda, "opencl": sess.cl}[device](0)
        vm = relax.VirtualMachine(rlib, dev)
        outs = [_flatten(vm["main"](*[tvm.runtime.tensor(x, dev) for x in feed])) for feed in feeds]
    except (TargetError, UsageError):
        raise
    except Exception as exc:
        last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise TargetError(f"RPC run through {rpc} failed: {last[:300]}") from None
    return {"method": f"rpc:{key}", "outputs": outs}
