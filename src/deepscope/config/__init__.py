"""The run specification: the pydantic sections (:mod:`.spec`), the one ``--set`` parser (:mod:`.overrides`) and
TOML reading and writing (:mod:`.toml`)."""

from deepscope.config.overrides import apply_overrides, parse_value, split_override
from deepscope.config.spec import (
    SECTIONS,
    DataSpec,
    GuardSpec,
    InitSpec,
    ModelSpec,
    OptimSpec,
    RunSpec,
    ScheduleSpec,
    SpecError,
    TrainSpec,
    flatten,
    validate_spec,
)
from deepscope.config.toml import load_spec, spec_toml

__all__ = ["SECTIONS", "DataSpec", "GuardSpec", "InitSpec", "ModelSpec", "OptimSpec", "RunSpec", "ScheduleSpec",
           "SpecError", "TrainSpec", "apply_overrides", "flatten", "load_spec", "parse_value", "spec_toml",
           "split_override", "validate_spec"]
