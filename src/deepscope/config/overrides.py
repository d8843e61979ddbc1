"""``--set section.key=value``: the one parser of overrides, for run specs and experiments alike."""

from __future__ import annotations

import datetime
import tomllib
from typing import Any

from deepscope.config.spec import SpecError, _none

__all__ = ["apply_overrides", "parse_value", "split_override"]


def parse_value(raw: str) -> Any:
    """A ``--set`` value: a TOML literal when it is one (``3``, ``1e-3``, ``true``, ``[16, 32]``), else a string."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    return raw if isinstance(value, datetime.date | datetime.time) else value


def split_override(item: str, example: str = "model.activation=tanh") -> tuple[str, str, Any]:
    """``"a.b=value"`` -> ``("a.b", "value", parsed value)``; anything else raises :class:`SpecError`."""
    key, sep, raw = item.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise SpecError(f"--set {item!r}: expected key=value, e.g. --set {example}")
    return key, raw, parse_value(raw)


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Return a copy of ``data`` with each ``"section.key=value"`` of ``overrides`` set."""
    data = _copy(data)
    for item in overrides:
        key, _, value = split_override(item)
        *path, last = key.split(".")
        node = data
        for i, part in enumerate(path):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {item!r}: {'.'.join(path[: i + 1])} is a value, not a section")
        node[last] = value
        if path == ["train"] and last in _LENGTHS and _none(value) is not None:  # the later length wins
            node[_LENGTHS[last]] = "none"
    return data


_LENGTHS = {"updates": "epochs", "epochs": "updates"}


def _copy(data: Any) -> Any:
    return {k: _copy(v) for k, v in data.items()} if isinstance(data, dict) else data
