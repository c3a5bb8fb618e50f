"""What an aarch64 library costs, without a board: executed instructions per inference under qemu-aarch64.

Counts come from a TCG plugin (insn_count.c) between two marker syscalls the runners make after a warm-up run and
after the last run, so start-up, imports and first-run costs are outside the region; the count is divided by the
number of runs inside it. Counts are deterministic (same binary, input and ``-cpu`` give the same count on any x86
machine), so they can be compared across runs and asserted in tests. They are not time: a 16-lane ``sdot`` and a
scalar ``madd`` count one each, cache misses count nothing; compare programs that do the same work on the same
``-cpu``, and read the instruction mix to see how the work is done.

Peer: onnxruntime's own aarch64 wheel (the host's version), run by the sysroot's Python under the same qemu and
``-cpu``. Its CPU-feature detection parses /proc/cpuinfo, and on an x86 host qemu-user would hand it the host's:
each ``-cpu`` gets a qemu prefix folder (``-L``) holding the sysroot plus a ``proc/cpuinfo`` of that ARM core, so
onnxruntime picks the kernels it would pick on the board (cortex-a76: ``udot``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PLUGIN_SOURCE = HERE / "insn_count.c"
ORT_SCRIPT = HERE / "ort_runner.py"
QEMU_TIMEOUT_S = 1800

#: ``CPU part`` and ``Features`` lines of /proc/cpuinfo on each core (as the Linux kernel prints them).
CPUINFO = {
    "cortex-a53": ("0xd03", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
    "cortex-a72": ("0xd08", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
    "cortex-a76": ("0xd0b", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                            "lrcpc dcpop asimddp"),
    "neoverse-n1": ("0xd0c", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                             "lrcpc dcpop asimddp ssbs"),
}


class BenchError(RuntimeError):
    pass


def cache_dir() -> Path:
    base = os.environ.get("COMPRESS_GRAPH_SYSROOT_DIR") or str(Path.home() / ".cache" / "compress-graph")
    return Path(base)


def sysroot() -> Path:
    return cache_dir() / "sysroot-aarch64"


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def ort_site() -> Path:
    """onnxruntime's aarch64 wheel, unpacked by .ci/setup_arm.sh (same version as the host's)."""
    return cache_dir() / f"onnxruntime-aarch64-{ort_version()}" / "site"


def missing() -> str | None:
    """Why the bench cannot run here (None: it can)."""
    if shutil.which("qemu-aarch64") is None:
        return "qemu-aarch64 not installed (run .ci/setup_arm.sh)"
    if not (sysroot() / ".stamp").is_file():
        return f"no aarch64 sysroot at {sysroot()} (run .ci/setup_arm.sh)"
    if not (ort_site() / "onnxruntime").is_dir():
        return f"no aarch64 onnxruntime {ort_version()} at {ort_site()} (run .ci/setup_arm.sh)"
    if shutil.which("gcc") is None:
        return "gcc not installed (builds the qemu plugin)"
    return None


def plugin() -> Path:
    """The counting plugin, built once per source version into the cache."""
    digest = hashlib.sha256(PLUGIN_SOURCE.read_bytes() + (HERE / "qemu_plugin_api.h").read_bytes()).hexdigest()
    lib = cache_dir() / "bench-arm" / f"insn_count-{digest[:12]}.so"
    if lib.is_file():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_name(lib.name + f".{os.getpid()}.tmp")
    proc = subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(tmp), str(PLUGIN_SOURCE)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"building the qemu plugin failed: {proc.stderr.strip()[-400:]}")
    tmp.replace(lib)
    return lib


def prefix(cpu: str) -> Path:
    """A qemu ``-L`` prefix: the sysroot's folders plus a /proc/cpuinfo of ``cpu``."""
    part, features = CPUINFO[cpu]
    root = cache_dir() / "bench-arm" / f"prefix-{cpu}"
    (root / "proc").mkdir(parents=True, exist_ok=True)
    for sub in ("etc", "lib", "usr", "opt"):
        link = root / sub
        if not link.is_symlink():
            link.symlink_to(sysroot() / sub)
    text = "".join(f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
                   f"CPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: {part}\nCPU revision\t: 1\n\n"
                   for i in range(1))
    info = root / "proc" / "cpuinfo"
    if not info.is_file() or info.read_text() != text:
        info.write_text(text)
    return root


def _parse(report: Path) -> dict:
    region, clones, ops, blocks = None, 0, Counter(), []
    for line in report.read_text().splitlines():
        parts = line.split()
        if parts[0] == "region":
            region = int(parts[1])
        elif parts[0] == "clones":
            clones = int(parts[1])
        elif parts[0] == "op":
            ops[parts[1]] += int(parts[2])
        elif parts[0] == "block":
            blocks.append((int(parts[1], 16), int(parts[2]) * int(parts[3])))
    if region is None:
        raise BenchError(f"no marked region in {report} (the runner failed before its last run)")
    return {"region": region, "clones": clones, "ops": ops, "blocks": blocks}


def per_function(blocks: list[tuple[int, int]], maps: Path, library: Path, nm: str = "aarch64-linux-gnu-nm"
                 ) -> dict[str, int]:
    """Instructions per function of ``library`` (its symbols, by address), the rest per mapped file."""
    import bisect

    spans = []  # (start, end, path, load base)
    bases: dict[str, int] = {}
    for line in maps.read_text().splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        lo, hi = (int(v, 16) for v in fields[0].split("-"))
        path = fields[5]
        bases[path] = min(bases.get(path, lo - int(fields[2], 16)), lo - int(fields[2], 16))
        spans.append((lo, hi, path))
    lib = str(Path(library).resolve())
    # built with arm{symbols=keep}: every kernel function (entry point and parallel body) is named
    nm = subprocess.run([nm, "--defined-only", str(library)], capture_output=True, text=True)
    symbols = sorted((int(f[0], 16), f[2].removeprefix("__tvm_ffi_"))
                     for f in (line.split() for line in nm.stdout.splitlines()) if len(f) == 3 and f[1] in "tT")
    addrs = [a for a, _ in symbols]
    out: Counter = Counter()
    for vaddr, count in blocks:
        where = next((sp for sp in spans if sp[0] <= vaddr < sp[1]), None)
        if where is None:
            out["(unmapped)"] += count
        elif where[2] == lib and symbols:
            i = bisect.bisect_right(addrs, vaddr - bases[lib]) - 1
            out[symbols[i][1] if i >= 0 else "(library)"] += count
        else:
            out[Path(where[2]).name] += count
    return dict(out.most_common())


def _qemu(cmd: list[str], env: dict, what: str) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=QEMU_TIMEOUT_S)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"{what} failed under qemu-aarch64: {tail[:300]}")


def _result(report: Path, runs: int) -> dict:
    parsed = _parse(report)
    ops = parsed["ops"]
    per_run = {k: v / runs for k, v in ops.items()}
    return {"instructions": parsed["region"] / runs, "threads_started": parsed["clones"],
            "mix": mix(per_run) if per_run else {}, "ops": dict(sorted(per_run.items(), key=lambda kv: -kv[1]))}


def count_library(lib: Path, inputs: list[np.ndarray], cpu: str, work: Path, *, runs: int = 5,
                  with_mix: bool = True) -> dict:
    """Instructions per inference of a compress-graph aarch64 library (the verification runner, repeated)."""
    from compress_graph.targets.runners import _to_dl, io_runner

    runner = io_runner("aarch64")
    if runner is None:
        raise BenchError("the aarch64 io_runner could not be built (run .ci/setup_arm.sh)")
    work.mkdir(parents=True, exist_ok=True)
    args = []
    for i, x in enumerate(inputs):
        x = np.ascontiguousarray(x)
        x.tofile(work / f"in{i}.bin")
        args.append(f"{work / f'in{i}.bin'}:{_to_dl(x.dtype)}:{','.join(map(str, x.shape))}")
    site = sysroot() / "opt" / "site"
    report = work / "insn.txt"
    env = {**os.environ, "CG_IO_RUNNER_RUNS": str(runs + 1), "TVM_NUM_THREADS": "1"}
    _qemu(["qemu-aarch64", "-cpu", cpu, "-L", str(prefix(cpu)),
           "-E", f"LD_LIBRARY_PATH={site / 'tvm' / 'lib'}:{site / 'tvm_ffi' / 'lib'}",
           "-plugin", f"{plugin()},out={report},mix={int(with_mix)}", str(runner), str(lib), str(work), *args],
          env, "the library")
    out = _result(report, runs)
    out["outputs"] = _read_outputs(work)
    if with_mix and (work / "maps").is_file():
        out["functions"] = {k: v / runs for k, v in per_function(_parse(report)["blocks"], work / "maps",
                                                                   lib).items()}
    return out


def _read_outputs(folder: Path) -> list[np.ndarray]:
    from compress_graph.targets.runners import _from_dl

    values = []
    for k in range(len(list(folder.glob("out*.txt")))):
        dtype, dims = (folder / f"out{k}.txt").read_text().split()
        values.append(np.fromfile(folder / f"out{k}.bin", dtype=_from_dl(dtype)).reshape(
            tuple(int(d) for d in dims.split(",") if d)))
    return values


def count_onnxruntime(model: Path, inputs: dict[str, np.ndarray], cpu: str, work: Path, *, runs: int = 5,
                      with_mix: bool = True) -> dict:
    """Instructions per inference of onnxruntime's aarch64 wheel (1 thread, default graph optimizations)."""
    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "in.npz", **inputs)
    report = work / "insn.txt"
    env = {**os.environ, "PYTHONPATH": f"{ort_site()}:{sysroot() / 'opt' / 'site'}", "PYTHONNOUSERSITE": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "ORT_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONHOME", None)
    _qemu(["qemu-aarch64", "-cpu", cpu, "-L", str(prefix(cpu)),
           "-plugin", f"{plugin()},out={report},mix={int(with_mix)}",
           str(sysroot() / "usr" / "bin" / "python3.11"), str(ORT_SCRIPT), str(model), str(runs + 1),
           str(work / "in.npz"), str(work / "out.npz")], env, "onnxruntime")
    out = _result(report, runs)
    data = np.load(work / "out.npz")
    out["outputs"] = [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]
    return out


#: mnemonic -> class, for the instruction mix (".v": an operand is a NEON vector register; ".h": an Armv8.2 FP16
#: vector instruction that qemu 7.2 prints as ".byte" and the plugin names from its encoding — FP16 forms qemu
#: disassembles itself, if any, keep ".v", so the `fp16_vector` share is a lower bound)
DOT = {"sdot.v", "udot.v", "usdot.v", "sudot.v"}
MMLA = {"smmla.v", "ummla.v", "usmmla.v"}
SCALAR_MAC = {"madd", "msub", "smaddl", "umaddl", "smsubl", "umsubl", "fmadd", "fmsub", "fnmadd", "fnmsub"}


def mix(ops: dict[str, float]) -> dict[str, float]:
    """Shares of the executed instructions: vector (NEON), dot products, float vector FMAs (fp32 and fp16), FP16
    vector arithmetic, scalar MACs, loads."""
    total = sum(ops.values()) or 1.0

    def share(pred) -> float:
        return round(sum(v for k, v in ops.items() if pred(k)) / total, 4)

    return {
        "vector": share(lambda k: k.endswith((".v", ".h"))),
        "dot": share(lambda k: k in DOT),
        "mmla": share(lambda k: k in MMLA),
        "fmla_vector": share(lambda k: k in ("fmla.v", "fmls.v", "fmla.h", "fmls.h")),
        "fp16_vector": share(lambda k: k.endswith(".h")),
        "int8_widening_mac": share(lambda k: k.split(".")[0] in ("smlal", "smlal2", "smull", "smull2", "sadalp",
                                                                 "umlal", "umlal2", "umull", "umull2", "uadalp")),
        "scalar_mac": share(lambda k: k in SCALAR_MAC),
        "loads": share(lambda k: k.startswith("ld")),
        "stores": share(lambda k: k.startswith("st")),
    }


def dot_macs(ops: dict[str, float]) -> float:
    """Multiply-accumulates done by dot-product instructions (16 int8 MACs each, 32 for the i8mm ones)."""
    return sum(v * 16 for k, v in ops.items() if k in DOT) + sum(v * 32 for k, v in ops.items() if k in MMLA)


# ----------------------------------------------------------------------------------------------- shared by the benches
def compressed(model_path: Path, pipeline: str, out: Path, target: str, seed: int = 0) -> Path:
    """``model_path`` through ``pipeline`` plus the targets' ONNX passes, with ``target``'s preferences (what both
    runtimes get), written once to ``out``."""
    from compress_graph import load, run_pipeline, save
    from compress_graph.targets import preferences

    if not out.is_file():
        model, _ = run_pipeline(load(model_path), pipeline + ",fold-constants,cleanup", verify=False, seed=seed,
                                preferences=preferences(target))
        save(model, out)
    return out


def seeded_inputs(proto, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs of the model's (static) input shapes, by name."""
    inits = {i.name for i in proto.graph.initializer}
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in proto.graph.input if i.name not in inits}


def max_abs_diff(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    """Largest absolute difference between two runtimes' outputs (same order; ``outputs`` may be flat)."""
    return max(float(np.max(np.abs(a.astype(np.float64) - b.reshape(a.shape)))) if a.size else 0.0
               for a, b in zip(reference, outputs))
