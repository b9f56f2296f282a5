"""The shape of the code, read from its AST: the library's imports form no cycle, never reach back
into a root script, keep the augmenter free of the training loop, and every module imports on its own;
no function is longer than one screen (80 lines)."""

import ast
import json
import sys
from pathlib import Path

import pytest

from tests.helpers import run_checked

REPO = Path(__file__).resolve().parent.parent
LIBRARY = REPO / "nanoGPT"
ROOT_SCRIPTS = sorted(p for p in REPO.glob("*.py"))
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


LIBRARY_MODULES: dict[str, Path] = {module_name(p): p for p in sorted(LIBRARY.rglob("*.py"))}


def imported_names(path: Path) -> set[str]:
    """Every module name an import statement anywhere in the file (functions included) refers to.
    For `from pkg import x`, both pkg and pkg.x (x may be a submodule or just an attribute)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb level-1 packages above this file's package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def library_edges(path: Path) -> set[str]:
    """The library modules this file's imports execute: the named module itself, or for an attribute
    import (`from nanoGPT.variants import build_variant`) the package that defines it."""
    return {name for name in imported_names(path) if name in LIBRARY_MODULES}


IMPORT_GRAPH: dict[str, set[str]] = {
    name: library_edges(path) - {name} for name, path in LIBRARY_MODULES.items()
}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (iterative DFS, three colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for start in graph:
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
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def topological_order(graph: dict[str, set[str]]) -> list[str]:
    """Dependencies first (the graph is acyclic: test_library_imports_form_no_cycle)."""
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for dep in sorted(graph[name]):
            visit(dep)
        order.append(name)

    for name in sorted(graph):
        visit(name)
    return order


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_the_import_graph_sees_the_library():
    # Guards the tests below against passing vacuously on an empty or unresolved graph.
    assert {"nanoGPT.train", "nanoGPT.model", "nanoGPT.augment", "nanoGPT.variants"} <= set(IMPORT_GRAPH)
    assert "nanoGPT.variants" in IMPORT_GRAPH["nanoGPT.model"]
    assert "nanoGPT.variants.baseline" in IMPORT_GRAPH["nanoGPT.variants"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_library_imports_form_no_cycle():
    cycle = find_cycle(IMPORT_GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_library_never_imports_a_root_script():
    scripts = {p.stem for p in ROOT_SCRIPTS}
    offenders = {
        name: sorted(n.split(".")[0] for n in imported_names(path) if n.split(".")[0] in scripts)
        for name, path in LIBRARY_MODULES.items()
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_augment_does_not_reach_the_training_loop():
    augment = [
        name for name in IMPORT_GRAPH if name == "nanoGPT.augment" or name.startswith("nanoGPT.augment.")
    ]
    assert augment
    for name in augment:
        assert "nanoGPT.train" not in reachable(IMPORT_GRAPH, name) | {name}, name


def test_every_library_module_imports_in_a_fresh_interpreter():
    # One interpreter, dependencies first, so a failure is the module's own, not a dependency's.
    order = topological_order(IMPORT_GRAPH)
    script = (
        "import importlib, json, sys, traceback\n"
        "failed = {}\n"
        f"for name in {order!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed[name] = traceback.format_exc(limit=-3)\n"
        "print(json.dumps(failed))\n"
    )
    proc = run_checked([sys.executable, "-c", script], cwd=REPO)
    failed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failed, "\n".join(f"{name}:\n{tb}" for name, tb in failed.items())


def long_functions(paths: list[Path], root: Path = REPO) -> list[str]:
    """Every function (nested ones and methods included) longer than MAX_FUNCTION_LINES."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_long_functions_are_detected(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    source = tmp_path / "sample_module.py"
    source.write_text(f"def outer():\n    def inner():\n{body}\n    return inner\n\ndef short():\n    pass\n")
    assert long_functions([source], root=tmp_path) == [
        f"sample_module.py:1 outer ({MAX_FUNCTION_LINES + 3} lines)",
        f"sample_module.py:2 inner ({MAX_FUNCTION_LINES + 1} lines)",
    ]


@pytest.mark.parametrize("where", ["nanoGPT", "root scripts", "data prepare scripts"])
def test_no_function_is_longer_than_one_screen(where):
    paths = {
        "nanoGPT": sorted(LIBRARY.rglob("*.py")),
        "root scripts": ROOT_SCRIPTS,
        "data prepare scripts": sorted(REPO.glob("data/*/prepare.py")),
    }[where]
    assert paths
    offenders = long_functions(paths)
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)


def test_every_library_folder_is_a_package():
    # pyproject finds packages by their __init__.py (include = ["nanoGPT*"]): a folder without one
    # would work from the checkout and be missing from an installed wheel
    folders = {p.parent for p in LIBRARY.rglob("*.py")}
    assert not [str(f.relative_to(REPO)) for f in folders if not (f / "__init__.py").exists()]


def test_nothing_edits_sys_path():
    # the package is installed (pip install -e .), so scripts and tests import it from anywhere
    paths = [*LIBRARY.rglob("*.py"), *ROOT_SCRIPTS, *REPO.glob("data/*/*.py"), *REPO.glob("tests/*.py")]
    offenders = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for path in paths
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    ]
    assert not offenders, offenders


def test_run_checked_reports_the_childs_output():
    with pytest.raises(AssertionError, match="stderr tail:[\\s\\S]*boom"):
        run_checked([sys.executable, "-c", "import sys; print('out'); sys.exit('boom')"])
    assert run_checked([sys.executable, "-c", "print('fine')"]).stdout == "fine\n"
    proc = run_checked([sys.executable, "-c", "raise SystemExit(3)"], expect_returncode=3)
    assert proc.returncode == 3
