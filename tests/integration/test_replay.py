"""``delivery-monitor replay`` end to end: the real CLI, a real broker, the topic read back."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.asyncutil import run_sync
from streams.simulate import CampaignSpec, generate
from streams.topics import TopicSpec, ensure_topics
from testkit.kafka import consume_all
from testkit.worker import REPO, unique_env

pytestmark = [pytest.mark.kafka]

# Lines that are not a JSON object: each is rejected, reported with its line number, and not
# produced (inserted at these 1-based line numbers of the log).
BAD_LINES: dict[int, bytes] = {
    3: b"not json at all",  # plain text
    57: b'{"object": "whatsapp_business_account", "entry": [',  # truncated body
    120: b"[1, 2, 3]",  # JSON, but an array
    199: b'"just a string"',  # JSON, but a string
    240: b"\xff\xfe garbage \x00 bytes",  # binary
}
BLANK_LINE = 90  # blank lines are skipped silently


@dataclass
class Log:
    lines: list[bytes]  # every line of the log, in order (bad and blank ones included)
    good: list[bytes]  # the bodies that must reach the topic, in order


def make_log(seed: int = 5) -> Log:
    payloads = generate(
        CampaignSpec(messages=150, duration=600, garbage_ratio=0.0), seed=seed
    ).payloads
    good = [p for p in payloads if b"\n" not in p][:300]
    lines: list[bytes] = []
    bodies = iter(good)
    while True:
        number = len(lines) + 1
        if number in BAD_LINES:
            lines.append(BAD_LINES[number])
        elif number == BLANK_LINE:
            lines.append(b"")
        else:
            body = next(bodies, None)
            if body is None:
                break
            lines.append(body)
    return Log(lines, good)


def replay_cli(
    env: dict[str, str], *args: str, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "replay", "--progress", "log", *args],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def one_partition_topic(kafka_bootstrap: str, tmp_path: Path) -> tuple[dict[str, str], str]:
    """A unique environment whose raw topic has ONE partition, so order is total."""
    env = unique_env(kafka_bootstrap, tmp_path / "state")
    topic = env["DELIVERY_MONITOR_TOPIC_RAW"]
    run_sync(ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1)], 1), timeout_s=60)
    return env, topic


def values(kafka_bootstrap: str, topic: str) -> list[bytes]:
    return [value for _, value, _ in consume_all(kafka_bootstrap, topic)]


def assert_rejections_reported(stderr: str, where: str) -> None:
    for number in BAD_LINES:
        assert f"{where}:{number}: " in stderr, stderr
    assert f"rejected {len(BAD_LINES)} line(s)" in stderr, stderr
    assert f"{where}:{BLANK_LINE}:" not in stderr  # blank lines are not rejections


@pytest.mark.parametrize("compressed", [False, True], ids=["jsonl", "jsonl.gz"])
def test_replay_produces_good_lines_in_order_and_reports_bad_lines(
    kafka_bootstrap: str, tmp_path: Path, compressed: bool
) -> None:
    """Every good line reaches the topic byte for byte and in order; each bad line is reported
    with its line number and not produced; the exit code is 1."""
    log = make_log()
    env, topic = one_partition_topic(kafka_bootstrap, tmp_path)
    text = b"\n".join(log.lines) + b"\n"
    path = tmp_path / ("webhooks.jsonl.gz" if compressed else "webhooks.jsonl")
    path.write_bytes(gzip.compress(text) if compressed else text)

    result = replay_cli(env, str(path))

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert_rejections_reported(result.stderr, str(path))
    assert f"replayed {len(log.good)} bodies" in result.stderr
    assert values(kafka_bootstrap, topic) == log.good


def test_replay_of_a_directory_reads_its_files_in_name_order(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A directory: its files in name order (plain, gzip, and a pretty-printed single-body
    JSON file), hidden files skipped; bad lines numbered within their own file."""
    log = make_log(seed=6)
    env, topic = one_partition_topic(kafka_bootstrap, tmp_path)
    logs = tmp_path / "logs"
    (logs / "2026-05").mkdir(parents=True)
    first, second = log.lines[:150], log.lines[150:]
    (logs / "2026-05" / "01.jsonl").write_bytes(b"\r\n".join(first) + b"\r\n")  # CRLF
    (logs / "2026-05" / "02.jsonl.gz").write_bytes(gzip.compress(b"\n".join(second)))
    single = json.loads(log.good[0])
    pretty = json.dumps(single, indent=2).encode()
    (logs / "2026-05" / "03-single.json").write_bytes(pretty + b"\n")
    (logs / ".partial.jsonl").write_bytes(b"hidden: never read\n")

    result = replay_cli(env, str(logs))

    assert result.returncode == 1, result.stderr
    in_first = {n: line for n, line in BAD_LINES.items() if n <= 150}
    in_second = {n - 150: line for n, line in BAD_LINES.items() if n > 150}
    for number in in_first:
        assert f"01.jsonl:{number}: " in result.stderr
    for number in in_second:
        assert f"02.jsonl.gz:{number}: " in result.stderr
    assert "hidden" not in result.stderr and ".partial" not in result.stderr
    assert values(kafka_bootstrap, topic) == [*log.good, pretty]


def test_replay_of_a_clean_log_exits_0_and_honours_the_rate(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """All lines good: exit 0; ``--rate 100`` spreads 60 bodies over at least ~0.6 s."""
    log = make_log(seed=8)
    env, topic = one_partition_topic(kafka_bootstrap, tmp_path)
    good = log.good[:60]
    path = tmp_path / "clean.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(good) + b"\n"))

    started = time.monotonic()
    result = replay_cli(env, "--rate", "100", str(path))
    elapsed = time.monotonic() - started

    assert result.returncode == 0, result.stderr
    assert "rejected" not in result.stderr.replace("0 rejected", "")
    assert elapsed >= 0.55
    assert values(kafka_bootstrap, topic) == good


def test_replay_of_a_missing_file_is_a_usage_error(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A file that does not exist: exit 2 with one clear line, nothing produced."""
    env, topic = one_partition_topic(kafka_bootstrap, tmp_path)
    good = tmp_path / "good.jsonl"
    good.write_bytes(make_log().good[0] + b"\n")

    result = replay_cli(env, str(good), str(tmp_path / "missing.jsonl"))

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "missing.jsonl: no such file or directory" in result.stderr
    assert values(kafka_bootstrap, topic) == []


def test_replay_of_a_corrupt_gzip_is_an_io_error(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A gzip file cut short: exit 2, the error names the file."""
    env, _ = one_partition_topic(kafka_bootstrap, tmp_path)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(make_log().good))[:300])

    result = replay_cli(env, str(path))

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{path}:" in result.stderr
