"""Import hygiene: code outside dtcond/ uses only public names, and dtcond's modules import without cycles."""

from __future__ import annotations

import ast
import json
import re

from conftest import REPO

OUTSIDE = ("experiments", "benchmarks", "tests", "notebooks")


def _sources():
    """(where, source) for every Python file and notebook code cell outside the package."""
    for folder in OUTSIDE:
        for path in sorted((REPO / folder).rglob("*.py")):
            yield str(path.relative_to(REPO)), path.read_text()
        for path in sorted((REPO / folder).rglob("*.ipynb")):
            for i, cell in enumerate(json.loads(path.read_text())["cells"]):
                if cell["cell_type"] == "code":
                    yield f"{path.relative_to(REPO)} cell {i}", "".join(cell["source"])


def _dotted(node) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def test_nothing_outside_the_package_uses_a_private_dtcond_name():
    found = []
    for where, source in _sources():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dtcond"):
                found += [f"{where}:{node.lineno} {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            elif isinstance(node, ast.Import):
                found += [f"{where}:{node.lineno} {a.name}" for a in node.names
                          if a.name.startswith("dtcond") and any(p.startswith("_") for p in a.name.split("."))]
            elif isinstance(node, ast.Attribute):
                name = _dotted(node)
                parts = name.split(".") if name else []
                # dtcond.<module>._private (dtcond._LAZY, the package's own lazy-export table, is not a module attribute)
                if parts[:1] == ["dtcond"] and len(parts) > 2 and parts[-1].startswith("_") and not parts[-1].startswith("__"):
                    found.append(f"{where}:{node.lineno} {name}")
    assert not found, "private dtcond names used outside the package:\n" + "\n".join(found)


def test_scripts_outside_the_package_need_no_path_tricks_and_no_cli_internals():
    """experiments/, benchmarks/ and the notebooks are thin scripts over the library's modules."""
    found = []
    for where, source in _sources():
        if where.startswith("tests"):
            continue  # the tests may drive the CLI's internals
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and _dotted(node.func) in ("sys.path.insert", "sys.path.append"):
                found.append(f"{where}:{node.lineno} {ast.unparse(node)}")
            if isinstance(node, ast.ImportFrom) and node.module == "dtcond.cli":
                found.append(f"{where}:{node.lineno} from dtcond.cli import {', '.join(a.name for a in node.names)}")
    assert not found, "\n".join(found)


def _module_imports(source: str) -> set[str]:
    """Every dtcond module a module imports, at any depth: top level, inside if/try blocks, inside functions (a
    function-level import that closes a cycle works only while the modules happen to load in the right order) and
    under ``if TYPE_CHECKING:`` (an annotation that needs a higher layer is a dependency on it all the same)."""
    out = set()

    class Imports(ast.NodeVisitor):
        def visit_Import(self, node):
            out.update(a.name for a in node.names if a.name.startswith("dtcond"))

        def visit_ImportFrom(self, node):
            if (node.module or "").startswith("dtcond"):
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)  # `from dtcond import targets` imports a module

    Imports().visit(ast.parse(source))
    return out


def test_the_import_checks_see_imports_inside_functions_and_under_type_checking():
    source = ("import os\n\ndef f():\n    from dtcond.datasets.loading import load\n\n"
              "if TYPE_CHECKING:\n    from dtcond.dt.model import DTConfig\n")
    assert _module_imports(source) == {"dtcond.datasets.loading", "dtcond.datasets.loading.load", "dtcond.dt.model",
                                       "dtcond.dt.model.DTConfig"}


def test_dtcond_modules_import_without_cycles():
    files = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p for p in (REPO / "dtcond").rglob("*.py")}
    graph = {name: _module_imports(path.read_text()) & set(files) - {"dtcond"} for name, path in files.items()}
    cycles, state = [], {}

    def walk(node, stack):
        state[node] = "open"
        for dep in sorted(graph[node] - {node}):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                walk(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    assert not cycles, "import cycles in dtcond:\n" + "\n".join(cycles)


def _files() -> dict[str, object]:
    return {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p for p in (REPO / "dtcond").rglob("*.py")}


def _declared_layers() -> dict[str, tuple[int, list[str]]]:
    """Each layer's number and the layers it says it may import, from its docstring (a sub-package's ``__init__``
    or a top-level module): ``Layer <k>: may import <name>, <name> (...)``."""
    layers = {}
    for name, path in _files().items():
        parts = name.split(".")
        if len(parts) != 2 or parts[1] == "__main__":
            continue  # the package itself, a module inside a sub-package, or `python -m dtcond`
        doc = " ".join((ast.get_docstring(ast.parse(path.read_text())) or "").split())
        m = re.search(r"Layer (\d+): may import (.*?)(?: \(|\.)", doc)
        assert m, f"{path.relative_to(REPO)}: its docstring declares no layer ('Layer <k>: may import ...')"
        deps = [] if m.group(2).startswith("nothing") else [d.strip() for d in m.group(2).split(",")]
        layers[parts[1]] = (int(m.group(1)), deps)
    return layers


def test_each_layer_may_import_exactly_the_layers_below_it_and_the_package_lists_them_in_order():
    layers = _declared_layers()
    order = sorted(layers, key=lambda name: layers[name][0])
    assert [layers[name][0] for name in order] == list(range(1, len(order) + 1)), "layer numbers are 1..n, once each"
    for k, name in enumerate(order):
        assert layers[name][1] == order[:k], f"dtcond.{name} (layer {k + 1}) declares {layers[name][1]}, not the layers below it"
    package = ast.get_docstring(ast.parse((REPO / "dtcond" / "__init__.py").read_text()))
    assert re.findall(r"^``(\w+)``\s", package, re.M) == order, "dtcond/__init__.py lists the layers, lowest first"


def test_no_module_imports_from_a_layer_above_its_own():
    layers = {name: k for name, (k, _) in _declared_layers().items()}
    found = []
    for name, path in _files().items():
        parts = name.split(".")
        if len(parts) < 2 or parts[1] == "__main__":
            continue
        for dep in _module_imports(path.read_text()):
            target = dep.split(".")
            if len(target) > 1 and target[1] in layers and layers[target[1]] > layers[parts[1]]:
                found.append(f"{name} (layer {layers[parts[1]]}) imports {dep} (layer {layers[target[1]]})")
    assert not found, "\n".join(sorted(found))
