# deepscope: the two commands are `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0

.PHONY: demo test lint bench reliability clean

$(BIN)/deepscope: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]' $(TORCH)
	touch $(BIN)/deepscope

$(VENV): $(BIN)/deepscope

# The main job: train the Glorot & Bengio Tanh N net on Shapeset, show the paper's central contrast
# (sigmoid + standard init vs tanh + normalized init) with a verdict, then diagnose a run and write its report.
# doctor exits 1 when it finds a problem (the demo's [0, 1] inputs are not centred): that is not a failure.
demo: $(VENV)
	$(BIN)/deepscope train examples/glorot-tanh-n.toml --quiet
	$(BIN)/deepscope experiments run sigmoid-saturation --profile demo -o runs/demo
	$(BIN)/deepscope doctor examples/glorot-tanh-n.toml --updates 1000 -o runs/demo-report.html -q || [ $$? -eq 1 ]

test: $(VENV)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

lint: $(VENV)
	$(BIN)/ruff check src tests benchmarks

bench: $(VENV)
	for b in benchmarks/*.py; do [ $$b = benchmarks/reliability.py ] || $(BIN)/python $$b || exit 1; done

# SIGKILLs at random moments then resume (bit-identical to an uninterrupted run), concurrent resumes of one run
# (exactly one trains) and concurrent writers of one store: too slow for every `make test`.
reliability: $(VENV)
	$(BIN)/python benchmarks/reliability.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
