"""Singular values of the layer-to-layer Jacobians J = dz_{i+1}/dz_i (Glorot & Bengio 2010, sec. 4.2.2).

The map from one recorded activation to the next is only taken where it is a clean sub-module: a
slice of an ``nn.Sequential`` chain with no other recorded layer in between. For an MLP block
(Linear, optional BatchNorm/Dropout in eval, element-wise activation) the per-example Jacobian is
``diag(f'(s)) A`` with ``A`` the block's affine part, built directly; any other slice goes through
``torch.func`` (Jacobian-vector products). Everything else (skip connections, attention,
recurrences) is reported as not available, with the reason, rather than guessed.

Two ways to the singular values (``method``):

- ``"exact"``: the explicit per-example Jacobian and ``torch.linalg.svdvals``; mean, min and max.
- ``"lanczos"``: stochastic Lanczos quadrature (Golub & Meurant 2010; Ubaru, Chen & Saad 2017) on
  ``J^T J`` (or ``J J^T``, the smaller), from Jacobian-vector products only: ``LANCZOS_STEPS`` steps
  from one random start vector per example. Halfway between the Gauss and Gauss-Radau rules for
  ``sqrt`` lies the mean singular value: bias about 1 % or less for the nets of the texts, up to a few %
  when most singular values are near 0 (heavy saturation); one start vector's spread is about
  ``1.8 / sqrt(units)`` (6 % at 300 units), averaged over the examples (about 2 % for 10 examples of
  a 1000-unit layer). The largest Ritz value gives the maximum (a lower bound, which converges
  first); the minimum is not estimated. Cost: ``2 x LANCZOS_STEPS`` products with one batch of
  vectors, instead of ``d`` products and a cubic SVD per example.
- ``"auto"`` (default): exact when the smaller side of the Jacobian has at most ``EXACT_MAX_DIM`` units
  (and the explicit Jacobian has at most ``MAX_JACOBIAN_ENTRIES`` entries), Lanczos otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from deepscope.probe.layers import Layer, sequential_chains
from deepscope.probe.sinks import Entry
from deepscope.registry import unknown

__all__ = [
    "EXACT_MAX_DIM",
    "JACOBIAN_METHODS",
    "LANCZOS_STEPS",
    "MAX_JACOBIAN_ENTRIES",
    "JacobianMap",
    "jacobians_due",
    "lanczos_singular_values",
    "plan_jacobians",
    "prepare_jacobians",
    "record_jacobians",
    "run_jacobian",
]

JACOBIAN_METHODS = ("auto", "exact", "lanczos")
# Explicit per-example Jacobians with more entries than this (d_out x d_in) are not built.
MAX_JACOBIAN_ENTRIES = 2**22
# "auto" takes the exact SVD up to this many units on the smaller side of the Jacobian: 10 examples of a
# 256-unit map take about 0.14 s on one CPU core, where Lanczos is a few % off (README, "Jacobian singular values").
EXACT_MAX_DIM = 256
LANCZOS_STEPS = 8
LANCZOS_SEED = 0  # the same start vectors at every record, so that records compare

Matvec = Callable[[Tensor], Tensor]


def lanczos_singular_values(
    jv: Matvec, jtv: Matvec, start: Tensor, steps: int = LANCZOS_STEPS, *, output_side: bool = False
) -> tuple[Tensor, Tensor]:
    """Mean and largest singular value of ``b`` matrices ``J_i`` (one per row of ``start``), from products only.

    ``jv(V)`` maps a ``(b, d_in)`` batch to ``(b, d_out)`` (row ``i`` times ``J_i``), ``jtv(U)`` back with
    ``J_i^T``. Lanczos with full reorthogonalization runs on ``A = J^T J`` from the rows of ``start``
    (``(b, d_in)``), or on ``A = J J^T`` with ``output_side=True`` (``start`` is then ``(b, d_out)``): take
    the smaller side so that the mean is over ``min(d_out, d_in)`` values, as for ``svdvals``.

    ``v^T A^(1/2) v`` for the unit start vector ``v`` estimates ``tr(A^(1/2)) / n``, the mean singular
    value (stochastic Lanczos quadrature, Ubaru, Chen & Saad 2017). For ``sqrt`` the Gauss rule of the
    Lanczos matrix over-estimates it and the Gauss-Radau rule with a node at 0 under-estimates it (Golub
    & Meurant 2010, ch. 6); the mean is taken halfway: at 8 steps the bias is about 1 % or less on the nets
    of the texts, a few % when most singular values are near 0. Returns two ``(b,)`` tensors.
    """
    op = (lambda u: jv(jtv(u))) if output_side else (lambda v: jtv(jv(v)))
    b, n = start.shape
    steps = max(1, min(steps, n))
    tiny = torch.finfo(start.dtype).tiny
    q = start / torch.linalg.vector_norm(start, dim=1, keepdim=True).clamp_min(tiny)
    basis = q.new_zeros(b, steps, n)
    alpha, beta = q.new_zeros(steps, b), q.new_zeros(steps, b)
    for j in range(steps):
        basis[:, j] = q
        w = op(q)
        alpha[j] = (w * q).sum(1)
        done = basis[:, : j + 1]
        for _ in range(2):  # full reorthogonalization, twice ("twice is enough")
            w = w - torch.bmm(torch.bmm(done, w[:, :, None]).mT, done)[:, 0]
        beta[j] = torch.linalg.vector_norm(w, dim=1)
        q = w / beta[j].clamp_min(tiny)[:, None]
    # the tridiagonal matrices are tiny: their float64 eigen-decomposition runs on the CPU (one transfer)
    alpha, beta = alpha.T.cpu().double(), beta.T.cpu().double()
    # an invariant subspace was found (the rule is then exact): decouple the rest of the matrix
    beta = torch.where(beta > 1e-6 * alpha.abs().amax(1, keepdim=True), beta, 0.0)
    beta = beta * (beta > 0).cumprod(1)
    gauss, top = _quadrature(alpha, beta[:, :-1])
    # Gauss-Radau: one more row whose diagonal makes 0 an eigenvalue, from the pivots of T (T is PSD)
    pivot = alpha[:, 0]
    for j in range(1, steps):
        pivot = alpha[:, j] - beta[:, j - 1].square() / pivot.clamp_min(1e-300)
    last = torch.where(beta[:, -1] > 0, beta[:, -1].square() / pivot.clamp_min(1e-300), 0.0)
    radau, _ = _quadrature(torch.cat([alpha, last[:, None]], 1), beta)
    return ((gauss + radau) / 2).to(start), top.to(start)


def _quadrature(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """``sum_j tau_j sqrt(theta_j)`` and ``sqrt(max theta)`` for the tridiagonal matrices (diagonal, off-diagonal)."""
    t = torch.diag_embed(alpha) + torch.diag_embed(beta, 1) + torch.diag_embed(beta, -1)
    theta, vectors = torch.linalg.eigh(t)  # (b, m, m) in float64, on the CPU
    roots = theta.clamp_min(0.0).sqrt()
    return (vectors[:, 0, :].square() * roots).sum(1), roots[:, -1]


_AFFINE = (nn.Linear, nn.Identity, nn.Flatten, nn.modules.dropout._DropoutNd, nn.BatchNorm1d)


@dataclass
class JacobianMap:
    """The modules that take the activations of ``source`` to those of ``layer`` (in eval mode)."""

    layer: str
    source: str
    modules: list[nn.Module]
    elementwise_last: bool

    def _affine(self, z: Tensor) -> bool:
        return z.dim() == 2 and self.elementwise_last and all(isinstance(m, _AFFINE) for m in self.modules[:-1])

    def jacobians(self, z: Tensor, analytic: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Per-example Jacobians at the source activations ``z`` (examples along dim 0): (k, d_out, d_in).

        ``analytic``: ``(A, f'(s))`` taken earlier (:meth:`frozen`) for a ``diag(f'(s)) A`` map. Raises
        ``ValueError`` when one Jacobian would exceed :data:`MAX_JACOBIAN_ENTRIES` entries.
        """
        z = z.detach()
        if analytic is not None or self._affine(z):
            a, slope = analytic if analytic is not None else self._analytic(z)
            return slope[:, :, None] * a[None]
        with torch.no_grad():
            d_out = self._apply(z[:1]).numel()
        d_in = z[0].numel()
        if d_out * d_in > MAX_JACOBIAN_ENTRIES:
            raise ValueError(f"a {d_out} x {d_in} Jacobian is larger than {MAX_JACOBIAN_ENTRIES} entries")
        jac = torch.func.vmap(torch.func.jacrev(lambda x: self._apply(x[None])[0]))(z)
        return jac.reshape(z.shape[0], d_out, d_in)

    def singular_values(self, z: Tensor, analytic: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Singular values of every per-example Jacobian: (k, min(d_out, d_in))."""
        return torch.linalg.svdvals(self.jacobians(z, analytic))

    def sizes(self, z: Tensor) -> tuple[int, int]:
        """``(d_out, d_in)`` of one example's Jacobian."""
        with torch.no_grad():
            return self._apply(z[:1].detach()).numel(), z[0].numel()

    def method(self, z: Tensor, method: str = "auto") -> str:
        """The method ``"auto"`` resolves to for the source activations ``z``."""
        if method not in JACOBIAN_METHODS:
            raise unknown("jacobian_method", method, JACOBIAN_METHODS)
        if method != "auto":
            return method
        d_out, d_in = self.sizes(z)
        explicit = self._affine(z) or d_out * d_in <= MAX_JACOBIAN_ENTRIES
        return "exact" if min(d_out, d_in) <= EXACT_MAX_DIM and explicit else "lanczos"

    def spectrum(
        self, z: Tensor, method: str = "auto", steps: int = LANCZOS_STEPS, analytic: tuple[Tensor, Tensor] | None = None
    ) -> tuple[tuple[str, ...], Tensor]:
        """Statistics of the singular values over the examples ``z``: names and a flat tensor.

        ``"exact"``: ``sv_mean, sv_min, sv_max`` of every singular value of every example;
        ``"lanczos"``: ``sv_mean, sv_max`` (see the module docstring). ``analytic``: see :meth:`jacobians`.
        """
        z = z.detach()
        if (method if analytic is not None and method != "auto" else self.method(z, method)) == "exact":
            sv = self.singular_values(z, analytic)
            return ("sv_mean", "sv_min", "sv_max"), torch.stack([sv.mean(), sv.min(), sv.max()])
        jv, jtv, d_out, active = self._operator(z, analytic)
        d_in, k = z[0].numel(), z.shape[0]
        output_side, share = d_out < d_in, None
        if active is not None:
            # units with zero slope (dead ReLUs) are zero rows of J: on the output side the start vectors
            # leave them out and the mean is scaled by the share of live units, instead of asking the
            # quadrature to resolve a point mass at zero
            live = active.sum(1)
            if d_out <= d_in or bool((live <= d_in).all()):  # (the first test spares a device sync)
                output_side, share = True, live / min(d_out, d_in)
        g = torch.Generator(device=z.device).manual_seed(LANCZOS_SEED)
        start = torch.randn(k, d_out if output_side else d_in, generator=g, device=z.device, dtype=z.dtype)
        if share is not None:
            start = start * active
        with torch.no_grad():
            mean, top = lanczos_singular_values(jv, jtv, start, steps, output_side=output_side)
        if share is not None:
            mean = mean * share
        return ("sv_mean", "sv_max"), torch.stack([mean.mean(), top.max()])

    def frozen(self, z: Tensor, method: str) -> Callable[[], tuple[tuple[str, ...], Tensor]]:
        """The spectrum at the current weights, as a function to call now or later (after the weights moved).

        For a ``diag(f'(s)) A`` map, ``A`` (copied) and the slopes are taken now and the products run when the
        function is called: the same numbers as :meth:`spectrum` now. Any other map is computed now.
        """
        z = z.detach()
        if self._affine(z):
            method = self.method(z, method)
            a, slope = self._analytic(z)
            analytic = (a.clone(), slope)
            return lambda: self.spectrum(z, method, analytic=analytic)
        result = self.spectrum(z, method)
        return lambda: result

    def _operator(
        self, z: Tensor, analytic: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Matvec, Matvec, int, Tensor | None]:
        """``J v`` and ``J^T u`` for a batch of one vector per example of ``z`` (flattened), ``d_out``, and
        for ``diag(f'(s)) A`` maps the mask of units with a non-zero slope."""
        if analytic is not None or self._affine(z):
            a, slope = analytic if analytic is not None else self._analytic(z)
            return (lambda v: slope * (v @ a.T)), (lambda u: (slope * u) @ a), a.shape[0], slope != 0
        shape = z.shape

        def f(x: Tensor) -> Tensor:
            return self._apply(x).flatten(1)

        out, pullback = torch.func.vjp(f, z)  # torch.func differentiates whatever the grad mode

        def jv(v: Tensor) -> Tensor:
            return torch.func.jvp(f, (z,), (v.reshape(shape),))[1]

        def jtv(u: Tensor) -> Tensor:
            return pullback(u)[0].flatten(1)

        return jv, jtv, out.shape[1], None

    def _apply(self, x: Tensor) -> Tensor:
        for m in self.modules:
            x = m(x)
        return x

    def _analytic(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(A, f'(s))``: the affine part ``A`` (d_out x d_in) and the per-example slopes; ``J = diag(f'(s)) A``."""
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
        return a.detach(), slope


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
                "not inside an nn.Sequential chain: the probe takes the map from the previous layer only from "
                "a plain chain of modules (a custom forward can add skip connections, attention or recurrences)"
                if layer.kind == "activation"
                else "a layer output of an unobservable module, not an activation"
            )
    return maps, reasons


def jacobians_due(step: int, examples: int, done: bool, every: int | None) -> bool:
    """Whether the monitor pass at ``step`` computes the Jacobians: at the first record (the initialization)
    and at the multiples of ``every``, when there are ``examples`` to compute them on."""
    return examples > 0 and (not done or (every is not None and step % every == 0))


Deferred = Callable[[], tuple[tuple[str, ...], Tensor]]


def prepare_jacobians(
    maps: dict[str, JacobianMap],
    layers: list[Layer],
    calls: dict[int, int],
    inputs: dict[str, Tensor],
    method: str,
    unavailable: dict[str, str],
    methods: dict[str, str],
) -> list[tuple[str, Deferred]]:
    """For each planned map, a function that returns its spectrum at the source activations ``inputs`` the
    monitor pass captured and at the weights of now (:meth:`JacobianMap.frozen`), to call now or later.

    A map through a module that ran more than once in that pass (``calls``), or one that fails, moves from
    ``maps`` to ``unavailable`` with the reason (an instrument that cannot be computed is reported, not
    fatal); ``methods`` gets the method each layer resolved to.
    """
    out: list[tuple[str, Deferred]] = []
    reused = {layer.name for layer in layers if calls.get(id(layer.module), 0) > 1}
    for name, jmap in list(maps.items()):
        if name in reused or jmap.source in reused:
            module = "the module" if name in reused else f"the previous layer {jmap.source!r}"
            unavailable[name] = f"{module} is called more than once per forward pass"
            del maps[name]
            continue
        z = inputs.get(jmap.source)
        if z is None:
            continue
        try:
            resolved = jmap.method(z, method)
            out.append((name, jmap.frozen(z, resolved)))
        except Exception as e:
            unavailable[name] = f"could not be computed: {type(e).__name__}: {e}"
            del maps[name]
            continue
        methods[name] = resolved
    return out


def run_jacobian(
    name: str, spectrum: Deferred, maps: dict[str, JacobianMap], unavailable: dict[str, str]
) -> list[Entry]:
    """The record of one prepared map (:func:`prepare_jacobians`); a failure moves it to ``unavailable``."""
    try:
        stats, values = spectrum()
    except Exception as e:
        unavailable[name] = f"could not be computed: {type(e).__name__}: {e}"
        maps.pop(name, None)
        return []
    return [(name, "jacobian", stats, values, False)]


def record_jacobians(
    maps: dict[str, JacobianMap],
    layers: list[Layer],
    calls: dict[int, int],
    inputs: dict[str, Tensor],
    method: str,
    unavailable: dict[str, str],
    methods: dict[str, str],
) -> list[Entry]:
    """The spectrum of each planned map now (:func:`prepare_jacobians`, then every function called)."""
    entries: list[Entry] = []
    for name, spectrum in prepare_jacobians(maps, layers, calls, inputs, method, unavailable, methods):
        entries += run_jacobian(name, spectrum, maps, unavailable)
    return entries
