"""The house rules of docs/architecture.md, checked on the source.

* Imports point one way. Every module of minidark/ belongs to a room with a
  rank; a module may import its own room and rooms of lower rank, never a
  higher one. Imports are read with ``ast`` from every module: absolute and
  relative, at the top and inside functions (a function-level import is an
  arrow too). Imports under ``if TYPE_CHECKING:`` are left out: they never
  run and exist for annotations only. Entry points sit at the top, in the
  cli room: every ``__main__.py`` (``python -m minidark.tools.bench``) and a
  module's ``if __name__ == "__main__":`` block, which runs only when the
  module is the program, never when it is imported.
* No import cycle between modules.
* The registry imports no layer (built-ins are registered by plugins.load_layers).
* Every field a built-in layer sets is declared on ``Layer``, and no code
  reads a declared field with ``getattr(l, "name", default)``.
"""

import ast
import pathlib

import pytest

from minidark.layer import Layer

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "minidark"

# room: (rank, modules or packages in it). Lower ranks are lower in the house.
ROOMS = {
    "core": (
        0,
        (
            "minidark.errors",
            "minidark.files",
            "minidark.layer",
            "minidark.registry",
            "minidark.weights",
        ),
    ),
    "kernels": (1, ("minidark.kernels",)),
    "optim": (2, ("minidark.optim",)),
    # the loops and what they call: network.py reads optim's policy; layers
    # call kernels and sgd; the network never imports a layer
    "network": (3, ("minidark.network", "minidark.freeze", "minidark.layers")),
    "cfg": (4, ("minidark.cfg", "minidark.plugins")),
    "api": (5, ("minidark",)),  # minidark/__init__.py: load_network ...
    "data": (6, ("minidark.data",)),
    "train": (7, ("minidark.train",)),
    "tools": (8, ("minidark.tools", "minidark.testing")),
    "commands": (9, ("minidark.commands",)),
    "cli": (10, ("minidark.cli", "minidark.__main__")),
}


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def room_of(module):
    """The room whose longest listed name is ``module`` or a package above it;
    an entry point (``__main__``) is in the cli room."""
    if module.endswith("__main__"):
        return "cli"
    best = None
    for room, (_, names) in ROOMS.items():
        for name in names:
            if (module == name or module.startswith(name + ".")) and (
                best is None or len(name) > len(best[1])
            ):
                best = (room, name)
    return best[0] if best else None


def _is_main_test(test):
    """``__name__ == "__main__"``."""
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _skipped_lines(tree):
    """Line numbers inside ``if TYPE_CHECKING:`` and ``if __name__ == "__main__":`` bodies."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING" or _is_main_test(test):
                for child in node.body:
                    lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def _known(name):
    """``name`` or the nearest module above it that exists in minidark."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module, path):
    """[(imported minidark module, line)] of ``module``, function-level ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _skipped_lines(tree)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = ".".join(
                    package[: len(package) - node.level + 1]
                    + ([node.module] if node.module else [])
                )
            else:
                base = node.module
            # `from pkg import sub` imports the module pkg.sub; `from pkg import name`, pkg
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        for target in targets:
            known = _known(target) if target.startswith("minidark") else None
            if known is not None and known != module:
                found.append((known, node.lineno))
    return found


GRAPH = {module: imports_of(module, path) for module, path in MODULES.items()}


def test_every_module_has_a_room():
    homeless = [m for m in MODULES if room_of(m) is None]
    assert not homeless, (
        f"modules in no room: {homeless}; add them to ROOMS here and to docs/architecture.md"
    )


def test_imports_point_down():
    upward = []
    for module, imports in GRAPH.items():
        here = room_of(module)
        for target, line in imports:
            there = room_of(target)
            if here and there and ROOMS[there][0] > ROOMS[here][0]:
                upward.append(
                    f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: "
                    f"{module} ({here}) imports {target} ({there})"
                )
    assert not upward, "imports pointing up the house:\n" + "\n".join(upward)


def test_no_import_cycle():
    state, stack, cycles = {}, [], []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target, _ in GRAPH[module]:
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_registry_imports_no_layer():
    imported = [target for target, _ in GRAPH["minidark.registry"]]
    assert "minidark.errors" in imported  # the graph reads this module at all
    layers = [t for t in imported if t.startswith(("minidark.layers", "minidark.plugins"))]
    assert not layers


def test_the_reader_sees_function_level_and_relative_imports_only(tmp_path):
    fake = tmp_path / "blas.py"  # read as if it were minidark/kernels/blas.py
    fake.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from ..network import Network\n"
        "def f():\n"
        "    from ..cli import main\n"
        "    import minidark.layers.connected\n"
        "if __name__ == '__main__':\n"
        "    from minidark.cli import main\n"
    )
    assert imports_of("minidark.kernels.blas", fake) == [
        ("minidark.cli", 5),
        ("minidark.layers.connected", 6),
    ]
    assert ROOMS[room_of("minidark.cli")][0] > ROOMS[room_of("minidark.kernels.blas")][0]


# ------------------------------------------------------------------ layer fields
LAYER_NAMES = {"l", "layer", "sub", "whole"}  # how the code names a Layer
DECLARED = {name for name in dir(Layer) if not name.startswith("__")}


def _layer_code():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"))


def test_every_field_a_layer_sets_is_declared_on_layer():
    undeclared = []
    for path, tree in _layer_code():
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Layer":
                names = [(kw.arg, node.lineno) for kw in node.keywords if kw.arg]
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id in LAYER_NAMES
            ):
                names = [(node.attr, node.lineno)]
            undeclared += [
                f"{path.relative_to(PACKAGE.parent)}:{line}: {name}"
                for name, line in names
                if name not in DECLARED
            ]
    assert not undeclared, (
        "fields set on a layer but not declared (with a comment) in "
        "minidark/layer.py:\n" + "\n".join(undeclared)
    )


def test_declared_fields_are_read_as_attributes():
    lookups = []
    for path, tree in _layer_code():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) in ("getattr", "hasattr")
                and len(node.args) >= 2
                and isinstance(node.args[0], ast.Name)
                and node.args[0].id in LAYER_NAMES
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in DECLARED
            ):
                lookups.append(
                    f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: "
                    f"{node.func.id}({node.args[0].id}, {node.args[1].value!r})"
                )
    assert not lookups, (
        "declared Layer fields read with getattr/hasattr (read l.name; the "
        "default is in minidark/layer.py):\n" + "\n".join(lookups)
    )


@pytest.mark.parametrize(
    "field",
    [
        "truths",
        "workspace_size",
        "train_state",
        "next_rand",
        "noloss",
        "sgd_params",
        "learned",
        "gradcheck_gap",
        "input_layers",
        "cost",
    ],
)
def test_the_optional_fields_the_tools_read_are_declared(field):
    assert field in DECLARED
    assert f"    {field}:" in (PACKAGE / "layer.py").read_text(encoding="utf-8")
