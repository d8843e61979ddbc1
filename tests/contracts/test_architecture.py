"""The package's import graph: no cycle, and no import that goes up the layer order of the README.

Every ``import deepscope...`` / ``from deepscope... import`` is read with ``ast`` -- at module level and
inside functions -- and so is every string literal given to ``import_module(...)`` or ``__import__(...)``,
so neither a lazy import nor a module loaded by name can hide a cycle. Importing ``a.b.c`` also runs the
package ``a.b``'s ``__init__``, so that edge is counted too.
"""

import ast
from pathlib import Path

import deepscope

ROOT = Path(deepscope.__file__).parent

# top to bottom, as in the README's "Development" section; a module may import its own layer and below
LAYERS = [
    ["cli", "__main__"],  # __main__: `python -m deepscope`, the command line
    ["integrations", "experiments"],
    ["workflows", "parallel"],
    ["plots"],
    ["training"],
    ["diagnosis"],
    ["probe", "store", "records"],
    ["data", "optim", "losses", "metrics", "models", "init", "nn", "validate"],
    ["config"],
    ["registry"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int | None:
    """The layer of a module (longest matching prefix), None for the package's facade ``deepscope``."""
    best = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (index, name)
    return best[0] if best else None


def imports(path: Path, module: str) -> set[str]:
    """The deepscope modules ``path`` imports (without the ``deepscope.`` prefix), with their parent packages."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("import_module", "__import__")):
            names = [node.args[0].value]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1] if node.level > 1 else base
                target = ".".join(["deepscope", *base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        for name in names:
            if name == "deepscope" or not name.startswith("deepscope."):
                continue
            name = name.removeprefix("deepscope.")
            while name:  # the module itself (if it is one) and every package above it
                # a module's own packages are always initialized before it: not an edge
                if name in MODULES and name != module and not module.startswith(name + "."):
                    found.add(name)
                name = name.rpartition(".")[0]
    return found


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}
GRAPH = {m: imports(p, m) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m and layer(m) is None] == []


def test_no_import_goes_up_the_layers():
    upward = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
              for m, targets in GRAPH.items() if m for t in targets if layer(t) < layer(m)]
    assert upward == []


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m and m not in state:
            visit(m, [m])
    return cycles


def test_no_import_cycle():
    assert find_cycles(GRAPH) == []


def test_the_checker_sees_a_cycle_and_an_upward_import():
    """The checks above could not fail if the graph were empty: it has the edges we know of."""
    assert "records" in GRAPH["diagnosis.rules.layers"] and "training.loop" in GRAPH["workflows.run"]
    assert "nn" in GRAPH["init"]  # importing nn.activations runs the package nn's __init__ first
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]
    assert layer("cli") < layer("training.loop") < layer("diagnosis") < layer("records") < layer("models")
    assert layer("config") > layer("init") and layer("registry") > layer("config")


def test_a_module_loaded_by_name_is_an_edge(tmp_path):
    """``import_module("deepscope.x")`` and ``__import__("deepscope.x")`` are read like ``import deepscope.x``."""
    source = tmp_path / "m.py"
    source.write_text("import importlib\nimportlib.import_module('deepscope.records')\n"
                      "def f():\n    return __import__('deepscope.store')\n")
    assert imports(source, "probe.x") == {"records", "store"}


def test_verbs_are_functions_in_a_fresh_interpreter():
    import subprocess
    import sys

    code = ("import deepscope.diagnosis.rules, deepscope.training.loop, deepscope.plots.html, deepscope\n"
            "import inspect\n"
            "print(all(inspect.isfunction(getattr(deepscope, n)) for n in ('diagnose', 'train', 'doctor', 'report')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    fresh = subprocess.run([sys.executable, "-c", "import deepscope; print(deepscope.diagnose, deepscope.train, "
                            "deepscope.doctor)"], capture_output=True, text=True, check=True)
    assert fresh.stdout.count("<function ") == 3


def test_no_package_exports_a_name_that_is_also_one_of_its_modules():
    """``from package import name`` must give the function, whatever was imported before: a submodule of the
    same name would replace it on the package once imported."""
    import importlib

    clashes = []
    for module, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        package = importlib.import_module(f"deepscope.{module}" if module else "deepscope")
        for name in getattr(package, "__all__", []):
            submodule = f"{module}.{name}" if module else name
            if submodule in MODULES:
                clashes.append(f"deepscope.{submodule}")
    assert clashes == []


def test_importing_the_package_loads_no_cli_and_no_heavy_library():
    """``import deepscope`` costs about what ``import torch`` costs: no command-line module, and none of the
    libraries that only drawing, reports, augmentation or the command line need."""
    import subprocess
    import sys

    code = ("import sys, deepscope\n"
            "heavy = ('matplotlib', 'jinja2', 'kornia', 'typer', 'deepscope.cli')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith('deepscope.cli')))\n"
            "print(sys.excepthook is sys.__excepthook__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True"]
