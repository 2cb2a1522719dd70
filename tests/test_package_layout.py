"""The package's layout rules: every module imports; imports among ``retrieval.*`` (module-level, inside
functions, and modules named to ``importlib``) form no cycle; no function hides an import of a
``retrieval`` module (lazy imports are for optional third-party packages only); no module imports
another's private names; and no file is long without saying why."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "retrieval"
MAX_LINES = 400
LONG_REASON = "Why this file is long:"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _target(module: str, path: Path, node: ast.ImportFrom) -> str | None:
    """The absolute module a ``from ... import`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _skipped_block(node: ast.If) -> bool:
    """``if TYPE_CHECKING:`` and ``if __name__ == "__main__":`` bodies do not run on import."""
    test = node.test
    if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
        return True
    if isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING":
        return True
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _module_level_imports(tree: ast.Module):
    """Import statements that run when the module is imported: at the top level or inside
    module-level ``if`` / ``try`` / ``with`` blocks, not inside functions or classes."""
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _skipped_block(node):
                todo[:0] = node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo[:0] = node.body + [n for h in node.handlers for n in h.body] + node.orelse + node.finalbody
        elif isinstance(node, ast.With):
            todo[:0] = node.body


def _imported_modules(module: str, path: Path, node) -> set[str]:
    """The ``retrieval`` modules an import statement loads: the named module, a submodule named in
    ``from package import submodule``, and the packages above them (their ``__init__`` runs first),
    except the importing module's own packages (already being imported)."""
    found = set()
    if isinstance(node, ast.Import):
        found = {a.name for a in node.names}
    else:
        target = _target(module, path, node)
        if target is None:
            return set()
        found = {target} | {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES}
    out = set()
    own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
    for name in found:
        parts = name.split(".")
        for i in range(2, len(parts) + 1):  # retrieval.x, retrieval.x.y, ... (not the root package)
            sub = ".".join(parts[:i])
            if sub in MODULES and sub not in own:
                out.add(sub)
    out.discard(module)
    return out


def _all_imports(tree: ast.Module):
    """Every import statement that can run: module level (as :func:`_module_level_imports`) and inside
    functions and classes, but not under ``if TYPE_CHECKING:`` / ``if __name__ == "__main__":``."""
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _skipped_block(node):
            continue
        else:
            todo[:0] = list(ast.iter_child_nodes(node))


def _importlib_names(tree: ast.Module) -> set[str]:
    """``retrieval`` modules named by a string constant to ``import_module`` / ``__import__``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "import_module", "__import__"):
            for arg in node.args[:1]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("retrieval"):
                    out.add(arg.value)
    return out


def import_graph(everywhere: bool = False) -> dict[str, set[str]]:
    """Module → the ``retrieval`` modules its module-level imports load (``everywhere``: also those imported
    inside functions and named to ``importlib``)."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        nodes = _all_imports(tree) if everywhere else _module_level_imports(tree)
        graph[module] = set().union(*(_imported_modules(module, path, n) for n in nodes))
        if everywhere:
            for name in _importlib_names(tree):
                parts = name.split(".")
                graph[module] |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)
                                  if ".".join(parts[:i]) in MODULES} - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_among_module_level_imports():
    graph = import_graph()
    # the graph sees relative imports, submodules named in ``from . import`` and the packages above a module
    assert graph["retrieval.tasks"] >= {"retrieval.tasks.asym", "retrieval.tasks.base"}
    assert graph["retrieval.tasks.base"] >= {"retrieval.train", "retrieval.datasets", "retrieval.datasets.tuples"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle among retrieval modules (module-level imports): " + " -> ".join(cycle)


def test_no_import_cycle_counting_imports_inside_functions_and_importlib_names():
    graph = import_graph(everywhere=True)
    assert graph["retrieval.train.__main__"] >= {"retrieval.tasks", "retrieval.train.loop"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle among retrieval modules (counting imports in functions): " + " -> ".join(cycle)


def test_the_graph_sees_imports_in_functions_and_importlib_strings(tmp_path):
    tree = ast.parse("import importlib\n"
                     "def f():\n    from .search import exact_search\n"
                     "def g():\n    return importlib.import_module('retrieval.tasks')\n")
    assert [n.module for n in _all_imports(tree) if isinstance(n, ast.ImportFrom)] == ["search"]
    assert _importlib_names(tree) == {"retrieval.tasks"}


def test_no_function_hides_an_import_of_a_retrieval_module():
    """Lazy imports keep optional third-party packages (faiss, papermill, matplotlib, ...) off the import
    path; an import of the package's own module inside a function only hides a dependency (or a cycle)."""
    bad = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        top = set(map(id, _module_level_imports(tree)))
        for node in _all_imports(tree):
            if id(node) not in top and _imported_modules(module, path, node):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not bad, "imports of retrieval modules inside functions (move them to the top):\n" + "\n".join(bad)


def test_no_private_names_imported_from_other_modules():
    bad = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):  # function-level imports too
            if isinstance(node, ast.ImportFrom):
                target = _target(module, path, node) or ""
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                target, names = "", [a.name for a in node.names]
            else:
                continue
            for name in names:
                full = f"{target}.{name}" if target else name
                if not full.startswith("retrieval."):
                    continue
                private = [p for p in full.split(".") if p.startswith("_") and not p.endswith("__")]
                if private:
                    bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {full}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_long_files_say_why():
    bad = []
    for path in MODULES.values():
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if not any(line.lstrip().startswith(LONG_REASON) for line in doc.splitlines()):
            bad.append(f"{path.relative_to(PACKAGE.parent)} ({n} lines)")
    assert not bad, (f"files over {MAX_LINES} lines without a line starting with {LONG_REASON!r} in their "
                     "module docstring:\n" + "\n".join(bad))


# packages a function may import on use (optional, or slow to import and needed by few paths), each such
# import line saying why with a "# lazy:" comment; torch only in config (imported after tune_malloc)
LAZY_OK = {"faiss", "matplotlib", "papermill", "nbformat", "yaml", "asmk", "ipywidgets", "IPython", "skimage",
           "timm", "torchvision", "playwright"}


def test_lazy_imports_are_optional_packages_and_say_so():
    bad = []
    for module, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        tree = ast.parse(text, str(path))
        top = set(map(id, _module_level_imports(tree)))
        for node in _all_imports(tree):
            if id(node) in top or getattr(node, "level", 0):
                continue
            root = (node.names[0].name if isinstance(node, ast.Import) else node.module).split(".")[0]
            allowed = root in LAZY_OK or (root == "torch" and module == "retrieval.config")
            if not allowed or "# lazy:" not in lines[node.lineno - 1]:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not bad, ("imports inside functions that are not optional packages, or lack a '# lazy:' reason "
                     "(move them to the top):\n" + "\n".join(bad))
