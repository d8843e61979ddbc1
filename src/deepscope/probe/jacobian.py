"""Singular values of the layer-to-layer Jacobians J = dz_{i+1}/dz_i (Glorot & Bengio 2010, sec. 4.2.2).

The map from one recorded activation to the next is only taken where it is a clean sub-module: a
slice of an ``nn.Sequential`` chain with no other recorded layer in between. For an MLP block
(Linear, optional BatchNorm/Dropout in eval, element-wise activation) the per-example Jacobian is
``diag(f'(s)) A`` with ``A`` the block's affine part, built directly; any other slice goes through
``torch.func.vmap(torch.func.jacrev(...))``. Everything else (skip connections, attention,
recurrences) is reported as not available, with the reason, rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from deepscope.probe.hooks import Layer, sequential_chains

__all__ = ["MAX_JACOBIAN_ENTRIES", "JacobianMap", "plan_jacobians"]

# Per-example Jacobians with more entries than this (d_out x d_in) are not computed.
MAX_JACOBIAN_ENTRIES = 2**22

_AFFINE = (nn.Linear, nn.Identity, nn.Flatten, nn.modules.dropout._DropoutNd, nn.BatchNorm1d)


@dataclass
class JacobianMap:
    """The modules that take the activations of ``source`` to those of ``layer`` (in eval mode)."""

    layer: str
    source: str
    modules: list[nn.Module]
    elementwise_last: bool

    def _affine(self) -> bool:
        return self.elementwise_last and all(isinstance(m, _AFFINE) for m in self.modules[:-1])

    def jacobians(self, z: Tensor) -> Tensor:
        """Per-example Jacobians at the source activations ``z`` (examples along dim 0): (k, d_out, d_in).

        Raises ``ValueError`` when one Jacobian would exceed :data:`MAX_JACOBIAN_ENTRIES` entries.
        """
        z = z.detach()
        if z.dim() == 2 and self._affine():
            return self._analytic(z)
        with torch.no_grad():
            d_out = self._apply(z[:1]).numel()
        d_in = z[0].numel()
        if d_out * d_in > MAX_JACOBIAN_ENTRIES:
            raise ValueError(f"a {d_out} x {d_in} Jacobian is larger than {MAX_JACOBIAN_ENTRIES} entries")
        jac = torch.func.vmap(torch.func.jacrev(lambda x: self._apply(x[None])[0]))(z)
        return jac.reshape(z.shape[0], d_out, d_in)

    def singular_values(self, z: Tensor) -> Tensor:
        """Singular values of every per-example Jacobian: (k, min(d_out, d_in))."""
        return torch.linalg.svdvals(self.jacobians(z))

    def _apply(self, x: Tensor) -> Tensor:
        for m in self.modules:
            x = m(x)
        return x

    def _analytic(self, z: Tensor) -> Tensor:
        """``diag(f'(s)) A`` for affine modules followed by an element-wise activation."""
        *affine, act = self.modules
        a = None
        with torch.no_grad():
            s = z
            for m in affine:
                s = m(s)
                if isinstance(m, nn.Linear):
                    a = m.weight if a is None else m.weight @ a
                elif isinstance(m, nn.BatchNorm1d):
                    scale = torch.rsqrt(m.running_var + m.eps)
                    scale = scale * m.weight if m.weight is not None else scale
                    a = torch.diag(scale) if a is None else scale[:, None] * a
        if a is None:
            a = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
        with torch.enable_grad():
            s = s.detach().requires_grad_(True)
            (slope,) = torch.autograd.grad(act(s.clone()).sum(), s)
        return slope[:, :, None] * a.detach()[None]


def _batch_statistics(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats


def plan_jacobians(model: nn.Module, layers: list[Layer]) -> tuple[dict[str, JacobianMap], dict[str, str]]:
    """For each recorded layer, the map from the previous one, or the reason there is none.

    The first layer of a model that is itself an ``nn.Sequential`` has no previous layer and
    appears in neither dict.
    """
    recorded = {id(layer.module): layer for layer in layers}
    maps: dict[str, JacobianMap] = {}
    reasons: dict[str, str] = {}
    in_chain: set[str] = set()
    for chain_path, chain in sequential_chains(model):
        for j, (_, m) in enumerate(chain):
            layer = recorded.get(id(m))
            if layer is None:
                continue
            in_chain.add(layer.name)
            if layer.kind != "activation":
                reasons[layer.name] = "a layer output of an unobservable module, not an activation"
                continue
            prev, reason = None, None
            for k in range(j - 1, -1, -1):
                path, e = chain[k]
                if id(e) in recorded:
                    prev = recorded[id(e)]
                    break
                if any(id(sub) in recorded for sub in e.modules()):
                    reason = f"the map from the previous layer goes through {path!r}, not a plain chain of modules"
                    break
            else:
                if chain_path:
                    reasons[layer.name] = f"first layer of the nn.Sequential {chain_path!r}: its input map is not known"
                continue
            if reason is None and prev.kind != "activation":
                reason = f"the previous layer {prev.name!r} is a layer output, not an activation"
            between = [e for _, e in chain[k + 1 : j + 1]]
            if reason is None and any(_batch_statistics(e) for e in between):
                reason = "batch normalization without running statistics couples the examples"
            if reason is not None:
                reasons[layer.name] = reason
            else:
                maps[layer.name] = JacobianMap(layer.name, prev.name, between, layer.elementwise)
    for layer in layers:
        if layer.name not in in_chain:
            reasons[layer.name] = (
                "not inside an nn.Sequential chain, so the map from the previous layer is not a clean "
                "sub-module (skip connection, attention or recurrence)"
                if layer.kind == "activation"
                else "a layer output of an unobservable module, not an activation"
            )
    return maps, reasons
