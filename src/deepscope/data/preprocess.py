"""Input preprocessing fitted on the training split only (Varma & Das, ch. 7, section 7.6: centering + scaling).

Every method is a per-element affine map ``x -> (x - shift) / scale`` whose statistics are computed on
the training inputs ``x_train`` of shape ``(M, *features)`` (e.g. ``(M, C, H, W)``):

=============  =============================================================================================
none           identity
center         subtract the per-feature mean over the M training samples (the text's "Centering")
mean_image     the same computation as ``center`` (alias): for images the per-feature mean *is* the mean
               image of size C x H x W; both names are kept because the text names both
channel_mean   subtract one mean per channel (dimension 1), taken over samples and positions
standardize    subtract the per-feature mean and divide by the per-feature (population) std
minmax         map each feature's training [min, max] to [-1, 1]
=============  =============================================================================================

A :class:`Preprocessor` composes a list of methods in order, each fitted on the training data as
transformed by the methods before it. A feature that is constant on the training set (std or range below
10 float-eps, as scikit-learn treats it) is only shifted, not divided: it maps to 0 on the training set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from deepscope.registry import register, unknown

__all__ = ["METHODS", "Preprocessor"]

Stats = tuple[Tensor | None, Tensor | None]  # (shift, scale), each broadcast against one sample


def _safe_scale(s: Tensor) -> Tensor:
    """Replace (near-)zero scales by 1 so constant features are only centred (as scikit-learn does)."""
    return torch.where(s > 10 * torch.finfo(s.dtype).eps, s, torch.ones_like(s))


def none(x: Tensor) -> Stats:
    """Leave the inputs as they are."""
    return None, None


def center(x: Tensor) -> Stats:
    """x_i(m) <- x_i(m) - mean_s x_i(s): subtract the per-feature training mean (Varma & Das, ch. 7, section 7.6)."""
    return x.mean(dim=0), None


def channel_mean(x: Tensor) -> Stats:
    """x^c(m) <- x^c(m) - mean over samples and positions of channel c (Varma & Das, ch. 7, section 7.6)."""
    dims = [0, *range(2, x.dim())]
    return x.mean(dim=dims, keepdim=True)[0], None


def standardize(x: Tensor) -> Stats:
    """x_i(m) <- (x_i(m) - mean_i) / sigma_i, per feature, population std (Varma & Das, ch. 7, section 7.6)."""
    var, mean = torch.var_mean(x, dim=0, correction=0)
    return mean, _safe_scale(var.sqrt())


def minmax(x: Tensor) -> Stats:
    """Map each feature's training [min, max] to [-1, 1] (Varma & Das, ch. 7, section 7.6)."""
    lo, hi = x.amin(dim=0), x.amax(dim=0)
    return (hi + lo) / 2, _safe_scale((hi - lo) / 2)


METHODS: dict[str, Callable[[Tensor], Stats]] = {
    "none": none,
    "center": center,
    "mean_image": center,  # alias: the per-feature mean of images is the mean image
    "channel_mean": channel_mean,
    "standardize": standardize,
    "minmax": minmax,
}


def _apply(x: Tensor, shift: Tensor | None, scale: Tensor | None) -> Tensor:
    if shift is not None:
        x = x - shift.to(device=x.device, dtype=x.dtype)
    if scale is not None:
        x = x / scale.to(device=x.device, dtype=x.dtype)
    return x


class Preprocessor:
    """A list of preprocessing methods applied in order; fit on the training inputs, then call on any split.

    >>> pre = Preprocessor(["channel_mean", "standardize"]).fit(x_train)
    >>> x_valid = pre(x_valid)

    ``state_dict()`` holds tensors only, so it saves inside a checkpoint that loads with
    ``torch.load(path, weights_only=True)``.
    """

    def __init__(self, methods: str | Sequence[str] | None = "none"):
        names = [methods] if isinstance(methods, str) else list(methods or [])
        for name in names:
            if name not in METHODS:
                raise unknown("preprocessing", name, sorted(METHODS))
        self.methods: list[str] = names
        self.input_shape: tuple[int, ...] | None = None  # per-sample shape the statistics were fitted on
        self._stats: list[Stats] = []

    @property
    def fitted(self) -> bool:
        return self.input_shape is not None

    def fit(self, x_train: Tensor) -> Preprocessor:
        """Compute every method's statistics on ``x_train`` (shape ``(M, *features)``, M >= 1)."""
        if x_train.dim() < 2 or x_train.shape[0] < 1:
            raise ValueError(
                f"Preprocessor.fit: x_train must be a batch of shape (M, *features) with M >= 1; "
                f"got shape {tuple(x_train.shape)}"
            )
        x = x_train if x_train.is_floating_point() else x_train.float()
        stats: list[Stats] = []
        for i, name in enumerate(self.methods):
            stats.append(METHODS[name](x))
            if i + 1 < len(self.methods):  # the next method is fitted on this one's output
                x = _apply(x, *stats[-1])
        self._stats, self.input_shape = stats, tuple(x_train.shape[1:])
        return self

    def __call__(self, x: Tensor) -> Tensor:
        """Apply the fitted methods to a batch ``x`` of shape ``(B, *input_shape)``."""
        if not self.fitted:
            raise RuntimeError(
                f"Preprocessor({self.methods}) is not fitted: call .fit(x_train) or .load_state_dict(state) first"
            )
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"Preprocessor was fitted on inputs of shape (B, {', '.join(map(str, self.input_shape))}); "
                f"got x of shape {tuple(x.shape)}"
            )
        ids = x.dtype in (torch.int32, torch.int64) and all(m == "none" for m in self.methods)
        if not x.is_floating_point() and not ids:  # without preprocessing, token ids (int32/int64) stay integers
            x = x.float()
        for shift, scale in self._stats:
            x = _apply(x, shift, scale)
        return x

    def to(self, device: torch.device | str) -> Preprocessor:
        """Move the fitted statistics to ``device`` (they are moved per call otherwise)."""
        self._stats = [tuple(None if t is None else t.to(device) for t in s) for s in self._stats]
        return self

    def _keys(self) -> set[str]:
        """The state-dict keys these methods produce (found by fitting each on a dummy 1 x 1 batch)."""
        keys = {"input_shape"}
        for i, name in enumerate(self.methods):
            shift, scale = METHODS[name](torch.zeros(1, 1))
            keys |= {f"{i}.{name}.{kind}" for kind, t in (("shift", shift), ("scale", scale)) if t is not None}
        return keys

    def state_dict(self) -> dict[str, Tensor]:
        """The fitted statistics, tensors only: ``input_shape`` and ``"{i}.{method}.shift|scale"``."""
        if not self.fitted:
            raise RuntimeError(f"Preprocessor({self.methods}) is not fitted: nothing to save")
        out = {"input_shape": torch.tensor(self.input_shape, dtype=torch.long)}
        for i, (name, (shift, scale)) in enumerate(zip(self.methods, self._stats, strict=True)):
            for kind, t in (("shift", shift), ("scale", scale)):
                if t is not None:
                    out[f"{i}.{name}.{kind}"] = t.detach().clone()
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> Preprocessor:
        """Restore statistics saved by :meth:`state_dict` of a Preprocessor with the same methods."""
        expected = self._keys()
        if set(state) != expected:
            raise ValueError(
                f"Preprocessor({self.methods}).load_state_dict: missing keys {sorted(expected - set(state))}, "
                f"unexpected keys {sorted(set(state) - expected)}; expected: {', '.join(sorted(expected))}"
            )
        self._stats = [
            (state.get(f"{i}.{name}.shift"), state.get(f"{i}.{name}.scale")) for i, name in enumerate(self.methods)
        ]
        self.input_shape = tuple(int(n) for n in state["input_shape"].tolist())
        return self

    def __repr__(self) -> str:
        return f"Preprocessor({self.methods!r}, fitted={self.fitted})"

register("preprocess", METHODS)
