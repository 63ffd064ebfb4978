"""``delivery-monitor audience FILE``: the pre-flight of a recipient list before a campaign.

FILE is a CSV with a header (the recipient column is found by its name: ``recipient``,
``phone``, ``wa_id``...; ``--column`` names another) or one recipient per line; gzip is detected
from the content; ``-`` reads stdin. Every entry is checked here (a phone with its country code
in any common format, or a BSUID): a bad one is reported as ``path:line: reason`` on stderr and
skipped. The good ones are streamed to a worker's ``POST /v1/audience`` (any list size, in
bounded memory on both sides) and its verdicts written, as they come, to ``send_now.csv``,
``wait.csv`` (with ``not_before`` and the reason) and ``never.csv`` in ``--out``, with
``summary.json``; the summary is printed at the end.

Exit status: 0 when every entry was judged, 1 when some were not (bad lines, or a worker that did
not answer for some: those are listed as well), 2 for usage, file or connection errors.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import csv
import datetime as dt
import io
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TextIO

import aiohttp
import msgspec

from streams.core.audience import AudienceSummary, Group, Verdict
from streams.replay import InputFile, ReplayInputError, open_input
from streams.sender_api import MAX_LINE, valid_recipient
from streams.settings import Settings

#: Header names of a recipient column (case-insensitive).
COLUMN_NAMES = (
    "recipient",
    "recipient_id",
    "phone",
    "phone_number",
    "wa_id",
    "msisdn",
    "mobile",
    "whatsapp",
    "number",
    "to",
    "user_id",
    "bsuid",
)
_REPORT_LIMIT = 1_000  # bad lines listed one by one
_SEND_CHUNK = 1_000  # recipients per write of the request body

DESCRIPTION = (
    "Pre-flight of a recipient list (CSV or one per line, gzip, - for stdin): which recipients "
    "may get a marketing template now, which must wait (until when) and which never, per the "
    "monitor. Writes send_now.csv, wait.csv, never.csv and summary.json. Exit 1 when some "
    "lines were bad or not judged, 2 on usage, file or connection errors."
)


class AudienceError(Exception):
    """A list that cannot be read or a worker that cannot be reached: exit code 2."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="FILE", help="CSV or one recipient per line; - for stdin")
    p.add_argument("--column", help="the recipient column's header (default: found by name)")
    p.add_argument("--out", type=Path, default=Path("audience"), help="output directory")
    p.add_argument("--url", help="a worker's web URL (default: DELIVERY_MONITOR_WEB_HOST/_PORT)")
    p.add_argument("--at", help="judge as of this time: unix seconds or ISO 8601 (default: now)")
    p.add_argument(
        "--progress",
        choices=["auto", "bar", "none"],
        default="auto",
        help="a progress bar (auto: only on a terminal)",
    )


@dataclass(frozen=True)
class AudienceOptions:
    path: str
    out: Path
    url: str
    column: str | None = None
    at: int | None = None
    progress: str = "auto"
    region: str | None = None  # DELIVERY_MONITOR_DEFAULT_PHONE_REGION, as the API reads ids


def parse_at(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--at {text!r}: unix seconds or ISO 8601") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp())


def options_from(a: argparse.Namespace, settings: Settings) -> AudienceOptions:
    url = a.url or f"http://{settings.web_host}:{settings.web_port}"
    at = parse_at(a.at) if a.at else None
    return AudienceOptions(
        a.path, a.out, url.rstrip("/"), a.column, at, a.progress, settings.default_phone_region
    )


# --- reading the list ---------------------------------------------------------------------


@dataclass
class ListStats:
    lines: int = 0  # entries read (header excluded)
    sent: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    bad_count: int = 0

    def reject(self, line: int, reason: str) -> None:
        self.bad_count += 1
        if len(self.bad) < _REPORT_LIMIT:
            self.bad.append((line, reason))


def _column(header: list[str], wanted: str | None) -> int | None:
    names = [h.strip().lower() for h in header]
    if wanted is not None:
        if wanted.lower() in names:
            return names.index(wanted.lower())
        raise AudienceError(f"no column {wanted!r} in the header ({', '.join(header)})")
    for name in COLUMN_NAMES:
        if name in names:
            return names.index(name)
    return None


def entries(text: TextIO, column: str | None, stats: ListStats) -> Iterator[tuple[int, str]]:
    """(line number, recipient as written) of every entry; a header is recognised by a
    recipient column name, a list without one is one recipient per line."""
    first = text.readline()
    blank = 0
    while first and not first.strip():
        blank += 1
        first = text.readline()
    if not first:
        return
    dialect: type[csv.Dialect] | csv.Dialect = csv.excel
    with contextlib.suppress(csv.Error):  # not sniffed: one column
        dialect = csv.Sniffer().sniff(first, delimiters=",;\t|")
    header = next(csv.reader([first], dialect))
    index = _column(header, column)
    if index is None:
        if len(header) > 1:
            raise AudienceError(
                f"cannot tell the recipient column from the header ({', '.join(header)}): "
                "name it with --column"
            )
        index = 0  # a plain list: the first line is an entry
        rows: Iterator[list[str]] = csv.reader(io.StringIO(first), dialect)
        offset = blank
    else:
        rows = iter(())
        offset = blank + 1
    number = 0
    for row in _chain(rows, csv.reader(text, dialect)):
        number += 1
        line = number + offset
        if not row or not any(cell.strip() for cell in row):
            continue  # blank line
        stats.lines += 1
        if index >= len(row):
            stats.reject(line, f"no column {index + 1} (the row has {len(row)})")
            continue
        yield line, row[index].strip()


def _chain(*iterables: Iterator[list[str]]) -> Iterator[list[str]]:
    for it in iterables:
        yield from it


# --- output -------------------------------------------------------------------------------


def _utc(ts: int | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Outputs:
    """The three CSV files of the verdicts, written as they come."""

    HEADERS: ClassVar[dict[Group, list[str]]] = {
        Group.SEND_NOW: ["recipient", "country", "engagement_tier"],
        Group.WAIT: [
            "recipient",
            "not_before",
            "not_before_utc",
            "reason",
            "country",
            "engagement_tier",
        ],
        Group.NEVER: ["recipient", "reason", "country", "engagement_tier"],
    }

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.dir = out
        self._files = {g: (out / f"{g.value}.csv").open("w", newline="") for g in Group}
        self._writers = {g: csv.writer(f) for g, f in self._files.items()}
        for group, writer in self._writers.items():
            writer.writerow(self.HEADERS[group])

    def write(self, v: Verdict) -> None:
        if v.group is None:
            return
        group = Group(v.group)
        row: list[object]
        if group is Group.SEND_NOW:
            row = [v.recipient, v.country, v.tier]
        elif group is Group.WAIT:
            row = [v.recipient, v.not_before, _utc(v.not_before), v.reason, v.country, v.tier]
        else:
            row = [v.recipient, v.reason, v.country, v.tier]
        self._writers[group].writerow(row)

    def close(self) -> None:
        for f in self._files.values():
            f.close()


# --- progress -----------------------------------------------------------------------------


class Bar:
    """A progress bar on stderr when it is a terminal (by bytes of the input file)."""

    def __init__(self, mode: str, source: InputFile, out: TextIO = sys.stderr) -> None:
        self.on = mode == "bar" or (mode == "auto" and out.isatty())
        self.source, self.out = source, out
        size = 0
        if source.name != "-":
            try:
                size = Path(source.name).stat().st_size
            except OSError:
                size = 0
        self.size = size
        self.started = time.monotonic()
        self._last = float("-inf")

    def update(self, stats: ListStats, judged: int, final: bool = False) -> None:
        if not self.on:
            return
        now = time.monotonic()
        if not final and now - self._last < 0.2:
            return
        self._last = now
        done = min(1.0, self.source.position() / self.size) if self.size else 0.0
        width = 24
        bar = "#" * int(done * width) + "-" * (width - int(done * width))
        rate = judged / max(now - self.started, 1e-9)
        self.out.write(
            f"\r\x1b[Kaudience [{bar}] {done:4.0%} {stats.sent:,} sent, {judged:,} judged "
            f"({rate:,.0f}/s), {stats.bad_count:,} bad"
        )
        if final:
            self.out.write("\n")
        self.out.flush()


# --- the pre-flight -----------------------------------------------------------------------


@dataclass
class Result:
    summary: AudienceSummary
    stats: ListStats
    not_judged: list[tuple[int, str]]  # (line, reason) of entries the monitor did not judge


async def preflight(options: AudienceOptions, source: InputFile, bar: Bar) -> Result:
    """Stream the list's good entries to the worker and write its verdicts as they come."""
    stats = ListStats()
    text = io.TextIOWrapper(source.stream, encoding="utf-8-sig", errors="replace", newline="")
    lines = array.array("Q")  # the file line of each entry sent, by its index in the request

    async def body() -> AsyncIterator[bytes]:
        chunk: list[str] = []
        for line, given in entries(text, options.column, stats):
            reason = _check(given, options.region)
            if reason is not None:
                stats.reject(line, reason)
                continue
            lines.append(line)
            chunk.append(given)
            stats.sent += 1
            if len(chunk) >= _SEND_CHUNK:
                yield ("\n".join(chunk) + "\n").encode()
                chunk = []
                await asyncio.sleep(0)  # let the verdicts be read meanwhile
        if chunk:
            yield ("\n".join(chunk) + "\n").encode()

    query = f"?at={options.at}" if options.at is not None else ""
    outputs = Outputs(options.out)
    not_judged: list[tuple[int, str]] = []
    decoder = msgspec.json.Decoder(Verdict)
    summary = AudienceSummary(at=options.at or 0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(
                f"{options.url}/v1/audience{query}",
                data=body(),
                headers={"Content-Type": "text/plain; charset=utf-8"},
            ) as resp,
        ):
            if resp.status != 200:
                raise AudienceError(f"{options.url}: {resp.status} {await resp.text()}")
            summary.at = int(resp.headers.get("X-Audience-At", summary.at))
            async for raw in resp.content:
                if not raw.strip():
                    continue
                v = decoder.decode(raw)
                summary.add(v)
                if v.error is not None:
                    not_judged.append((lines[v.n] if v.n < len(lines) else -1, v.error))
                else:
                    outputs.write(v)
                bar.update(stats, summary.total)
    except aiohttp.ClientError as exc:
        raise AudienceError(f"{options.url}: {exc}") from exc
    finally:
        outputs.close()
    bar.update(stats, summary.total, final=True)
    if summary.total != stats.sent:
        raise AudienceError(
            f"{options.url} answered {summary.total:,} of the {stats.sent:,} entries sent"
        )
    return Result(summary, stats, not_judged)


def _check(given: str, region: str | None = None) -> str | None:
    if "\ufffd" in given:
        return "not UTF-8"
    if "\n" in given or "\r" in given:
        return "a line break inside the entry"
    if len(given.encode()) > MAX_LINE:
        return f"longer than {MAX_LINE} bytes"
    try:
        valid_recipient(given, region)
    except ValueError as exc:
        return str(exc)
    return None


def render(result: Result) -> str:
    """The summary as printed (the same figures as summary.json)."""
    s = result.summary.to_json()
    groups: dict[str, int] = s["groups"]  # type: ignore[assignment]
    judged = sum(groups.values())
    lines = [f"audience as of {_utc(result.summary.at)} ({result.summary.at}): {judged:,} judged"]
    for name in ("send_now", "wait", "never"):
        n = groups[name]
        lines.append(f"  {name:<9} {n:>10,}  {n / judged:6.1%}" if judged else f"  {name}: 0")
    reasons: dict[str, int] = s["reasons"]  # type: ignore[assignment]
    for key, n in reasons.items():
        lines.append(f"    {key:<45} {n:>10,}")
    hits = result.summary.hits_131049
    lines.append(
        f"  would fail with 131049 if sent now: {hits:,} ({s['would_hit_131049_share']:.1%})"
    )
    ready: dict[str, int | None] = s["may_be_messaged_by"]  # type: ignore[assignment]
    reachable = groups["send_now"] + groups["wait"]
    lines.append(f"  may be messaged (of the {reachable:,} not in never):")
    for share, when in ready.items():
        lines.append(f"    {share:>4} by {_utc(when) or '-'}")
    for title, key in (("engagement tiers", "engagement_tiers"), ("countries", "countries")):
        counts: dict[str, int] = s[key]  # type: ignore[assignment]
        shown = ", ".join(f"{k} {v:,}" for k, v in list(counts.items())[:12])
        more = f", +{len(counts) - 12} more" if len(counts) > 12 else ""
        lines.append(f"  {title}: {shown}{more}")
    bad = result.stats.bad_count + len(result.not_judged)
    if bad:
        lines.append(f"  not judged: {bad:,} (listed on stderr)")
    return "\n".join(lines)


def run(options: AudienceOptions) -> int:
    try:
        source = open_input(Path(options.path))
    except ReplayInputError as exc:
        raise AudienceError(str(exc)) from exc
    name = "<stdin>" if source.name == "-" else source.name
    try:
        result = asyncio.run(preflight(options, source, Bar(options.progress, source)))
    except (OSError, EOFError, UnicodeError) as exc:
        raise AudienceError(f"{name}: {exc}") from exc
    finally:
        source.close()
    for line, reason in sorted([*result.stats.bad, *result.not_judged]):
        print(f"{name}:{line}: {reason}", file=sys.stderr)
    if result.stats.bad_count > len(result.stats.bad):
        print(f"... and {result.stats.bad_count - len(result.stats.bad):,} more", file=sys.stderr)
    summary = result.summary.to_json()
    summary["bad_lines"] = result.stats.bad_count
    summary["not_judged"] = len(result.not_judged)
    (options.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(render(result))
    print(f"wrote {options.out}/send_now.csv, wait.csv, never.csv, summary.json")
    return 1 if result.stats.bad_count or result.not_judged else 0
