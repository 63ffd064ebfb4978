"""What the counting stages tell the alerting stage (the ``<app>-signals`` topic, 1 partition).

Every flush of the messages stage sends the minute-bucket deltas it applied, the template
webhooks it saw and counts of incident error codes; the recipients stage sends premature
resends (a marketing send less than 24 h after that recipient's 131049); the ingest stage sends
phone-number quality and account updates. Recipients appear only as a short one-way digest, to
count distinct ones; never a phone number.
"""

from __future__ import annotations

import hashlib

import msgspec

from streams.core.immediate import AccountEvent, ErrorCount, PhoneQualityChange

#: Error codes counted for the immediate rules (billing, spam rate limit, On-Prem spam).
INCIDENT_CODES = frozenset({131042, 131048, 471})


class BucketSignal(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Deltas of one minute bucket (``dim``: a :class:`~streams.core.keys.Dimension`'s code).

    ``source`` is the input (topic partition) the deltas came from and ``upto`` the offset of
    the last input that contributed: deltas re-derived from inputs replayed after a crash
    carry the offsets they had, so the alerting stage skips those it already absorbed and
    takes those whose first signal was lost (-1: not tracked)."""

    dim: str
    key: str
    minute: int
    counts: dict[str, int]
    source: int = -1
    upto: int = -1
    #: the first alert evaluation point that may use these deltas (see streams.core.eventtime)
    visible: int = 0


class TemplateSignal(msgspec.Struct, array_like=True, frozen=True, gc=False):
    name: str
    field: str  # status | quality | category
    value: str
    ts: int
    reason: str | None = None
    disabled_at: int | None = None  # a DISABLED status: when Meta disabled it


class ResendSignal(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A premature marketing resend (once per recipient and send): the resent template, the
    send's event time, who (digest only), from which sending number and campaign ("" when the
    monitor did not know them when it learned of the send)."""

    template: str
    ts: int
    recipient_digest: str
    sender: str = ""
    campaign: str = ""
    send: int = 0  # a number of the send's wamid: the same send signalled again replaces it


class USPaused(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A marketing message to a US number failed (the US marketing pause): its minute, the
    first evaluation point that may use it, and a number of its recipient's digest (to count
    distinct recipients; never a phone number)."""

    minute: int
    visible: int
    recipient: int


class PartitionReport(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """How far one messages partition has read its inputs since its reader took it: the mark
    of every raw partition (as of the last facts it received from stage 1), which raw
    partitions are idle, how many there are, and the mark of its send-log partition (-1: none
    read yet). An input missing was not read since: the last report's value stands."""

    partition: int
    marks: dict[int, int]
    idle: list[int]
    raw_partitions: int
    log_mark: int
    #: raw partitions not read to their end: while webhooks are read as a backlog, a send log
    #: that is behind is waited for longer (it may be late as well)
    behind: list[int] = []
    #: the report's number (increasing per partition; 0: not numbered): the facts the
    #: partition sent the recipients stage up to this report carry it (``FactBatch.progress``)
    seq: int = 0


#: Signal items (bucket cells, error counts, US-pause recipients, template events) a counting
#: stage gathers before it reports ``full`` and flushes: ~70 bytes an item encoded (a backlog's
#: batch), so a signals record stays far under Kafka's default 1 MB even with one input
#: record's items on top (a batch of 10,000 input records once made 1.06 MB, which the broker
#: refused: the messages agent crashed and that batch's signals were lost to alerting).
MAX_SIGNAL_ITEMS = 3_000


class SignalBatch(msgspec.Struct, array_like=True, gc=False):
    buckets: list[BucketSignal] = []
    templates: list[TemplateSignal] = []
    errors: list[ErrorCount] = []
    resends: list[ResendSignal] = []
    phone_quality: list[PhoneQualityChange] = []
    accounts: list[AccountEvent] = []
    max_ts: int = 0
    #: event-time watermark of each messages partition the batch covers (the alerting stage
    #: advances time by the slowest of them, so it never judges a minute another partition has
    #: not delivered yet)
    watermarks: dict[int, int] = {}
    reports: list[PartitionReport] = []
    us_paused: list[USPaused] = []
    #: recipients partition -> messages partition -> the report number up to which the
    #: recipients stage has applied that partition's facts (its resend signals are in)
    relayed: dict[int, dict[int, int]] = {}

    def items(self) -> int:
        """How many items the record holds (see :data:`MAX_SIGNAL_ITEMS`)."""
        return (
            len(self.buckets)
            + len(self.templates)
            + len(self.errors)
            + len(self.resends)
            + len(self.us_paused)
        )

    def empty(self) -> bool:
        return not (
            self.buckets
            or self.templates
            or self.errors
            or self.resends
            or self.phone_quality
            or self.accounts
            or self.us_paused
        )


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SignalBatch)


def encode_signals(batch: SignalBatch) -> bytes:
    return _encoder.encode(batch)


def decode_signals(raw: bytes) -> SignalBatch:
    return _decoder.decode(raw)


def recipient_digest(recipient: str) -> str:
    """A short one-way digest that tells recipients apart without naming them."""
    return hashlib.blake2b(recipient.encode(), digest_size=8).hexdigest()


def recipient_number(recipient: str) -> int:
    """:func:`recipient_digest` as a 64-bit number (compact, to count distinct recipients)."""
    return int.from_bytes(hashlib.blake2b(recipient.encode(), digest_size=8).digest(), "big")
