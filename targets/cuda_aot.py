"""Ship CUDA kernels as cubin/PTX compiled at build time, so the board needs no CUDA compiler.

TVM 0.27 keeps CUDA kernels as *source* in the library and compiles them when the library is loaded
(``tvm_callback_cuda_compile``, needing nvcc/NVRTC on the device). We compile the source here with nvcc for the
requested arch and rewrite the CUDA module's serialized record (format "cuda" -> "cubin"/"ptx", data -> binary)
inside the imports blob that ``export_library`` links into the library. The blob layout (tvm-ffi 0.1.14):
``u64 payload length`` then the module tree; a module record is ``u64 len + type key`` then ``u64 len + bytes``;
the CUDA module's bytes are ``str fmt, function-info map, str data`` (strings are ``u64 len + bytes``).
"""

from __future__ import annotations

import struct
from pathlib import Path

from compress_graph.ir.errors import TargetError

_U64 = struct.Struct("<Q")


def _string(data: bytes) -> bytes:
    return _U64.pack(len(data)) + data


def _rewrite_cuda_record(blob: bytes, source: bytes, binary: bytes, fmt: str) -> bytes:
    key = _string(b"cuda")
    pos = blob.find(key)
    while pos >= 0:
        body_at = pos + len(key) + 8
        (body_len,) = _U64.unpack_from(blob, pos + len(key))
        body = blob[body_at:body_at + body_len]
        if body.startswith(_string(b"cuda")) and body.endswith(_string(source)):
            fmap = body[len(_string(b"cuda")):len(body) - len(_string(source))]
            new_body = _string(fmt.encode()) + fmap + _string(binary)
            out = blob[:pos] + key + _U64.pack(len(new_body)) + new_body + blob[body_at + body_len:]
            return _U64.pack(len(out) - 8) + out[8:]
        pos = blob.find(key, pos + 1)
    raise TargetError("could not find the CUDA kernels in the library's module blob (unexpected tvm-ffi layout)")


def supported_arches() -> list[str]:
    """``sm_XX`` codes the installed nvcc can compile for (CUDA 13 dropped sm_72 Xavier and older)."""
    import shutil
    import subprocess

    if shutil.which("nvcc") is None:
        return []
    proc = subprocess.run(["nvcc", "--list-gpu-code"], capture_output=True, text=True, check=False)
    return proc.stdout.split() if proc.returncode == 0 else []


def compile_kernels(source: str, arch: str, fmt: str) -> bytes:
    import tvm
    from tvm.support import nvcc

    arches = supported_arches()
    if arch not in arches:
        have = f"nvcc {cuda_version()} supports {', '.join(arches)}" if arches else "nvcc is not installed"
        raise TargetError(f"cannot compile CUDA kernels for {arch}: {have}; put a CUDA toolkit that supports {arch} "
                          f"(CUDA 12 or older for sm_72) first on PATH, or use format=source to let the board's "
                          "CUDA compile them at load time")
    num = arch.removeprefix("sm_")
    gencode = ["-gencode", f"arch=compute_{num},code={'compute_' + num if fmt == 'ptx' else arch}"]
    try:
        with tvm.target.Target({"kind": "cuda", "arch": arch}):  # nvcc.py reads the compute version from it
            return bytes(nvcc.compile_cuda(source, target_format=fmt, arch=gencode, compiler="nvcc"))
    except Exception as exc:
        last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise TargetError(f"nvcc failed to compile the CUDA kernels for {arch}: {last[:300]}") from None


def cuda_version() -> str:
    try:
        from tvm.support import nvcc

        return ".".join(str(v) for v in nvcc.get_cuda_version())
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


def aot_packer(arch: str, fmt: str = "cubin"):
    """An ``fpack_imports`` for ``export_library`` that embeds compiled kernels instead of CUDA source."""

    def pack(module, is_system_lib: bool, prefix: str, workspace_dir: str) -> str:
        import tvm_ffi

        cuda = [m for m in _walk(module) if m.kind == "cuda"]
        blob = bytes(tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(module).numpy().tobytes())
        for mod in cuda:
            source = mod.inspect_source()
            blob = _rewrite_cuda_record(blob, source.encode(), compile_kernels(source, arch, fmt), fmt)
        symbol = tvm_ffi.get_global_func("runtime.ModuleImportsBlobName")()
        path = Path(workspace_dir) / f"{prefix}devc.c"
        rows = ",\n".join(",".join(f"0x{b:02x}" for b in blob[i:i + 32]) for i in range(0, len(blob), 32))
        path.write_text(
            "#ifdef __cplusplus\nextern \"C\" {\n#endif\n"
            f"__attribute__((visibility(\"default\"))) extern const unsigned char {symbol}[];\n"
            f"__attribute__((visibility(\"default\"))) const unsigned char {symbol}[{len(blob)}] = {{\n{rows}\n}};\n"
            "#ifdef __cplusplus\n}\n#endif\n")
        return str(path)

    return pack


def _walk(module):
    yield module
    for sub in module.imports:
        yield from _walk(sub)
