"""The rules: pure functions of :class:`~deepscope.records.Records` and the training curves -> findings.

- :mod:`.layers` -- per-layer instruments: non-finite values, vanishing/exploding gradients, saturation, dead
  units, constant layers, variance across depth; and :func:`diagnose`, which runs every rule;
- :mod:`.training` -- the curves: spikes, overfitting, plateau, a network that does not learn;
- :mod:`.rate` -- the learning rate, too high or too low, from the loss curve and the update/weight ratios.
"""

from deepscope.diagnosis.rules.layers import SYMMETRY_TOL, diagnose

__all__ = ["SYMMETRY_TOL", "diagnose"]
