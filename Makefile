# ensemble-onnx: every target does its own set-up from a fresh clone.
PYTHON    ?= python3
VENV      ?= .venv
SLIM_VENV ?= .venv-runtime
MODELS    ?= models/
ARTIFACTS ?= artifacts/
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: install convert lint test test-full test-slim bench bench-host backfill-demo clean mutation

install: $(VENV)/.installed

# The build stack and test tools. torch is pinned in pyproject.toml (the CPU build on the machines).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[convert,bench,dev,backfill,ray]'
	touch $@

# A serving host: plain `pip install .` (numpy, onnxruntime, click) plus pytest, nothing else.
$(SLIM_VENV)/.installed: pyproject.toml $(wildcard runtime/*.py runtime/*/*.py convert/cli.py)
	rm -rf $(SLIM_VENV)
	$(PYTHON) -m venv $(SLIM_VENV)
	$(SLIM_VENV)/bin/pip install $(PIP_FLAGS) . pytest
	touch $@

convert: install
	@if [ ! -d "$(MODELS)" ]; then echo "no $(MODELS): generating the demo model set"; \
		$(VENV)/bin/python -m convert.demo $(MODELS); fi
	$(VENV)/bin/ensemble-onnx convert $(MODELS) -o $(ARTIFACTS)

# The runtime against the original frameworks on this machine: table, build/bench/bench.json, bench.png.
# Both builds of the same models: the default (fp32) and the explicit int8 option, in one run.
bench: convert
	$(VENV)/bin/ensemble-onnx convert $(MODELS) -o build/artifacts-int8 --precision int8 -q
	$(VENV)/bin/ensemble-onnx bench $(ARTIFACTS) build/artifacts-int8 --models $(MODELS) --out build/bench

# A demo history (500 symbols x 4,000 minutes = 2 million rows) scored by both engines, which must agree row
# for row, then the benchmark: rows/s per core and peak memory of each engine and of the original frameworks.
HISTORY ?= build/backfill/history.parquet
backfill-demo: convert
	@if [ ! -f "$(HISTORY)" ]; then $(VENV)/bin/python -m convert.backfill_bench history $(HISTORY); fi
	$(VENV)/bin/ensemble-onnx score $(ARTIFACTS) $(HISTORY) -o build/backfill/scores-local.parquet --force
	$(VENV)/bin/ensemble-onnx score $(ARTIFACTS) $(HISTORY) -o build/backfill/scores-ray.parquet --engine ray --force
	$(VENV)/bin/python -m convert.backfill_bench compare build/backfill/scores-local.parquet build/backfill/scores-ray.parquet
	$(VENV)/bin/python -m convert.backfill_bench bench $(ARTIFACTS) $(HISTORY) --models $(MODELS) --out build/backfill

# The runtime alone on this host, per thread count and session configuration, against the physical floors:
# build/bench-host/bench_host.md. Needs only numpy + onnxruntime (runs on a serving host, see README).
bench-host: convert
	$(VENV)/bin/ensemble-onnx convert $(MODELS) -o build/artifacts-int8 --precision int8 -q
	$(VENV)/bin/python -m convert.bench_host $(ARTIFACTS) build/artifacts-int8 --out build/bench-host

test: lint test-full test-slim

# The style the tools hold: ruff (pyflakes, bugbear, import order, pyupgrade, line length) on everything,
# mypy strict on runtime/ and checked on convert/ (pyproject.toml says which is which).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The whole suite with the real frameworks; it also leaves build/test-artifacts for test-slim.
test-full: install
	$(VENV)/bin/python -m pytest -q

# The runtime's tests again, where torch, sklearn, xgboost, lightgbm and onnx are not installed at all.
test-slim: $(SLIM_VENV)/.installed test-full
	cd tests && ENSEMBLE_ONNX_ARTIFACTS=$(CURDIR)/build/test-artifacts \
		$(CURDIR)/$(SLIM_VENV)/bin/python -m pytest -q -m slim -p no:cacheprovider test_runtime.py test_monitor.py

# Mutation testing, not part of `make test` (about five hours of one core for all ~5,000 mutants): mutmut changes runtime/ and the parity
# gate's comparison one small edit at a time and runs the fast runtime tests against each; docs/mutation.md
# records the score and every survivor. The tests run against build/test-artifacts (built here if missing).
MUTANTS ?= runtime.* convert.parity.x_compare* convert.parity.x_*gate* convert.parity.x*Check*
mutation: install
	test -f build/test-artifacts/manifest.json || $(VENV)/bin/python -m pytest -q tests/test_runtime.py
	rm -rf mutants
	ENSEMBLE_ONNX_MUTATION=1 ENSEMBLE_ONNX_ARTIFACTS=$(CURDIR)/build/test-artifacts $(VENV)/bin/mutmut run $(MUTANTS)
	$(VENV)/bin/mutmut results

clean:
	rm -rf build .pytest_cache
