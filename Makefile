# Beacon: the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench serve migrate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m bot --config demo/config.toml demo

test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses=4 $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

serve: $(STAMP)
	$(PY) -m bot migrate && $(PY) -m bot serve

clean:
	rm -rf $(VENV) .pytest_cache
