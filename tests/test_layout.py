"""ARCHITECTURE.md is a map: every path it names must exist."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

from .conftest import REPO

PATHLIKE = re.compile(r"`([A-Za-z0-9_./-]+(?:/|\.py|\.md|\.toml))`")


def named_paths(text: str) -> list[str]:
    """The backquoted tokens that name a file or folder (end in / or a known suffix)."""
    return sorted(set(PATHLIKE.findall(text)))


def test_every_path_architecture_md_names_exists():
    text = (REPO / "ARCHITECTURE.md").read_text()
    paths = named_paths(text)
    assert len(paths) >= 30, paths  # the map names the rooms, not a handful of files
    outside = {"../shared/", "RELIABILITY.md"}  # named as living beside the repository
    missing = [p for p in paths if p not in outside and not (REPO / p).exists()]
    assert missing == []


def test_the_path_check_can_fail():
    assert named_paths("see `reproduce/nonexistent.py` and `a/`, not `x`") == [
        "a/",
        "reproduce/nonexistent.py",
    ]


# --------------------------------------------------------------------------------------------
# the layout ARCHITECTURE.md describes: small functions, modules of one concern, no cycles
# --------------------------------------------------------------------------------------------
PACKAGES = ("reproduce", "architectures")
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 80, 600


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((REPO / pkg).rglob("*.py")):
            parts = list(p.relative_to(REPO).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere (top level or inside a function),
    leaving out imports under ``if TYPE_CHECKING:`` and a package's own submodules."""
    graph = {}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for t in ast.walk(tree) if isinstance(t, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(t.test) for n in ast.walk(t)}  # fmt: skip
        deps = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                deps.update(f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod
                            for a in node.names)  # fmt: skip
        graph[name] = {d for d in deps if d in mods and d != name and not d.startswith(name + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module."""
    seen: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        seen[v] = low[v] = len(seen)
        stack.append(v)
        for w in graph[v]:
            if w not in seen:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], seen[w])
        if low[v] == seen[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in seen:
            visit(v)
    return found


def test_no_import_cycles():
    graph = import_graph(modules())
    assert len(graph) > 40 and sum(map(len, graph.values())) > 130  # the whole project
    assert cycles(graph) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_function_over_80_lines_and_no_module_over_600():
    long_functions, long_modules = [], []
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append((name, text.count("\n")))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append((f"{name}.{node.name}", lines))
    assert long_functions == [] and long_modules == []


def test_every_package_is_installed():
    """A plain (non-editable) install ships the packages pyproject.toml lists, no more: a new
    subpackage (reproduce.cli) missing there installs a CLI that cannot start."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for pkg in PACKAGES
             for p in (REPO / pkg).rglob("__init__.py")}  # fmt: skip
    assert found == listed


# --------------------------------------------------------------------------------------------
# the documented order of the rooms: no module imports from a room above its own
# --------------------------------------------------------------------------------------------
LAYERS_HEADING = "## The order of the rooms"


def documented_layers(text: str) -> list[str]:
    """The rooms of ARCHITECTURE.md's ordered list under LAYERS_HEADING, bottom first: each
    item starts with the room's backquoted path (``reproduce/gan/``; ``reproduce/*.py`` for
    the shared modules at the top of the package)."""
    section = text.split(LAYERS_HEADING, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\d+\. `([^`]+)`", section, flags=re.M)


def room(module: str) -> str:
    """The room of a module: its subpackage of reproduce/ (``reproduce/gan/``), or
    ``reproduce/*.py`` for reproduce's own modules, or its top-level package."""
    parts = module.split(".")
    if parts[0] == "reproduce" and len(parts) > 2:
        return f"reproduce/{parts[1]}/"
    if parts[0] == "reproduce":
        sub = REPO / "reproduce" / parts[1] if len(parts) > 1 else None
        return f"reproduce/{parts[1]}/" if sub and sub.is_dir() else "reproduce/*.py"
    return f"{parts[0]}/"


def upward_imports(graph: dict[str, set[str]], layers: list[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(layers)}
    bad = []
    for mod, deps in graph.items():
        for dep in deps:
            if dep == "reproduce" or mod == "reproduce.__main__":
                continue  # the package's version; the entry point sits above everything
            if rank[room(dep)] > rank[room(mod)]:
                bad.append(f"{mod} -> {dep}")
    return sorted(bad)


def test_no_module_imports_from_a_room_above_its_own():
    layers = documented_layers((REPO / "ARCHITECTURE.md").read_text())
    graph = import_graph(modules())
    assert {room(m) for m in graph} <= set(layers), set(map(room, graph)) - set(layers)
    assert len(layers) >= 10
    assert upward_imports(graph, layers) == []


def test_the_order_check_can_fail():
    graph = {"reproduce.gan.losses": {"reproduce.training.loop"}, "reproduce.training.loop": set()}
    layers = ["architectures/", "reproduce/*.py", "reproduce/gan/", "reproduce/training/"]
    assert upward_imports(graph, layers) == ["reproduce.gan.losses -> reproduce.training.loop"]
    text = f"{LAYERS_HEADING}\n\n1. `reproduce/*.py`: x\n2. `reproduce/gan/`: y\n\n## next\n3. `z/`"
    assert documented_layers(text) == ["reproduce/*.py", "reproduce/gan/"]


def test_the_results_directory_is_spelled_in_one_place():
    """Every folder of a results directory is named by ``ResultsDir`` and the sample grids'
    file name by ``RunDir``: no other module spells them."""
    folders = ('"matrices"', '"tensorboard"', '".submitit"', '"fidelity"', '"report"')
    spelled = {**dict.fromkeys(folders, "layout.py"), '"iter-': "rundir.py"}
    found = sorted(
        (literal, path.relative_to(REPO).as_posix())
        for path in (REPO / "reproduce").rglob("*.py")
        if path.parent.name != "cli" or path.name != "report.py"  # the subcommand's name
        for literal, home in spelled.items()
        if literal in path.read_text() and path.name != home
    )
    assert found == []
