"""``delivery-monitor replay FILE...``: feed saved webhook logs into the raw topic, in order.

Each FILE is JSON lines (one webhook POST body per line), one JSON body (pretty-printed or
not), or a directory of such files (every non-hidden file below it, in name order); gzip is
detected from the content; ``-`` reads stdin. Every body is produced byte for byte (the line
without its line break), in file and line order, by one idempotent ``acks=all`` producer:
aiokafka keeps one request in flight per broker and mutes a partition while its batch is in
flight (retries included), so the records of each partition are in the order of the log.

A line that is not a JSON object (not JSON, a JSON array or number, over 3 MB) is rejected: it
is not produced, and it is reported as ``path:line: reason`` in the summary on stderr. Blank
lines are skipped.

Windows use event time (the webhooks' timestamps), so replaying last month's logs into a fresh
monitor rebuilds last month's counts.

Exit status: 0 when every body was produced, 1 when some lines were rejected (the good ones are
still produced), 2 for usage, file or Kafka errors.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import gzip
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO, cast

import orjson

from streams.core.parse import MAX_PAYLOAD_BYTES
from streams.settings import Settings

_GZIP_MAGIC = b"\x1f\x8b"
_MAX_PENDING = 2_000  # sends awaiting their acknowledgement
_REPORT_LIMIT = 1_000  # rejected lines listed one by one in the summary
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
_JSON_TYPES[type(None)] = "null"


class ReplayInputError(Exception):
    """A file that cannot be read (missing, unreadable, corrupt gzip): exit code 2."""


@dataclass(frozen=True)
class ReplayOptions:
    paths: tuple[str, ...]
    rate: float | None = None  # bodies per second
    topic: str | None = None  # default: the raw topic of the settings
    progress: str = "auto"


@dataclass
class ReplayStats:
    records: int = 0
    bytes: int = 0
    files: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (path[:line], reason)
    read_bytes: int = 0  # of the input files as stored (compressed)


def _rate(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be > 0")
    return value


DESCRIPTION = (
    "Produce saved webhook bodies (JSON lines, JSON files, directories of them, gzip) to the "
    "raw topic in order. Exit 1 when some lines were rejected, 2 on usage, file or Kafka errors."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The replay's options, on its ``delivery-monitor replay`` subparser."""
    p.add_argument("paths", nargs="+", metavar="FILE", help="file, directory, or - for stdin")
    p.add_argument("--rate", type=_rate, help="at most this many bodies per second")
    p.add_argument("--topic", help="target topic (default: DELIVERY_MONITOR_TOPIC_RAW)")
    p.add_argument(
        "--progress",
        choices=["auto", "bar", "log", "none"],
        default="auto",
        help="a progress bar (a terminal), a line every 10 s, or nothing",
    )


def options_from(a: argparse.Namespace) -> ReplayOptions:
    """The options parsed by a parser that :func:`add_arguments` set up."""
    return ReplayOptions(tuple(a.paths), a.rate, a.topic, a.progress)


# --- reading ------------------------------------------------------------------------------


def input_files(paths: tuple[str, ...]) -> list[Path]:
    """The files to read, in order: directories expand to their non-hidden files by name."""
    out: list[Path] = []
    for name in paths:
        path = Path(name)
        if name == "-":
            out.append(path)
        elif path.is_dir():
            out.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)
                )
            )
        elif path.is_file():
            out.append(path)
        else:
            raise ReplayInputError(f"{name}: no such file or directory")
    return out


def _read_line(stream: BinaryIO) -> tuple[bytes, bool] | None:
    """The next line and whether it fits a body; an over-long line is consumed whole."""
    line = stream.readline(MAX_PAYLOAD_BYTES + 2)
    if not line:
        return None
    if len(line) > MAX_PAYLOAD_BYTES + 1 and not line.endswith(b"\n"):
        while (rest := stream.readline(MAX_PAYLOAD_BYTES)) and not rest.endswith(b"\n"):
            pass
        return line, False
    return line, len(line.rstrip(b"\r\n")) <= MAX_PAYLOAD_BYTES


def rejection(body: bytes) -> str | None:
    """Why ``body`` is not a webhook body to produce, or ``None`` when it is a JSON object."""
    if len(body) > MAX_PAYLOAD_BYTES:
        return "longer than 3 MB"
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(value, dict):
        return f"a JSON {_JSON_TYPES.get(type(value), 'value')}, not an object"
    return None


def _is_json(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def bodies(stream: BinaryIO) -> Iterator[tuple[int | None, bytes, bool]]:
    """(line number or None for a whole-file body, body, fits) for every non-blank line.

    JSON lines when the first non-blank line is JSON by itself; otherwise the file is one
    (pretty-printed) body if it parses as a whole, and JSON lines again if it does not.
    """
    head: list[tuple[bytes, bool]] = []
    while (got := _read_line(stream)) is not None:
        head.append(got)
        if got[0].strip():
            break
    if not head:
        return
    if not (head[-1][1] and _is_json(head[-1][0].strip())):
        size = sum(len(line) for line, _ in head)
        while size <= MAX_PAYLOAD_BYTES and (got := _read_line(stream)) is not None:
            head.append(got)
            size += len(got[0])
        document = b"".join(line for line, _ in head).strip()
        if size <= MAX_PAYLOAD_BYTES and got is None and rejection(document) is None:
            yield None, document, True
            return
    number = 0
    lines = iter(head)
    while True:
        got = next(lines, None) or _read_line(stream)
        if got is None:
            return
        number += 1
        line, fits = got
        if line.strip():
            yield number, line.rstrip(b"\r\n"), fits


class InputFile:
    """One input file opened for reading, gunzipped when it starts with the gzip magic."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = "-" if str(path) == "-" else str(path)
        self._raw: BinaryIO = (
            sys.stdin.buffer if self.name == "-" else cast(BinaryIO, path.open("rb"))
        )
        peek = getattr(self._raw, "peek", None)
        head = peek(2)[:2] if peek is not None else b""
        self.stream: BinaryIO = self._raw
        if head == _GZIP_MAGIC:
            self.stream = cast(BinaryIO, gzip.GzipFile(fileobj=self._raw, mode="rb"))

    def position(self) -> int:
        """Bytes of the stored file consumed so far (0 for stdin)."""
        if self.name == "-":
            return 0
        try:
            return self._raw.tell()
        except OSError:
            return 0

    def close(self) -> None:
        if self.stream is not self._raw:
            self.stream.close()
        if self.name != "-":
            self._raw.close()


# --- progress -----------------------------------------------------------------------------


class Progress:
    """A progress bar on a terminal (by bytes of the input files), a line every 10 s otherwise."""

    def __init__(self, out: TextIO, mode: str, total_bytes: int, files: int) -> None:
        if mode == "auto":
            mode = "bar" if out.isatty() else "log"
        self.out, self.mode, self.total, self.files = out, mode, total_bytes, files
        self.started = time.monotonic()
        self._last = float("-inf")

    def update(self, stats: ReplayStats, current: str, final: bool = False) -> None:
        if self.mode == "none":
            return
        now = time.monotonic()
        if not final and now - self._last < (0.2 if self.mode == "bar" else 10.0):
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        done = min(1.0, stats.read_bytes / self.total) if self.total else 0.0
        counts = (
            f"{stats.records:,} bodies, {stats.bytes / 1e6:,.1f} MB, "
            f"{stats.records / elapsed:,.0f}/s, {len(stats.rejected):,} rejected"
        )
        where = f"file {stats.files}/{self.files} {current}"
        if self.mode == "bar":
            width = 24
            bar = "#" * int(done * width) + "-" * (width - int(done * width))
            self.out.write(f"\r\x1b[Kreplay [{bar}] {done:4.0%} {counts} | {where}")
            if final:
                self.out.write("\n")
        else:
            self.out.write(f"replay {done:.0%}: {counts} | {where}\n")
        self.out.flush()


# --- producing ----------------------------------------------------------------------------


async def replay(
    bootstrap: str,
    topic: str,
    files: list[Path],
    options: ReplayOptions,
    progress: Progress,
    stats: ReplayStats,
) -> None:
    """Produce every good body of ``files`` to ``topic`` in order (see the module docstring)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="whatsapp-delivery-monitor-replay",
        enable_idempotence=True,  # retries never duplicate nor reorder a partition's records
        acks="all",
        linger_ms=10,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,  # the raw topic's max.message.bytes
    )
    await producer.start()
    pending: collections.deque[asyncio.Future[object]] = collections.deque()
    sizes = [stored_size(path) for path in files]
    started = time.monotonic()
    try:
        for path, size in zip(files, sizes, strict=True):
            source = open_input(path)
            stats.files += 1
            before = stats.read_bytes
            try:
                for number, body, fits in bodies(source.stream):
                    where = source.name if number is None else f"{source.name}:{number}"
                    reason = rejection(body) if fits else "longer than 3 MB"
                    if reason is not None:
                        stats.rejected.append((where, reason))
                        continue
                    if options.rate is not None:
                        wait = started + stats.records / options.rate - time.monotonic()
                        if wait > 0:
                            await asyncio.sleep(wait)
                    pending.append(await producer.send(topic, body))
                    stats.records += 1
                    stats.bytes += len(body)
                    if len(pending) >= _MAX_PENDING:
                        await pending.popleft()
                    stats.read_bytes = before + source.position()
                    progress.update(stats, source.name)
            except (OSError, EOFError, zlib.error) as exc:
                raise ReplayInputError(f"{source.name}: {exc}") from exc
            finally:
                source.close()
            stats.read_bytes = before + size
        await producer.flush()
        while pending:
            await pending.popleft()
    finally:
        await producer.stop()
        progress.update(stats, "", final=True)


def open_input(path: Path) -> InputFile:
    """Open one input file (``-``: stdin), gunzipped if it is gzip; ReplayInputError if not."""
    try:
        return InputFile(path)
    except OSError as exc:
        raise ReplayInputError(f"{path}: {exc.strerror or exc}") from exc


def stored_size(path: Path) -> int:
    """Size of ``path`` as stored (0 for stdin or a file that went away)."""
    if str(path) == "-":
        return 0
    try:
        return path.stat().st_size
    except OSError:
        return 0


def run(
    settings: Settings,
    options: ReplayOptions,
    bootstrap: Callable[[], str],
    out: TextIO = sys.stderr,
) -> int:
    """``delivery-monitor replay``: returns the exit status (0, 1 rejected lines, 2 errors)."""
    from aiokafka.errors import KafkaError

    from streams.asyncutil import run_sync
    from streams.topics import ensure_topics, source_topics

    try:
        files = input_files(options.paths)
    except ReplayInputError as exc:
        print(f"delivery-monitor replay: error: {exc}", file=out)
        return 2
    topic = options.topic or settings.topic_raw
    address = bootstrap()
    raw_spec = next(s for s in source_topics(settings) if s.name == settings.topic_raw)
    try:
        run_sync(
            ensure_topics(
                address,
                [dataclasses.replace(raw_spec, name=topic)],
                settings.topic_replication_factor,
            ),
            timeout_s=120,
        )
    except (KafkaError, TimeoutError) as exc:
        print(f"delivery-monitor replay: error: Kafka at {address}: {exc!r}", file=out)
        return 2
    stats = ReplayStats()
    total = sum(stored_size(path) for path in files)
    progress = Progress(out, options.progress, total, len(files))
    started = time.monotonic()
    status = 0
    try:
        asyncio.run(replay(address, topic, files, options, progress, stats))
    except ReplayInputError as exc:
        print(f"delivery-monitor replay: error: {exc}", file=out)
        status = 2
    except KafkaError as exc:
        print(f"delivery-monitor replay: error: Kafka at {address}: {exc!r}", file=out)
        status = 2
    print(summary(stats, topic, time.monotonic() - started), file=out)
    if status == 0 and stats.rejected:
        status = 1
    return status


def summary(stats: ReplayStats, topic: str, seconds: float) -> str:
    lines = [
        f"replayed {stats.records:,} bodies ({stats.bytes:,} bytes) from {stats.files} "
        f"file(s) to {topic} in {seconds:.1f} s"
    ]
    if stats.rejected:
        lines.append(f"rejected {len(stats.rejected):,} line(s), not produced:")
        lines.extend(f"  {where}: {reason}" for where, reason in stats.rejected[:_REPORT_LIMIT])
        if len(stats.rejected) > _REPORT_LIMIT:
            lines.append(f"  ... and {len(stats.rejected) - _REPORT_LIMIT:,} more")
    return "\n".join(lines)
