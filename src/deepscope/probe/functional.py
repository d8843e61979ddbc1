"""Non-linearities a module applies inside its own ``forward``, read from the source code: nothing is run.

A hook sees module calls only; ``F.relu(x)``, ``x.clamp(min=0)`` or ``torch.where(x > 0, x, 0.01 * x)``
inside a ``forward`` are invisible to it. Rather than trace the model (``torch.fx`` executes the
``forward``'s Python code: a counter in it counts, a ``torch.rand`` in it draws), the probe parses the
source of ``forward`` with :mod:`ast` and looks for calls of known non-linear functions and tensor
methods, following ``self.method(...)`` and module-level helper functions a few levels down and
``self.fn = F.gelu``-style attributes. Branches on a flag of the module (``if self.functional:``,
``self.act if self.x is None else ...``) are resolved from the module's attributes.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import textwrap
import types
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["NONLINEAR", "Watcher", "functional_nonlinearities", "indexed_children"]

# Functions and tensor methods (in-place variants included) that apply a non-linearity: element-wise ones,
# and softmax (attention). log_softmax, which turns a model's output into log-probabilities, is left out.
NONLINEAR = frozenset({
    "relu", "relu_", "relu6", "tanh", "tanh_", "sigmoid", "sigmoid_", "gelu", "silu", "elu", "elu_", "selu",
    "selu_", "celu", "celu_", "leaky_relu", "leaky_relu_", "softplus", "softsign", "mish", "hardswish",
    "hardsigmoid", "hardtanh", "hardtanh_", "hardshrink", "softshrink", "tanhshrink", "prelu", "rrelu",
    "rrelu_", "glu", "logsigmoid", "threshold", "threshold_", "clamp", "clamp_", "clamp_min", "clamp_min_",
    "clamp_max", "clamp_max_", "clip", "clip_", "where", "maximum", "minimum", "fmax", "fmin", "erf",
    "heaviside", "sign", "softmax",
    "exp", "exp_", "exp2", "exp2_", "expm1", "expm1_",  # an exponential activation (Keras's 'exponential')
})  # fmt: skip

_DEPTH = 3
_UNKNOWN = object()


def _source_tree(fn: Any) -> ast.AST | None:
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None


def _attribute(module: nn.Module, name: str) -> Any:
    """``module.name`` without running a property or ``__getattr__``: instance dict, children, parameters."""
    for store in (module.__dict__, module._modules, module._parameters, module._buffers):
        if name in store:
            return store[name]
    return _UNKNOWN


def _self_value(node: ast.AST, module: nn.Module) -> Any:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return _attribute(module, node.attr)
    return _UNKNOWN


def _condition(test: ast.AST, module: nn.Module) -> bool | None:
    """The value of a test on the module's own attributes (``self.flag``, ``not self.x``, ``self.x is None``)."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = _condition(test.operand, module)
        return None if inner is None else not inner
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.comparators[0], ast.Constant):
        value, const = _self_value(test.left, module), test.comparators[0].value
        if value is _UNKNOWN or const is not None or not isinstance(test.ops[0], ast.Is | ast.IsNot):
            return None
        return (value is None) == isinstance(test.ops[0], ast.Is)
    value = _self_value(test, module)
    if value is None or isinstance(value, bool | int | str | nn.Module):
        return bool(value)
    return None


class _Finder(ast.NodeVisitor):
    def __init__(self, module: nn.Module, globals_: dict, depth: int, seen: set):
        self.module, self.globals, self.depth, self.seen = module, globals_, depth, seen
        self.found: set[str] = set()

    def visit_If(self, node: ast.If | ast.IfExp) -> None:
        taken = _condition(node.test, self.module)
        self.visit(node.test)
        branches = {True: node.body, False: node.orelse}
        for flag, branch in branches.items():
            if taken is None or taken == flag:
                for child in branch if isinstance(branch, list) else [branch]:
                    self.visit(child)

    visit_IfExp = visit_If

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        func = node.func
        if isinstance(func, ast.Attribute):
            if isinstance(func.value, ast.Name) and func.value.id == "self":  # a child, an attribute, a method
                target = _self_value(func, self.module)
                if target is _UNKNOWN:
                    target = inspect.getattr_static(type(self.module), func.attr, None)
                self._callee(target)
            elif func.attr in NONLINEAR:
                self.found.add(func.attr)
        elif isinstance(func, ast.Name):
            if func.id in NONLINEAR:
                self.found.add(func.id)
            else:
                self._callee(self.globals.get(func.id))

    def _callee(self, target: Any) -> None:
        """A callable reached from ``forward``: a module (observable), a known function, or Python code to read."""
        if target is None or isinstance(target, nn.Module):
            return
        while isinstance(target, functools.partial):  # self.act = partial(F.gelu, approximate="tanh")
            target = target.func
        name = getattr(target, "__name__", "")
        if name in NONLINEAR and not isinstance(target, types.FunctionType | types.MethodType):
            self.found.add(name)  # a builtin such as torch.tanh held in an attribute
            return
        fn = getattr(target, "__func__", target)
        if isinstance(fn, types.FunctionType) and not (fn.__module__ or "").startswith("torch."):
            self.found |= _calls(fn, self.module, self.depth + 1, self.seen)
        elif name in NONLINEAR:
            self.found.add(name)  # torch.nn.functional.gelu and friends


def _calls(fn: types.FunctionType, module: nn.Module, depth: int, seen: set) -> set[str]:
    if depth > _DEPTH or fn.__code__ in seen:
        return set()
    seen.add(fn.__code__)
    tree = _source_tree(fn)
    if tree is None:
        return set()
    finder = _Finder(module, fn.__globals__, depth, seen)
    finder.visit(tree)
    return finder.found


def functional_nonlinearities(module: nn.Module) -> list[str] | None:
    """Sorted names of the non-linear functions ``module.forward`` calls itself (not through a submodule);
    ``None`` when its source cannot be read."""
    forward = getattr(type(module).forward, "__func__", type(module).forward)
    if not isinstance(forward, types.FunctionType) or _source_tree(forward) is None:
        return None
    return sorted(_calls(forward, module, 0, set()))


def indexed_children(module: nn.Module) -> set[str] | None:
    """Names of the children ``module.forward`` indexes or slices (``self.net[1](x)``, ``self.blocks[:2]``), read
    from its source; ``None`` when the source cannot be read."""
    forward = getattr(type(module).forward, "__func__", type(module).forward)
    tree = _source_tree(forward) if isinstance(forward, types.FunctionType) else None
    if tree is None:
        return None
    return {node.value.attr for node in ast.walk(tree)
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"
            and node.value.attr in module._modules}


class Watcher(TorchFunctionMode):
    """The non-linear torch functions each module calls itself, seen while one forward pass runs.

    The source cannot show everything (``fn = table[name]; fn(x)``); during the first pass the probe
    records anyway, this mode notes every function of :data:`NONLINEAR` (and fused attention) with the
    innermost module running at the time. :meth:`watch` pushes and pops that module stack with hooks;
    :meth:`quiet` hides the probe's own computations.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.seen: dict[str, set[str]] = {}
        self.paused = False
        self.done = False

    def __torch_function__(self, func: Any, types_: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if self.stack and not self.paused and (name in NONLINEAR or name == "scaled_dot_product_attention"):
            self.seen.setdefault(self.stack[-1], set()).add(name)
        return func(*args, **(kwargs or {}))

    def watch(
        self, model: nn.Module, skip: set[int], active: Callable[[], bool], report: Callable[[list], None]
    ) -> list[Any]:
        """Hooks that watch the next forward pass of ``model`` while ``active()``, then ``report`` the
        :meth:`findings`. Modules in ``skip`` (recorded activations), and ``torch.nn`` activation
        modules, are visible to the probe and never reported."""
        handles, on = [], [False]

        def push(name: str) -> Callable:
            def hook(module: nn.Module, args: tuple) -> None:
                self.stack.append(name)

            return hook

        def pop(module: nn.Module, args: tuple, out: Any) -> None:
            if self.stack:
                self.stack.pop()

        def enter(module: nn.Module, args: tuple) -> None:
            if active() and not on[0] and not self.done:
                on[0] = True
                self.__enter__()

        def leave(module: nn.Module, args: tuple, out: Any) -> None:
            if on[0]:
                on[0] = False
                self.__exit__(None, None, None)
                self.done = True
                report(self.findings())

        handles.append(model.register_forward_pre_hook(enter))
        for path, m in model.named_modules():
            visible = id(m) in skip or type(m).__module__ == "torch.nn.modules.activation"
            handles.append(m.register_forward_pre_hook(push("" if visible else (path or "(model)"))))
            handles.append(m.register_forward_hook(pop, always_call=True))
        handles.append(model.register_forward_hook(leave, always_call=True))
        return handles

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Calls made inside the block are not the model's (the probe's own statistics)."""
        self.paused = True
        try:
            yield
        finally:
            self.paused = False

    def findings(self) -> list[tuple[str, str]]:
        """``(module, reason)`` for the modules seen calling non-linear functions."""
        return [
            (name, f"calls {', '.join(sorted(calls))} inside forward (seen at the first record; not recorded)")
            for name, calls in self.seen.items()
            if name
        ]
