"""bench/ and tests/ import each other's code only as packages: no sys.path edits, bench never
imports the test suite, and testkit (shared by both) imports neither of them nor pytest."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
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
