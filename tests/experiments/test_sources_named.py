"""What users read cites the texts and papers themselves: never the project's working file names (their numbers)."""

import re
from pathlib import Path

import deepscope
from deepscope.experiments import EXPERIMENTS

WORKING_NAME = re.compile(r"\bseeds? ?0\d\d\b", re.IGNORECASE)


def test_no_experiment_names_a_working_file():
    shown = [f"{e.name}: {e.claim} ({e.source})" for e in EXPERIMENTS.values()]
    assert len(shown) >= 10  # every experiment was read
    assert [s for s in shown if WORKING_NAME.search(s)] == []


def test_no_source_file_names_a_working_file():
    """Module docstrings and comments reach users through help() and the source they read."""
    root = Path(deepscope.__file__).parent
    hits = [f"{p.relative_to(root)}:{i}" for p in sorted(root.rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if WORKING_NAME.search(line)]
    assert hits == []
