"""Stage 2: messages (keyed by wamid) from status facts and the send log; minute buckets."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from streams import native
from streams.core.aggregates import LIMIT_CLASSES
from streams.core.attribution import (
    DEFAULT_CONFIG,
    Attribution,
    AttributionConfig,
    decode_callback_data,
)
from streams.core.eventtime import TimeTrust, TimeVerdict, refusal, trust
from streams.core.expiry import ExpiryIndex, SweepCursor
from streams.core.facts import (
    MAX_BATCH_FACTS,
    AccountErrorFact,
    Applied,
    FactBatch,
    Position,
    RecipientFact,
    SendLogError,
    StatusFact,
    TemplateFact,
    already_applied,
    decode_batch,
    decode_send_log,
    encode_batch,
    mark_applied,
    source_id,
    source_partition,
)
from streams.core.immediate import ErrorCount
from streams.core.keys import (
    BUCKET_INDEX,
    BUCKET_PREFIX,
    MESSAGE_INDEX,
    MESSAGE_PREFIX,
    SEP,
    BucketId,
    Dimension,
    account_ledger_key,
    message_key,
    messages_meta_key,
    template_key,
)
from streams.core.ledger import BucketDelta, Effects, MessageLedger, MessageState
from streams.core.retries import is_retryable
from streams.core.signals import (
    INCIDENT_CODES,
    MAX_SIGNAL_ITEMS,
    BucketSignal,
    PartitionReport,
    SignalBatch,
    TemplateSignal,
    USPaused,
    recipient_number,
)
from streams.stages import MESSAGES, SEND_LOG, partition_for
from streams.state import KeyValue, WriteBack, decode

US_PAUSED = "us_marketing_pause"
US_PAUSED_OUTCOME = "failed." + US_PAUSED

DAY = 86_400


class PartitionMeta(msgspec.Struct, array_like=True, gc=False):
    """Per-partition progress: event-time watermark and the expiry sweeps' cursors."""

    watermark: int = 0
    messages: SweepCursor = msgspec.field(default_factory=SweepCursor)
    buckets: SweepCursor = msgspec.field(default_factory=SweepCursor)
    paused_templates: int = 0  # templates of this partition now PAUSED or DISABLED (metrics)
    #: newest event time seen per raw-webhook partition (the origin of the statuses): lateness
    #: is judged against the status's own input partition, which is consumed in order, so a
    #: worker that runs ahead of another on a backlog does not make the other's statuses late
    origin_watermarks: dict[int, int] = msgspec.field(default_factory=dict)
    #: origin_marks, origin_idle, raw_partitions and origin_behind are no longer written (the
    #: reports come from :class:`ReadSoFar`); kept so the saved layout stays the same
    origin_marks: dict[int, int] = msgspec.field(default_factory=dict)
    origin_idle: list[int] = msgspec.field(default_factory=list)
    raw_partitions: int = 0
    #: newest trusted event time of the send-log partition (``sent_at``, else the time Kafka
    #: received the record)
    log_mark: int = 0
    origin_behind: list[int] = msgspec.field(default_factory=list)  # no longer written


def _named(attribution: Attribution) -> tuple[str | None, str | None, str | None]:
    """What the callback data named, as the ledgers take it: template, category, campaign."""
    return attribution.template, attribution.category, attribution.campaign


@dataclass
class ReadSoFar:
    """How far a partition's inputs were read by this stage since it took the partition: what
    its reports tell alerting. Not the saved :class:`PartitionMeta`, which can be ahead of the
    counts signalled: a crash between writing a batch's state and sending its signals restores
    a meta that covers that batch, whose counts only come again as it is read again."""

    marks: dict[int, int] = field(default_factory=dict)
    idle: set[int] = field(default_factory=set)
    behind: set[int] = field(default_factory=set)
    raw_partitions: int = 0
    log_mark: int = -1  # -1: no send-log record read yet (alerting keeps what it had)

    def take(self, batch: FactBatch) -> None:
        """Stage 1's marks in a batch of facts: the newest trusted event time read per raw
        partition, which are idle (read to their end and quiet) or behind, how many there are."""
        for origin, mark in batch.marks.items():
            if mark >= self.marks.get(origin, 0):  # a partition read from nothing yet too
                self.marks[origin] = mark
        self.idle = self.idle.difference(batch.marks).union(batch.idle)
        self.raw_partitions = max(self.raw_partitions, batch.raw_partitions)
        self.behind = self.behind.difference(batch.marks).union(batch.behind)


class TemplateState(msgspec.Struct, array_like=True, gc=False):
    """What Meta last said about a template (status, quality, category), by event time."""

    status: str | None = None
    status_ts: int = 0
    reason: str | None = None
    quality: str | None = None
    quality_ts: int = 0
    category: str | None = None
    category_ts: int = 0
    disabled_at: int | None = None  # when Meta disabled it (``disable_info``), if it did


class AccountErrorLedger(msgspec.Struct, array_like=True, gc=False):
    """Per partition: the last raw-webhook origin whose account errors were counted, per raw
    source. Facts of one raw partition reach a messages partition in origin order, so an origin
    at or before it is a replay of the same raw record (counted already)."""

    applied: Applied = {}


#: Bucket outcome prefix of account-level errors (in the sender dimension only).
ACCOUNT_ERROR = "account_error."
ACCOUNT_ERROR_CODE = "account_error_code."


#: Template statuses that stop sends (the API's ``paused``).
PAUSED_STATUSES = frozenset({"PAUSED", "DISABLED"})


@dataclass
class MessageStats:
    statuses: int = 0
    new: int = 0
    duplicates: int = 0
    replays: int = 0
    late: int = 0
    send_log: int = 0
    attributed_late: int = 0
    expired_messages: int = 0
    expired_buckets: int = 0
    # send-log timestamps not used as given (milliseconds converted, future/too old refused)
    untrusted: dict[TimeVerdict, int] = field(default_factory=lambda: defaultdict(int))
    # For metrics, pending until ``take_metric_counts`` (which resets them):
    # (dim, key, outcome) -> outcomes counted into buckets (positive deltas, moves included);
    counted: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    # (status, pricing category) -> new statuses (duplicates and replays excluded, late included);
    unique_statuses: dict[tuple[str, str | None], int] = field(
        default_factory=lambda: defaultdict(int)
    )
    # (error class, error code) -> new failed statuses.
    failures: dict[tuple[str | None, int | None], int] = field(
        default_factory=lambda: defaultdict(int)
    )

    # unattributed reason -> messages whose callback data named no template (on their first
    # status; pending until ``take_unattributed``)
    unattributed: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    # (sending number, error class, error code) -> new account-level errors (``value.errors``)
    account_errors: dict[tuple[str, str, int], int] = field(
        default_factory=lambda: defaultdict(int)
    )

    def take_account_errors(self) -> dict[tuple[str, str, int], int]:
        taken, self.account_errors = self.account_errors, defaultdict(int)
        return taken

    def take_unattributed(self) -> dict[str, int]:
        taken, self.unattributed = self.unattributed, defaultdict(int)
        return taken

    def take_metric_counts(
        self,
    ) -> tuple[
        dict[tuple[str, str, str], int],
        dict[tuple[str, str | None], int],
        dict[tuple[str | None, int | None], int],
    ]:
        taken = self.counted, self.unique_statuses, self.failures
        self.counted = defaultdict(int)
        self.unique_statuses = defaultdict(int)
        self.failures = defaultdict(int)
        return taken


@dataclass(frozen=True, slots=True)
class Retention:
    lateness: int = 600
    messages: int = 7 * DAY
    buckets: int = 2 * DAY
    sweep_budget: int = 5_000


#: Bucket dimensions the recent window keeps (the ratio gauges): templates, sending numbers.
_WINDOW_DIMS = frozenset({Dimension.TEMPLATE, Dimension.SENDER})
#: Bucket outcomes the recent window keeps: index 0 attempted sends, 1 limit errors.
_WINDOW_OUTCOMES = {"attempted": 0} | {f"failed.{c}": 1 for c in sorted(LIMIT_CLASSES)}


class RecentWindow:
    """Attempted sends and limit errors per template / sending number and event-time minute,
    over the last ``minutes`` minutes of each partition this stage owns.

    Kept in memory from the deltas counted into minute buckets (moves off template 'unknown'
    included; added when a batch's signals are drained, after every flush), so the scrape-time
    ratio gauges read a few small dicts instead of the tables.
    Not persisted: after a restart or rebalance it refills from new traffic within ``minutes``.
    """

    def __init__(self, minutes: int = 5) -> None:
        self.minutes = minutes
        self._cells: dict[int, dict[int, dict[tuple[str, str], list[int]]]] = {}
        self._watermarks: dict[int, int] = {}

    def add(self, partition: int, dim: str, key: str, minute: int, index: int, n: int) -> None:
        by_minute = self._cells.setdefault(partition, {})
        cells = by_minute.get(minute)
        if cells is None:
            cells = by_minute[minute] = {}
        cell = cells.get((dim, key))
        if cell is None:
            cell = cells[(dim, key)] = [0, 0]
        cell[index] += n

    def advance(self, partition: int, watermark: int) -> None:
        """Record the partition's watermark and forget minutes that left the window."""
        self._watermarks[partition] = watermark
        first = watermark // 60 - self.minutes
        by_minute = self._cells.get(partition, {})
        for minute in [m for m in by_minute if m < first]:
            del by_minute[minute]

    def drop(self, partition: int) -> None:
        self._cells.pop(partition, None)
        self._watermarks.pop(partition, None)

    def totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(dim, key) -> (attempted, limit errors) over the ``minutes`` minutes ending at the
        newest watermark of the owned partitions (the API's 5-minute window)."""
        if not self._watermarks:
            return {}
        end = max(self._watermarks.values()) // 60
        first = end - self.minutes + 1
        out: dict[tuple[str, str], list[int]] = {}
        for by_minute in self._cells.values():
            for minute, cells in by_minute.items():
                if first <= minute <= end:
                    for k, (attempted, limit) in cells.items():
                        total = out.setdefault(k, [0, 0])
                        total[0] += attempted
                        total[1] += limit
        return {k: (a, n) for k, (a, n) in out.items()}


class MessageStage:
    """Applies inputs to the message ledger and the buckets of the partitions it owns."""

    def __init__(
        self,
        kv: KeyValue,
        recipient_partitions: int,
        retention: Retention = Retention(),
        attribution: AttributionConfig = DEFAULT_CONFIG,
        time_trust: TimeTrust | None = None,
        clock: Callable[[], float] = time.time,
        use_native: bool | None = None,
    ) -> None:
        self.state = WriteBack(kv)
        #: the bucket writer, signal cells and status step (streams.native; ``use_native``:
        #: default native when built, unless DELIVERY_MONITOR_NATIVE=0)
        self.impl = native.implementations(use_native)
        self.recipient_partitions = recipient_partitions
        self.retention = retention
        self.time_trust = time_trust or TimeTrust()
        self.clock = clock  # wall clock: the receive time of send-log records without one
        self.attribution = attribution
        self.ledger = MessageLedger(lateness=retention.lateness)
        self.stats = MessageStats()
        self._message_index: dict[int, ExpiryIndex] = {}
        self._bucket_index: dict[int, ExpiryIndex] = {}
        self._out: dict[int, FactBatch] = {}
        #: an outbox batch reached MAX_BATCH_FACTS, or the signals MAX_SIGNAL_ITEMS: flush
        #: before handling more input
        self.full = False
        self._buckets: dict[int, Any] = {}  # partition -> BucketWriter (streams.native)
        self.recent = RecentWindow()
        #: the bucket deltas of this batch for alerting (streams.native.SignalCells)
        self._cells = self.impl.signal_cells()
        self._reported: set[int] = set()  # partitions whose progress the next signal reports
        self._read: dict[int, ReadSoFar] = {}  # partition -> what its reports say
        #: partition -> number of its next report (wall clock in microseconds: increasing
        #: across restarts and owners without being saved)
        self._report_seq: dict[int, int] = {}
        self._last_seq = 0
        self._signals = SignalBatch()
        #: per input source, the first input offset of the current batch applied as new: an
        #: input at or after it that comes again in the same batch (Kafka delivered it twice)
        #: is in the batch's signal already
        self._fresh: dict[int, int] = {}
        #: told after each flush which (dim, hour) of a partition's buckets it changed, and
        #: ``None`` when the partition is revoked (readers that cache hours: streams.rankings)
        self.on_buckets_changed: Callable[[int, set[tuple[str, int]] | None], None] = (
            lambda partition, hours: None
        )

    # -- helpers ------------------------------------------------------------------------------
    def meta(self, partition: int) -> PartitionMeta:
        meta = self.state.get(partition, messages_meta_key(partition), PartitionMeta)
        if meta is None:
            meta = PartitionMeta()
            self.state.put(partition, messages_meta_key(partition), meta)
        return meta

    def _read_so_far(self, partition: int) -> ReadSoFar:
        read = self._read.get(partition)
        if read is None:
            read = self._read[partition] = ReadSoFar()
        return read

    def _indexes(self, partition: int) -> tuple[ExpiryIndex, ExpiryIndex]:
        if partition not in self._message_index:
            self._message_index[partition] = ExpiryIndex(MESSAGE_INDEX, partition)
            self._bucket_index[partition] = ExpiryIndex(BUCKET_INDEX, partition, day=60)
        return self._message_index[partition], self._bucket_index[partition]

    def _bucket_writer(self, partition: int) -> Any:
        writer = self._buckets.get(partition)
        if writer is None:
            state = self.state
            writer = self._buckets[partition] = self.impl.bucket_writer(
                partition, lambda key: state.get_raw(partition, key), BUCKET_PREFIX, SEP
            )
        return writer

    def _effects(
        self, partition: int, position: Position, fx: Effects, meta: PartitionMeta
    ) -> None:
        s = self.stats
        s.duplicates += fx.duplicate
        s.replays += fx.replayed
        s.late += fx.late
        s.attributed_late += fx.attributed_late
        if fx.deltas or fx.shifts:
            deltas = fx.deltas + fx.shifts if fx.shifts else fx.deltas
            created = self._bucket_writer(partition).add(position, deltas)
            if created:
                self._touch_buckets(partition, created, meta)
            # Replayed inputs signal their deltas again, apart from new ones: their first
            # signal may not have reached Kafka (a crash after the state was written); the
            # alerting stage skips those it absorbed (by source and offset).
            # A replayed input's deltas stay apart per input offset: a replay can span several
            # earlier flushes whose signals did and did not come through.
            self._signal_deltas(position, fx)
        for fact in fx.facts:
            self._send_recipient(fact)

    def _touch_buckets(
        self, partition: int, created: list[tuple[str, str, int]], meta: PartitionMeta
    ) -> None:
        """Index buckets the writer created (for their expiry)."""
        bucket_index = self._indexes(partition)[1]
        for dim, key, minute in created:
            bucket_id = BucketId(dim, key, partition, minute)
            bucket_index.touch(bucket_id.encode(), minute * 60, meta.buckets)

    def _signal_deltas(self, position: Position, fx: Effects) -> None:
        source, offset, replayed = position[0], position[1], fx.replayed
        if not replayed:
            self._fresh.setdefault(source, offset)
        elif offset >= self._fresh.get(source, offset + 1):
            return  # first applied in this batch: its deltas are in this batch's signal
        self._cells.add(source, offset, replayed, fx.deltas, fx.shifts)

    def _us_paused(self, fact: StatusFact, fx: Effects) -> None:
        """Tell alerting about a US-pause failure counted in the buckets (again when replayed:
        alerting counts distinct recipients, a repeat changes nothing; a retry of the status
        with a lower mark tells it again from its earlier point)."""
        for d in fx.deltas or fx.shifts:
            if d.dim == Dimension.SENDER and d.outcome == US_PAUSED_OUTCOME and d.delta > 0:
                number = recipient_number(fact.recipient)
                self._signals.us_paused.append(USPaused(d.minute, d.visible, number))
                return

    def _send_recipient(self, fact: RecipientFact) -> None:
        p = partition_for(fact.recipient, self.recipient_partitions)
        batch = self._out.get(p)
        if batch is None:
            batch = self._out[p] = FactBatch()
        elif len(batch.recipients) >= MAX_BATCH_FACTS:
            self.full = True
        batch.recipients.append(fact)

    # -- inputs -------------------------------------------------------------------------------
    def handle_batch(self, partition: int, offset: int, raw: bytes) -> None:
        """A record of the messages topic: status and template facts from stage 1."""
        batch = decode_batch(raw)
        source = source_id(MESSAGES, partition)
        meta = self.meta(partition)
        self._indexes(partition)  # from its first record on, flush sweeps the partition
        stats, signals = self.stats, self._signals
        seen_marks = meta.origin_watermarks  # per origin, as seen in this partition's facts
        stats.statuses += len(batch.statuses)
        self._reported.add(partition)
        for index, fact in enumerate(batch.statuses):
            position = (source, offset, index)
            skey = MESSAGE_PREFIX + fact.wamid  # message_key(wamid), as str for the expiry index
            attribution = decode_callback_data(fact.opaque, self.attribution)
            ts, origin = fact.timestamp, fact.origin[0]
            origin_mark = seen_marks.get(origin, 0)
            new, first_status, category = self._status(
                partition, skey, fact, position, origin_mark, attribution, meta
            )
            if ts > meta.watermark:
                meta.watermark = ts
            if ts > origin_mark:
                seen_marks[origin] = ts
            if new:
                stats.unique_statuses[(fact.status, fact.category or category)] += 1
                if first_status and attribution.unattributed is not None:
                    stats.unattributed[attribution.unattributed] += 1
                if fact.status == "failed":
                    stats.failures[(fact.error_class, fact.error_code)] += 1
                    if fact.error_code in INCIDENT_CODES:
                        signals.errors.append(
                            ErrorCount(fact.error_code, fact.sender or "unknown", ts)
                        )
            if ts > signals.max_ts:
                signals.max_ts = ts
        self._signals.watermarks[partition] = meta.watermark
        for template in batch.templates:
            self._template(partition, template)
        if batch.account_errors:
            self._account_errors(partition, batch.account_errors, meta)
        if batch.marks:
            self._read_so_far(partition).take(batch)
        self.state.put(partition, messages_meta_key(partition), meta)
        self._check_signals()

    def _check_signals(self) -> None:
        """Report ``full`` once the batch's signals hold MAX_SIGNAL_ITEMS items."""
        s = self._signals
        if len(self._cells) + len(s.errors) + len(s.us_paused) + len(s.templates) >= (
            MAX_SIGNAL_ITEMS
        ):
            self.full = True

    def _status(
        self,
        partition: int,
        skey: str,
        fact: StatusFact,
        position: Position,
        origin_mark: int,
        attribution: Attribution,
        meta: PartitionMeta,
    ) -> tuple[bool, bool, str | None]:
        """Apply one status: (new, first status of the message, the message's category). In
        native code when built (:mod:`streams.native`), unless the input was applied before:
        a replay takes the Python ledger, which re-derives its effects."""
        key = skey.encode()
        inputs = (fact, position, origin_mark, *_named(attribution))
        if self.impl.apply_status is not None:
            writer, raw = self._bucket_writer(partition), self.state.get_raw(partition, key)
            result = self.impl.apply_status(
                writer, self._cells, raw, *inputs, self.ledger.lateness, is_retryable, RecipientFact
            )
            if result is not None:
                return self._native_effects(partition, skey, fact, position, meta, result)
        state = self.state.get(partition, key, MessageState)
        first_status = state is None or not state.seen
        state, fx = self.ledger.apply_status(state, *inputs)
        self.state.put(partition, key, state)
        if fact.error_class == US_PAUSED and (fx.shifts or not fx.duplicate):
            self._us_paused(fact, fx)
        self._indexes(partition)[0].touch(skey, state.last_ts, meta.messages)
        self._effects(partition, position, fx, meta)
        return not (fx.duplicate or fx.replayed), first_status, state.category

    def _native_effects(
        self,
        partition: int,
        skey: str,
        fact: StatusFact,
        position: Position,
        meta: PartitionMeta,
        result: tuple[bytes, int, str | None, int, list[RecipientFact], list[Any], Any],
    ) -> tuple[bool, bool, str | None]:
        """What :meth:`_effects` does with the native step's result (its buckets and signal
        cells are written already)."""
        raw, flags, category, last_ts, facts, created, us_paused = result
        self.state.put_encoded(partition, skey.encode(), raw)
        duplicate, replayed = bool(flags & native.DUPLICATE), bool(flags & native.REPLAYED)
        s = self.stats
        s.duplicates += duplicate
        s.replays += replayed
        s.late += bool(flags & native.LATE)
        if us_paused is not None:
            minute, visible = us_paused
            number = recipient_number(fact.recipient)
            self._signals.us_paused.append(USPaused(minute, visible, number))
        self._indexes(partition)[0].touch(skey, last_ts, meta.messages)
        if flags & native.COUNTED:
            self._fresh.setdefault(position[0], position[1])
            if created:
                self._touch_buckets(partition, created, meta)
        for recipient_fact in facts:
            self._send_recipient(recipient_fact)
        return not (duplicate or replayed), bool(flags & native.FIRST_STATUS), category

    def handle_send_log(
        self, partition: int, offset: int, raw: bytes, received: int | None = None
    ) -> None:
        """A record of the sender's send log; raises SendLogError for a bad record (a
        ``sent_at`` that is not a number, or one not trusted: see
        :mod:`streams.core.eventtime`). ``received``: when Kafka received it (default: now)."""
        record = decode_send_log(raw)
        if received is None:
            received = int(self.clock())
        sent_at = record.sent_at_seconds()
        if sent_at is not None:
            trusted, verdict = trust(sent_at, received, self.time_trust)
            if trusted is None:
                self.stats.untrusted[verdict] += 1
                raise SendLogError(refusal("sent_at", sent_at, received, verdict, self.time_trust))
            if trusted != sent_at:
                self.stats.untrusted[verdict] += 1
                record = msgspec.structs.replace(record, sent_at=trusted)
        self.stats.send_log += 1
        position = (source_id(SEND_LOG, partition), offset, 0)
        key = message_key(record.wamid)
        meta = self.meta(partition)
        meta.log_mark = max(meta.log_mark, record.sent_at_seconds() or received)
        read = self._read_so_far(partition)
        read.log_mark = max(read.log_mark, record.sent_at_seconds() or received)
        self._reported.add(partition)
        message_index, _ = self._indexes(partition)
        state = self.state.get(partition, key, MessageState)
        state, fx = self.ledger.apply_send_log(state, record, position, meta.log_mark)
        self.state.put(partition, key, state)
        # a record without sent_at whose statuses never come expires from the partition's time
        if ts := state.last_ts or meta.watermark:
            message_index.touch(key.decode(), ts, meta.messages)
        self._effects(partition, position, fx, meta)
        self._check_signals()

    def _account_errors(
        self, partition: int, facts: list[AccountErrorFact], meta: PartitionMeta
    ) -> None:
        """Count account-level errors once per raw origin: in the sending number's minute
        buckets (``account_error.<class>``, ``account_error_code.<code>``), the stats for
        metrics, and ``ErrorCount`` signals for the immediate rules. A replayed origin only
        re-adds its bucket deltas, which the bucket skips if it has them (buckets of these
        deltas are keyed by the origin too)."""
        key = account_ledger_key(partition)
        ledger = self.state.get(partition, key, AccountErrorLedger) or AccountErrorLedger()
        writer = self._bucket_writer(partition)
        signals = self._signals
        for fact in facts:
            minute, sender = fact.timestamp // 60, Dimension.SENDER
            deltas = [
                BucketDelta(
                    sender, fact.sender, minute, ACCOUNT_ERROR + fact.error_class, fact.count
                ),
                BucketDelta(
                    sender, fact.sender, minute, f"{ACCOUNT_ERROR_CODE}{fact.code}", fact.count
                ),
            ]
            created = writer.add(fact.origin, deltas)
            if created:
                self._touch_buckets(partition, created, meta)
            if already_applied(ledger.applied, fact.origin):
                self.stats.replays += 1
                continue
            mark_applied(ledger.applied, fact.origin)
            self.stats.account_errors[(fact.sender, fact.error_class, fact.code)] += fact.count
            signals.errors.append(ErrorCount(fact.code, fact.sender, fact.timestamp, fact.count))
            if fact.timestamp > signals.max_ts:
                signals.max_ts = fact.timestamp
        self.state.put(partition, key, ledger)

    def _template(self, partition: int, fact: TemplateFact) -> None:
        self._signals.templates.append(
            TemplateSignal(
                fact.name, fact.field, fact.value, fact.timestamp, fact.reason, fact.disabled_at
            )
        )
        key = template_key(fact.name)
        state = self.state.get(partition, key, TemplateState) or TemplateState()
        if fact.field == "status" and fact.timestamp >= state.status_ts:
            was_paused = state.status in PAUSED_STATUSES
            state.status, state.status_ts, state.reason = fact.value, fact.timestamp, fact.reason
            state.disabled_at = fact.disabled_at
            self.meta(partition).paused_templates += (state.status in PAUSED_STATUSES) - was_paused
        elif fact.field == "quality" and fact.timestamp >= state.quality_ts:
            state.quality, state.quality_ts = fact.value, fact.timestamp
        elif fact.field == "category" and fact.timestamp >= state.category_ts:
            state.category, state.category_ts = fact.value, fact.timestamp
        self.state.put(partition, key, state)

    # -- flushing -----------------------------------------------------------------------------
    def flush(self, partition: int) -> int:
        """Sweep expired state, write the partition's changed keys once; returns writes."""
        writer = self._buckets.get(partition)
        changed: set[tuple[str, int]] = set()
        if writer is not None:
            writes, changed = writer.reset()
            for key, raw in writes:
                self.state.put_encoded(partition, key, raw)
        if partition in self._message_index:
            meta = self.meta(partition)
            message_index, bucket_index = self._indexes(partition)
            view = self.state.view(partition)
            r = self.retention

            def expire_message(key: str) -> bool:
                state = self.state.get(partition, key.encode(), MessageState)
                if state is None:
                    return False
                if state.last_ts >= meta.watermark - r.messages:
                    return False
                view.delete(key)
                return True

            def expire_bucket(key: str) -> bool:
                view.delete(key)
                bucket = BucketId.decode(key)
                changed.add((bucket.dim, bucket.minute // 60))
                return True

            self.stats.expired_messages += message_index.sweep(
                meta.messages,
                meta.watermark,
                r.messages,
                r.sweep_budget,
                view.get,
                view.delete,
                expire_message,
            )
            self.stats.expired_buckets += bucket_index.sweep(
                meta.buckets,
                meta.watermark,
                r.buckets,
                r.sweep_budget,
                view.get,
                view.delete,
                expire_bucket,
            )
            message_index.flush(view.get, view.put)
            bucket_index.flush(view.get, view.put)
            self.recent.advance(partition, meta.watermark)
            self.state.put(partition, messages_meta_key(partition), meta)
        writes = self.state.flush(partition)
        self.on_buckets_changed(partition, changed)
        return writes

    def drain_outbox(self) -> dict[int, bytes]:
        """The facts for the recipients stage per partition; every recipients partition also
        gets the number of the next report of each partition with one (see
        :attr:`~streams.core.facts.FactBatch.progress`): call before :meth:`drain_signals`."""
        if self._reported:
            seq = self._last_seq = max(self._last_seq + 1, int(self.clock() * 1_000_000))
            progress = {p: seq for p in sorted(self._reported)}
            self._report_seq.update(progress)
            for r in range(self.recipient_partitions):
                batch = self._out.get(r)
                if batch is None:
                    batch = self._out[r] = FactBatch()
                batch.progress = progress
        out = {p: encode_batch(b) for p, b in self._out.items()}
        self._out = {}
        self.full = False
        return out

    def drain_signals(self) -> SignalBatch | None:
        """What the alerting stage needs to know of the inputs since the last call."""
        batch = self._signals
        counted = self.stats.counted
        for k, n in self._cells.take_counted():
            counted[k] += n
        buckets = []
        for source, apart, dim, key, minute, visible, counts, upto in self._cells.drain():
            if not any(counts.values()):
                continue
            buckets.append(BucketSignal(dim, key, minute, counts, source, upto, visible))
            if apart >= 0 or dim not in _WINDOW_DIMS:  # replayed: in the window already
                continue
            for outcome, n in counts.items():
                window = _WINDOW_OUTCOMES.get(outcome)
                if window is not None:
                    self.recent.add(source_partition(source), dim, key, minute, window, n)
        batch.buckets = buckets
        for p in sorted(self._reported):
            read = self._read_so_far(p)
            batch.reports.append(
                PartitionReport(
                    p,
                    dict(read.marks),
                    sorted(read.idle),
                    read.raw_partitions,
                    read.log_mark,
                    sorted(read.behind),
                    self._report_seq.get(p, 0),
                )
            )
        self._reported = set()
        self._fresh = {}
        self._signals = SignalBatch()
        # a flush of only duplicates still moves its partitions' event time for alerting
        return None if batch.empty() and not batch.watermarks and not batch.reports else batch

    def revoke(self, partition: int) -> None:
        """Forget the partition's unflushed work: its new owner (or this worker, after the
        rebalance) handles those inputs again from the committed offset, and their signals
        come then (sent now as well, the detector would count them twice)."""
        self.state.discard(partition)
        sources = {source_id(MESSAGES, partition), source_id(SEND_LOG, partition)}
        self._cells.discard(sorted(sources))
        for source in sources:
            self._fresh.pop(source, None)
        self._reported.discard(partition)
        self._read.pop(partition, None)
        self._buckets.pop(partition, None)
        self._message_index.pop(partition, None)
        self._bucket_index.pop(partition, None)
        self.recent.drop(partition)
        self.on_buckets_changed(partition, None)

    def paused_templates(self, partitions: list[int]) -> int:
        """Templates now PAUSED or DISABLED on ``partitions``, from each partition's flushed
        meta record (one read per partition)."""
        total = 0
        for p in partitions:
            raw = self.state.kv.get(p, messages_meta_key(p))
            if raw is not None:
                total += decode(raw, PartitionMeta).paused_templates
        return total


__all__ = ["MessageStage", "PartitionMeta", "Retention", "SendLogError", "TemplateState"]
