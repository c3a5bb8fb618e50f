#!/usr/bin/env bash
# Prepare everything `--target arm|armv7|jetson|mali|adreno` and tests/targets need on a fresh Debian 12 x86-64
# machine: cross compilers, qemu-user, the MetaSchedule/RPC Python extras, an aarch64 Python 3.11 + TVM
# sysroot for running built libraries under qemu-aarch64 (verification), and onnxruntime's aarch64 wheel for
# bench/arm's instruction counts. Also Debian's chromium, which tests/cli renders the HTML report in.
#
# Sources: Debian packages (apt) and PyPI wheels (pip) only. Idempotent: every step checks before it acts;
# the sysroot is cached in $COMPRESS_GRAPH_SYSROOT_DIR (default ~/.cache/compress-graph) and rebuilt only when
# its stamp (the pinned versions) changes.
#
# armhf: Debian has an armhf Python, but no apache-tvm wheel exists for armv7, so no armhf TVM runtime can be
# installed from the registries; armv7 builds are checked as ARM ELF files only (see targets/armv7.py).
set -euo pipefail

TVM_VERSION="0.27.0.post1"
TVM_FFI_VERSION="0.1.14.post0"
CACHE="${COMPRESS_GRAPH_SYSROOT_DIR:-$HOME/.cache/compress-graph}"
SYSROOT="$CACHE/sysroot-aarch64"
STAMP="tvm=$TVM_VERSION ffi=$TVM_FFI_VERSION py=3.11 v2"
PYTHON="${PYTHON:-python3}"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

log() { echo "[setup_arm] $*" >&2; }
PLAT=(--platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64
      --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp --only-binary=:all:)

# 1. cross compilers and qemu-user (host packages)
HOST_PKGS=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross
           gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf libc6-dev-armhf-cross
           qemu-user binutils file strace  # strace: the test that a build opens no network socket
           chromium)  # the headless-browser screenshot of report.html (tests/cli/test_report_html.py)
missing=()
for p in "${HOST_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  log "adding dpkg architecture arm64"
  $SUDO dpkg --add-architecture arm64
  NEED_UPDATE=1
fi
if [ "${#missing[@]}" -gt 0 ] || [ -n "${NEED_UPDATE:-}" ]; then
  log "apt-get install ${missing[*]:-(none; refreshing lists for arm64)}"
  $SUDO apt-get update -qq
  if [ "${#missing[@]}" -gt 0 ]; then
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

# 2. Python extras for tuning (MetaSchedule) and the RPC tracker, TVM pinned (newer ffi crashes MetaSchedule)
if ! "$PYTHON" - <<PY 2>/dev/null
import importlib.metadata as md
assert md.version("apache-tvm") == "$TVM_VERSION" and md.version("apache-tvm-ffi") == "$TVM_FFI_VERSION"
import xgboost, cloudpickle, psutil, tornado  # noqa: F401
PY
then
  log "pip install TVM pins and tuning extras"
  "$PYTHON" -m pip install -q "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$TVM_FFI_VERSION" \
    xgboost-cpu cloudpickle psutil tornado
fi

# 3. aarch64 sysroot: Debian's python3.11 (arm64) + the apache-tvm aarch64 wheel and its deps
build_sysroot() {
log "building sysroot in $SYSROOT"
WORK="$(mktemp -d "$CACHE/.work.XXXXXX" 2>/dev/null || { mkdir -p "$CACHE"; mktemp -d "$CACHE/.work.XXXXXX"; })"
DEBS="$(mktemp -d /tmp/cg-debs.XXXXXX)"   # apt-get download runs as _apt, which cannot enter /root
chmod 777 "$DEBS"
trap 'rm -rf "$WORK" "$DEBS"' EXIT
ARM_DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g libffi8
          libbz2-1.0 liblzma5 libssl3 libcrypt1 libuuid1 libgcc-s1 libstdc++6 libncursesw6 libtinfo6
          libreadline8 libsqlite3-0 libnsl2 libtirpc3 libdb5.3 libgssapi-krb5-2 libkrb5-3 libk5crypto3
          libkrb5support0 libcom-err2 libkeyutils1 libzstd1)
mkdir -p "$WORK/root" "$WORK/wheels"
( cd "$DEBS" && apt-get download -qq "${ARM_DEBS[@]/%/:arm64}" )
for d in "$DEBS"/*.deb; do dpkg-deb -x "$d" "$WORK/root"; done
"$PYTHON" -m pip download -q "${PLAT[@]}" -d "$WORK/wheels" \
  "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$TVM_FFI_VERSION" "numpy<2.5" ml_dtypes typing_extensions
"$PYTHON" -m pip install -q --no-deps --no-compile "${PLAT[@]}" --target "$WORK/root/opt/site" "$WORK"/wheels/*.whl
# Byte-compile stdlib and site-packages ahead of time (Debian compiles .pyc in postinst, which dpkg-deb -x skips):
# without them every emulated run re-compiles TVM's Python sources, 40 s instead of ~10 s per run.
# A Python 3.11 host writes the same bytecode format as the sysroot's 3.11 and is fast; any other host version
# (the README allows >= 3.10) leaves it to the sysroot's own interpreter under qemu (a few minutes, once).
COMPILE='import compileall, sys
root = sys.argv[1]
for sub in ("/usr/lib/python3.11", "/opt/site"):
    compileall.compile_dir(root + sub, quiet=2, workers=0, ddir=sub)'
if "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  "$PYTHON" -c "$COMPILE" "$WORK/root"
else
  log "byte-compiling the sysroot with its own python3.11 under qemu-aarch64 (host Python is not 3.11)"
  qemu-aarch64 -L "$WORK/root" "$WORK/root/usr/bin/python3.11" -c "$COMPILE" "$WORK/root"
fi
# smoke test: the emulated interpreter imports TVM's runtime
PYTHONPATH="$WORK/root/opt/site" qemu-aarch64 -L "$WORK/root" "$WORK/root/usr/bin/python3.11" -c \
  "import tvm, numpy; from tvm import relax; print('aarch64 tvm', tvm.__version__)" >&2
echo "$STAMP" > "$WORK/root/.stamp"
rm -rf "$SYSROOT"
mv "$WORK/root" "$SYSROOT"
log "sysroot ready: $SYSROOT (run: PYTHONPATH=$SYSROOT/opt/site qemu-aarch64 -L $SYSROOT $SYSROOT/usr/bin/python3.11)"
}

if [ -f "$SYSROOT/.stamp" ] && [ "$(cat "$SYSROOT/.stamp")" = "$STAMP" ]; then
  log "sysroot up to date: $SYSROOT"
else
  build_sysroot
fi

# 4. onnxruntime's aarch64 wheel (the host's version), unpacked for bench/arm: the peer whose instructions per
#    inference bench/arm counts next to ours, run by the sysroot's Python under qemu-aarch64
ORT_VERSION="$("$PYTHON" -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || true)"
ORT_DIR="$CACHE/onnxruntime-aarch64-$ORT_VERSION"
if [ -n "$ORT_VERSION" ] && [ ! -f "$ORT_DIR/.stamp" ]; then
  log "unpacking onnxruntime $ORT_VERSION for aarch64 into $ORT_DIR (bench/arm)"
  ORT_WORK="$(mktemp -d "$CACHE/.ort.XXXXXX")"
  "$PYTHON" -m pip download -q --no-deps "${PLAT[@]}" -d "$ORT_WORK/wheels" "onnxruntime==$ORT_VERSION"
  "$PYTHON" -m pip install -q --no-deps --no-compile "${PLAT[@]}" --target "$ORT_WORK/site" "$ORT_WORK"/wheels/*.whl
  rm -rf "$ORT_WORK/wheels" "$ORT_DIR"
  echo "onnxruntime=$ORT_VERSION" > "$ORT_WORK/.stamp"
  mv "$ORT_WORK" "$ORT_DIR"
fi

# 5. the compiled verification runner (targets/deploy/io_runner.cc) for qemu, cached in the sysroot; optional:
# without it --verify-target falls back to the sysroot's Python (slower under emulation).
"$PYTHON" -c "from compress_graph.targets.runners import io_runner; print('[setup_arm] io_runner:', io_runner())" \
  >&2 || log "io_runner not built (compress_graph not importable?); verification will use the emulated Python"
