"""The run specification: one pydantic model per TOML section, loaded from a file plus ``--set`` overrides.

A spec file has the sections ``[data]``, ``[model]``, ``[init]``, ``[optim]``, ``[schedule]`` and
``[train]`` (and a top-level ``name``)::

    name = "glorot-tanh-n"
    [data]
    name = "shapeset"
    [model]
    depth = 5
    width = 1000
    activation = "tanh"
    [init]
    scheme = "glorot_uniform"
    [optim]
    name = "sgd"
    lr = 0.01
    [train]
    updates = 100000
    batch_size = 10

``[init]``, ``[optim]`` and ``[schedule]`` take, besides their name, the parameters of the chosen
scheme, optimizer or schedule (``std``, ``momentum``, ``gamma`` ...), checked against its signature.
Every name is checked against its registry, and every error names the key, the value and what is
allowed. A TOML file has no null: write ``"none"`` to clear an optional value (``--set train.patience=none``).
"""

from __future__ import annotations

import inspect
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from deepscope.registry import check_kwargs, check_name, table, unknown

__all__ = [
    "DataSpec",
    "GuardSpec",
    "InitSpec",
    "ModelSpec",
    "OptimSpec",
    "RunSpec",
    "ScheduleSpec",
    "SpecError",
    "TrainSpec",
    "flatten",
    "validate_spec",
]


class SpecError(ValueError):
    """A run specification that cannot be used; the message names the key, the value and what is allowed."""


def _none(value: Any) -> Any:
    """TOML has no null: the strings "none" and "null" mean None for optional values."""
    return None if isinstance(value, str) and value.lower() in ("none", "null") else value


_names_error = unknown


def flatten(spec: Any, prefix: str = "") -> dict[str, Any]:
    """A (nested) spec dict or RunSpec as ``{"section.key": value}``; nested tables give longer paths
    (``data.options.n_valid``)."""
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump()
    if not isinstance(spec, dict):
        return {prefix: spec} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in spec.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, path) if isinstance(value, dict) and value else {path: value})
    return out


def _known(field: str, key: str, *kinds: str) -> Any:
    """A validator of ``field``: its value (each item, for a list) must be a name in the registries of ``kinds``
    (:func:`deepscope.registry.table`: the modules that define them register them when imported)."""

    def check(cls, value: Any) -> Any:
        names = [name for kind in kinds for name in table(kind)]
        for item in value if isinstance(value, list) else [value]:
            if item not in names:
                raise _names_error(key, item, names)
        return value

    return field_validator(field)(check)


def _check_params(section: str, what: str, extras: dict, allowed: list[str], required: list[str] = ()) -> None:
    unknown = [k for k in extras if k not in allowed]
    if unknown:
        raise ValueError(
            f"unknown key {section}.{unknown[0]} for {what}; valid keys of [{section}]: "
            f"{', '.join(['name' if section != 'init' else 'scheme', *allowed])}"
        )
    if missing := [k for k in required if k not in extras]:
        raise ValueError(f"{what} needs {section}.{missing[0]} (e.g. --set {section}.{missing[0]}=...)")


Nullable = BeforeValidator(_none)


def _admits_bool(annotation: Any) -> bool:
    """Whether a field of this type takes True/False as they are (bool, Any, or a union or Annotated of them)."""
    if annotation is bool or annotation is Any:
        return True
    return any(_admits_bool(arg) for arg in typing.get_args(annotation) if arg is not type(None))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: Any) -> Any:
        """``--set model.width=true`` would be read as 1: a boolean is only taken where one is allowed."""
        if isinstance(value, bool) and not _admits_bool(cls.model_fields[info.field_name].annotation):
            from pydantic_core import PydanticCustomError  # not a value_error: the message gets the key and value

            raise PydanticCustomError("bool_type", "a boolean is not allowed here; give a number or a name")
        return value


class DataSpec(_Section):
    """``[data]``: which dataset (and its options), preprocessing fitted on train, augmentation of train batches."""

    name: str = "shapeset"
    options: dict[str, Any] = Field(default_factory=dict)
    preprocess: list[str] = Field(default_factory=list)
    augment: list[str] = Field(default_factory=list)
    augment_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("preprocess", "augment", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        value = _none(value)
        return [] if value is None else [value] if isinstance(value, str) else value

    _known_dataset = _known("name", "data.name", "datasets")
    _known_methods = _known("preprocess", "data.preprocess", "preprocess")

    @model_validator(mode="after")
    def _known_options(self) -> DataSpec:
        known = list(inspect.signature(table("datasets")[self.name]).parameters)
        if unknown := [k for k in self.options if k not in known]:
            raise ValueError(f"unknown key data.options.{unknown[0]} for dataset {self.name!r}; "
                             f"valid keys of data.options: {', '.join(known)}")
        return self

    @model_validator(mode="after")
    def _check_augment(self) -> DataSpec:
        if self.augment:
            table("spec_checks")["augment"](tuple(self.augment), self.augment_options)
        return self


class ModelSpec(_Section):
    """``[model]``: the builder (``mlp`` or ``convnet``) and its switches."""

    builder: Literal["mlp", "convnet"] = "mlp"
    depth: int = Field(5, ge=1)
    width: int = Field(1000, ge=1)
    channels: list[int] = Field(default_factory=lambda: [16, 32])
    kernel_size: int = Field(3, ge=1)
    activation: str = "tanh"
    activation_kwargs: dict[str, Any] = Field(default_factory=dict)
    norm: Annotated[str | None, Nullable] = None
    norm_position: Literal["before", "after"] = "before"
    dropout: float = Field(0.0, ge=0.0, lt=1.0, allow_inf_nan=False)
    maxout_k: int = Field(2, ge=1)

    @field_validator("norm")
    @classmethod
    def _known_norm(cls, value: str | None) -> str | None:
        if value not in (None, "batch"):
            raise _names_error("model.norm", value, ["none", "batch"])
        return value

    _known_activation = _known("activation", "model.activation", "activations")


class _ParamSection(_Section):
    """A section whose extra keys are the parameters of the chosen scheme / optimizer / schedule."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_cleared(cls, data: Any) -> Any:
        """A parameter set to "none" is removed (so ``--set init.std=none`` undoes ``std``)."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k in cls.model_fields or _none(v) is not None}
        return data

    @property
    def params(self) -> dict[str, Any]:
        """The parameters besides the name (and ``lr``)."""
        return dict(self.model_extra or {})


class InitSpec(_ParamSection):
    """``[init]``: the scheme (``auto`` = the one each activation recommends) and its parameters."""

    scheme: str = "auto"

    _known_scheme = _known("scheme", "init.scheme", "init", "init_apply_only")

    @model_validator(mode="after")
    def _check_params(self) -> InitSpec:
        schemes = table("init")
        if self.scheme in schemes:
            params = list(inspect.signature(schemes[self.scheme]).parameters.values())[1:]
            params = [p for p in params if p.name not in ("fans", "generator", "x")]
            required = [p.name for p in params if p.default is inspect.Parameter.empty]
            _check_params("init", f"init scheme {self.scheme!r}", self.params, [p.name for p in params], required)
        else:
            _check_params("init", f"init scheme {self.scheme!r}", self.params, [])
        return self


class OptimSpec(_ParamSection):
    """``[optim]``: the optimizer, its learning rate and its other parameters (``momentum``, ``weight_decay`` ...)."""

    name: str = "sgd"
    lr: float = Field(0.01, gt=0, allow_inf_nan=False)

    _known_optimizer = _known("name", "optim.name", "optimizers")

    @model_validator(mode="after")
    def _check_params(self) -> OptimSpec:
        allowed = table("optimizers")[self.name].allowed()
        _check_params("optim", f"optimizer {self.name!r}", self.params, ["lr", *allowed])
        return self


class ScheduleSpec(_ParamSection):
    """``[schedule]``: the learning-rate schedule and its parameters (``step_size``, ``gamma`` ...)."""

    name: str = "constant"

    _known_schedule = _known("name", "schedule.name", "schedules")

    @model_validator(mode="after")
    def _check_params(self) -> ScheduleSpec:
        params = inspect.signature(table("schedules")[self.name]).parameters.values()
        allowed = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
        required = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is inspect.Parameter.empty]
        _check_params("schedule", f"schedule {self.name!r}", self.params, allowed, required)
        return self


class GuardSpec(_Section):
    """``train.guard`` as a table: the options of :class:`deepscope.Guard` (``deepscope.training.guard.DEFAULTS``)."""

    window: int = Field(128, ge=1)
    warmup: int = Field(64, ge=0)
    z: float = Field(6.0, gt=0, allow_inf_nan=False)
    refresh: int = Field(8, ge=1)
    snapshot_every: int = Field(100, ge=1)
    rollback_after: int = Field(3, ge=1)
    rollback_window: int = Field(50, ge=1)
    lr_factor: float = Field(0.1, gt=0, le=1)
    cooldown: int = Field(200, ge=1)
    max_rollbacks: int = Field(5, ge=0)
    examples: int = Field(3, ge=0)
    on_pathology: Literal["warn", "rollback"] = "warn"
    check_grad: bool = True  # false: watch the loss alone (no gradient norm to compute when there is no clipping)
    grad_fraction: float = Field(1 / 64, gt=0, le=1)  # the part of each large gradient read for its norm (1: exact)


class TrainSpec(_Section):
    """``[train]``: length (``updates`` or ``epochs``), batch size, evaluation, stopping, clipping, seed, device."""

    updates: Annotated[int | None, Nullable] = Field(None, ge=1)
    epochs: Annotated[int | None, Nullable] = Field(None, ge=1)
    batch_size: int = Field(10, ge=1)
    eval_every: Annotated[int | None, Nullable] = Field(None, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    patience: Annotated[int | None, Nullable] = Field(None, ge=1)
    # what patience and the best evaluation watch (validation): "error" is the task's error measure (rmse for a
    # regression); the others must be metrics of the task (deepscope.metrics)
    monitor: Literal["error", "loss", "rmse", "r2", "exact_match"] = "error"
    restore_best: bool = False  # end the run with the weights of the best evaluation
    checkpoint_every: Annotated[int | None, Nullable] = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    clip_norm: Annotated[float | None, Nullable] = Field(None, gt=0, allow_inf_nan=False)
    clip_value: Annotated[float | None, Nullable] = Field(None, gt=0, allow_inf_nan=False)
    loss: str = "cross_entropy"
    guard: bool | GuardSpec = False  # deepscope.Guard: true (its defaults), or a table of its options
    loss_options: dict[str, Any] = Field(default_factory=dict)  # label_smoothing, ignore_index, delta (by loss)

    _known_loss = _known("loss", "train.loss", "losses")

    @field_validator("guard", mode="before")
    @classmethod
    def _guard_options(cls, value: Any) -> Any:
        """train.guard: true/false, or a table of the guard's options checked key by key."""
        keys = ", ".join(GuardSpec.model_fields)
        if isinstance(value, dict):
            try:
                return GuardSpec.model_validate(value)
            except ValidationError as e:
                err = e.errors()[0]
                key = "train.guard." + ".".join(map(str, err["loc"]))
                if err["type"] == "extra_forbidden":
                    raise ValueError(f"unknown key {key}; valid keys of train.guard: {keys}") from None
                raise ValueError(f"{key}={err['input']!r}: {err['msg']}") from None
        if not isinstance(value, bool | GuardSpec):
            raise ValueError(f"train.guard={value!r} is not allowed; give true, false or a table of its options "
                             f"({keys})")
        return value

    @model_validator(mode="after")
    def _check_loss_options(self) -> TrainSpec:
        check_kwargs(f"train.loss={self.loss!r}", self.loss_options, table("losses")[self.loss], skip=2)
        for key, value in self.loss_options.items():
            ok = {"label_smoothing": lambda v: isinstance(v, int | float) and 0 <= v <= 1,
                  "ignore_index": lambda v: isinstance(v, int),
                  "delta": lambda v: isinstance(v, int | float) and 0 < v < float("inf")}.get(key, lambda v: True)
            if isinstance(value, bool) or not ok(value):
                allowed = {"label_smoothing": "a number in [0, 1]", "ignore_index": "an integer (the padding label)",
                           "delta": "a number > 0"}[key]
                raise ValueError(f"train.loss_options.{key}={value!r} is not allowed; give {allowed}")
        return self

    @model_validator(mode="after")
    def _one_length(self) -> TrainSpec:
        if (self.updates is None) == (self.epochs is None):
            given = "both" if self.updates is not None else "neither"
            raise ValueError(f"give exactly one of train.updates or train.epochs (got {given})")
        return self


class RunSpec(_Section):
    """A whole run. ``RunSpec.model_validate(spec.model_dump(mode="json")) == spec``."""

    name: str = Field("run", min_length=1, max_length=100)
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    init: InitSpec = Field(default_factory=InitSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    train: TrainSpec

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_name(value)

    @model_validator(mode="after")
    def _dry_run(self) -> RunSpec:
        table("spec_checks")["dry_run"](self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON types (what the run store keeps)."""
        return self.model_dump(mode="json")


SECTIONS: dict[str, type[BaseModel]] = {
    "data": DataSpec, "model": ModelSpec, "init": InitSpec, "optim": OptimSpec, "schedule": ScheduleSpec,
    "train": TrainSpec,
}


# --- loading ---------------------------------------------------------------------------------------


def _describe(error: dict) -> str:
    loc = [str(p) for p in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        if len(loc) == 1:
            return f"unknown section or key {key!r}; valid ones: {', '.join(RunSpec.model_fields)}"
        return f"unknown key {key}; valid keys of [{loc[0]}]: {', '.join(SECTIONS[loc[0]].model_fields)}"
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    if error["type"] == "missing":
        hint = " (with train.updates or train.epochs)" if key == "train" else ""
        return f"missing {key}{hint}"
    return f"{key}={error['input']!r}: {error['msg']}"


def validate_spec(data: dict, source: str = "spec") -> RunSpec:
    """A :class:`RunSpec` from a dict, with errors as one :class:`SpecError` naming each bad key."""
    if not isinstance(data, dict | RunSpec):  # train() and doctor() read a path with load_spec
        raise SpecError(f"{source}={type(data).__name__} is not allowed; give a RunSpec, a dict of its sections or the "
                        "path of a TOML spec file")
    try:
        return RunSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{source}: " + "; ".join(_describe(err) for err in e.errors())) from None
