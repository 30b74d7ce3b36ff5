# Two commands matter: `make demo` and `make test` (see README.md).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
#: the venv takes about 7 GB; a full disk would otherwise fail half-way through pip
MIN_FREE_GB ?= 8

.PHONY: demo test lint install check bench clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found; install Python 3.11 or run 'make PY=python3 ...'"; exit 2; }
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ "$$free" -lt $(MIN_FREE_GB) ]; then \
		echo "error: $$free GB free here; the install needs about $(MIN_FREE_GB) GB (torch with its CUDA libraries)."; \
		echo "       Free some space, or run 'make MIN_FREE_GB=0 ...' to try anyway."; exit 2; fi
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

# Ends with where the report is and two queries that work as printed, from here.
demo: $(STAMP)
	$(BIN)/dissect-study run studies/demo.study
	@echo ''
	@echo 'Report: studies/out/demo/report.html (report.pdf beside it)'
	@echo 'Try (query finds studies/results.duckdb from here; . $(BIN)/activate puts dissect-study on your PATH):'
	@echo '  $(BIN)/dissect-study query "SELECT model, layer, tau FROM layer_thresholds JOIN latest_run USING (run_id) ORDER BY model, layer_index"'
	@echo '  $(BIN)/dissect-study query "SELECT model, layer, unit, label, score FROM neurons JOIN latest_run USING (run_id) ORDER BY score DESC LIMIT 10"'

# the tests also run the Ray executor on a local cluster: the [ray] extra on top of [dev]
RAY_STAMP := $(VENV)/.installed-ray
$(RAY_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,ray]"
	@touch $(RAY_STAMP)

test: $(RAY_STAMP)
	$(BIN)/python -m pytest -q tests

# The repository root is the `dissect_study` package; mypy finds it through a
# link named for the package (an editable install's import hook is invisible to it).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@mkdir -p .mypy_root && ln -sfn .. .mypy_root/dissect_study
	cd .mypy_root && MYPYPATH=. ../$(BIN)/mypy -p dissect_study.dsl -p dissect_study.engine -m dissect_study.errors -m dissect_study.plugins

check: $(STAMP)
	$(BIN)/dissect-study check studies/*.study

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_similarity.py
	$(BIN)/python benchmarks/bench_activations.py
	$(BIN)/python benchmarks/bench_cheapest_pass.py
	$(BIN)/python benchmarks/bench_painting.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
