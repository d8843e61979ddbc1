"""Recording the training step of a ``torch.compile``d model without touching its compiled graph.

Hooks registered on the modules inside a compiled model are either traced into the graph (a different
graph, other numerics) or ignored (PyTorch issue 117758), and running the step eagerly trains on eager
numerics. So the recorded step runs exactly the compiled graph of every other step, and the probe
watches it from outside:

- at the call of the outermost module (a hook on the ``torch.compile`` wrapper or on DDP, which run in
  Python; for ``module.compile()`` a wrapper around the compiled call) it keeps the inputs and the random
  state of the first forward pass with gradients;
- after that call it *replays* the forward pass on the eager module inside, with the layer hooks, from
  the same random state (dropout draws the same masks as eager mode would), in the model's own mode, and
  runs on copies of the buffers (batch-norm statistics) under a forked random state;
- when the backward pass of the training step reaches the compiled model's output, a hook on that tensor
  takes ``dLoss/doutput`` and back-propagates it through the replay to the pre-activations only (no
  parameter ``.grad`` is written).

Weight gradients and update ratios are read from the parameters, as in eager mode. The replay costs one
more forward and a backward pass to the pre-activations, at recorded steps only; the compiled graph is
never recompiled and never broken (nothing in it changes). With the ``inductor`` backend the compiled
step draws its own random numbers, so after dropout the replayed activations follow the eager masks: the
same distribution, not the same values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from deepscope.probe.compat import eager, first_tensor, in_backward
from deepscope.probe.hooks import Capture, Hooks, attach_layer_hooks
from deepscope.probe.layers import Layer

__all__ = ["PART", "CallHandle", "arm_replay"]

PART = "train activations and dLoss/ds"


class CallHandle:
    """Puts back a module's compiled call (a ``RemovableHandle``-like ``remove()``)."""

    def __init__(self, module: nn.Module, impl: Callable):
        self.module, self.impl = module, impl

    def remove(self) -> None:
        if self.impl is not None:
            self.module._compiled_call_impl = self.impl
            self.impl = None


def arm_replay(
    root: nn.Module, net: nn.Module, layers: list[Layer], cap: Capture, hooks: Hooks,
    watch: Callable[[Hooks], None], unavailable: dict[str, str],
) -> None:
    """Record the next training step of the compiled ``root`` (whose eager module is ``net``) by replay.

    The inputs and random state are taken at the call of ``root`` from outside the compiled code: by hooks
    on ``root`` (the ``torch.compile`` wrapper, DDP, or an eager module with compiled parts), or for a module
    compiled in place (``module.compile()``, whose own hooks run inside the graph) by a wrapper around its
    compiled call. Failures of the replay are listed in ``unavailable`` (``{"train activations and dLoss/ds":
    reason}``), never raised into the training step.
    """
    token = cap.token
    state: dict[str, Any] = {}
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []

    def before(*_: Any) -> None:
        if token == cap.token and "rng" not in state and torch.is_grad_enabled() and not in_backward():
            state["rng"] = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda]

    def after(args: tuple, kwargs: dict, out: Any) -> None:
        if token != cap.token or "rng" not in state or "done" in state or in_backward():
            return
        state["done"] = True
        real = first_tensor(out)
        cap.root_inputs = {id(a) for a in args if isinstance(a, Tensor)}
        try:
            replayed = _replay(net, args, kwargs, state["rng"], cuda, layers, cap, watch)
        except Exception as e:  # the training step goes on; the record says what is missing
            unavailable[PART] = f"the replay of the compiled step failed: {type(e).__name__}: {e}"
            return
        if isinstance(real, Tensor) and real.requires_grad and isinstance(replayed, Tensor):
            real.register_hook(_backward(replayed, cap, token, unavailable))

    impl = root.__dict__.get("_compiled_call_impl")
    if impl is None:  # hooks on the wrapper (torch.compile's, DDP) or on an eager root run in Python
        hooks.add(root.register_forward_pre_hook(before))
        hooks.add(root.register_forward_hook(lambda m, a, k, out: after(a, k, out), with_kwargs=True))
        return

    def call(*args: Any, **kwargs: Any) -> Any:  # the same compiled call, the same arguments: the same graph
        before()
        out = impl(*args, **kwargs)
        after(args, kwargs, out)
        return out

    root._compiled_call_impl = call  # module.compile(): the module's own hooks would run inside the graph
    hooks.add(CallHandle(root, impl))


def _replay(
    net: nn.Module, args: tuple, kwargs: dict, rng: tuple, cuda: list[int], layers: list[Layer], cap: Capture,
    watch: Callable[[Hooks], None],
) -> Tensor | None:
    """The eager forward pass of ``net`` on the step's inputs with the layer hooks, leaving no trace."""
    hooks = Hooks()
    # the replay updates copies of the buffers (batch-norm statistics): the run's own buffers are not written,
    # not even their version counters, which the compiled step's backward pass may check
    buffers = [(m, name, b) for m in net.modules() for name, b in m._buffers.items() if b is not None]
    for m, name, b in buffers:
        m._buffers[name] = b.clone()
    cap.replay = True
    try:
        with torch.random.fork_rng(devices=cuda), eager(), torch.enable_grad():
            torch.set_rng_state(rng[0])
            for d, s in zip(cuda, rng[1], strict=True):
                torch.cuda.set_rng_state(s, d)
            attach_layer_hooks(layers, cap, hooks)
            if cap.watcher is None:
                watch(hooks)
            # a module compiled in place is called through its eager implementation (not the compiled call)
            call = net._call_impl if net.__dict__.get("_compiled_call_impl") is not None else net
            out = first_tensor(call(*args, **kwargs))
    finally:
        hooks.remove()
        cap.replay = False
        for m, name, b in buffers:
            m._buffers[name] = b
    return out if isinstance(out, Tensor) and out.requires_grad else None


def _backward(replayed: Tensor, cap: Capture, token: int, unavailable: dict[str, str]) -> Callable[[Tensor], None]:
    """A hook on the compiled output: ``dLoss/doutput`` through the replay to the pre-activations."""

    def hook(g: Tensor) -> None:
        inputs = [s for s in cap.grad_inputs if s.requires_grad]
        cap.grad_inputs = []
        if token == cap.token and inputs:
            try:
                with torch.enable_grad():
                    torch.autograd.grad(replayed, inputs, grad_outputs=g.detach(), allow_unused=True)
            except Exception as e:  # never into the training step's backward pass
                unavailable[PART] = f"the replay's backward pass failed: {type(e).__name__}: {e}"

    return hook
