"""Reading a run spec from a TOML file (with ``--set`` overrides) and writing one back."""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from deepscope.config.overrides import apply_overrides
from deepscope.config.spec import RunSpec, SpecError, validate_spec

__all__ = ["load_spec", "spec_toml"]


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunSpec:
    """Read a TOML spec, apply ``--set`` style overrides, validate. ``name`` defaults to the file's stem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"{path}: cannot read the spec file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: the spec file is not UTF-8 text (byte {e.start}); save it as UTF-8 TOML") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: invalid TOML: {e}") from None
    data.setdefault("name", path.stem)
    return validate_spec(apply_overrides(data, overrides), source=str(path))


# --- writing ---------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else "inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(str(key))


def spec_toml(spec: dict, header: list[str] = ()) -> str:
    """A run spec dict as a TOML file ``load_spec`` reads back: top-level values, then one table per section.

    ``None`` values are left out (TOML has no null; every optional key defaults to None); ``header`` lines
    become comments at the top.
    """
    lines = [f"# {line}" for line in header]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in spec.items()
              if not isinstance(v, dict) and v is not None]
    for section, values in spec.items():
        if isinstance(values, dict):
            lines += ["", f"[{_toml_key(section)}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"
