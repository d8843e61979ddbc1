"""One registry helper: look a name up, say what is allowed when it is unknown, check a factory's parameters.

A registry is a plain ``dict`` from name to factory (activations, initialization schemes, optimizers,
schedules, losses, datasets, augmentations, experiments); these functions give them one voice:
``key=value is not known; choose one of: ...`` for names, ``... does not take ...; its parameters are ...``
for keyword arguments, ``key=value is not allowed; give an integer >= N`` for counts.
"""

from __future__ import annotations

import importlib
import inspect
import operator
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any, TypeVar

__all__ = ["MAX_NAME", "check_kwargs", "check_name", "discover", "integer", "lookup", "register", "table", "unknown"]

MAX_NAME = 100  # characters of a run name (its id is a directory name)

T = TypeVar("T")

# The registries by kind, for the modules below which they live (the run spec checks names against them without
# importing the modules that define them). Each defining module registers its dict when it is imported; importing
# ``deepscope`` imports them all.
_TABLES: dict[str, Mapping[str, Any]] = {}


def register(kind: str, registry: Mapping[str, T]) -> Mapping[str, T]:
    """Make ``registry`` (a dict from name to factory) known as ``kind`` to :func:`table`; returns it."""
    _TABLES[kind] = registry
    return registry


def table(kind: str) -> Mapping[str, Any]:
    """The registry of ``kind`` (``"activations"``, ``"init"``, ``"optimizers"``, ...)."""
    try:
        return _TABLES[kind]
    except KeyError:
        raise unknown("registry", kind, sorted(_TABLES)) from None


def unknown(key: str, value: Any, valid: Iterable[Any], *, what: str | None = None) -> ValueError:
    """The error for a name that is not in a registry: the key, the value and every valid name (``what`` replaces
    the ``key=value is not known`` part where the message must say more)."""
    what = f"{key}={value!r} is not known" if what is None else what
    return ValueError(f"{what}; choose one of: {', '.join(map(str, valid))}")


def lookup(registry: Mapping[str, T], key: str, name: Any) -> T:
    """``registry[name]``, or :func:`unknown` naming ``key`` and the registry's names."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise unknown(key, name, registry) from None


def check_kwargs(what: str, kwargs: Mapping[str, Any], fn: Callable[..., Any] | None = None, *,
                 allowed: Iterable[str] | None = None, skip: int = 0) -> None:
    """Refuse keyword arguments ``fn`` does not take (or that are not in ``allowed``), and required ones
    that are missing. ``skip`` leading positional parameters (the tensor, the optimizer) are not options."""
    params = list(inspect.signature(fn).parameters.values())[skip:] if fn is not None else []
    names = list(allowed) if allowed is not None else [p.name for p in params if p.kind not in
                                                      (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if bad := [k for k in kwargs if k not in names]:
        raise ValueError(f"{what} does not take {', '.join(map(repr, bad))}; its parameters are: "
                         f"{', '.join(names) or '(none)'}")
    missing = [p.name for p in params if p.name in names and p.default is inspect.Parameter.empty
               and p.kind is not p.POSITIONAL_ONLY and p.name not in kwargs]
    if missing:
        raise ValueError(f"{what} needs {', '.join(missing)}")


def integer(key: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (Python, numpy or 0-d tensor integers; not bools), or a ValueError
    naming ``key``."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{key}={value!r} is not allowed; give an integer >= {minimum}")
    return number


def discover(package: ModuleType, attribute: str) -> list[Any]:
    """The ``attribute`` of every module of ``package`` that defines one, in module-name order (so adding
    a module is enough to register it)."""
    found = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if hasattr(module, attribute):
            found.append(getattr(module, attribute))
    return found


def check_name(name: str) -> str:
    """A run name: 1 to 100 characters, no path separator or control character."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name={name!r}: give a non-empty run name")
    if len(name) > MAX_NAME:
        raise ValueError(f"name={name[:20]!r}... has {len(name)} characters; give at most {MAX_NAME}")
    if bad := [c for c in name if c in "/\\" or ord(c) < 32 or ord(c) == 127]:
        raise ValueError(f"name={name!r} contains {bad[0]!r}; a run name has no path separator or control character")
    return name
