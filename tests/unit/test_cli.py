"""The command line fails with one clear line, never a traceback, when it cannot do its job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(args: list[str], path: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": path,
        "HOME": str(tmp_path),
        "DELIVERY_MONITOR_DATA_DIR": str(tmp_path / "state"),
        "DELIVERY_MONITOR_CACHE_DIR": str(tmp_path / "cache"),
    }
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_kafka_start_without_java_is_one_clear_line(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run_cli(["kafka", "start"], str(empty), tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "'java' was not found on PATH" in lines[0]
    assert "KAFKA_BOOTSTRAP_SERVERS" in lines[0]  # tells the user the alternative


def test_kafka_start_without_maven_and_no_cache_says_so(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = bin_dir / "java"
    java.write_text("#!/bin/sh\nexit 0\n")
    java.chmod(0o755)
    result = run_cli(["kafka", "start"], str(bin_dir), tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "'mvn' was not found on PATH" in result.stderr
    assert "download Apache Kafka 3.9.1" in result.stderr


def test_kafka_status_when_nothing_runs(tmp_path: Path) -> None:
    result = run_cli(["kafka", "status"], os.environ["PATH"], tmp_path)
    assert result.returncode == 1
    assert "not running" in result.stderr


def test_worker_without_any_broker_explains_both_ways(tmp_path: Path) -> None:
    result = run_cli(["worker"], os.environ["PATH"], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "delivery-monitor kafka start" in result.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.stderr


@pytest.mark.parametrize(
    "bad", ["DELIVERY_MONITOR_WEB_PORT=abc", "DELIVERY_MONITOR_TOPIC_PARTITIONS=0"]
)
def test_bad_setting_is_reported_with_its_name(tmp_path: Path, bad: str) -> None:
    name, value = bad.split("=")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        name: value,
    }
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "kafka", "status"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_kafka_is_one_clear_error_not_a_traceback(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "DELIVERY_MONITOR_DATA_DIR": str(tmp_path / "state"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Kafka at 127.0.0.1:1 is not reachable" in result.stderr


def test_inspect_accepts_its_options_before_the_files(tmp_path: Path) -> None:
    sample = REPO / "tests" / "fixtures" / "whatsapp" / "meta_doc_status_failed_131049.json"
    result = run_cli(["inspect", "--summary-only", str(sample)], os.environ["PATH"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # summary only: no event lines
    assert "131049 1" in result.stderr


def test_the_worker_runs_the_cyclic_collector_rarely_and_skips_startup_objects() -> None:
    import gc

    from streams.cli import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] >= 100 * before[0]
        assert gc.get_freeze_count() > 1000  # modules, classes, the app: never scanned again
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
