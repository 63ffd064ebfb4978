"""The records that travel between the monitor's stages, and the send-log schema.

Stage 1 (parse) turns webhook bodies into :class:`StatusFact` batches for stage 2 (messages,
keyed by wamid; account-level errors as :class:`AccountErrorFact`, keyed by sending number) and
:class:`RecipientFact` batches for stage 3 (recipients, keyed by recipient).
Both are msgpack arrays (compact, fast) and carry a :data:`Position`: where they came from, so
every stage can apply each input exactly once even when an at-least-once replay repeats it.

The send log is the sender's own record of what it sent (JSON, keyed by wamid):

    {"wamid": "wamid.HBg...", "recipient": "16505551234", "template": "spring_sale",
     "category": "marketing", "campaign": "2026-05", "sent_at": 1751142880,
     "phone_number_id": "106540352242922"}

``wamid`` and ``template`` are required; ``sent_at`` is unix seconds (int or numeric string);
``phone_number_id`` is the sending number (known before the message's first status).
"""

from __future__ import annotations

import enum
import math

import msgspec

#: Where an input came from: (source, offset, index within the record). ``source`` names one
#: partition of one topic (see :func:`source_id`); positions of the same source are totally
#: ordered, positions of different sources are not comparable.
Position = tuple[int, int, int]

NO_POSITION: Position = (-1, -1, -1)


def source_id(topic_code: int, partition: int) -> int:
    """A number for (topic, partition): ``topic_code`` is the stage's own small topic number."""
    return topic_code * 100_000 + partition


def source_partition(source: int) -> int:
    """The partition of a :func:`source_id`."""
    return source % 100_000


def source_topic(source: int) -> int:
    """The topic code of a :func:`source_id`."""
    return source // 100_000


Applied = dict[int, tuple[int, int]]


def already_applied(applied: Applied, position: Position) -> bool:
    """True when ``position`` is at or before the last input absorbed from its source."""
    last = applied.get(position[0])
    return last is not None and (position[1], position[2]) <= last


def mark_applied(applied: Applied, position: Position) -> None:
    applied[position[0]] = (position[1], position[2])


class StatusFact(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """What stage 2 needs of one status: the parser's :class:`StatusEvent`, trimmed.

    ``origin`` is the raw webhook's position: a replay of the same raw record has the same
    origin, a duplicate sent by Meta has a different one.
    """

    wamid: str
    status: str
    timestamp: int
    sender: str
    phone: str | None
    user_id: str | None
    country: str
    is_us: bool
    opaque: str | None
    category: str | None
    error_code: int | None
    error_class: str | None
    origin: Position
    #: the origin partition's newest trusted event time up to this item (see core.eventtime)
    mark: int = 0

    @property
    def recipient(self) -> str:
        """Key of the recipient's state: the phone when known, else the BSUID."""
        return self.phone or self.user_id or ""


class SendLogRecord(msgspec.Struct, frozen=True, gc=False):
    """One message the sender sent (the optional send-log topic)."""

    wamid: str
    template: str
    recipient: str | None = None
    category: str | None = None
    campaign: str | None = None
    sent_at: int | str | None = None
    phone_number_id: str | None = None

    def sent_at_seconds(self) -> int | None:
        """``sent_at`` as whole seconds; raises :class:`SendLogError` for a value that is not a
        finite number."""
        if self.sent_at is None:
            return None
        if isinstance(self.sent_at, int):
            return self.sent_at
        try:
            value = float(self.sent_at)
        except ValueError:
            raise SendLogError(
                f"send-log record: sent_at {self.sent_at!r} is not a number"
            ) from None
        if not math.isfinite(value):
            raise SendLogError(f"send-log record: sent_at {self.sent_at!r} is not a finite number")
        return int(value)


class RecipientFactKind(enum.IntEnum):
    """What happened to a recipient (stage 3 keeps per-recipient state from these)."""

    MARKETING_DELIVERED = 1  # a marketing template reached the user (counts toward the limit)
    LIMIT_FAILURE = 2  # 131049 / 1026 per-user marketing limit
    US_PAUSE = 3  # 131049 to a US number: the US marketing pause
    OPT_OUT_FAILURE = 4  # 131050 / 498: the user stopped marketing messages
    UNDELIVERABLE = 5  # 131026
    MARKETING_ATTEMPT = 6  # a marketing template was sent (send log or sent status)
    INBOUND_MESSAGE = 7  # the user wrote: customer-service window open for 24 h
    PREFERENCE_STOP = 8  # user_preferences stop
    PREFERENCE_RESUME = 9  # user_preferences resume
    LINK = 10  # phone <-> BSUID pair; ``other`` holds the other id
    MARKETING_READ = 11  # a marketing template was read (engagement)
    SEND_ATTEMPT = 12  # a non-marketing message was sent (cancels retry plans of its template)
    RETRYABLE_FAILURE = 13  # a failure a retry plan is made for (throughput, backoff; ``code``)


class RecipientFact(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One fact about one recipient, at event time ``timestamp``."""

    recipient: str
    kind: RecipientFactKind
    timestamp: int
    position: Position
    other: str | None = None
    template: str | None = None
    wamid: str | None = None
    #: the sending number (phone_number_id) and campaign, on attempts and failures only
    sender: str | None = None
    campaign: str | None = None
    code: int | None = None  # the error code, on failures


class TemplateFact(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A template webhook (status / quality / category update) for the template's state."""

    name: str
    field: str  # "status" | "quality" | "category"
    value: str
    timestamp: int
    reason: str | None = None
    disabled_at: int | None = None  # a DISABLED status: when (``disable_info.disable_date``)


class AccountErrorFact(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """``count`` account-level errors (``value.errors[]``: no message, no wamid) with one code
    from sending number ``sender`` at ``timestamp``, from one raw webhook (``origin``: the
    position of the first of them). Stage 2 applies each origin once: replays of the same raw
    record carry the same origins."""

    sender: str
    code: int
    error_class: str
    timestamp: int
    origin: Position
    count: int = 1


#: Facts per :class:`FactBatch` before its stage flushes (checked between input records, so one
#: record's facts can come on top: at most ~5,400 recipient facts of ~110 bytes): keeps every
#: internal record well under Kafka's default 1 MB message limit.
MAX_BATCH_FACTS = 1_000


class FactBatch(msgspec.Struct, array_like=True, gc=False):
    """Many facts for one destination partition, sent as one Kafka record.

    Stage 1 sends every messages partition, with each flush, the marks of the raw partitions it
    read (``marks``: raw partition -> newest trusted event time read; ``idle``: raw partitions
    read to their end and quiet; ``raw_partitions``: how many the raw topic has), after the
    facts they cover: a partition that has read them knows how far each raw partition got."""

    statuses: list[StatusFact] = []
    recipients: list[RecipientFact] = []
    templates: list[TemplateFact] = []
    marks: dict[int, int] = {}
    idle: list[int] = []
    raw_partitions: int = 0
    account_errors: list[AccountErrorFact] = []
    #: raw partitions not read to their end (stage 1 is reading a backlog)
    behind: list[int] = []
    #: (stage 2 to the recipients stage) messages partition -> number of the report sent
    #: after these facts: the recipients stage relays it to alerting once it applied them
    progress: dict[int, int] = {}


_batch_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(FactBatch)
_send_log_decoder = msgspec.json.Decoder(SendLogRecord)


def encode_batch(batch: FactBatch) -> bytes:
    return _batch_encoder.encode(batch)


def decode_batch(raw: bytes) -> FactBatch:
    return _batch_decoder.decode(raw)


class SendLogError(ValueError):
    """A send-log record that is not the documented JSON object."""


def decode_send_log(raw: bytes) -> SendLogRecord:
    try:
        record = _send_log_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise SendLogError(f"send-log record: {exc}") from None
    if not record.wamid or not record.template:
        raise SendLogError("send-log record: wamid and template must be non-empty")
    record.sent_at_seconds()  # raises for a value that is not a number
    return record
