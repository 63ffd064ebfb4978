"""``delivery-monitor inspect FILE...``: show what the monitor sees in saved webhook bodies.

Each FILE is one webhook POST body (JSON), or JSON lines (one body per line), optionally gzipped
(detected from the content, not the name). ``-`` or no FILE reads stdin. Events go to stdout as
JSON lines (the ``kind`` key tells the event type); a short summary goes to stderr: counts by
status, error code, error class, template (from ``biz_opaque_callback_data``; data that names
no template is shown as unattributed with its reason), country, other events and the error
codes inbound messages carry (``inbound err``, e.g. 131051).

Exit status: 1 if any file or line could not be parsed (one ``path[:line]: reason`` line each on
stderr), else 0. Defects of partly bad bodies are reported on stderr but are not failures.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import os
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO, cast

import msgspec

from streams.core import (
    AccountErrorEvent,
    AttributionConfig,
    InboundMessageEvent,
    ParsedWebhook,
    ParseError,
    Status,
    StatusEvent,
    decode_callback_data,
    parse_webhook,
)
from streams.core.attribution import PatternError, compile_pattern
from streams.core.parse import MAX_PAYLOAD_BYTES

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_GZIP_MAGIC = b"\x1f\x8b"


class _Prepended(io.RawIOBase):
    """A stream with bytes already read put back in front (stdin cannot seek)."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._head[: len(view)] if self._head else self._rest.read(len(view))
        self._head = self._head[len(data) :] if self._head else b""
        view[: len(data)] = data
        return len(data)


_LINES_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """``raw`` as a buffered stream, gunzipped if it starts with the gzip magic bytes."""
    head = raw.read(2)
    stream: BinaryIO = io.BufferedReader(_Prepended(head, raw))
    if head == _GZIP_MAGIC:
        stream = cast(BinaryIO, gzip.GzipFile(fileobj=stream, mode="rb"))
    return stream


def _read_line(stream: BinaryIO) -> bytes | None:
    """The next line, or None at the end; an over-long line is consumed and returned truncated."""
    line = stream.readline(MAX_PAYLOAD_BYTES + 2)
    if not line:
        return None
    if len(line) > MAX_PAYLOAD_BYTES and not line.endswith(b"\n"):
        while (rest := stream.readline(MAX_PAYLOAD_BYTES)) and not rest.endswith(b"\n"):
            pass
    return line


def _is_json(line: bytes) -> bool:
    try:
        msgspec.json.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return False
    return True


def _bodies(stream: BinaryIO, lines: bool) -> Iterator[tuple[int | None, bytes]]:
    """(line number or None, body) for each body: JSON lines if ``lines`` or line 1 is JSON."""
    skipped: list[bytes] = []
    while (line := _read_line(stream)) is not None and not line.strip():
        skipped.append(line)
    if line is None:
        yield None, b"".join(skipped)
        return
    if not lines and not _is_json(line):  # one (pretty-printed) body
        head = b"".join([*skipped, line])
        yield None, head + stream.read(max(0, MAX_PAYLOAD_BYTES + 1 - len(head)))
        return
    number = len(skipped) + 1
    while line is not None:
        if line.strip():
            yield number, line
        line = _read_line(stream)
        number += 1


class Summary:
    """Counters behind the stderr summary."""

    def __init__(self, attribution: AttributionConfig) -> None:
        self.attribution = attribution
        self.bodies = 0
        self.unparseable = 0
        self.defects = 0
        self.status: Counter[str] = Counter()
        self.error_code: Counter[int] = Counter()
        self.error_class: Counter[str] = Counter()
        self.template: Counter[str] = Counter()
        self.country: Counter[str] = Counter()
        self.other: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.inbound_errors: Counter[int] = Counter()

    def add(self, parsed: ParsedWebhook) -> None:
        self.bodies += 1
        self.defects += len(parsed.defects)
        self.ignored.update(parsed.ignored_fields)
        for event in parsed.events:
            if isinstance(event, StatusEvent):
                unknown = event.status is Status.UNKNOWN
                self.status[f"{event.raw_status} (unknown)" if unknown else event.status.value] += 1
                if event.error_code is not None:
                    self.error_code[event.error_code] += 1
                if event.error_class is not None:
                    self.error_class[event.error_class.value] += 1
                found = decode_callback_data(event.biz_opaque_callback_data, self.attribution)
                if found.template is None and found.unattributed is not None:
                    self.template[f"(unattributed: {found.unattributed})"] += 1
                else:
                    self.template[found.template or "(none)"] += 1
                self.country[event.country] += 1
            else:
                self.other[str(event.__struct_config__.tag)] += 1
                if isinstance(event, AccountErrorEvent):
                    self.error_code[event.code] += 1
                    self.error_class[event.error_class.value] += 1
                elif isinstance(event, InboundMessageEvent):
                    self.inbound_errors.update(error.code for error in event.errors)

    def render(self) -> str:
        def line(title: str, counts: Counter[str] | Counter[int]) -> str:
            shown = ", ".join(f"{key} {n}" for key, n in counts.most_common(12))
            more = f", ... ({len(counts) - 12} more)" if len(counts) > 12 else ""
            return f"  {title:12s} {shown or '-'}{more}"

        head = (
            f"inspect: bodies parsed {self.bodies}, unparseable {self.unparseable}; "
            f"status events {sum(self.status.values())}, other events {sum(self.other.values())}, "
            f"defects {self.defects}"
        )
        rows = [
            line("status", self.status),
            line("error code", self.error_code),
            line("error class", self.error_class),
            line("template", self.template),
            line("country", self.country),
            line("other", self.other),
            line("inbound err", self.inbound_errors),
            line("ignored", self.ignored),
        ]
        return "\n".join([head, *rows])


class _Reporter:
    """Problem lines of one FILE: ``path: ...``, or ``path:LINE: ...`` once it holds 2+ bodies."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bodies = 0
        self.held: list[tuple[int | None, str]] = []

    def body_seen(self) -> None:
        self.bodies += 1
        if self.bodies == 2:  # now line numbers matter: release what was held back
            for number, text in self.held:
                self._print(number, text)
            self.held.clear()

    def report(self, number: int | None, text: str) -> None:
        if self.bodies >= 2:
            self._print(number, text)
        else:
            self.held.append((number, text))

    def finish(self) -> None:
        for _, text in self.held:
            self._print(None, text)
        self.held.clear()

    def _print(self, number: int | None, text: str) -> None:
        where = self.label if number is None else f"{self.label}:{number}"
        print(f"{where}: {text}", file=sys.stderr)


def _inspect_file(name: str, summary: Summary, out: BinaryIO | None) -> int:
    """Parse one FILE; returns the number of unparseable bodies (or 1 if it cannot be read)."""
    reporter = _Reporter("<stdin>" if name == "-" else name)
    failures = 0
    lines = name.lower().endswith(_LINES_SUFFIXES)
    try:
        with contextlib.ExitStack() as stack:
            raw = sys.stdin.buffer if name == "-" else stack.enter_context(open(name, "rb"))
            for number, body in _bodies(_decompressed(raw), lines):
                reporter.body_seen()
                try:
                    parsed = parse_webhook(body)
                except ParseError as exc:
                    failures += 1
                    reporter.report(number, str(exc))
                    continue
                summary.add(parsed)
                for defect in parsed.defects:
                    reporter.report(number, f"defect {defect}")
                if out is not None:
                    out.write(b"".join(msgspec.json.encode(e) + b"\n" for e in parsed.events))
    except (OSError, EOFError, zlib.error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        reporter.report(None, f"cannot read: {reason}")
        reporter.finish()
        summary.unparseable += failures + 1
        return failures + 1
    reporter.finish()
    summary.unparseable += failures
    return failures


def main(argv: list[str]) -> int:
    """Entry point of ``delivery-monitor inspect``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="delivery-monitor inspect",
        description="Parse saved WhatsApp webhook bodies and show the events the monitor sees.",
    )
    parser.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="a webhook body (JSON), JSON lines, or either gzipped; '-' or none reads stdin",
    )
    parser.add_argument(
        "--summary-only", action="store_true", help="print only the summary, not the events"
    )
    parser.add_argument(
        "--no-raw-template",
        action="store_true",
        help="do not read a bare biz_opaque_callback_data string as a template name",
    )
    parser.add_argument(
        "--template-pattern",
        metavar="REGEX",
        help="the sender's own callback-data format: a regular expression with a named group "
        "'template' (as DELIVERY_MONITOR_CALLBACK_TEMPLATE_PATTERN)",
    )
    args = parser.parse_args(argv)
    if args.template_pattern:
        try:
            compile_pattern(args.template_pattern)
        except PatternError as exc:
            parser.error(f"--template-pattern: {exc}")
    summary = Summary(
        AttributionConfig(
            raw_is_template=not args.no_raw_template, raw_pattern=args.template_pattern or None
        )
    )
    out: BinaryIO | None = None if args.summary_only else sys.stdout.buffer
    failed = 0
    try:
        for name in args.files or ["-"]:
            failed += _inspect_file(name, summary, out)
        if out is not None:
            out.flush()
    except BrokenPipeError:  # e.g. `| head`: stop quietly, as other CLI tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1 if failed else 0
    print(summary.render(), file=sys.stderr)
    return 1 if failed else 0
