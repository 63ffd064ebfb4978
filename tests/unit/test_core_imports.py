"""The pure core stays pure: streams.core (and the inspection adapter) import no framework."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import streams.core

FORBIDDEN = ("faust", "aiokafka", "prometheus_client", "slack_sdk", "aiohttp", "mode")
CORE_DIR = Path(streams.core.__file__).resolve().parent

PROBE = """
import importlib, json, pkgutil, sys
import streams.core
names = [m.name for m in pkgutil.walk_packages(streams.core.__path__, "streams.core.")]
for name in names:
    importlib.import_module(name)
importlib.import_module("streams.inspection")
print(json.dumps({"walked": names, "loaded": sorted(sys.modules)}))
"""


def test_importing_every_core_module_loads_no_framework() -> None:
    """A fresh interpreter imports each streams.core module; sys.modules has no framework."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    report = json.loads(result.stdout)
    assert "streams.core.parse" in report["walked"]
    loaded = {name.split(".")[0] for name in report["loaded"]}
    assert loaded.isdisjoint(FORBIDDEN), loaded & set(FORBIDDEN)


def test_core_source_has_no_framework_import_statements() -> None:
    """Also catches imports hidden in functions, which the runtime probe would not execute."""
    offenders = []
    for path in sorted(CORE_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            else:
                continue
            offenders += [
                f"{path.name}:{node.lineno} {m}" for m in modules if m.split(".")[0] in FORBIDDEN
            ]
    assert offenders == []
    assert len(list(CORE_DIR.glob("*.py"))) >= 6
