# The two set-up commands of the README: `make demo` (main job on a bundled model) and `make test` (the suite).
# Both work with the system Python of a fresh Debian 12: everything is installed into a project virtual
# environment ($(VENV)); pip runs again only when pyproject.toml changed (or the venv is gone).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out/demo

.PHONY: setup demo test test-fast bench lint

$(VENV)/.installed: pyproject.toml .ci/setup_venv.sh
	bash .ci/setup_venv.sh "$(PYTHON)" "$(VENV)"
	touch $@

setup: $(VENV)/.installed
	PYTHON="$(PY)" bash .ci/setup_arm.sh

demo: setup
	$(PY) -m compress_graph.cli models/mobilenetv2_s.onnx --passes "fold-bn,prune{macs=0.7},quant" \
	    --target arm --verify-target -o $(OUT)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
