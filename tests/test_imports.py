"""The package's import graph: no circles (a function-level import counts: it only hides one), and no
private name imported from another module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "splitvit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` for every import of a splitvit module in ``path``, wherever it sits."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            # `from . import x` names a submodule
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if subs:
                out += [(s, []) for s in subs]
            elif target in MODULES:
                out.append((target, names))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name in MODULES]
    return out


def graph() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        # importing a.b.c runs a and a.b first: an edge to each package on the way
        deps = set()
        for target, _ in imports(name, path):
            parts = target.split(".")
            deps.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
        deps.discard(name)
        # a package's own __init__ is run before its submodules, not by them: no edge from a module to its parents
        edges[name] = {d for d in deps if not name.startswith(d + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_circle():
    found = cycles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_circle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_name_is_imported_from_another_module(name):
    private = [f"{target}.{n}" for target, names in imports(name, MODULES[name]) for n in names
               if n.startswith("_") and not n.startswith("__")]
    assert not private, f"{name} imports private names: {private}"


def test_every_public_class_function_and_method_has_a_docstring():
    """What the API reference shows: a public name of the package without a docstring (its own or, for an
    override, the one it inherits) is a gap in the docs."""
    import importlib
    import importlib.util
    import inspect
    import pkgutil

    import splitvit

    missing = []
    for info in pkgutil.walk_packages(splitvit.__path__, "splitvit."):
        if info.name.endswith(("_pb2", "__main__")) or ".proto" in info.name:
            continue
        if info.name in ("splitvit.flower", "splitvit.train.flower") and importlib.util.find_spec("flwr") is None:
            continue  # the optional Flower extra
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{module.__name__}.{name}")
            if inspect.isclass(obj):
                for member, value in vars(obj).items():
                    if member.startswith("_"):
                        continue
                    if isinstance(value, property):
                        doc = inspect.getdoc(value)
                    elif inspect.isfunction(value) or isinstance(value, (staticmethod, classmethod)):
                        doc = inspect.getdoc(getattr(obj, member))
                    else:
                        continue
                    if not doc:
                        missing.append(f"{module.__name__}.{name}.{member}")
    assert not missing, f"public names without a docstring: {missing}"
