"""The small nets the probe tests share."""

import torch
from torch import nn


def small_mlp(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    with torch.no_grad():
        model[0].weight.mul_(3.0)  # some tanh units saturate
        model[2].bias[:4] = -5.0  # some relu units are dead on every example
    return model
