"""The import structure of peftbench and methods: no cycle, no import from a lower layer to a higher one.

The graph is read from the source with `ast` (nothing is imported), so it sees every `import` statement,
including ones inside functions; imports under `if TYPE_CHECKING:` are left out because they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("peftbench", "methods")

# Layers from bottom to top: a module may import modules of its own layer or below, never above.
# Modules not listed belong to the layer of their package's entry (methods.* -> "methods").
LAYERS: list[tuple[str, ...]] = [
    # foundations: no torch, no project imports beyond this layer
    ("peftbench", "peftbench.errors", "peftbench.util", "peftbench.atomic", "peftbench.data.limits",
     "peftbench.suite_schema", "peftbench.backbones_meta", "peftbench.repro", "peftbench.selection",
     "peftbench.layout", "peftbench.claims", "peftbench.records"),
    # data: task specs, split lists, images, generated suites
    ("peftbench.data", "peftbench.data.tasks", "peftbench.data.splits", "peftbench.data.content",
     "peftbench.data.images", "peftbench.data.synthetic", "peftbench.data.mini_draw", "peftbench.data.mini"),
    # backbones and the method registry / configuration
    ("peftbench.models", "peftbench.presets", "peftbench.hub", "peftbench.backbone", "peftbench.registry",
     "peftbench.config", "peftbench.provenance", "peftbench.status", "peftbench.progress"),
    # what a method author uses
    ("peftbench.method_api", "peftbench.adapt", "peftbench.toolkit"),
    # methods themselves
    ("methods", "peftbench.methods"),
    # training and measuring one run
    ("peftbench.checkpoint", "peftbench.train", "peftbench.measure", "peftbench.checks"),
    # the sweep, one way: request -> (names resolved, what runs share) -> plan | execute -> run, launch
    ("peftbench.sweep", "peftbench.sweep.request"),
    ("peftbench.sweep.resolve", "peftbench.sweep.context"),
    ("peftbench.sweep.plan", "peftbench.sweep.execute"),
    ("peftbench.sweep.run", "peftbench.sweep.launch"),
    # commands over sweeps: tuning, catalogue, reports, the CLI
    ("peftbench.tune", "peftbench.catalog", "peftbench.report", "peftbench.cli"),
]

# The one sanctioned upward edge: the registry discovers built-in methods by importing the plugin package,
# the same way it loads entry points and --plugin files. Methods import the registry, never the reverse.
ALLOWED_UPWARD = {("peftbench.registry", "methods")}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports (resolving relative imports and `from pkg import mod`)."""
    files: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "methods" in path.relative_to(root).parts[1:2] and package == "peftbench":
                continue  # peftbench/methods is a symlink to methods/ in development trees
            files[module_name(path, root)] = path
    known = set(files)
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    anchor = base[: len(base) - (node.level - 1)]
                    mod = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{alias.name}" for alias in node.names]
            for target in targets:
                if target.startswith("peftbench.methods"):
                    target = target[len("peftbench."):]
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer_of(module: str) -> int:
    name = module
    while name:
        for index, layer in enumerate(LAYERS):
            if name in layer:
                return index
        name = name.rpartition(".")[0]
    raise KeyError(module)


def test_every_module_has_a_layer():
    missing = [name for name in import_graph() if not _has_layer(name)]
    assert not missing, f"add these modules to a layer in {Path(__file__).name}: {missing}"


def _has_layer(name: str) -> bool:
    try:
        layer_of(name)
    except KeyError:
        return False
    return True


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_upward_import():
    upward = [f"{src} ({layer_of(src)}) -> {dst} ({layer_of(dst)})"
              for src, targets in import_graph().items() for dst in sorted(targets)
              if layer_of(dst) > layer_of(src) and (src, dst) not in ALLOWED_UPWARD]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_the_walker_sees_a_cycle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "peftbench"
    (pkg / "data").mkdir(parents=True)
    (tmp_path / "methods").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "tasks.py").write_text("from ..registry import x\n")
    (pkg / "registry.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .cli import y\n"
        "def f():\n    from peftbench.data import tasks\n")
    graph = import_graph(tmp_path)
    assert graph["peftbench.registry"] == {"peftbench.data", "peftbench.data.tasks"}  # TYPE_CHECKING: left out
    assert find_cycle(graph) == ["peftbench.data.tasks", "peftbench.registry", "peftbench.data.tasks"]
    assert layer_of("peftbench.registry") > layer_of("peftbench.data.tasks")


@pytest.mark.parametrize("module", ["peftbench.cli", "peftbench.config", "peftbench.backbones_meta",
                                    "peftbench.layout", "peftbench.sweep.request", "peftbench.sweep.launch"])
def test_torch_free_modules_do_not_import_torch(module):
    import subprocess
    import sys
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
