"""Checks that need the model or the data, not only records: the model's weights and modes (:mod:`.model`), the
inputs (:mod:`.inputs`) and the training set-up (:mod:`.setup`)."""

from deepscope.diagnosis.checks.inputs import (
    INPUT_MEAN_FRACTION,
    INPUT_SCALE_HIGH,
    INPUT_SCALE_LOW,
    INPUT_SPREAD_RATIO,
    diagnose_input,
)
from deepscope.diagnosis.checks.model import check_model, layer_outputs
from deepscope.diagnosis.checks.setup import (
    OUTPUT_CHECK_EXAMPLES,
    OUTPUT_LOGIT_GAP,
    OUTPUT_SATURATED_FRACTION,
    PROBABILITY_TOL,
    batchnorm_state,
    check_batchnorm,
    check_modes,
    check_training,
)

__all__ = ["INPUT_MEAN_FRACTION", "INPUT_SCALE_HIGH", "INPUT_SCALE_LOW", "INPUT_SPREAD_RATIO", "OUTPUT_CHECK_EXAMPLES",
           "OUTPUT_LOGIT_GAP", "OUTPUT_SATURATED_FRACTION", "PROBABILITY_TOL", "batchnorm_state", "check_batchnorm",
           "check_model", "check_modes", "check_training", "diagnose_input", "layer_outputs"]
