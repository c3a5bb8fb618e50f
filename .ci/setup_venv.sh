#!/usr/bin/env bash
# Create the project's virtual environment and install compress-graph into it (editable, with the tvm and test
# extras). Debian's python3 refuses `pip install` outside a venv (PEP 668), and a fresh Debian 12 has no
# ensurepip until python3-venv is installed: this installs it when missing. Usage: setup_venv.sh PYTHON VENV
set -euo pipefail
PYTHON="${1:-python3}"
VENV="${2:-.venv}"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
log() { echo "[setup_venv] $*" >&2; }

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "compress-graph needs Python >= 3.10"' || {
  log "$PYTHON is $("$PYTHON" --version 2>&1); compress-graph needs Python >= 3.10"; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    ver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    log "installing python$ver-venv (Debian's python3 ships without ensurepip)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "python$ver-venv" || \
      $SUDO apt-get install -y -qq --no-install-recommends python3-venv
  fi
  log "creating $VENV with $("$PYTHON" --version 2>&1)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
fi
log "pip install -e .[tvm,test] into $VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[tvm,test]"
