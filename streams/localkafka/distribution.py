"""Resolving the Kafka broker jars with Maven and caching them."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)


class ToolMissingError(RuntimeError):
    """A required external program (java, mvn) is not on PATH."""


def require_tool(name: str, purpose: str) -> str:
    """Return the path of ``name`` on PATH or raise a one-line, actionable error."""
    path = shutil.which(name)
    if path is None:
        raise ToolMissingError(
            f"'{name}' was not found on PATH; it is needed to {purpose}. "
            f"Install it (Java 17+ and Apache Maven) or set KAFKA_BOOTSTRAP_SERVERS "
            f"to use an existing Kafka cluster."
        )
    return path


def kafka_major(version: str) -> int:
    """Major version of a Kafka release string such as ``3.9.1``."""
    try:
        return int(version.split(".", 1)[0])
    except ValueError:
        raise ValueError(f"not a Kafka version: {version!r}") from None


def ensure_distribution(version: str, cache_dir: Path) -> Path:
    """Return a directory holding every jar the broker ``version`` needs, fetching once.

    The download goes to a temporary directory that is renamed into place only when Maven
    succeeded, so an interrupted fetch never leaves a half-filled cache.
    """
    major = kafka_major(version)
    if major not in (3, 4):
        raise ValueError(f"Kafka {version} is not supported (3.x or 4.x)")
    lib_dir = cache_dir / "kafka" / version / "lib"
    if (lib_dir / ".complete").exists():
        return lib_dir
    mvn = require_tool("mvn", f"download Apache Kafka {version} from Maven Central")
    lib_dir.parent.mkdir(parents=True, exist_ok=True)
    pom = resources.files("streams.localkafka").joinpath("pom.xml")
    with (
        resources.as_file(pom) as pom_path,
        tempfile.TemporaryDirectory(dir=lib_dir.parent, prefix=".fetch-") as tmp,
    ):
        target = Path(tmp) / "lib"
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom_path),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-Dkafka.version={version}",
            f"-Dkafka.major={major}",
            f"-DoutputDirectory={target}",
        ]
        log.info("fetching Apache Kafka %s with Maven into %s", version, lib_dir)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp)
        if proc.returncode != 0 or not any(target.glob("kafka_2.13-*.jar")):
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise RuntimeError(
                f"Maven could not resolve Apache Kafka {version} (exit {proc.returncode}):\n"
                + "\n".join(tail)
            )
        (target / ".complete").write_text(version + "\n")
        if lib_dir.exists():
            shutil.rmtree(lib_dir)
        os.replace(target, lib_dir)
    return lib_dir
