"""Early stopping and the best evaluation of a run (``train.patience``, ``train.monitor``, ``train.restore_best``).

Stop after ``patience`` evaluations in a row without a better validation value, and keep the weights of the
best evaluation to end the run with (Prechelt 1998, "Early stopping -- but when?"). A NaN is never the best.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

__all__ = ["EarlyStopping"]


def _cpu_copy(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class EarlyStopping:
    """The best evaluation by ``valid/<monitor>``, the evaluations since it, and (with ``restore``) its weights."""

    def __init__(self, monitor: str = "error", patience: int | None = None, restore: bool = False):
        self.monitor, self.patience, self.restore = monitor, patience, restore
        self.best: dict[str, float] = {}  # the best evaluation's step and values
        self.bad_evals = 0
        self.best_state: dict[str, Tensor] | None = None  # its weights (on the CPU), with ``restore``
        self.last_state: dict[str, Tensor] | None = None  # the last weights, once the best ones were restored
        self.restored: int | None = None  # the update whose weights the run ended with

    def observe(self, step: int, metrics: dict[str, float], model: nn.Module) -> None:
        """One evaluation with a validation split."""
        watched = f"valid/{self.monitor}"
        if not self.best or not math.isfinite(self.best[watched]) or metrics[watched] < self.best[watched]:
            self.best = {"step": step, **{k: v for k, v in metrics.items() if "/" in k}}
            self.bad_evals = 0
            if self.restore:
                self.best_state = _cpu_copy(model)
        else:
            self.bad_evals += 1

    def stop_message(self, step: int) -> str | None:
        """Why the run stops at ``step``, once ``patience`` evaluations went by without a better one; else None."""
        if self.patience is None or self.bad_evals < self.patience:
            return None
        best = self.best[f"valid/{self.monitor}"]
        shown = f"{best:.2%}" if self.monitor == "error" else f"{best:.4g}"
        return (f"Stopped early at update {step}: the validation {self.monitor} has not improved for "
                f"{self.patience} evaluations (best {shown} at update {self.best['step']}).")

    def state(self) -> dict[str, Any]:
        return {"best": dict(self.best), "bad_evals": self.bad_evals, "best_model": self.best_state,
                "monitor": self.monitor, "last_model": self.last_state}

    def load(self, state: dict[str, Any]) -> None:
        """A checkpoint's state; the best is sought anew when the checkpoint watched another value."""
        if state.get("monitor", "error") == self.monitor:
            self.best, self.bad_evals = dict(state["best"]), state["bad_evals"]
            if self.restore:
                self.best_state = state.get("best_model")

    def restore_best(self, model: nn.Module, eval_step: int | None) -> tuple[str, dict[str, float] | None]:
        """At the end of a finished run: load the best evaluation's weights into ``model``. Returns what happened,
        in words, and the restored evaluation's values (None when nothing was restored)."""
        if not self.best:
            return ("train.restore_best: the dataset has no validation split, so the run ends with its last "
                    "weights."), None
        if self.best["step"] == eval_step:
            return "", None  # the last evaluation is the best
        if self.best_state is None:
            return (f"train.restore_best: the checkpoint this run resumed from keeps no weights of its best "
                    f"evaluation (update {self.best['step']}), so the run ends with its last weights."), None
        self.last_state = _cpu_copy(model)
        model.load_state_dict(self.best_state)
        self.restored = int(self.best["step"])
        return (f"Restored the weights of update {self.restored}, the best validation {self.monitor} "
                "(train.restore_best)."), {k: v for k, v in self.best.items() if k != "step"}
