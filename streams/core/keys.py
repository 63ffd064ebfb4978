"""The key layout of the state stores: every key prefix, separator, builder and parser.

Keys are bytes; their parts are joined by :data:`SEP` (U+001F, the unit separator). A parser
splits off the leading parts (numbers and codes), so the last part, a name or an id, may hold
any text. Keys are stored state: a worker reads the keys older versions wrote (from its local
store and from the tables' changelogs), so no prefix, separator or order of parts here ever
changes, and neither does a :class:`Dimension`'s value.

**messages** table (partition-local: each partition of ``<app>-messages`` keeps its own):

- ``m␟<wamid>``: a message's state (:class:`streams.core.ledger.MessageState`);
- ``T␟<template>``: what Meta last said of a template (``streams.stages.messages.TemplateState``);
- ``b␟<dim>␟<partition>␟<minute>␟<name>``: a minute bucket (:mod:`streams.core.aggregates`);
  buckets sort by dimension, partition, minute and name, so the buckets of one dimension and
  partition in a span of minutes are one range of keys (:mod:`streams.rankings`);
- ``\\0meta␟<partition>``, ``\\0acct␟<partition>``: the partition's progress and the account
  errors it counted;
- the expiry indexes of messages (``xm``) and buckets (``xb``), below.

**recipients** table:

- ``<recipient>``: a recipient's state, keyed by the id itself (phone digits or a BSUID, so
  Faust routes API requests by it);
- ``R␟<due: 12 digits>␟<wamid>``: a retry plan (sorted by due time);
- ``\\0rmeta␟<partition>``: the partition's progress and gauges;
- the expiry index of recipients (``xr``, entries ``r␟<recipient>``) and the retry timers
  (``xq``, entries: the plans' keys).

**alerting** table (partition 0, saved through :class:`streams.state.Snapshots`): the records
:data:`STAGE_KEY` ... :data:`PENDING_KEY`, the spike detector's hour index ``dh␟<hour>`` and
its minute counts of one scope and hour ``d␟<hour>␟<scope kind>␟<sending number>␟<scope key>``,
the pending counts of an evaluation point ``q␟<point>``, the standing rule's US-pause
recipients of an hour ``us␟<hour>``.

**slack_threads** table (partition 0): ``thread:<incident>`` per incident and ``index``.

**Expiry indexes** (:mod:`streams.core.expiry`), in the table of the keys they index, under
their prefix: ``<prefix>m␟<partition>␟<day>`` (a day's manifest: how many chunks) and
``<prefix>c␟<partition>␟<day>␟<chunk>`` (the keys of one chunk); a "day" is a minute for the
bucket index and the retry timers.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Protocol

#: The separator of a key's parts (U+001F, the unit separator).
SEP = "\x1f"
_SEP = SEP.encode()


class Dimension(enum.StrEnum):
    """A minute bucket's dimension. The value is the code stored in bucket keys, bucket deltas
    and the signals (an ``enum.StrEnum``: a member is that very string, equal to it, hashed and
    encoded like it)."""

    TEMPLATE = "t"
    SENDER = "s"  # the sending number (phone_number_id)
    COUNTRY = "c"  # the recipient's country
    CAMPAIGN = "g"

    @property
    def noun(self) -> str:
        """What the dimension's names are: ``template``, ``sender``, ``country`` or
        ``campaign`` (the name's field in the API's answers, the alert scope's kind)."""
        return _NOUNS[self]


_NOUNS = {
    Dimension.TEMPLATE: "template",
    Dimension.SENDER: "sender",
    Dimension.COUNTRY: "country",
    Dimension.CAMPAIGN: "campaign",
}


def prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    """Scan bounds ``lo <= key < hi`` of the keys that start with ``prefix`` (one that ends
    with :data:`SEP`: the next byte ends the range)."""
    return prefix, prefix[:-1] + bytes([prefix[-1] + 1])


# -- messages table ---------------------------------------------------------------------------

#: Prefix of a message's key (text: the expiry index names the keys it indexes as text).
MESSAGE_PREFIX = "m" + SEP
TEMPLATE_PREFIX = b"T" + _SEP
BUCKET_PREFIX = "b" + SEP
#: Prefix of a partition's own records (progress, counters): no other key starts with NUL.
PARTITION_RECORD = b"\x00"


def message_key(wamid: str) -> bytes:
    return (MESSAGE_PREFIX + wamid).encode()


def template_key(name: str) -> bytes:
    return TEMPLATE_PREFIX + name.encode()


def template_of_key(key: bytes) -> str:
    """The template name of a :func:`template_key`."""
    return key[len(TEMPLATE_PREFIX) :].decode()


def messages_meta_key(partition: int) -> bytes:
    """The messages partition's progress (``streams.stages.messages.PartitionMeta``)."""
    return f"\x00meta{SEP}{partition}".encode()


def account_ledger_key(partition: int) -> bytes:
    """The account errors the messages partition counted (``AccountErrorLedger``)."""
    return f"\x00acct{SEP}{partition}".encode()


class BucketId(NamedTuple):
    """One minute of one dimension value (``key``) on one partition: a minute bucket."""

    dim: str  # a Dimension
    key: str
    partition: int
    minute: int

    def encode(self) -> str:
        """The bucket's key (as text: the expiry index names it so)."""
        return f"{BUCKET_PREFIX}{self.dim}{SEP}{self.partition}{SEP}{self.minute}{SEP}{self.key}"

    @classmethod
    def decode(cls, key: str | bytes) -> BucketId:
        """The bucket of a key :meth:`encode` made."""
        text = key.decode() if isinstance(key, bytes) else key
        _, dim, partition, minute, name = text.split(SEP, 4)
        return cls(dim, name, int(partition), int(minute))


def bucket_prefix(dim: str, partition: int, minute: int) -> bytes:
    """What the keys of the ``dim`` buckets of ``partition`` and ``minute`` start with (bucket
    keys sort by dimension, partition, minute and name: a span of minutes is one key range)."""
    return f"{BUCKET_PREFIX}{dim}{SEP}{partition}{SEP}{minute}{SEP}".encode()


def bucket_name(key: bytes) -> str:
    """The dimension value (template, number, country, campaign) of a bucket's key."""
    return key.split(_SEP, 4)[4].decode()


# -- recipients table -------------------------------------------------------------------------

#: Prefix of a retry plan's key; the due time is zero-padded so keys sort by it.
PLAN_PREFIX = b"R" + _SEP
#: Prefix of a recipient's name in the recipients' expiry index.
RECIPIENT_ENTRY = "r" + SEP


def recipient_key(recipient: str) -> bytes:
    """A recipient's key: the id itself (so Faust routes API requests by it)."""
    return recipient.encode()


def recipient_entry(recipient: str) -> str:
    """A recipient's name in the recipients' expiry index."""
    return RECIPIENT_ENTRY + recipient


def recipient_of_entry(entry: str) -> str:
    """The recipient of a :func:`recipient_entry`."""
    return entry.split(SEP, 1)[1]


def plan_key(due: int, wamid: str) -> bytes:
    """A retry plan's key (by due time, then the failed message)."""
    return PLAN_PREFIX + b"%012d\x1f" % due + wamid.encode()


def parse_plan_key(key: bytes) -> tuple[int, str]:
    """(due, wamid) of a :func:`plan_key`."""
    _, due, wamid = key.split(_SEP, 2)
    return int(due), wamid.decode()


def recipients_meta_key(partition: int) -> bytes:
    """The recipients partition's progress (``streams.stages.recipients.RecipientMeta``)."""
    return f"\x00rmeta{SEP}{partition}".encode()


# -- expiry indexes (streams.core.expiry) -----------------------------------------------------

MESSAGE_INDEX = "xm"
BUCKET_INDEX = "xb"  # its "days" are minutes
RECIPIENT_INDEX = "xr"
RETRY_TIMERS = "xq"  # the retry plans' timers: its "days" are minutes


class IndexKey(NamedTuple):
    """A record of an expiry index: a day's manifest (``chunk`` None) or one of its chunks."""

    prefix: str
    partition: int
    day: int
    chunk: int | None = None


def manifest_key(prefix: str, partition: int, day: int) -> str:
    return f"{prefix}m{SEP}{partition}{SEP}{day}"


def chunk_key(prefix: str, partition: int, day: int, index: int) -> str:
    return f"{prefix}c{SEP}{partition}{SEP}{day}{SEP}{index}"


def parse_index_key(key: str | bytes) -> IndexKey:
    """The record of a :func:`manifest_key` or :func:`chunk_key`."""
    text = key.decode() if isinstance(key, bytes) else key
    head, partition, day, *chunk = text.split(SEP)
    return IndexKey(head[:-1], int(partition), int(day), int(chunk[0]) if chunk else None)


# -- alerting table ---------------------------------------------------------------------------

STAGE_KEY = b"stage"
BOOK_KEY = b"book"
RESOLVED_KEY = b"resolved"
RULES_KEY = b"rules"
STANDING_KEY = b"standing"
HOURS_KEY = b"detector"
PENDING_KEY = b"pending"


class ScopeParts(Protocol):
    """What a detector record's key names of its scope (``streams.core.alerts.Scope``)."""

    @property
    def kind(self) -> str: ...

    @property
    def sender(self) -> str: ...

    @property
    def key(self) -> str: ...


def hour_index_key(hour: int) -> bytes:
    """The scopes the spike detector keeps minute counts of in ``hour``."""
    return b"dh\x1f%d" % hour


def hour_key(scope: ScopeParts, hour: int) -> bytes:
    """The spike detector's minute counts of ``scope`` in ``hour``."""
    return f"d{SEP}{hour}{SEP}{scope.kind}{SEP}{scope.sender}{SEP}{scope.key}".encode()


def pending_key(point: int) -> bytes:
    """The counts that wait for evaluation point ``point``."""
    return b"q\x1f%d" % point


def standing_hour_key(hour: int) -> bytes:
    """The standing rule's US-pause recipients of ``hour``."""
    return b"us\x1f%d" % hour


# -- slack_threads table ----------------------------------------------------------------------

THREAD_PREFIX = b"thread:"
THREAD_INDEX_KEY = b"index"


def thread_record_key(incident: str) -> bytes:
    """An incident's Slack messages (``streams.slack_threads.ThreadRecord``)."""
    return THREAD_PREFIX + incident.encode()
