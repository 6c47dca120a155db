"""The shape of the code (docs/layout.md): no import cycles, the layers kept apart, every module
importable on its own, core modules of a readable size.

The import graph is read from the source with `ast`: every `import` and `from … import`, those
inside functions included (a function-level import is still an edge, and the usual place a
cycle hides), those under `if TYPE_CHECKING:` left out (they never run).
"""

from __future__ import annotations

import ast
import itertools
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("talos_pipeline", "serve")
CORE = "talos_pipeline.core"
DAGSTER = ("dagster", "dagster_webserver", "dagster_postgres", "dagster_dg_cli")
HTTP_FRAMEWORK = ("starlette", "uvicorn")

CORE_MAX_LINES = 400
CORE_LONG_MODULES = {
    "talos_pipeline.core.stores.s3": (
        "the S3 store is one concept: the Store contract mapped onto the S3 API (reads, conditional "
        "writes, server-side copies, leftovers of interrupted uploads); its upload strategies are "
        "already apart in s3_uploads.py"
    ),
    "talos_pipeline.core.settings": (
        "the settings table is one concept by design: every environment variable, its default, parser "
        "and meaning in one place (issue 10 item 2); it grows a row per setting"
    ),
}

# Rules that parts of the code being restructured break today, each with the module and why.
# The entries go as those parts land (issue 10).
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    target: str
    line: int


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool

    @property
    def package(self) -> str:
        """The package that relative imports in this module start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in `node`, at any depth, except in the body of `if TYPE_CHECKING:`."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children: list[ast.AST] = list(node.orelse)
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _import_nodes(child)


def _unique(lines: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(lines))


def _starts_with(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


@dataclass
class ImportGraph:
    """The modules of `packages` under `root` and what each imports."""

    root: Path
    packages: tuple[str, ...]
    modules: dict[str, Module] = field(init=False)
    _imports: dict[str, tuple[Import, ...]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.modules = {}
        for package in self.packages:
            for path in sorted((self.root / package).rglob("*.py")):
                parts = list(path.relative_to(self.root).with_suffix("").parts)
                is_package = parts[-1] == "__init__"
                if is_package:
                    parts.pop()
                self.modules[".".join(parts)] = Module(".".join(parts), path, is_package)

    def where(self, name: str) -> str:
        return str(self.modules[name].path.relative_to(self.root))

    def imports_of(self, name: str) -> tuple[Import, ...]:
        """Full dotted names; `from pkg import sub` is `pkg.sub` when that is one of the modules."""
        if name not in self._imports:
            module = self.modules[name]
            tree = ast.parse(module.path.read_bytes(), filename=str(module.path))
            found: list[Import] = []
            for node in _import_nodes(tree):
                if isinstance(node, ast.Import):
                    found += [Import(alias.name, node.lineno) for alias in node.names]
                    continue
                source = self._resolve(module, node)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    found.append(Import(submodule if submodule in self.modules else source, node.lineno))
            self._imports[name] = tuple(found)
        return self._imports[name]

    @staticmethod
    def _resolve(module: Module, node: ast.ImportFrom) -> str:
        if node.level == 0:
            return node.module or ""
        base = module.package.split(".")
        if node.level > 1:
            base = base[: -(node.level - 1)]
        return ".".join([*base, node.module] if node.module else base)

    def edges(self, name: str) -> dict[str, int]:
        """The modules of the graph that `name` imports, with the first line importing each."""
        found: dict[str, int] = {}
        for item in self.imports_of(name):
            if item.target in self.modules and item.target != name:
                found.setdefault(item.target, item.line)
        return found

    def cycle_through(self, start: str) -> list[str] | None:
        """The shortest import cycle through `start` (first and last element `start`), or None."""
        previous: dict[str, str] = {}
        frontier = [start]
        while frontier:
            following = []
            for name in frontier:
                for target in self.edges(name):
                    if target == start:
                        path = [name]
                        while path[-1] != start:
                            path.append(previous[path[-1]])
                        return [start, *reversed(path[:-1]), start]
                    if target not in previous:
                        previous[target] = name
                        following.append(target)
            frontier = following
        return None

    def show_cycle(self, cycle: list[str]) -> str:
        steps = [f"{self.where(a)}:{self.edges(a)[b]} imports {b}" for a, b in itertools.pairwise(cycle)]
        return " -> ".join(cycle) + "\n  " + "\n  ".join(steps)

    def forbidden(self, name: str, prefixes: tuple[str, ...], *, allowed: tuple[str, ...] = ()) -> list[str]:
        """`file:line imports X` for each import of `name` under `prefixes` (and not under `allowed`)."""
        return _unique(
            f"{self.where(name)}:{item.line} imports {item.target}"
            for item in self.imports_of(name)
            if _starts_with(item.target, prefixes) and not _starts_with(item.target, allowed)
        )

    def layer(self, prefix: str) -> list[str]:
        return sorted(name for name in self.modules if _starts_with(name, (prefix,)))


GRAPH = ImportGraph(ROOT, PACKAGES)


def _params(rule: str, names: list[str]) -> list[object]:
    """One test per module; a module that breaks `rule` today is a strict xfail with its reason."""
    params: list[object] = []
    for name in names:
        reason = KNOWN_VIOLATIONS.get((rule, name))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params


# -- the reader itself -----------------------------------------------------------------------
def test_the_reader_finds_hidden_cycles_and_skips_type_checking(tmp_path: Path) -> None:
    """A cycle closed by a function-level import is found; one closed under TYPE_CHECKING is not."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("import os\n\n\ndef thing():\n    from pkg.sub import leaf\n    return leaf\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    if True:\n        from ..a import x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .d import y\n")
    (pkg / "d.py").write_text("from . import c\n")
    graph = ImportGraph(tmp_path, ("pkg",))

    assert set(graph.modules) == {"pkg", "pkg.sub", "pkg.sub.leaf", "pkg.a", "pkg.b", "pkg.c", "pkg.d"}
    assert graph.edges("pkg.sub") == {"pkg.sub.leaf": 1}
    assert graph.edges("pkg.b") == {"pkg.sub.leaf": 5}
    assert graph.edges("pkg.sub.leaf") == {"pkg.a": 3}
    assert graph.cycle_through("pkg.a") == ["pkg.a", "pkg.b", "pkg.sub.leaf", "pkg.a"]
    assert "pkg/b.py:5 imports pkg.sub.leaf" in graph.show_cycle(["pkg.a", "pkg.b", "pkg.sub.leaf", "pkg.a"])
    assert graph.edges("pkg.c") == {}
    assert graph.cycle_through("pkg.d") is None
    assert graph.forbidden("pkg.b", ("os",)) == ["pkg/b.py:1 imports os"]


def test_the_real_graph_is_read() -> None:
    assert len(GRAPH.modules) > 40
    assert "talos_pipeline.core.stores.s3" in GRAPH.edges("talos_pipeline.core.stores")
    assert "talos_pipeline.core.stores.s3" not in GRAPH.edges("talos_pipeline.core.stores.s3_uploads"), (
        "s3_uploads imports s3 only under TYPE_CHECKING"
    )


# -- cycles ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _params("no_cycles", sorted(GRAPH.modules)))
def test_no_import_cycle(name: str) -> None:
    cycle = GRAPH.cycle_through(name)
    assert cycle is None, "import cycle: " + GRAPH.show_cycle(cycle)


# -- layers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _params("core_layer", GRAPH.layer(CORE)))
def test_core_stays_plain_python(name: str) -> None:
    """No Dagster, no HTTP framework, and nothing of ours outside the core (so neither
    `talos_pipeline.defs`, the CLI, the simulator nor `serve`)."""
    problems = GRAPH.forbidden(name, (*DAGSTER, *HTTP_FRAMEWORK, "serve"))
    problems += GRAPH.forbidden(name, ("talos_pipeline", "talos_pipeline_tests"), allowed=(CORE,))
    assert not problems, "the core imports outside its layer:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", _params("serve_layer", GRAPH.layer("serve")))
def test_serve_never_imports_dagster_or_the_pipeline_front(name: str) -> None:
    front = ("talos_pipeline.defs", "talos_pipeline.definitions", "talos_pipeline.cli", "talos_pipeline.launch")
    problems = GRAPH.forbidden(name, (*DAGSTER, *front))
    assert not problems, "serve/ reads the store, never Dagster or the CLI:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", _params("defs_layer", GRAPH.layer("talos_pipeline.defs")))
def test_dagster_wiring_imports_neither_serve_nor_the_cli(name: str) -> None:
    problems = GRAPH.forbidden(name, ("serve", "talos_pipeline.cli"))
    assert not problems, "talos_pipeline/defs/ is wiring over the core:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", _params("no_main_imports", sorted(GRAPH.modules)))
def test_no_module_imports_a_main_module(name: str) -> None:
    """`__main__` modules are entry points: what others need from them belongs in a module."""
    problems = _unique(
        f"{GRAPH.where(name)}:{item.line} imports {item.target}"
        for item in GRAPH.imports_of(name)
        if item.target.rpartition(".")[2] == "__main__"
    )
    assert not problems, "\n".join(problems)


# -- size ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GRAPH.layer(CORE))
def test_core_modules_stay_readable(name: str) -> None:
    lines = len(GRAPH.modules[name].path.read_text().splitlines())
    if name in CORE_LONG_MODULES:
        assert lines > CORE_MAX_LINES, f"{name} has {lines} lines now: take it off CORE_LONG_MODULES"
        return
    assert lines <= CORE_MAX_LINES, (
        f"{GRAPH.where(name)} has {lines} lines (over {CORE_MAX_LINES}): split it at a seam, or, when it is "
        "one concept, add it to CORE_LONG_MODULES with the reason"
    )


# -- every module on its own -----------------------------------------------------------------
def _import_alone(name: str) -> str | None:
    """Import `name` in a fresh interpreter; None, or what went wrong."""
    code = "import importlib, sys; importlib.import_module(sys.argv[1])"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TALOS_", "DAGSTER_"))}
    result = subprocess.run(
        [sys.executable, "-c", code, name],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode == 0:
        return None
    lines = (result.stderr or result.stdout).strip().splitlines()
    return " | ".join(lines[-3:]) or f"exit {result.returncode}"


@pytest.mark.timeout(300)
def test_every_module_imports_on_its_own() -> None:
    """Each module in a fresh interpreter: an import that works only after another one hides a
    cycle or a missing import. `__main__` modules are left out: they are programs, run by
    `python -m`, and no module may import them (above)."""
    names = [name for name in sorted(GRAPH.modules) if not name.endswith(".__main__")]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        errors = dict(zip(names, pool.map(_import_alone, names), strict=True))
    failures = [f"{name}: {error}" for name, error in errors.items() if error]
    assert not failures, "modules that do not import on their own:\n" + "\n".join(failures)
