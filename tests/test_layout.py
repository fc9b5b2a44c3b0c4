"""The code's shape: imports go entry points -> gptkit package -> model, with no cycle, and nothing patches sys.path."""
import ast
from pathlib import Path

from helpers import REPO

# The design's top-level files: in a checkout they sit at the top, and `gptkit.NAME` names them (gptkit/__init__.py).
ENTRY_POINTS = ("train", "sample", "chat", "evaluate", "export", "plot", "serve", "align", "data.prepare", "data.synthetic_chat",
                "data.alignment_demo")
SKIPPED = {"tests", "bench", "config", "docs", "build", "dist", "prepared", "out"}


def project_modules():
    """{module name: path} for every module of the project, under the name the package imports it by."""
    modules = {}
    for path in REPO.rglob("*.py"):
        parts = path.relative_to(REPO).parts
        if parts[0] in SKIPPED or any(p.startswith(".") for p in parts) or path.name == "setup.py":
            continue
        names = list(path.relative_to(REPO).with_suffix("").parts)
        if names[-1] == "__init__":
            names = names[:-1]
        name = ".".join(names)
        modules[name if name.startswith("gptkit") else f"gptkit.{name}"] = path
    return modules


def imports_of(path, modules):
    """The project modules `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            for candidate in (name, f"gptkit.{name}"):  # a top-level import of model.py names gptkit.model too
                if candidate in modules and modules[candidate] != path:
                    found.add(candidate)
    return found


def import_graph():
    modules = project_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_modules_and_their_imports():
    graph = import_graph()
    assert {"gptkit.model", "gptkit.train", "gptkit.engine", "gptkit.checkpoint", "gptkit.data.prepare"} <= graph.keys()
    assert "gptkit.model" in graph["gptkit.checkpoint"] and "gptkit.objectives" in graph["gptkit.train"]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_package_never_imports_an_entry_point():
    graph = import_graph()
    entry_points = {f"gptkit.{name}" for name in ENTRY_POINTS}
    offenders = {m: sorted(graph[m] & entry_points) for m in graph if m not in entry_points and graph[m] & entry_points}
    assert offenders == {}


def test_the_model_imports_nothing_of_the_project():
    assert import_graph()["gptkit.model"] == set()  # no files, Hugging Face or distribution in the model's file


def test_no_module_patches_sys_path():
    patched = [str(p.relative_to(REPO)) for p in REPO.rglob("*.py") if ".venv" not in p.parts
               and any(s in p.read_text(encoding="utf-8") for s in ("sys.path.insert", "sys.path.append", "sys.path[:0]"))]
    assert patched == [str(Path(__file__).relative_to(REPO))]  # only this test, which names the calls it looks for
