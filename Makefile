# The two set-up commands of the README: `make demo` (main job on a bundled model) and `make test` (the suite).
PYTHON ?= python3
OUT ?= out/demo

.PHONY: setup demo test test-fast bench lint

setup:
	$(PYTHON) -m pip install -q -e ".[tvm,test]"
	bash .ci/setup_arm.sh

demo: setup
	$(PYTHON) -m compress_graph.cli models/mobilenetv2_s.onnx --passes "fold-bn,prune{macs=0.7},quant" \
	    --target arm --verify-target -o $(OUT)

test: setup
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m pytest -q -m "not slow"

lint:
	ruff check .
