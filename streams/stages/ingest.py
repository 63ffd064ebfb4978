"""Stage 1: parse raw webhook bodies into facts for the next stages; dead-letter the rest."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from streams.core import (
    AccountErrorEvent,
    AccountUpdateEvent,
    ContactLinkEvent,
    InboundMessageEvent,
    ParseError,
    PhoneNumberQualityEvent,
    StatusEvent,
    TemplateCategoryEvent,
    TemplateQualityEvent,
    TemplateStatusEvent,
    UserPreferenceEvent,
    classify,
    parse_webhook,
)
from streams.core.eventtime import TimeTrust, TimeVerdict, refusal, trust
from streams.core.facts import (
    MAX_BATCH_FACTS,
    AccountErrorFact,
    FactBatch,
    RecipientFact,
    RecipientFactKind,
    StatusFact,
    TemplateFact,
    encode_batch,
    source_id,
    source_partition,
)
from streams.core.immediate import AccountEvent, PhoneQualityChange
from streams.core.signals import SignalBatch
from streams.stages import RAW, partition_for


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An input the monitor could not use, kept byte for byte with where it came from."""

    value: bytes
    reason: str
    topic: str
    partition: int
    offset: int
    partial: bool = False  # some items of the body were used (the rest is in ``reason``)

    @property
    def key(self) -> bytes:
        return f"{self.topic}/{self.partition}/{self.offset}".encode()

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("dlq.reason", self.reason.encode()[:4000]),
            ("dlq.topic", self.topic.encode()),
            ("dlq.partition", str(self.partition).encode()),
            ("dlq.offset", str(self.offset).encode()),
            ("dlq.partial", b"true" if self.partial else b"false"),
        ]


@dataclass
class IngestStats:
    records: int = 0
    statuses: int = 0
    other_events: int = 0
    dead_letters: int = 0
    partial: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    last_event_ts: int = 0  # newest event time (webhook timestamp) seen, unix seconds
    # timestamps not used as given, by verdict (milliseconds converted, future/too old refused)
    untrusted: dict[TimeVerdict, int] = field(default_factory=lambda: defaultdict(int))
    # For metrics, pending until ``take_lag`` (which resets them): status events per
    # (status, index of the first LAG_BUCKETS bound >= lag) and the sum of lags per status.
    lag_counts: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    lag_sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    #: inbound messages' own errors (e.g. 131051), pending until ``take_inbound_errors``:
    #: (error class, error code) -> count (the ingest stage counts at least once)
    inbound_errors: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))

    def take_inbound_errors(self) -> dict[tuple[str, int], int]:
        taken, self.inbound_errors = self.inbound_errors, defaultdict(int)
        return taken

    def take_lag(self) -> tuple[dict[tuple[str, int], int], dict[str, float]]:
        counts, sums = self.lag_counts, self.lag_sums
        self.lag_counts, self.lag_sums = defaultdict(int), defaultdict(float)
        return counts, sums


#: Upper bounds (seconds) of the event-lag histogram: wall clock at ingest minus the webhook's
#: timestamp. Meta's own delay is sub-second to seconds; retries and a backlog reach hours.
LAG_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def status_fact(event: StatusEvent, origin: tuple[int, int, int], mark: int = 0) -> StatusFact:
    phone, user_id = event.recipient_phone, event.recipient_user_id
    if event.recipient_type == "group":  # about one participant: their state, not the group's
        phone = event.recipient_participant_id
        user_id = event.recipient_participant_user_id
    return StatusFact(
        wamid=event.wamid,
        status=event.raw_status if event.status == "unknown" else event.status.value,
        timestamp=event.timestamp,
        sender=event.phone_number_id or "",
        phone=phone,
        user_id=user_id,
        country=event.country,
        is_us=event.is_us,
        opaque=event.biz_opaque_callback_data,
        category=event.pricing_category,
        error_code=event.error_code,
        error_class=event.error_class.value if event.error_class is not None else None,
        origin=origin,
        mark=mark or event.timestamp,
    )


class IngestStage:
    """Parses raw bodies and batches the facts per destination partition until ``drain``.

    Event time: every timestamp is checked against the time Kafka received its record
    (:func:`streams.core.eventtime.trust`); an item whose time is refused is left out and its
    body dead-lettered as partial, with the reason. Per raw partition the stage keeps the *mark*
    (newest trusted event time read, :mod:`streams.core.eventtime`), stamps it on every status,
    and sends every messages partition the marks of the raw partitions it reads with each drain
    (and whenever a partition becomes idle: read to its end and quiet for ``idle_s``).
    """

    def __init__(
        self,
        message_partitions: int,
        recipient_partitions: int,
        clock: Callable[[], float] = time.time,
        time_trust: TimeTrust | None = None,
        idle_s: float = 10.0,
    ) -> None:
        self._clock = clock  # wall clock: event lag, receive time of records without one, idleness
        self.message_partitions = message_partitions
        self.recipient_partitions = recipient_partitions
        self.trust = time_trust or TimeTrust()
        self.idle_s = idle_s
        self._messages: dict[int, FactBatch] = {}
        self._recipients: dict[int, FactBatch] = {}
        self._dead: list[DeadLetter] = []
        self._signals: SignalBatch | None = None
        #: account errors of the record being handled, aggregated per (source, offset, sender,
        #: code, time): the index of their fact in its batch (cleared by ``drain``)
        self._account_facts: dict[tuple[int, int, str, int, int], tuple[FactBatch, int]] = {}
        self.stats = IngestStats()
        #: a destination batch reached MAX_BATCH_FACTS: drain before handling more input
        self.full = False
        #: raw partition -> newest trusted event time read (restored from the commit after a
        #: restart: see :meth:`restore_mark`)
        self.marks: dict[int, int] = {}
        self.raw_partitions = 0
        self._read_at: dict[int, float] = {}  # raw partition -> wall clock of its last record
        self._caught_up: dict[int, bool] = {}  # raw partition -> read to its end at last poll
        #: marks, idle and behind partitions last sent
        self._sent: tuple[dict[int, int], list[int], list[int]] | None = None

    # -- partitions and marks ---------------------------------------------------------------------
    def assign(self, partitions: Iterable[int], raw_partitions: int) -> None:
        """Raw partitions this stage now reads (of ``raw_partitions`` in the topic)."""
        now = self._clock()
        self.raw_partitions = raw_partitions
        for p in partitions:
            self.marks.setdefault(p, 0)
            self._read_at.setdefault(p, now)
            self._caught_up.setdefault(p, False)

    def revoke(self, partitions: Iterable[int]) -> None:
        """Another reader has these partitions now: their marks are its to send."""
        for p in partitions:
            self.marks.pop(p, None)
            self._read_at.pop(p, None)
            self._caught_up.pop(p, None)

    def restore_mark(self, partition: int, mark: int) -> None:
        """The mark committed with the partition's offset: the records before it were read."""
        if mark > self.marks.get(partition, 0):
            self.marks[partition] = mark

    def caught_up(self, partition: int, caught_up: bool) -> None:
        """Whether the reader had read ``partition`` to its end at its last poll."""
        if partition in self.marks:
            self._caught_up[partition] = caught_up

    def idle(self) -> list[int]:
        """Raw partitions read to their end and without a record for ``idle_s``."""
        now = self._clock()
        return sorted(
            p
            for p, caught_up in self._caught_up.items()
            if caught_up and now - self._read_at.get(p, now) >= self.idle_s
        )

    def behind(self) -> list[int]:
        """Raw partitions not read to their end at the last poll (a backlog being read)."""
        return sorted(p for p, caught_up in self._caught_up.items() if not caught_up)

    @property
    def marks_due(self) -> bool:
        """The marks, idle or behind partitions changed since the last drain sent them."""
        return self._sent != (self.marks, self.idle(), self.behind())

    def _trusted(self, ts: int | None, received: int, what: str, refused: list[str]) -> int | None:
        """``ts`` if it may be used (converted from milliseconds when it was), else None with
        the reason appended to ``refused`` (``None`` in, ``None`` out: no time of its own)."""
        if ts is None:
            return None
        trusted, verdict = trust(ts, received, self.trust)
        if verdict is not TimeVerdict.OK:
            self.stats.untrusted[verdict] += 1
        if trusted is None:
            refused.append(refusal(what, ts, received, verdict, self.trust))
        return trusted

    def _to_messages(self, key: str) -> FactBatch:
        p = partition_for(key, self.message_partitions)
        batch = self._messages.get(p)
        if batch is None:
            batch = self._messages[p] = FactBatch()
        elif len(batch.statuses) + len(batch.templates) + len(batch.account_errors) >= (
            MAX_BATCH_FACTS
        ):
            self.full = True
        return batch

    def _recipient(self, fact: RecipientFact) -> None:
        p = partition_for(fact.recipient, self.recipient_partitions)
        batch = self._recipients.get(p)
        if batch is None:
            batch = self._recipients[p] = FactBatch()
        batch.recipients.append(fact)
        if len(batch.recipients) >= MAX_BATCH_FACTS:
            self.full = True

    def handle(
        self, topic: str, partition: int, offset: int, raw: bytes, received: int | None = None
    ) -> None:
        """One raw record; ``received`` is when Kafka received it (unix seconds; default: now)."""
        stats = self.stats
        stats.records += 1
        now = self._clock()
        self._read_at[partition] = now
        try:
            parsed = parse_webhook(raw)
        except ParseError as exc:
            stats.dead_letters += 1
            self._dead.append(DeadLetter(raw, str(exc), topic, partition, offset))
            return
        if received is None:
            received = int(now)
        source = source_id(RAW, partition)
        mark = self.marks.get(partition, 0)
        body_ts = 0
        refused: list[str] = []
        others: list[tuple[int, object]] = []
        by_status, lag_counts, lag_sums = stats.by_status, stats.lag_counts, stats.lag_sums
        for index, event in enumerate(parsed.events):
            if isinstance(event, StatusEvent):
                ts = self._trusted(event.timestamp, received, "status", refused)
                if ts is None:
                    continue
                if ts != event.timestamp:
                    event = msgspec.structs.replace(event, timestamp=ts)
                if ts > body_ts:
                    body_ts = ts
                if ts > mark:
                    mark = ts
                status = event.status.value
                by_status[status] += 1
                lag = now - ts
                lag_counts[(status, bisect_left(LAG_BUCKETS, lag))] += 1
                lag_sums[status] += lag
                stats.statuses += 1
                fact = status_fact(event, (source, offset, index), mark)
                self._to_messages(event.wamid).statuses.append(fact)
            else:
                given = getattr(event, "timestamp", None)
                ts = self._trusted(given, received, type(event).__name__, refused)
                if given is not None and ts is None:
                    continue
                if ts != given:
                    event = msgspec.structs.replace(event, timestamp=ts)
                others.append((index, event))
                if ts is not None and ts > body_ts:
                    body_ts = ts
                if ts is not None and ts > mark:
                    mark = ts
        self.marks[partition] = mark
        if body_ts > stats.last_event_ts:
            stats.last_event_ts = body_ts
        for index, other in others:
            stats.other_events += 1
            self._other(other, (source, offset, index), body_ts)
        defects = [str(d) for d in parsed.defects] + refused
        if defects:
            stats.partial += 1
            reason = "; ".join(defects)
            self._dead.append(DeadLetter(raw, reason, topic, partition, offset, partial=True))

    def _other(self, event: object, pos: tuple[int, int, int], body_ts: int) -> None:
        K = RecipientFactKind
        if isinstance(event, InboundMessageEvent):
            who = event.from_phone or event.from_user_id
            if who:
                self._recipient(RecipientFact(who, K.INBOUND_MESSAGE, event.timestamp, pos))
            for error in event.errors:
                self.stats.inbound_errors[
                    (classify(error.code, is_us=False).value, error.code)
                ] += 1
        elif isinstance(event, AccountErrorEvent):
            self._account_error(event, pos, body_ts)
        elif isinstance(event, ContactLinkEvent):
            ts = body_ts  # contacts[] carry no time of their own
            self._recipient(RecipientFact(event.phone, K.LINK, ts, pos, other=event.user_id))
            self._recipient(RecipientFact(event.user_id, K.LINK, ts, pos, other=event.phone))
        elif isinstance(event, UserPreferenceEvent):
            who = event.phone or event.user_id
            kind = {"stop": K.PREFERENCE_STOP, "resume": K.PREFERENCE_RESUME}.get(event.preference)
            if who and kind is not None and event.timestamp is not None:
                self._recipient(RecipientFact(who, kind, event.timestamp, pos))
        elif isinstance(event, PhoneNumberQualityEvent) and event.event:
            sender = event.display_phone_number or "unknown"
            change = PhoneQualityChange(
                sender, event.event, event.timestamp or body_ts, event.current_limit
            )
            self._signal().phone_quality.append(change)
        elif isinstance(event, AccountUpdateEvent) and event.event:
            account = AccountEvent(
                event.event,
                event.timestamp or body_ts,
                tuple(event.restriction_types),
                event.ban_state,
                event.violation_type,
                restricted_until=event.restricted_until,
                ban_date=event.ban_date,
            )
            self._signal().accounts.append(account)
        elif isinstance(event, TemplateStatusEvent | TemplateQualityEvent | TemplateCategoryEvent):
            fact = template_fact(event)
            if fact is not None:
                self._to_messages(fact.name).templates.append(fact)

    def _account_error(
        self, event: AccountErrorEvent, pos: tuple[int, int, int], body_ts: int
    ) -> None:
        """An account-level error becomes a fact for the sending number's messages partition;
        identical ones of one record (same number, code and time) become one fact with a count,
        so a body of thousands of errors stays one small record."""
        sender = event.phone_number_id or "unknown"
        # value.errors items carry no time: the entry's time, else the body's newest event
        # time, else the newest trusted time of its raw partition (the wall clock would put
        # an error of a replayed log at the time of the replay)
        mark = self.marks.get(source_partition(pos[0]), 0)
        ts = event.timestamp or body_ts or mark or int(self._clock())
        key = (pos[0], pos[1], sender, event.code, ts)
        found = self._account_facts.get(key)
        if found is not None:
            batch, i = found
            fact = batch.account_errors[i]
            batch.account_errors[i] = msgspec.structs.replace(fact, count=fact.count + 1)
            return
        batch = self._to_messages(sender)
        fact = AccountErrorFact(sender, event.code, event.error_class.value, ts, pos)
        self._account_facts[key] = (batch, len(batch.account_errors))
        batch.account_errors.append(fact)

    def _signal(self) -> SignalBatch:
        if self._signals is None:
            self._signals = SignalBatch()
        return self._signals

    def drain_signals(self) -> SignalBatch | None:
        batch, self._signals = self._signals, None
        if batch is not None:
            ts = [e.ts for e in batch.phone_quality] + [e.ts for e in batch.accounts]
            batch.max_ts = max(ts, default=0)
        return batch

    def drain(self) -> tuple[dict[int, bytes], dict[int, bytes], list[DeadLetter]]:
        """The encoded batches per destination partition and the dead letters; resets. Every
        messages partition gets the raw partitions' marks (after the facts they cover)."""
        if self.marks:
            marks, idle, behind = dict(self.marks), self.idle(), self.behind()
            for p in range(self.message_partitions):
                batch = self._messages.get(p)
                if batch is None:
                    batch = self._messages[p] = FactBatch()
                batch.marks, batch.idle, batch.raw_partitions = marks, idle, self.raw_partitions
                batch.behind = behind
            self._sent = (marks, idle, behind)
        messages = {p: encode_batch(b) for p, b in self._messages.items()}
        recipients = {p: encode_batch(b) for p, b in self._recipients.items()}
        dead = self._dead
        self._messages, self._recipients, self._dead = {}, {}, []
        self._account_facts = {}
        self.full = False
        return messages, recipients, dead

    @property
    def pending(self) -> bool:
        return bool(self._messages or self._recipients or self._dead)


def template_fact(
    event: TemplateStatusEvent | TemplateQualityEvent | TemplateCategoryEvent,
) -> TemplateFact | None:
    name = event.template_name
    ts = event.timestamp or 0
    if not name:
        return None
    if isinstance(event, TemplateStatusEvent):
        if not event.event:
            return None
        return TemplateFact(name, "status", event.event, ts, event.reason, event.disabled_at)
    if isinstance(event, TemplateQualityEvent):
        if not event.new_quality:
            return None
        return TemplateFact(name, "quality", event.new_quality, ts)
    value = getattr(event, "new_category", None) or getattr(event, "correct_category", None)
    return TemplateFact(name, "category", str(value), ts) if value else None
