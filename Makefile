# ensemble-onnx: every target does its own set-up from a fresh clone.
PYTHON    ?= python3
VENV      ?= .venv
SLIM_VENV ?= .venv-runtime
MODELS    ?= models/
ARTIFACTS ?= artifacts/
PIP_FLAGS ?= -q --disable-pip-version-check

# Test workers (pytest-xdist): one per core by default; PYTEST_WORKERS=0 runs the suite in one process.
PYTEST_WORKERS ?= auto
PYTEST_FLAGS   ?= -q -n $(PYTEST_WORKERS) --dist loadfile
# `make check` lints the Python files changed against this (plus those not yet committed).
BASE ?= HEAD

.PHONY: install convert lint lint-changed test test-full test-slim slim-tests check check-tests dist bench bench-host backfill-demo clean mutation

install: $(VENV)/.installed

# The build stack and test tools. torch is pinned in pyproject.toml (the CPU build on the machines).
# On Linux the build stack takes xgboost-cpu (pyproject.toml): a venv made before holds the CUDA `xgboost` wheel,
# whose files the same module of xgboost-cpu would overwrite, so that one goes first.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if [ "$$(uname -s)" = Linux ] && $(VENV)/bin/pip show -q xgboost 2>/dev/null; then \
		echo "replacing the CUDA xgboost wheel with xgboost-cpu"; $(VENV)/bin/pip uninstall $(PIP_FLAGS) -y xgboost nvidia-nccl-cu12; fi
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[convert,bench,dev,backfill,ray]'
	touch $@

# A serving host: plain `pip install .` (numpy, onnxruntime, click) plus pytest, nothing else. The venv and its
# dependencies are made again only when pyproject.toml changes; a change to the code reinstalls the package alone.
$(SLIM_VENV)/.deps: pyproject.toml
	rm -rf $(SLIM_VENV)
	$(PYTHON) -m venv $(SLIM_VENV)
	$(SLIM_VENV)/bin/pip install $(PIP_FLAGS) . pytest pytest-xdist
	touch $@

$(SLIM_VENV)/.installed: $(SLIM_VENV)/.deps $(wildcard runtime/*.py runtime/*/*.py convert/*.py convert/*/*.py)
	$(SLIM_VENV)/bin/pip install $(PIP_FLAGS) --no-deps --force-reinstall .
	touch $@

# Training statistics for `drift`: the models folder's labelled_features.csv (the demo writes one) as the
# reference rows, unless REFERENCE names other rows (REFERENCE= for none).
REFERENCE ?= $(patsubst %/,%,$(MODELS))/labelled_features.csv

convert: install
	@if [ ! -d "$(MODELS)" ]; then echo "no $(MODELS): generating the demo model set"; \
		$(VENV)/bin/python -m convert.demo $(MODELS); fi
	$(VENV)/bin/ensemble-onnx convert $(MODELS) -o $(ARTIFACTS) \
		$(if $(REFERENCE),$$([ -f "$(REFERENCE)" ] && echo --reference-data "$(REFERENCE)"))

# The runtime against the original frameworks on this machine: table, build/bench/bench.json, bench.png.
# Both builds of the same models: the default (fp32) and the explicit int8 option, in one run.
bench: convert
	$(VENV)/bin/ensemble-onnx convert $(MODELS) -o build/artifacts-int8 --precision int8 -q
	$(VENV)/bin/ensemble-onnx bench $(ARTIFACTS) build/artifacts-int8 --models $(MODELS) --out build/bench

# A demo history (500 symbols x 4,000 minutes = 2 million rows) scored by both engines, which must agree row
# for row, then the benchmark: rows/s per core and peak memory of each engine and of the original frameworks.
HISTORY ?= build/backfill/history.parquet
backfill-demo: convert
	@if [ ! -f "$(HISTORY)" ]; then $(VENV)/bin/python -m benchmarks.backfill history $(HISTORY); fi
	$(VENV)/bin/ensemble-onnx score $(ARTIFACTS) $(HISTORY) -o build/backfill/scores-local.parquet --force
	$(VENV)/bin/ensemble-onnx score $(ARTIFACTS) $(HISTORY) -o build/backfill/scores-ray.parquet --engine ray --force
	$(VENV)/bin/python -m benchmarks.backfill compare build/backfill/scores-local.parquet build/backfill/scores-ray.parquet
	$(VENV)/bin/python -m benchmarks.backfill bench $(ARTIFACTS) $(HISTORY) --models $(MODELS) --out build/backfill

# The runtime alone on this host, per thread count and session configuration, against the physical floors:
# build/bench-host/bench_host.md. Needs only numpy + onnxruntime (runs on a serving host, see README).
bench-host: convert
	$(VENV)/bin/ensemble-onnx convert $(MODELS) -o build/artifacts-int8 --precision int8 -q
	$(VENV)/bin/python -m runtime.bench.host $(ARTIFACTS) build/artifacts-int8 --out build/bench-host

# Everything: lint beside the whole suite (ruff's and mypy's few lines may land among pytest's dots), then the
# runtime's tests in the runtime-only venv. Trained models are cached in build/test-cache across runs
# (tests/conftest.py), so a second run trains nothing.
test: install
	@$(MAKE) --no-print-directory -j3 lint test-full $(SLIM_VENV)/.installed
	@$(MAKE) --no-print-directory slim-tests

# The quick loop while working: ruff on the changed files, mypy (incremental: .mypy_cache), and the tests that
# train or convert nothing beyond the one cached demo build (`-m "not builds"`, marked by tests/conftest.py) and
# are not one of the few exhaustive or multi-process checks (`-m "not slow"`: every byte flipped, Ray, threads).
# Not a substitute for `make test` before a merge.
check: install
	@$(MAKE) --no-print-directory -j2 lint-changed check-tests

check-tests: install
	$(VENV)/bin/python -m pytest $(PYTEST_FLAGS) -m "not builds and not slow" -p no:cacheprovider

# The style the tools hold: ruff (pyflakes, bugbear, import order, pyupgrade, line length) on everything,
# mypy strict on runtime/ and checked on convert/ (pyproject.toml says which is which). mypy is incremental:
# its cache (.mypy_cache) makes a second run take seconds.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

lint-changed: install
	@echo "ruff check on the Python files changed against $(BASE) or not yet committed"
	@(git diff --name-only -z --diff-filter=d $(BASE) -- '*.py'; git ls-files -z --others --exclude-standard -- '*.py') \
		| sort -zu | xargs -0 -r $(VENV)/bin/ruff check
	$(VENV)/bin/mypy

# The whole suite with the real frameworks, one worker per core; it also leaves build/test-artifacts for test-slim.
test-full: install
	$(VENV)/bin/python -m pytest $(PYTEST_FLAGS)

# The runtime's tests again, where torch, sklearn, xgboost, lightgbm and onnx are not installed at all.
test-slim: $(SLIM_VENV)/.installed test-full
	@$(MAKE) --no-print-directory slim-tests

slim-tests: $(SLIM_VENV)/.installed
	cd tests && ENSEMBLE_ONNX_ARTIFACTS=$(CURDIR)/build/test-artifacts \
		$(CURDIR)/$(SLIM_VENV)/bin/python -m pytest -q -n $(PYTEST_WORKERS) -m slim -p no:cacheprovider \
		runtime/test_serving.py runtime/monitor/test_monitor.py runtime/bench/test_host_graph_cost.py

# What a serving host installs from until the package is published: dist/ensemble_onnx-VERSION-py3-none-any.whl
# (`pip install ensemble_onnx-*.whl`, or `'ensemble_onnx-*.whl[convert]'` for the build stack) and the sdist.
dist: install
	rm -rf dist
	$(VENV)/bin/python -m build --sdist --wheel --outdir dist .
	@ls -l dist

# Mutation testing, not part of `make test` (about five hours of one core for all ~5,000 mutants): mutmut changes runtime/ and the parity
# gate's comparison one small edit at a time and runs the fast runtime tests against each; docs/mutation.md
# records the score and every survivor. The tests run against build/test-artifacts (built here if missing).
MUTANTS ?= runtime.* convert.parity.x_compare* convert.parity.x_*gate* convert.parity.x*Check*
mutation: install
	test -f build/test-artifacts/manifest.json || $(VENV)/bin/python -m pytest -q tests/runtime/test_serving.py
	rm -rf mutants
	ENSEMBLE_ONNX_MUTATION=1 ENSEMBLE_ONNX_ARTIFACTS=$(CURDIR)/build/test-artifacts $(VENV)/bin/mutmut run $(MUTANTS)
	$(VENV)/bin/mutmut results

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache
