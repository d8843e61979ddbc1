"""Data augmentation on whole batches with kornia: flips, rotations, scaling, brightness / contrast / colour shifts.

"We can generate new examples through applying distortions, such as flips, rotations, color shifts, scaling"
(Jen 2020). ``make_augment(["hflip", "rotate"], degrees=10)`` returns a callable x -> x on (N, C, H, W)
batches, or None when nothing is asked. Each transform is drawn independently per image with probability ``p``.
Geometric transforms fill uncovered pixels from the image border; brightness and contrast do not clip, so
they work for [0, 1] and [-1, 1] inputs alike. Randomness comes from torch's global generator (seed it with
``torch.manual_seed``). The trainer applies augmentation to training batches only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import Tensor, nn

from deepscope.registry import register, unknown

__all__ = ["AUGMENTATIONS", "make_augment"]


def _kornia():
    """kornia.augmentation, imported when a transform is made (a third of a second runs need not pay)."""
    import kornia.augmentation

    return kornia.augmentation


def hflip(p: float = 0.5) -> nn.Module:
    """Mirror left-right."""
    return _kornia().RandomHorizontalFlip(p=p)


def vflip(p: float = 0.5) -> nn.Module:
    """Mirror top-bottom."""
    return _kornia().RandomVerticalFlip(p=p)


def rotate(degrees: float = 15.0, p: float = 0.5) -> nn.Module:
    """Rotate by an angle uniform in [-degrees, degrees]."""
    return _kornia().RandomAffine(degrees=degrees, padding_mode="border", p=p)


def scale(scale: tuple[float, float] = (0.9, 1.1), p: float = 0.5) -> nn.Module:
    """Zoom by a factor uniform in ``scale`` (same factor on both axes)."""
    return _kornia().RandomAffine(degrees=0.0, scale=tuple(scale), padding_mode="border", p=p)


def brightness(brightness: float = 0.1, p: float = 0.5) -> nn.Module:
    """Add a shift uniform in [-brightness, brightness] to every pixel."""
    return _kornia().RandomBrightness(brightness=(1 - brightness, 1 + brightness), clip_output=False, p=p)


def contrast(contrast: float = 0.2, p: float = 0.5) -> nn.Module:
    """Multiply every pixel by a factor uniform in [1 - contrast, 1 + contrast]."""
    return _kornia().RandomContrast(contrast=(1 - contrast, 1 + contrast), clip_output=False, p=p)


def color(saturation: float = 0.2, hue: float = 0.05, p: float = 0.5) -> nn.Module:
    """Shift saturation and hue (RGB images only)."""
    return _kornia().ColorJitter(saturation=saturation, hue=hue, p=p)


AUGMENTATIONS: dict[str, Callable[..., nn.Module]] = {
    "hflip": hflip,
    "vflip": vflip,
    "rotate": rotate,
    "scale": scale,
    "brightness": brightness,
    "contrast": contrast,
    "color": color,
}


def make_augment(names: list[str] | str | None, **options) -> Callable[[Tensor], Tensor] | None:
    """A batch augmentation applying ``names`` in order, or None for no augmentation.

    ``names`` is a list or a comma-separated string (``"hflip,rotate"``). ``options`` go to every transform
    that takes them: ``p`` (probability per image), ``degrees``, ``scale``, ``brightness``, ``contrast``,
    ``saturation``, ``hue``.
    """
    if names is None:
        return None
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in names if n]
    if not names:
        return None
    for name in names:
        if name not in AUGMENTATIONS:
            raise unknown("augmentation", name, AUGMENTATIONS)
    accepted = {name: set(inspect.signature(AUGMENTATIONS[name]).parameters) for name in names}
    allowed = set().union(*accepted.values())
    for key in options:
        if key not in allowed:
            choices = ", ".join(sorted(allowed))
            raise ValueError(f"augmentation option {key!r} is not used by {', '.join(names)}; choose from: {choices}")
    modules = [AUGMENTATIONS[n](**{k: v for k, v in options.items() if k in accepted[n]}) for n in names]
    return nn.Sequential(*modules)

register("augmentations", AUGMENTATIONS)
