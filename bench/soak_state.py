"""State bounds under load: millions of recipients over days of event time, in process.

    .venv/bin/python -m bench.soak_state --block-cache-mb 128  # 5,000,000 recipients, 16 days
    .venv/bin/python -m bench.soak_state --recipients 1000000  # Faust's default block cache
    .venv/bin/python -m bench.soak_state --recipients 200000 --store memory --batch 1000

Drives the worker's stages (IngestStage -> MessageStage -> RecipientStage, advice included)
without Kafka: generated webhook JSON in, state in one RocksDB per table partition opened with
Faust's own options (rocksdict, raw bytes, one WriteBatch per flush; ``--block-cache-mb`` sets
``block_cache_size`` as a table's ``options=`` would), and every stage flushes every
``--batch`` statuses, as the worker's batches do. Each recipient gets one marketing template
(sent, delivered, read, or failed with 131049 / 131026 / 131050); 10% get a second one 12-48 h
later, 3% reply, 1% of bodies are retried by "Meta" within minutes and 0.2% up to six days
later. Event time comes from the generated data only. Keep a flush well under a few hours of
event time (a small ``--recipients`` needs a small ``--batch``): the bucket sweep visits each
minute, at most ``sweep_budget`` visits per flush.

Every simulated hour it records the event time, process RSS, RocksDB's memory and ``du`` of
the stores; every day also the live keys per family (messages, buckets, expiry indexes,
recipients), ``du`` after a memtable flush, and whether a tracked sample of recipients and
messages is removed exactly as documented (never before the retention; after it within the
expiry index's granularity). At the end it decodes every key and counts state older than the
retention plus that granularity (must be 0), and checks that keys, memory and disk stop growing
once the longest retention is reached. Results go to ``bench/results/soak_state.json`` and a
Markdown table to stdout; exit code 1 when a check fails.

Why 16 days by default: recipients are kept 8 days after their last event (messages 7), so
nothing can expire in an 8-day run; 16 days show a week of steady state after the first
expiries. Recipients with engagement (a marketing template delivered or read, or a message from
the user) are kept 30 days after it: their plateau needs ``--days 40``, or a shorter
``--engaged-days`` (the unit test runs 16 days with 4 idle and 6 engaged days).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from streams.core.expiry import SweepCursor
from streams.core.keys import (
    BUCKET_INDEX,
    BUCKET_PREFIX,
    MESSAGE_INDEX,
    MESSAGE_PREFIX,
    PARTITION_RECORD,
    PLAN_PREFIX,
    RECIPIENT_INDEX,
    RETRY_TIMERS,
    TEMPLATE_PREFIX,
    BucketId,
    message_key,
    messages_meta_key,
    parse_index_key,
    recipient_key,
    recipients_meta_key,
)
from streams.core.ledger import MessageState
from streams.core.recipient_state import RecipientState
from streams.core.retries import RetryPlan
from streams.simulate import Message, envelope, status_item
from streams.stages import partition_for
from streams.stages.ingest import IngestStage
from streams.stages.messages import MessageStage, PartitionMeta, Retention
from streams.stages.recipients import (
    RecipientMeta,
    RecipientRetention,
    RecipientStage,
    timer_clock,
)
from streams.state import DictKeyValue, decode

DAY = 86_400
DEFAULT_RECIPIENT_RETENTION = RecipientRetention()
HOUR = 3_600
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
PARTITIONS = 4
RESULTS = Path(__file__).resolve().parent / "results" / "soak_state.json"

#: (country, number prefix, free digits): the n-th recipient of a country fills the digits.
NUMBERING = (
    ("BR", "55119", 8),
    ("IN", "9198", 8),
    ("ID", "62812", 8),
    ("MX", "52155", 8),
    ("DE", "49151", 8),
    ("GB", "4477", 8),
    ("US", "12125", 6),
    ("CA", "14165", 6),
)
SENDERS = (
    ("106540352240001", "15550780001"),
    ("106540352240002", "15550780002"),
    ("106540352240003", "15550780003"),
)
TEMPLATES = tuple(f"soak_offer_{i:02d}" for i in range(12))


def recipient_phone(i: int) -> str:
    _, prefix, digits = NUMBERING[i % len(NUMBERING)]
    n = i // len(NUMBERING)
    if n >= 10**digits:
        raise ValueError(f"recipient {i}: too many recipients for the numbering plan")
    return prefix + str(n).zfill(digits)


# -- traffic ----------------------------------------------------------------------------------

STATUS, INBOUND, RETRY, REPEAT = 0, 1, 2, 3


@dataclass
class Oracle:
    """What the generated traffic says, for the tracked sample: per recipient the newest event
    time that reaches the recipient stage, per message the newest status time."""

    recipient_last: dict[str, int] = field(default_factory=dict)
    #: newest marketing delivery, read or inbound message (kept for the engagement window)
    recipient_engaged: dict[str, int] = field(default_factory=dict)
    opted_out: set[str] = field(default_factory=set)
    message_last: dict[str, int] = field(default_factory=dict)

    def saw(self, recipient: str, ts: int, engaged: bool) -> None:
        self.recipient_last[recipient] = max(self.recipient_last.get(recipient, 0), ts)
        if engaged:
            last = self.recipient_engaged.get(recipient, 0)
            self.recipient_engaged[recipient] = max(last, ts)

    def recipient_expires(self, recipient: str, retention: RecipientRetention) -> int:
        """Event time from which the recipient may be removed (the stage's documented rule)."""
        last = self.recipient_last[recipient]
        if recipient in self.opted_out:
            return last + retention.opted_out
        engaged = self.recipient_engaged.get(recipient, 0)
        return max(last + retention.idle, engaged + retention.engaged)


@dataclass
class TrafficCounts:
    bodies: int = 0
    statuses: int = 0
    messages: int = 0
    recipients: int = 0  # distinct recipients contacted so far
    inbound: int = 0
    retries: int = 0


class Traffic:
    """Webhook bodies in event-time order, one window of ``step`` seconds at a time.

    Recipient ``i`` is first contacted at ``start + i * span / recipients`` (a constant rate);
    ``sample``: every sample-th recipient (and its messages) is tracked in :attr:`oracle`.
    """

    def __init__(
        self,
        recipients: int,
        days: float,
        seed: int = 1,
        sample: int = 50,
        start: int = T0,
        step: int = 60,
        repeat_ratio: float = 0.10,
        reply_ratio: float = 0.03,
        retry_ratio: float = 0.01,
        late_retry_ratio: float = 0.002,
    ) -> None:
        self.n = recipients
        self.start = start
        self.span = int(days * DAY)
        self.end = start + self.span
        self.step = step
        self.sample = sample
        self.rng = random.Random(seed)
        self.repeat_ratio = repeat_ratio
        self.reply_ratio = reply_ratio
        self.retry_ratio = retry_ratio
        self.late_retry_ratio = late_retry_ratio
        self.oracle = Oracle()
        self.counts = TrafficCounts()
        self._due: dict[int, list[tuple[int, int, int, Any]]] = {}
        self._seq = 0

    def _at(self, ts: int, kind: int, payload: Any) -> None:
        if ts < self.end:
            self._seq += 1
            self._due.setdefault((ts - self.start) // self.step, []).append(
                (ts, self._seq, kind, payload)
            )

    def _first_contact(self, i: int) -> int:
        return self.start + i * self.span // self.n

    def _lifecycle(self, t0: int) -> list[tuple[str, int, int | None]]:
        rng = self.rng
        r = rng.random()
        if r < 0.80:
            statuses: list[tuple[str, int, int | None]] = [
                ("sent", t0, None),
                ("delivered", t0 + rng.randint(1, 30), None),
            ]
            if rng.random() < 0.55:
                read = ("read", t0 + rng.randint(31, HOUR), None)
                if rng.random() < 0.1:
                    statuses[1] = read  # read without delivered: counts as delivered
                else:
                    statuses.append(read)
            return statuses
        if r < 0.97:
            code = 131049 if r < 0.92 else 131026
            first = [("sent", t0, None)] if rng.random() < 0.3 else []
            return [*first, ("failed", t0 + rng.randint(0, 5), code)]
        if r < 0.973:
            return [("failed", t0 + rng.randint(0, 5), 131050)]  # opted out
        return [("sent", t0, None)]  # delivery not reported (yet)

    def _send(self, i: int, t0: int) -> None:
        rng = self.rng
        self.counts.messages += 1
        sender, display = SENDERS[self.counts.messages % len(SENDERS)]
        recipient = recipient_phone(i)
        m = Message(
            wamid=f"wamid.HBgL{recipient}FQIAERgSQ{self.counts.messages:016X}A==",
            sender=sender,
            display=display,
            recipient=recipient,
            country=NUMBERING[i % len(NUMBERING)][0],
            template=TEMPLATES[rng.randrange(len(TEMPLATES))],
            category="marketing",
            sent_at=t0,
            statuses=self._lifecycle(t0),
            opaque=True,
        )
        tracked = i % self.sample == 0
        for status, ts, code in m.statuses:
            self._at(ts, STATUS, (m, status, code, tracked))
        if (
            m.statuses[-1][0] != "failed"
            and len(m.statuses) > 1
            and rng.random() < self.reply_ratio
        ):
            self._at(m.statuses[-1][1] + rng.randint(5, 600), INBOUND, (m, tracked))

    def windows(self) -> Iterator[tuple[int, list[bytes]]]:
        """(end of the window, the bodies POSTed during it in order)."""
        next_recipient = 0
        for w in range(-(-self.span // self.step)):
            window_end = self.start + (w + 1) * self.step
            starts = [(p[0], p[1]) for _, _, k, p in self._due.get(w, []) if k == REPEAT]
            while next_recipient < self.n and self._first_contact(next_recipient) < window_end:
                starts.append((next_recipient, self._first_contact(next_recipient)))
                if self.rng.random() < self.repeat_ratio:
                    later = self._first_contact(next_recipient) + self.rng.randint(
                        DAY // 2, 2 * DAY
                    )
                    self._at(later, REPEAT, (next_recipient, later))
                next_recipient += 1
            self.counts.recipients = next_recipient
            for i, t0 in starts:
                self._send(i, t0)
            entries = [e for e in self._due.pop(w, []) if e[2] != REPEAT]
            entries.sort()
            yield window_end, self._bodies(entries, window_end)

    def _bodies(self, entries: list[tuple[int, int, int, Any]], window_end: int) -> list[bytes]:
        rng = self.rng
        oracle = self.oracle
        bodies: list[bytes] = []
        groups: dict[str, tuple[int, list[dict[str, object]]]] = {}

        def emit(body: bytes) -> None:
            bodies.append(body)
            if rng.random() < self.retry_ratio:
                self._at(window_end + rng.randint(10, 600), RETRY, body)
            elif rng.random() < self.late_retry_ratio:
                self._at(window_end + rng.randint(HOUR, 6 * DAY), RETRY, body)

        for ts, _, kind, payload in entries:
            if kind == RETRY:
                self.counts.retries += 1
                bodies.append(payload)
                continue
            if kind == INBOUND:
                m, tracked = payload
                self.counts.inbound += 1
                emit(inbound_body(m, ts))
                if tracked:
                    oracle.saw(m.recipient, ts, engaged=True)
                continue
            m, status, code, tracked = payload
            self.counts.statuses += 1
            if tracked:
                last = oracle.message_last.get(m.wamid, 0)
                oracle.message_last[m.wamid] = max(last, ts)
                oracle.saw(m.recipient, ts, engaged=status in ("delivered", "read"))
                if code == 131050:
                    oracle.opted_out.add(m.recipient)
            size, items = groups.get(m.sender) or (
                1 if rng.random() < 0.6 else rng.randint(2, 6),
                [],
            )
            items.append(status_item(m, status, ts, code))
            if len(items) >= size:
                emit(envelope(m.sender, m.display, items))
                groups.pop(m.sender, None)
            else:
                groups[m.sender] = (size, items)
        for sender, (_, items) in groups.items():
            display = next(d for s, d in SENDERS if s == sender)
            emit(envelope(sender, display, items))
        self.counts.bodies += len(bodies)
        return bodies


def inbound_body(m: Message, ts: int) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": m.display, "phone_number_id": m.sender},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": m.recipient}],
        "messages": [
            {
                "from": m.recipient,
                "id": f"wamid.IN{m.wamid[5:]}",
                "timestamp": str(ts),
                "type": "text",
                "text": {"body": "Is this still available?"},
                "context": {"from": m.display, "id": m.wamid},
            }
        ],
    }
    change = {"field": "messages", "value": value}
    entry = {"id": "102290129340398", "changes": [change]}
    return orjson.dumps({"object": "whatsapp_business_account", "entry": [entry]})


# -- stores -----------------------------------------------------------------------------------


class Store(Protocol):
    """A :class:`streams.state.KeyValue` the soak can commit, list and measure."""

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def set(self, partition: int, key: bytes, value: bytes) -> None: ...

    def delete(self, partition: int, key: bytes) -> None: ...

    def commit(self, partition: int) -> None: ...

    def keys(self, partition: int) -> Iterator[bytes]: ...

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]: ...

    def disk_bytes(self) -> int: ...

    def flush_memtables(self) -> None: ...

    def rocks_stats(self) -> dict[str, int]: ...


class MemoryKeyValue(DictKeyValue):
    """The unit tests' dict store, as a :class:`Store` (commit is a no-op, no disk)."""

    def commit(self, partition: int) -> None:
        pass

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        return iter(list(self.data.get(partition, {}).items()))

    def disk_bytes(self) -> int:
        return 0

    def flush_memtables(self) -> None:
        pass

    def rocks_stats(self) -> dict[str, int]:
        return {}


class RocksKeyValue:
    """One RocksDB per partition, opened with Faust's RocksDB store options (rocksdict, raw
    bytes; ``options`` as a table's ``options=``). Writes of a flush are collected and applied
    with one WriteBatch by ``commit``."""

    PROPERTIES = (
        "rocksdb.cur-size-all-mem-tables",
        "rocksdb.block-cache-usage",
        "rocksdb.estimate-num-keys",
        "rocksdb.estimate-live-data-size",
        "rocksdb.live-sst-files-size",
    )

    def __init__(self, path: Path, partitions: int, **options: Any) -> None:
        import rocksdict
        from faust.stores.rocksdb import RocksDBOptions

        self._write_batch = rocksdict.WriteBatch
        self.path = path
        self.dbs = [RocksDBOptions(**options).open(path / f"p{p}") for p in range(partitions)]
        self._pending: dict[int, dict[bytes, bytes | None]] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        pending = self._pending.get(partition)
        if pending is not None and key in pending:
            return pending[key]
        value: bytes | None = self.dbs[partition].get(key)
        return value

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        self._pending.setdefault(partition, {})[key] = value

    def delete(self, partition: int, key: bytes) -> None:
        self._pending.setdefault(partition, {})[key] = None

    def commit(self, partition: int) -> None:
        pending = self._pending.pop(partition, None)
        if not pending:
            return
        batch = self._write_batch(raw_mode=True)
        for key, value in pending.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self.dbs[partition].write(batch)

    def keys(self, partition: int) -> Iterator[bytes]:
        return iter(self.dbs[partition].keys())

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.dbs[partition].items())

    def disk_bytes(self) -> int:
        """What ``du`` says: allocated blocks of every file under the store (SSTs, WAL, ...)."""
        total = 0
        for root, _, files in os.walk(self.path):
            for name in files:
                with contextlib.suppress(FileNotFoundError):  # a compaction removed it
                    total += os.stat(os.path.join(root, name)).st_blocks * 512
        return total

    def flush_memtables(self) -> None:
        """Write the memtables to SST files (the WAL goes with them), so ``du`` measures the
        data rather than how full the 64 MB write buffers happen to be."""
        for db in self.dbs:
            db.flush(wait=True)

    def rocks_stats(self) -> dict[str, int]:
        out = dict.fromkeys(self.PROPERTIES, 0)
        for db in self.dbs:
            for name in self.PROPERTIES:
                out[name] += int(db.property_int_value(name) or 0)
        return {k.removeprefix("rocksdb."): v for k, v in out.items()}

    def close(self) -> None:
        for db in self.dbs:
            db.close()


# -- the run ----------------------------------------------------------------------------------

FAMILIES = (
    "messages",
    "buckets",
    "message_index",
    "bucket_index",
    "templates",
    "recipients",
    "recipient_index",
    "retry_plans",
    "retry_index",
    "meta",
)


#: Families whose keys :meth:`Soak.stale` checks against their retention (all must be 0).
SWEPT_FAMILIES = (
    "messages",
    "buckets",
    "message_index",
    "bucket_index",
    "recipients",
    "recipient_index",
    "retry_plans",
    "retry_index",
)


def message_family(key: bytes) -> str:
    if key.startswith(MESSAGE_PREFIX.encode()):
        return "messages"
    if key.startswith(BUCKET_PREFIX.encode()):
        return "buckets"
    if key.startswith(MESSAGE_INDEX.encode()):
        return "message_index"
    if key.startswith(BUCKET_INDEX.encode()):
        return "bucket_index"
    if key.startswith(TEMPLATE_PREFIX):
        return "templates"
    return "meta"


def recipient_family(key: bytes) -> str:
    if key.startswith(RECIPIENT_INDEX.encode()):
        return "recipient_index"
    if key.startswith(RETRY_TIMERS.encode()):
        return "retry_index"
    if key.startswith(PLAN_PREFIX):
        return "retry_plans"
    if key.startswith(PARTITION_RECORD):
        return "meta"
    return "recipients"


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Expected:
    """Sampled recipients and messages checked against the documented retention."""

    removed_early: int = 0  # gone although within the retention: never allowed
    kept_late: int = 0  # present although their day was swept: never allowed
    checked: int = 0
    gone: int = 0  # past the retention and swept: expected absent
    kept: int = 0  # within the retention: expected present


class Soak:
    """Feeds :class:`Traffic` through the three stages, flushing every ``batch`` statuses."""

    def __init__(
        self,
        traffic: Traffic,
        messages_kv: Store,
        recipients_kv: Store,
        batch: int = 10_000,
        partitions: int = PARTITIONS,
        recipient_retention: RecipientRetention = DEFAULT_RECIPIENT_RETENTION,
    ) -> None:
        self.traffic = traffic
        self.mkv = messages_kv
        self.rkv = recipients_kv
        self.batch = batch
        self.partitions = partitions
        self.ingest = IngestStage(partitions, partitions, clock=lambda: 0.0)
        # the documented retention: the stages' defaults, as the worker uses them (the
        # recipients' can be shortened, to see their plateau in fewer days)
        self.messages = MessageStage(messages_kv, partitions, Retention())
        self.recipients = RecipientStage(
            recipients_kv, recipient_retention, status_sources=partitions
        )
        self._raw_offsets = [0] * partitions
        self._message_offsets = [0] * partitions
        self._recipient_offsets = [0] * partitions
        self._round_statuses = 0
        self.rounds = 0
        self.dead_letters = 0
        self.recipient_facts = 0
        self.generate_s = 0.0

    # -- driving ---------------------------------------------------------------------------------
    def run(self, on_round: Callable[[Soak], None]) -> None:
        """Process all traffic; ``on_round(self)`` after every flush of the stages."""
        windows = self.traffic.windows()
        while True:
            t = time.perf_counter()
            item = next(windows, None)
            self.generate_s += time.perf_counter() - t
            if item is None:
                break
            # keyless records: a window's bodies go to one raw partition, as a producer's
            # sticky partitioner batches them
            p = self.traffic.counts.bodies % self.partitions
            for body in item[1]:  # received at the end of its window, as live traffic would be
                self.ingest.handle("raw", p, self._raw_offsets[p], body, item[0])
                self._raw_offsets[p] += 1
            if self.ingest.stats.statuses - self._round_statuses >= self.batch:
                self.round()
                on_round(self)
        self.round()
        on_round(self)

    def round(self) -> None:
        """One batch through every stage, each flushing as the worker's agents do."""
        self.rounds += 1
        self._round_statuses = self.ingest.stats.statuses
        to_messages, to_recipients, dead = self.ingest.drain()
        self.dead_letters += len(dead)
        self.ingest.drain_signals()
        self.ingest.stats.take_lag()
        for p, value in sorted(to_messages.items()):
            self.messages.handle_batch(p, self._message_offsets[p], value)
            self._message_offsets[p] += 1
        for p in self.messages.state.partitions():
            self.messages.flush(p)
            self.mkv.commit(p)
        outbox = self.messages.drain_outbox()
        self.messages.drain_signals()
        self.messages.stats.take_metric_counts()
        for source in (to_recipients, outbox):
            for p, value in sorted(source.items()):
                self.recipients.handle_batch(p, self._recipient_offsets[p], value)
                self._recipient_offsets[p] += 1
        for p in self.recipients.state.partitions():
            self.recipients.changed_advice(p)
            self.recipients.flush(p)
            self.rkv.commit(p)
        self.recipients.drain_signals()

    # -- measuring -------------------------------------------------------------------------------
    def metas(self) -> tuple[list[PartitionMeta], list[RecipientMeta]]:
        mm, rm = [], []
        for p in range(self.partitions):
            raw = self.mkv.get(p, messages_meta_key(p))
            mm.append(decode(raw, PartitionMeta) if raw is not None else PartitionMeta())
            raw = self.rkv.get(p, recipients_meta_key(p))
            rm.append(decode(raw, RecipientMeta) if raw is not None else RecipientMeta())
        return mm, rm

    def watermark(self) -> int:
        return max(m.watermark for m in self.metas()[0])

    def expiry_day(self) -> int:
        """The day of the recipients stage's expiry clock (its slowest partition's): daily
        rows taken when it changes are all at the same phase of the recipients' sweep."""
        return min(timer_clock(m, self.partitions) for m in self.metas()[1]) // DAY

    def families(self) -> dict[str, int]:
        """Live keys per family, counted by listing the stores."""
        out = dict.fromkeys(FAMILIES, 0)
        for p in range(self.partitions):
            for key in self.mkv.keys(p):
                out[message_family(key)] += 1
            for key in self.rkv.keys(p):
                out[recipient_family(key)] += 1
        return out

    def check_sample(self) -> dict[str, Expected]:
        """The tracked sample against the documented retention, at each partition's
        watermark: kept while newer than the retention; gone once its day was swept."""
        r, rr = self.messages.retention, self.recipients.retention
        mm, rm = self.metas()
        oracle = self.traffic.oracle
        out = {"messages": Expected(), "recipients": Expected()}
        for wamid, last in oracle.message_last.items():
            p = partition_for(wamid, self.partitions)
            present = self.mkv.get(p, message_key(wamid)) is not None
            _judge(out["messages"], present, last, mm[p].watermark, r.messages, mm[p].messages)
        for recipient, last in oracle.recipient_last.items():
            p = partition_for(recipient, self.partitions)
            present = self.rkv.get(p, recipient_key(recipient)) is not None
            # judged as if its last event were (when it may expire - the idle retention): the
            # index sweeps at the idle retention and visits a kept recipient again then
            last = oracle.recipient_expires(recipient, rr) - rr.idle
            now = timer_clock(rm[p], self.partitions)  # the stage's event time for expiry
            _judge(out["recipients"], present, last, now, rr.idle, rm[p].cursor)
        return out

    def sweep_lag_days(self) -> dict[str, int]:
        """Days (minutes for buckets) that are past the retention but not swept yet."""
        r, rr = self.messages.retention, self.recipients.retention
        rp = self.recipients.retry_policy
        mm, rm = self.metas()

        def clock(meta: RecipientMeta) -> int:
            return timer_clock(meta, self.partitions)

        def lag(cursor: SweepCursor, watermark: int, retention: int, unit: int) -> int:
            return max(0, (watermark - retention) // unit - cursor.next_day)

        return {
            "messages": max(lag(m.messages, m.watermark, r.messages, DAY) for m in mm),
            "bucket_minutes": max(lag(m.buckets, m.watermark, r.buckets, 60) for m in mm),
            "recipients": max(lag(m.cursor, clock(m), rr.idle, DAY) for m in rm),
            "retry_minutes": max(lag(m.retries, clock(m), rp.settle_s, 60) for m in rm),
        }

    def stale(self) -> dict[str, int]:
        """Decode every key: state whose day (minute for buckets) is wholly older than its
        retention, and index records of days the sweep has passed. All must be 0."""
        r, rr = self.messages.retention, self.recipients.retention
        rp = self.recipients.retry_policy
        mm, rm = self.metas()
        out = dict.fromkeys(
            (
                *SWEPT_FAMILIES,
                "messages_older_than_retention",
                "recipients_older_than_retention",
            ),
            0,
        )
        for p in range(self.partitions):
            m, rmeta = mm[p], rm[p]
            m_horizon = (m.watermark - r.messages) // DAY
            b_horizon = (m.watermark - r.buckets) // 60
            for key, raw in self.mkv.items(p):
                family = message_family(key)
                if family == "messages":
                    last = decode(raw, MessageState).last_ts
                    out["messages"] += last // DAY < m_horizon
                    out["messages_older_than_retention"] += last < m.watermark - r.messages
                elif family == "buckets":
                    out["buckets"] += BucketId.decode(key).minute < b_horizon
                elif family in ("message_index", "bucket_index"):
                    cursor = m.messages if family == "message_index" else m.buckets
                    out[family] += parse_index_key(key).day < cursor.next_day
            now = timer_clock(rmeta, self.partitions)
            horizon = (now - rr.idle) // DAY
            # a closed retry plan is deleted keep_s after its due time (settled, minute index)
            plans_horizon = now - rp.settle_s - rp.keep_s - 60
            for key, raw in self.rkv.items(p):
                family = recipient_family(key)
                if family == "recipients":
                    state = decode(raw, RecipientState)
                    out["recipients"] += (rr.expires(state) - rr.idle) // DAY < horizon
                    if not state.opted_out:
                        older = rr.expires(state) < now
                        out["recipients_older_than_retention"] += older
                elif family == "recipient_index":
                    out[family] += parse_index_key(key).day < rmeta.cursor.next_day
                elif family == "retry_index":
                    out[family] += parse_index_key(key).day < rmeta.retries.next_day
                elif family == "retry_plans":
                    out[family] += decode(raw, RetryPlan).due < plans_horizon
        return out

    def opted_out(self) -> int:
        return sum(m.opted_out for m in self.metas()[1])


def _judge(
    into: Expected, present: bool, last: int, watermark: int, retention: int, cursor: SweepCursor
) -> None:
    """Removed early: gone while its last event is within the retention. Kept late: present
    although the day of its last event is past the retention and already swept."""
    into.checked += 1
    if last >= watermark - retention:
        into.kept += 1
        into.removed_early += not present
    if last // DAY < min(cursor.next_day, (watermark - retention) // DAY):
        into.gone += 1
        into.kept_late += present


# -- the bench --------------------------------------------------------------------------------


def snapshot(s: Soak, wall_s: float) -> dict[str, Any]:
    """Event time, work done, RSS, ``du`` of the stores and RocksDB's own memory figures."""
    wm = s.watermark()
    a, b = s.mkv.rocks_stats(), s.rkv.rocks_stats()
    return {
        "day": round((wm - T0) / DAY, 2),
        "event_time": wm,
        "wall_s": round(wall_s, 1),
        "statuses": s.ingest.stats.statuses,
        "distinct_recipients": s.traffic.counts.recipients,
        "rss_mb": round(rss_bytes() / 2**20, 1),
        "rss_minus_block_cache_mb": round(
            (rss_bytes() - a.get("block-cache-usage", 0) - b.get("block-cache-usage", 0)) / 2**20,
            1,
        ),
        "disk_mb": round((s.mkv.disk_bytes() + s.rkv.disk_bytes()) / 2**20, 1),
        "disk_live_data_mb": round(
            (a.get("estimate-live-data-size", 0) + b.get("estimate-live-data-size", 0)) / 2**20, 1
        ),
        "rocksdb_mb": {
            k: round((a[k] + b[k]) / 2**20, 1) for k in a if "size" in k or "usage" in k
        },
        "rocksdb_estimate_keys": a.get("estimate-num-keys", 0) + b.get("estimate-num-keys", 0),
    }


def daily(s: Soak) -> dict[str, Any]:
    """Live keys per family, the sample's expiry, and ``du`` after a memtable flush."""
    s.mkv.flush_memtables()
    s.rkv.flush_memtables()
    return {
        "keys": s.families(),
        "opted_out": s.opted_out(),
        "disk_flushed_mb": round((s.mkv.disk_bytes() + s.rkv.disk_bytes()) / 2**20, 1),
        "sweep_lag": s.sweep_lag_days(),
        "sample": {k: vars(v) for k, v in s.check_sample().items()},
    }


class RssLimitError(Exception):
    pass


def plateau(series: list[int | float], tolerance: float) -> tuple[bool, float]:
    """(values stay within ``tolerance`` of their maximum, the spread max/min - 1)."""
    lo, hi = min(series), max(series)
    spread = hi / lo - 1 if lo else float("inf")
    return spread <= tolerance, round(spread, 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=5_000_000)
    parser.add_argument("--days", type=int, default=16)
    parser.add_argument("--batch", type=int, default=10_000, help="statuses per flush")
    parser.add_argument("--sample", type=int, default=50, help="track every n-th recipient")
    parser.add_argument("--store", choices=("rocksdb", "memory"), default="rocksdb")
    parser.add_argument("--dir", type=Path, help="RocksDB directory (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--seed", type=int, default=1)
    defaults = RecipientRetention()
    parser.add_argument(
        "--idle-days", type=int, default=defaults.idle // DAY, help="recipient idle retention"
    )
    parser.add_argument(
        "--engaged-days",
        type=int,
        default=defaults.engaged // DAY,
        help="recipient engagement retention (the default needs --days 40 for a plateau)",
    )
    parser.add_argument(
        "--block-cache-mb", type=int, help="RocksDB block cache per DB (default: Faust's, 2 GiB)"
    )
    parser.add_argument(
        "--max-rss-mb", type=int, default=14_000, help="stop early above this (shared machine)"
    )
    args = parser.parse_args()

    workdir = args.dir or Path(tempfile.mkdtemp(prefix="soak-state-"))
    if args.store == "rocksdb":
        options = {"block_cache_size": args.block_cache_mb * 2**20} if args.block_cache_mb else {}
        mkv: Any = RocksKeyValue(workdir / "messages", PARTITIONS, **options)
        rkv: Any = RocksKeyValue(workdir / "recipients", PARTITIONS, **options)
    else:
        mkv, rkv = MemoryKeyValue(), MemoryKeyValue()
    traffic = Traffic(args.recipients, args.days, seed=args.seed, sample=args.sample)
    retention = RecipientRetention(idle=args.idle_days * DAY, engaged=args.engaged_days * DAY)
    soak = Soak(traffic, mkv, rkv, batch=args.batch, recipient_retention=retention)
    hours: list[dict[str, Any]] = []
    days: list[dict[str, Any]] = []
    started = time.perf_counter()
    measure_s = 0.0

    def on_round(s: Soak) -> None:
        nonlocal measure_s
        t = time.perf_counter()
        row = snapshot(s, t - started)
        if not hours or row["event_time"] // HOUR > hours[-1]["event_time"] // HOUR:
            hours.append(row)
        if not days or s.expiry_day() > days[-1]["expiry_day"]:
            row["expiry_day"] = s.expiry_day()
            days.append(row | daily(s))
            print(_row(days[-1]), file=sys.stderr, flush=True)
        measure_s += time.perf_counter() - t
        if row["rss_mb"] > args.max_rss_mb:
            raise RssLimitError(row["rss_mb"])

    print(_HEADER, file=sys.stderr)
    aborted = None
    try:
        soak.run(on_round)
    except RssLimitError as exc:
        aborted = f"stopped early: RSS {exc.args[0]} MB > --max-rss-mb {args.max_rss_mb}"
        print(aborted, file=sys.stderr)
    run_s = time.perf_counter() - started
    final = snapshot(soak, run_s) | daily(soak) | {"stale": soak.stale()}
    checks = evaluate(days, final, soak)
    if aborted:
        checks["completed"] = {"ok": False, "value": aborted}
    result = {
        "config": {
            "recipients": args.recipients,
            "days": args.days,
            "batch": args.batch,
            "partitions": PARTITIONS,
            "store": args.store,
            "sample_every": args.sample,
            "block_cache_mb_per_db": args.block_cache_mb or "faust default (2048)",
            "retention_s": {
                "messages": soak.messages.retention.messages,
                "buckets": soak.messages.retention.buckets,
                "recipients_idle": soak.recipients.retention.idle,
                "recipients_opted_out": soak.recipients.retention.opted_out,
            },
            "cpu": os.cpu_count(),
        },
        "events": {
            "bodies": traffic.counts.bodies,
            "statuses": soak.ingest.stats.statuses,
            "messages": traffic.counts.messages,
            "distinct_recipients": traffic.counts.recipients,
            "inbound": traffic.counts.inbound,
            "retried_bodies": traffic.counts.retries,
            "recipient_facts": soak.recipients.stats.facts,
            "duplicates": soak.messages.stats.duplicates,
            "expired_messages": soak.messages.stats.expired_messages,
            "expired_buckets": soak.messages.stats.expired_buckets,
            "expired_recipients": soak.recipients.stats.expired,
            "dead_letters": soak.dead_letters,
            "flushes": soak.rounds,
        },
        "runtime_s": {
            "total": round(run_s, 1),
            "generate": round(soak.generate_s, 1),
            "measure": round(measure_s, 1),
            "stages": round(run_s - soak.generate_s - measure_s, 1),
        },
        "hours": hours,
        "days": days,
        "final": final,
        "checks": checks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    if args.dir is None:
        if isinstance(mkv, RocksKeyValue):
            mkv.close()
            rkv.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(c["ok"] for c in checks.values()) else 1


_HEADER = "  day    statuses  messages  buckets  recipients  opted_out  disk_MB  RSS_MB  wall_s"


def _row(d: dict[str, Any]) -> str:
    k = d["keys"]
    return (
        f"{d['day']:>5}  {d['statuses']:>10,}  {k['messages']:>8,}  {k['buckets']:>7,}  "
        f"{k['recipients']:>10,}  {d['opted_out']:>9,}  {d['disk_flushed_mb']:>7}  "
        f"{d['rss_mb']:>6}  {d['wall_s']:>6}"
    )


def evaluate(
    days: list[dict[str, Any]], final: dict[str, Any], soak: Soak
) -> dict[str, dict[str, Any]]:
    """The pass/fail checks. Plateaus are judged on the daily rows (each taken right after
    the event time crossed midnight, so all at the same phase of the daily sweep)."""
    r, rr = soak.messages.retention, soak.recipients.retention
    checks: dict[str, dict[str, Any]] = {}
    checks["no_dead_letters"] = {"ok": soak.dead_letters == 0, "value": soak.dead_letters}
    stale = {k: v for k, v in final["stale"].items() if not k.endswith("older_than_retention")}
    checks["nothing_older_than_retention_plus_index_day"] = {
        "ok": not any(stale.values()) and not any(final["sweep_lag"].values()),
        "value": stale,
        "sweep_lag": final["sweep_lag"],
    }
    samples = [v for d in [*days, final] for v in d["sample"].values()]
    removed_early = sum(v["removed_early"] for v in samples)
    kept_late = sum(v["kept_late"] for v in samples)
    checks["sample_expires_as_documented"] = {
        "ok": removed_early == 0 and kept_late == 0,
        "removed_early": removed_early,
        "kept_late": kept_late,
        "checked": final["sample"],
    }
    # Plateau: from the day every retention (plus its index day and the 12-48 h repeats) has
    # been reached: buckets 2 d + 1, messages 7 d + 1 + 2, recipients (30 d engaged, 8 d
    # idle) + 1 + 2.
    warm = {
        "buckets": r.buckets // DAY + 1,
        "messages": r.messages // DAY + 3,
        "recipients": max(rr.idle, rr.engaged) // DAY + 3,
    }
    families = {
        "buckets": ("buckets", "bucket_index"),
        "messages": ("messages", "message_index"),
        "recipients": ("recipients", "recipient_index"),
    }
    for name, start in warm.items():
        window = [d for d in days if d["day"] >= start]
        if len(window) < 3:
            checks[f"plateau_{name}"] = {"ok": True, "skipped": f"needs days >= {start + 2}"}
            continue
        for family in families[name]:
            values = [
                d["keys"][family] - (d["opted_out"] if family == "recipients" else 0)
                for d in window
            ]
            ok, spread = plateau(values, 0.10)
            checks[f"plateau_{family}"] = {"ok": ok, "spread": spread, "from_day": start}
    # Memory and disk move in steps (compactions, memtables, the allocator): no growth from
    # the first half of the steady days to the second (max against max), 25% tolerance. Disk:
    # RocksDB's estimate of its live data (what compaction converges to); ``du`` saws up and
    # down with the level-0 files between compactions and is reported alongside.
    start = max(warm.values())
    window = [d for d in days if d["day"] >= start]
    if len(window) >= 4:
        half = len(window) // 2
        metrics = ["rss_mb", "rss_minus_block_cache_mb"]
        metrics += ["disk_live_data_mb"] if window[0]["disk_flushed_mb"] else []
        for metric in metrics:
            first = max(d[metric] for d in window[:half])
            second = max(d[metric] for d in window[half:])
            growth = round(second / first - 1, 4)
            checks[f"bounded_{metric}"] = {
                "ok": growth <= 0.25,
                "growth": growth,
                "days": [window[0]["day"], window[-1]["day"]],
                "range": [min(d[metric] for d in window), max(d[metric] for d in window)],
            }
        if window[0]["disk_flushed_mb"]:
            du = [d["disk_flushed_mb"] for d in window]
            checks["bounded_disk_live_data_mb"]["du_after_flush_mb"] = [min(du), max(du)]
    return checks


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| day | statuses | distinct recipients | messages | buckets | message idx | bucket idx "
        "| recipients (opted out) | recipient idx | disk MB | RSS MB | block cache MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in [*result["days"], dict(result["final"], day=f"{result['final']['day']} (end)")]:
        k = d["keys"]
        lines.append(
            f"| {d['day']} | {d['statuses']:,} | {d['distinct_recipients']:,} "
            f"| {k['messages']:,} | {k['buckets']:,} | {k['message_index']:,} "
            f"| {k['bucket_index']:,} | {k['recipients']:,} ({d['opted_out']:,}) "
            f"| {k['recipient_index']:,} | {d['disk_flushed_mb']} | {d['rss_mb']} "
            f"| {d['rocksdb_mb'].get('block-cache-usage', 0)} |"
        )
    lines.append("")
    ev, rt = result["events"], result["runtime_s"]
    lines.append(
        f"{ev['statuses']:,} statuses in {ev['bodies']:,} bodies, {ev['recipient_facts']:,} "
        f"recipient facts, {ev['distinct_recipients']:,} distinct recipients; "
        f"{rt['total']} s (generation {rt['generate']} s, measuring {rt['measure']} s)."
    )
    for name, check in result["checks"].items():
        detail = {k: v for k, v in check.items() if k != "ok"}
        lines.append(f"- {'PASS' if check['ok'] else 'FAIL'} {name}: {json.dumps(detail)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
