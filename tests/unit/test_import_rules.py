"""bench/ and tests/ import each other's code only as packages: no sys.path edits, bench never
imports the test suite, and testkit (shared by both) imports neither of them nor pytest. Within
streams/, no import cycle: the adapters (the HTTP API, metrics) never import the wiring
(streams.app), which imports them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: module names of the test suite (tests/ is on sys.path only under pytest)
TEST_SUITE = ("tests", "support", "inprocess", "history_support", "conftest")
FORBIDDEN = {
    "bench": TEST_SUITE,
    "testkit": (*TEST_SUITE, "bench", "pytest", "_pytest"),
}

PROBE = """
import importlib, importlib.util, json, pkgutil, sys
import bench, testkit
names = [
    m.name for p in (bench, testkit) for m in pkgutil.walk_packages(p.__path__, p.__name__ + ".")
]
skipped = []
for name in names:
    if name == "bench.fuzz_parser_atheris" and importlib.util.find_spec("atheris") is None:
        skipped.append(name)  # atheris is not a project dependency
        continue
    importlib.import_module(name)
print(json.dumps({"walked": names, "skipped": skipped, "loaded": sorted(sys.modules)}))
"""


def sources(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (REPO / d).rglob("*.py"))


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import, those inside functions included."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def is_sys_path(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    )


def sys_path_edits(tree: ast.AST) -> list[int]:
    """Lines calling a method of ``sys.path`` (insert, append...) or assigning to it."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            hit = is_sys_path(node.func.value)
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            hit = any(is_sys_path(t.value if isinstance(t, ast.Subscript) else t) for t in targets)
        else:
            continue
        if hit:
            lines.append(node.lineno)
    return lines


def test_the_sys_path_check_sees_each_kind_of_edit() -> None:
    code = "import sys\nsys.path.insert(0, 'x')\nsys.path.append('y')\nsys.path[:0] = ['z']\n"
    code += "sys.path += ['w']\nprint(sys.path)\n"
    assert sorted(sys_path_edits(ast.parse(code))) == [2, 3, 4, 5]


def test_no_module_of_bench_tests_or_testkit_edits_sys_path() -> None:
    files = sources("bench", "tests", "testkit")
    offenders = [
        f"{path.relative_to(REPO)}:{line}"
        for path in files
        for line in sys_path_edits(ast.parse(path.read_text(), filename=str(path)))
    ]
    assert offenders == []
    assert len(files) > 100


def test_bench_and_testkit_import_no_test_suite_module() -> None:
    offenders = []
    for package, forbidden in FORBIDDEN.items():
        for path in sources(package):
            tree = ast.parse(path.read_text(), filename=str(path))
            offenders += [
                f"{path.relative_to(REPO)}:{line} {module}"
                for line, module in imported(tree)
                if module in forbidden
            ]
    assert offenders == []


def test_every_bench_and_testkit_module_imports_from_the_repository_root_alone() -> None:
    """A fresh interpreter in the repository root (as ``python -m bench.<module>`` runs) imports
    each module; none needs tests/ on sys.path and none loads the test suite or pytest."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=REPO,
    )
    report = json.loads(result.stdout)
    assert {"bench.run", "bench.alert_quality", "testkit.worker"} <= set(report["walked"])
    loaded = {name.split(".")[0] for name in report["loaded"]}
    assert loaded.isdisjoint({*TEST_SUITE, "pytest", "_pytest"}), loaded & {*TEST_SUITE, "pytest"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports a module runs when it is imported, or a type checker reads: at its top level
    and in top-level ``if`` (``if TYPE_CHECKING:`` included), ``try`` and ``with`` blocks; not
    those inside functions or classes."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If | ast.With):
            yield from top_level_imports(node.body)
            yield from top_level_imports(getattr(node, "orelse", []))
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from top_level_imports(block)
            for handler in node.handlers:
                yield from top_level_imports(handler.body)


def imported_modules(
    node: ast.Import | ast.ImportFrom, name: str, is_package: bool, known: set[str]
) -> set[str]:
    """The modules of ``known`` that an import statement of module ``name`` names: ``from
    package import sub`` names the submodule where there is one (every submodule runs its
    package's ``__init__`` first: that edge is not counted)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & known
    base = node.module or ""
    if node.level:
        package = name.split(".") if is_package else name.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    out = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.add(sub if sub in known else base)
    return out & known


def import_graph(code: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """Module -> the modules (of ``code``: name -> (source, is a package)) its top-level
    imports name."""
    known = set(code)
    graph: dict[str, set[str]] = {}
    for name, (source, is_package) in code.items():
        edges: set[str] = set()
        for node in top_level_imports(ast.parse(source).body):
            edges |= imported_modules(node, name, is_package, known)
        graph[name] = edges - {name}
    return graph


def streams_graph() -> dict[str, set[str]]:
    return import_graph(
        {
            module_name(path): (path.read_text(), path.name == "__init__.py")
            for path in sources("streams")
        }
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_import_graph_counts_type_checking_imports_and_not_function_ones() -> None:
    code = {
        "pkg": ("from pkg import a\n", True),
        "pkg.a": ("import pkg.b\nfrom pkg import c, CONSTANT\n", False),
        "pkg.b": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n",
            False,
        ),
        "pkg.c": ("def f():\n    from pkg import a\nclass C:\n    import pkg.b\n", False),
        "pkg.d": ("try:\n    from . import c\nexcept ImportError:\n    pass\n", False),
    }
    graph = import_graph(code)
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg", "pkg.b", "pkg.c"},
        "pkg.b": {"pkg.a"},
        "pkg.c": set(),
        "pkg.d": {"pkg.c"},
    }
    assert cycles(graph) == [["pkg", "pkg.a", "pkg.b"]]


def named_anywhere(tree: ast.AST) -> set[str]:
    """Every module an absolute import names, anywhere (functions and ``TYPE_CHECKING``
    blocks included); ``from a import b`` names ``a`` and ``a.b``."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return out


def test_the_api_and_metrics_never_import_the_app() -> None:
    """They type against the narrow views of streams.ports, which streams.app.Monitor
    satisfies: not even under TYPE_CHECKING, nor inside a function."""
    assert "streams.app" in named_anywhere(ast.parse("from streams import app, api"))
    for module in ("api", "metrics", "ports"):
        named = named_anywhere(ast.parse((REPO / "streams" / f"{module}.py").read_text()))
        app = {m for m in named if m == "streams.app" or m.startswith("streams.app.")}
        assert app == set(), f"streams.{module} imports {sorted(app)}"
    graph = streams_graph()
    assert {"streams.api", "streams.metrics"} <= graph["streams.app"]
    assert "streams.ports" in graph["streams.api"] and "streams.ports" in graph["streams.metrics"]


def test_no_import_cycle_among_the_streams_modules() -> None:
    graph = streams_graph()
    assert len(graph) > 50 and "streams.core.keys" in graph
    assert cycles(graph) == []


#: the frameworks only streams.runtime may import (faust and mode, the service library it is
#: built on)
RUNTIME_ONLY = ("faust", "mode")


def framework_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import of a runtime-only framework, anywhere in a module."""
    return sorted(
        (line, module) for line, module in imported(tree) if module.split(".")[0] in RUNTIME_ONLY
    )


def test_the_faust_import_check_sees_imports_anywhere() -> None:
    code = (
        "import faust\nfrom faust.types import TP\nimport mode.utils\n"
        "def f():\n    from faust.worker import Worker\n"
        "if TYPE_CHECKING:\n    import faust.streams\nimport faustish\n"
    )
    assert framework_imports(ast.parse(code)) == [
        (1, "faust"),
        (2, "faust"),
        (3, "mode"),
        (5, "faust"),
        (7, "faust"),
    ]


def test_only_the_runtime_package_imports_faust() -> None:
    """Faust (and mode) are imported under streams/runtime/ and nowhere else in streams/:
    the stages, the adapters and the wiring (streams.app) go through the runtime."""
    runtime = REPO / "streams" / "runtime"
    offenders, importers = [], set()
    for path in sources("streams"):
        found = framework_imports(ast.parse(path.read_text(), filename=str(path)))
        if not found:
            continue
        if runtime in path.parents:
            importers.add(path.name)
        else:
            offenders += [f"{path.relative_to(REPO)}:{line} {module}" for line, module in found]
    assert offenders == []
    # the check looks at the right files: the runtime's Faust modules are seen
    assert {"faust_private.py", "faust_runtime.py", "worker.py"} <= importers
