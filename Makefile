# deepscope: the two commands are `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0

.PHONY: demo test lint bench clean

$(BIN)/deepscope: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]' $(TORCH)
	touch $(BIN)/deepscope

$(VENV): $(BIN)/deepscope

demo: $(VENV)
	$(BIN)/deepscope train examples/glorot-tanh-n.toml

test: $(VENV)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

lint: $(VENV)
	$(BIN)/ruff check src tests benchmarks

bench: $(VENV)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
