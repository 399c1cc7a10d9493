# Two entry points (see README): `make bench` (core benchmarks, quick form) and `make test`.
PYTHON ?= python3
# On a CPU-only machine pin torch's CPU build (pip would otherwise resolve a multi-GB CUDA build).
TORCH_CPU ?= torch==2.13.0

.PHONY: setup setup-test test test-gpu bench bench-full

setup:
	@if ! $(PYTHON) -c "import torch" 2>/dev/null; then $(PYTHON) -m pip install -q "$(TORCH_CPU)"; fi
	$(PYTHON) -m pip install -q -e .

setup-test: setup
	$(PYTHON) -m pip install -q -e ".[test]"

test: setup-test
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

# On the GPU machine (no network): the package from the working tree, GPU-marked tests only.
test-gpu:
	PYTHONPATH=src $(PYTHON) -m pytest -q -p no:cacheprovider -m gpu tests

bench: setup
	$(PYTHON) scripts/benchmark_cpp_dispatch.py --quick --output results/benchmark_cpp_dispatch.jsonl
	$(PYTHON) scripts/run_mixed_precision_bench.py --output results/run_mixed_precision_bench.jsonl

bench-full: setup
	$(PYTHON) scripts/benchmark_cpp_dispatch.py --output results/benchmark_cpp_dispatch.jsonl
	$(PYTHON) scripts/run_mixed_precision_bench.py --full --model glm4 --output results/run_mixed_precision_bench.jsonl
