"""The layer order of the vf3d package: every module may import only its own layer or lower ones.

    core         config, cameras, preprocess, mesh, ray_runtime, atomic, image_metrics, plots and
                 vf3d/__init__: foundations that import nothing above them
    models       vf3d.models: networks, their weights and model directories
    data         vf3d.data: the orbit-shard format, assets, rendering and training input
    pipelines    vf3d.synthesis, vf3d.training, vf3d.evaluation, vf3d.serving and vf3d.inference:
                 the stages, built on the layers below
    entrypoints  cli, jobs, specs, demo: what a user or a cluster job runs

Why it is enforced: a lower layer importing a higher one drags the higher one's dependencies
(ray, deepspeed, matplotlib) into every user of the lower one, and it is how import cycles start
(training and evaluation used to import each other). `inference` imports only core and models and
could sit lower; it is placed with the pipelines because it is one (image → mesh and video files),
a sibling that evaluation and serving build on.

The rules, checked by reading every module's source with `ast` (nothing is imported):

- Every import counts wherever it is: at the top, inside functions (the lazy imports that keep
  ray out of light modules still make the module depend on its target) and under
  `if TYPE_CHECKING:`. A type-only import never runs, so it cannot make an import cycle, but a
  lower layer whose signatures name a higher layer's types still depends on that layer's API; define
  a Protocol in the lower layer instead.
- Every top-level module and subpackage of vf3d has an explicit entry in `LAYER_OF`, so a new one
  fails until someone decides where it belongs; a module inside a subpackage takes its package's layer.
- Within one layer, imports between siblings may go one way only: no cycle among the top-level
  modules and subpackages (e.g. training → evaluation → training).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import vf3d

PACKAGE = "vf3d"
PACKAGE_DIR = Path(vf3d.__file__).resolve().parent

LAYERS = ("core", "models", "data", "pipelines", "entrypoints")
"""From the bottom up: a module may import its own layer and the ones before it."""

LAYER_OF = {
    # core
    "__init__": "core",
    "atomic": "core",
    "cameras": "core",
    "config": "core",
    "image_metrics": "core",
    "mesh": "core",
    "metrics": "core",
    "plots": "core",
    "preprocess": "core",
    "ray_runtime": "core",
    "storage": "core",
    # models
    "models": "models",
    # data
    "data": "data",
    # pipelines
    "evaluation": "pipelines",
    "inference": "pipelines",
    "serving": "pipelines",
    "synthesis": "pipelines",
    "training": "pipelines",
    # entrypoints
    "cli": "entrypoints",
    "demo": "entrypoints",
    "jobs": "entrypoints",
    "specs": "entrypoints",
}
"""Layer of each top-level unit of vf3d: a module (`config` for vf3d/config.py, `__init__` for the
package's own __init__.py) or a subpackage (every module under it)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py")) if "__pycache__" not in path.parts}


MODULES = _modules()


def _unit(module: str) -> str:
    """The top-level unit (key of `LAYER_OF`) a vf3d module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _resolve(base: str, name: str) -> str:
    """What `from base import name` imports: the submodule base.name when there is one, else base."""
    candidate = f"{base}.{name}"
    return candidate if candidate in MODULES else base


def _imports(module: str, source: str, is_package: bool = False) -> Iterator[tuple[str, int, str]]:
    """(imported vf3d module, line, the import as written) for every import in the source of
    `module`, at any depth (functions, `if TYPE_CHECKING:` blocks, try blocks)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield alias.name, node.lineno, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                package_parts = module.split(".") if is_package else module.split(".")[:-1]
                base_parts = package_parts[: len(package_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            written = f"from {'.' * node.level}{node.module or ''} import {', '.join(alias.name for alias in node.names)}"
            for alias in node.names:
                yield _resolve(base, alias.name), node.lineno, written


def _edges() -> list[tuple[str, str, int, str]]:
    """(importer, imported, line, statement) for every vf3d → vf3d import."""
    return [
        (module, target, line, written)
        for module, path in MODULES.items()
        for target, line, written in _imports(module, path.read_text(encoding="utf-8"), is_package=path.name == "__init__.py")
    ]


def test_every_module_has_a_layer():
    units = {_unit(module) for module in MODULES}
    missing = sorted(units - set(LAYER_OF))
    assert not missing, (
        f"no layer for {', '.join(f'vf3d.{unit}' if unit != '__init__' else 'vf3d' for unit in missing)}: "
        f"add it to LAYER_OF in {Path(__file__).name} (one of {', '.join(LAYERS)})"
    )
    assert set(LAYER_OF.values()) <= set(LAYERS)


def _upward_imports(edges: list[tuple[str, str, int, str]]) -> list[str]:
    """One line per import that reaches a higher layer, naming the module, the import and both layers."""
    problems = []
    for module, target, line, written in edges:
        source_layer, target_layer = LAYER_OF.get(_unit(module)), LAYER_OF.get(_unit(target))
        if source_layer is None or target_layer is None:
            continue  # reported by test_every_module_has_a_layer
        if LAYERS.index(target_layer) > LAYERS.index(source_layer):
            problems.append(f"{module} ({source_layer} layer) line {line}: `{written}` reaches {target} ({target_layer} layer)")
    return problems


def test_imports_point_to_the_same_or_a_lower_layer():
    problems = _upward_imports(_edges())
    header = f"imports from a lower layer into a higher one (layers, bottom up: {' → '.join(LAYERS)}):"
    assert not problems, "\n".join([header, *problems])


def test_an_upward_import_is_reported_with_both_layers():
    edge = ("vf3d.mesh", "vf3d.training.recon", 7, "from vf3d.training.recon import train_recon")
    assert _upward_imports([edge]) == [
        "vf3d.mesh (core layer) line 7: `from vf3d.training.recon import train_recon` reaches vf3d.training.recon (pipelines layer)"
    ]
    assert _upward_imports([("vf3d.training.recon", "vf3d.mesh", 7, "from vf3d import mesh")]) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                lowlink[node] = min(lowlink[node], lowlink[successor])
            elif successor in on_stack:
                lowlink[node] = min(lowlink[node], index[successor])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def test_no_import_cycles_between_top_level_modules_and_subpackages():
    graph: dict[str, set[str]] = {}
    witnesses: dict[tuple[str, str], str] = {}
    for module, target, line, written in _edges():
        source_unit, target_unit = _unit(module), _unit(target)
        if source_unit == target_unit:
            continue  # modules of one subpackage may depend on each other as they like
        graph.setdefault(source_unit, set()).add(target_unit)
        witnesses.setdefault((source_unit, target_unit), f"{module} line {line}: `{written}`")
    cycles = _cycles(graph)
    lines = []
    for cycle in cycles:
        members = set(cycle)
        lines.append(" ↔ ".join(cycle) + ":")
        lines += [f"    {witness}" for (source, target), witness in sorted(witnesses.items()) if source in members and target in members]
    assert not cycles, "import cycles between vf3d's top-level modules/subpackages:\n" + "\n".join(lines)


def test_the_checker_sees_every_kind_of_import():
    source = """
from typing import TYPE_CHECKING

import vf3d.mesh
from vf3d import config as config_lib, __version__
from . import shards
from ..models import pretrained

if TYPE_CHECKING:
    from vf3d.serving import app


def lazy():
    from vf3d.training.recon import train_recon
"""
    found = {target for target, _, _ in _imports("vf3d.data.example", source)}
    assert found == {
        "vf3d.mesh",
        "vf3d.config",
        "vf3d",
        "vf3d.data.shards",
        "vf3d.models.pretrained",
        "vf3d.serving.app",
        "vf3d.training.recon",
    }


def test_the_cycle_finder():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
