"""The pieces every experiment is made of: ``Experiment`` (what to run and how to judge it), ``Context``
(what one invocation was asked for) and ``Verdict`` (what came out).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepscope.plots.figure import new_figure
from deepscope.registry import unknown

__all__ = ["PROFILES", "Context", "Experiment", "Verdict", "new_figure", "save_figure"]

PROFILES = ("tiny", "quick", "paper")
"""tiny: seconds, for tests (machinery, not science); quick: the real check, minutes on 2 CPU cores;
paper: the full-scale setup of the source."""


@dataclass
class Verdict:
    """The outcome of one experiment: pass/fail, the measured numbers behind it, and the figure(s).

    ``checks`` maps a readable statement of each condition (with the numbers it compared) to whether it
    held; ``passed`` is true when all of them did.
    """

    passed: bool
    numbers: dict[str, float]
    summary: str
    checks: dict[str, bool] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    duration: float = 0.0
    name: str = ""
    profile: str = ""
    seeds: list[int] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # the profile's, with the overrides applied
    overrides: list[str] = field(default_factory=list)  # ``--set key=value`` items

    @classmethod
    def from_checks(cls, checks: Mapping[str, bool], numbers: Mapping[str, float], summary: str) -> Verdict:
        """A verdict that passes when every check holds; ``summary`` states the claim in measured terms."""
        checks = {key: bool(ok) for key, ok in checks.items()}
        numbers = {key: float(value) for key, value in numbers.items()}
        return cls(passed=all(checks.values()), numbers=numbers, summary=summary, checks=checks)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings, non-finite numbers as strings)."""
        out = dataclasses.asdict(self)
        out["figures"] = [str(path) for path in self.figures]
        out["numbers"] = {k: v if math.isfinite(v) else str(v) for k, v in self.numbers.items()}
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


@dataclass
class Context:
    """What one invocation of an experiment was asked for, handed to its ``grid``, ``run``, ``verdict``
    and ``figure`` functions.

    ``settings`` is the chosen profile's dict; ``seeds`` the seeds to repeat over; ``out_dir`` where
    figures go. ``sweep(specs)`` trains a list of run specs in parallel (local processes or Ray) into the
    run store at ``store_root`` and returns their :class:`~deepscope.experiments.sweep.RunOutcome`.
    """

    name: str
    profile: str
    settings: dict[str, Any]
    seeds: list[int]
    out_dir: Path
    store_root: Path | None = None
    jobs: int | None = None
    backend: str = "local"
    run_ids: list[str] = field(default_factory=list)

    def sweep(self, specs: Sequence[Any]) -> list[Any]:
        """Train ``specs`` (RunSpec objects or dicts) with :func:`deepscope.experiments.sweep.run_grid`."""
        from deepscope.experiments.sweep import run_grid

        outcomes = run_grid(specs, store_root=self.store_root, jobs=self.jobs, backend=self.backend)
        self.run_ids.extend(outcome.run_id for outcome in outcomes if outcome.run_id)
        return outcomes

    def ensure_store(self) -> Path:
        """The run store directory, ``<out_dir>/runs`` when none was given: for experiments that read
        their runs' curves or probe records back."""
        if self.store_root is None:
            self.store_root = self.out_dir / "runs"
        return self.store_root

    def path(self, suffix: str = "", ext: str = "png") -> Path:
        """``<out_dir>/<name>[-suffix].<ext>``, the directory created if needed."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{self.name}-{suffix}" if suffix else self.name
        return self.out_dir / f"{stem}.{ext}"


@dataclass(frozen=True)
class Experiment:
    """One claim of the texts, made checkable.

    - ``profiles``: ``{"tiny": {...}, "quick": {...}, "paper": {...}}``, each a dict of settings (sizes,
      steps, ...); the optional key ``"seeds"`` gives the default number of seeds.
    - ``grid(ctx) -> list[RunSpec]``: the training runs, for experiments built on the trainer.
    - ``run(ctx) -> results``: measures. Optional when ``grid`` is given: the default runs the grid with
      ``ctx.sweep`` and the results are the list of run outcomes.
    - ``verdict(results, ctx) -> Verdict``: pass/fail with the measured numbers (``Verdict.from_checks``).
    - ``figure(results, ctx) -> list[Path]``: writes PNG(s) under ``ctx.out_dir`` (``ctx.path(...)``).
    """

    name: str
    claim: str
    source: str
    profiles: Mapping[str, Mapping[str, Any]]
    verdict: Callable[[Any, Context], Verdict]
    figure: Callable[[Any, Context], list[Path]]
    run: Callable[[Context], Any] | None = None
    grid: Callable[[Context], list[Any]] | None = None

    def __post_init__(self) -> None:
        if self.run is None and self.grid is None:
            raise ValueError(f"experiment {self.name!r} needs a run function, a grid, or both")
        missing = [p for p in PROFILES if p not in self.profiles]
        if missing:
            raise ValueError(f"experiment {self.name!r} lacks profile(s) {missing}; every experiment has {PROFILES}")

    def settings(self, profile: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
        """A copy of the settings of ``profile`` with ``overrides`` (``"key=value"``, as ``--set``) applied.

        An unknown profile or key lists the valid ones; a value must be of the kind the profile gives
        (an integer where the profile has one, a number for a float, a list for a list, ...).
        """
        if profile not in self.profiles:
            raise unknown("profile", profile, self.profiles)
        settings = copy.deepcopy(dict(self.profiles[profile]))
        for item in overrides:
            _override(settings, item, f"{self.name} --profile {profile}")
        return settings

    def measure(self, ctx: Context) -> Any:
        """The raw results: ``run(ctx)``, or the grid trained with ``ctx.sweep``."""
        if self.run is not None:
            return self.run(ctx)
        return ctx.sweep(self.grid(ctx))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "an integer" if isinstance(value, int) else "a number"
    return {str: "a string", list: "a list", tuple: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _override(settings: dict, item: str, where: str) -> None:
    """Set one ``"key=value"`` (dotted keys reach into nested settings) after checking key and kind."""
    from deepscope.config import split_override

    key, raw, value = split_override(item, example="updates=2000")
    *path, last = key.split(".")
    node, prefix = settings, ""
    for part in path:
        if not isinstance(node.get(part), dict):
            break
        node, prefix = node[part], f"{prefix}{part}."
    if not key.startswith(prefix) or key[len(prefix) :] not in node:
        raise unknown("--set", key, [prefix + k for k in sorted(node)], what=f"--set {key}: not a setting of {where}")
    old = node[last]
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if old is not None and _kind(old) != _kind(value):
        raise ValueError(f"--set {key}={raw}: give {_kind(old)}, as the profile's {old!r}")
    if isinstance(old, list | tuple) and old:
        items = [float(v) if isinstance(old[0], float) and isinstance(v, int) and not isinstance(v, bool) else v
                 for v in value]
        if any(_kind(v) != _kind(old[0]) for v in items):
            plural = _kind(old[0]).partition(" ")[2] + "s" if _kind(old[0]).startswith("a") else "booleans"
            raise ValueError(f"--set {key}={raw}: give a list of {plural}, as the profile's {old!r}")
        value = items
    _check_range(key, raw, old, value)
    node[last] = list(value) if isinstance(old, tuple) else value


def _check_range(key: str, raw: str, old: Any, value: Any) -> None:
    """A count the profile gives as a positive integer (widths, depths, updates, sizes) stays one; numbers stay
    finite. The message names the user's key, not the argument of the function it ends up in."""
    import math

    olds, values = (old, value) if isinstance(old, list | tuple) else ([old], [value])
    positive = [o for o in olds if isinstance(o, int) and not isinstance(o, bool)]
    if positive and all(o >= 1 for o in positive) and any(isinstance(v, int) and v < 1 for v in values):
        raise ValueError(f"--set {key}={raw}: give {'integers' if len(olds) > 1 else 'an integer'} >= 1, "
                         f"as the profile's {old!r}")
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        raise ValueError(f"--set {key}={raw}: give a finite number, as the profile's {old!r}")


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
