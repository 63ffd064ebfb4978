"""Fuzzing of the stages: hostile field VALUES in well-formed bodies, through the whole pipeline.

The parser fuzz (test_parse_fuzz.py) breaks the shape of bodies; here the shape is right (Cloud
and On-Premises bodies with statuses, inbound messages, contacts, user preferences, account
errors in ``value.errors``, template, phone-number and account updates, as in
tests/fixtures/whatsapp) and the leaves are hostile: numbers huge, negative, floats or strings,
empty and very long strings, unicode (superscript and Arabic-Indic digits, the key separator
U+001F, NUL), ``null`` where a key may be null, phone numbers in every format, odd
``biz_opaque_callback_data``, unknown statuses, pricing categories and error codes, timestamps
of the past, inside and beyond the trusted skew, in milliseconds. Send-log records are as
hostile, and some are not objects at all. Everything runs through stages 1-4 in one process
(:class:`testkit.inprocess.Pipeline`: ingest, messages, recipients, then alerting's ``handle``
and ``evaluate`` on the signals, through their encoding), and then through the metrics and the
rankings.

Asserted:

- nothing raises but the documented refusals (a body: a dead letter; a send-log record:
  :class:`SendLogError`, which the worker dead-letters);
- nothing is lost: every raw body was read; it is dead-lettered as rejected exactly when
  ``parse_webhook`` refuses it; otherwise every event it holds is counted by the ingest stage or
  refused with the body dead-lettered as partial (so is a body with defects), and a body holding
  items yields an event or a dead letter; the stage's counters agree (records = bodies, rejected
  and partial dead letters); every send-log record is counted or refused;
- no recipient (the phone numbers and BSUIDs the bodies and the send log address, in any of
  their formats, also inside callback data that names no template) reaches a metric label, a
  bucket name (what the rankings list) or an alert notification.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from streams.core import ParseError, parse_webhook
from streams.core.alerts import encode_notification
from streams.core.facts import decode_batch
from streams.core.keys import BUCKET_PREFIX, Dimension, bucket_name
from streams.core.signals import decode_signals, encode_signals
from streams.metrics import MonitorMetrics, StateSnapshot
from streams.rankings import RankingQuery, local_counts, rank
from streams.stages.ingest import DeadLetter, IngestStage
from testkit.inprocess import T0, Pipeline

DAY = 86_400
RECEIVED = T0 + 600  # when Kafka received every record
SKEW = 3_600  # DELIVERY_MONITOR_MAX_FUTURE_SKEW's default
PARTITIONS = 2

# --- who the traffic is about: never a label --------------------------------------------------

PHONES = ["5511987650001", "491512987650002", "12129876503", "447700987654"]
BSUIDS = ["US.13491208655302741918", "BR.98765000000000000005"]
RECIPIENTS = PHONES + BSUIDS


def _phone_formats(phone: str) -> list[object]:
    return [phone, "+" + phone, "00" + phone, f" {phone} ", int(phone), f"+{phone[:2]} {phone[2:]}"]


phones = st.sampled_from([f for p in PHONES for f in _phone_formats(p)])
bsuids = st.sampled_from(BSUIDS)

# --- hostile leaves ----------------------------------------------------------------------------


def pick(*alternatives: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of ``alternatives``, each as likely (``st.one_of`` flattens nested ``one_of``s and
    draws among all their branches)."""
    return st.sampled_from(alternatives).flatmap(lambda alternative: alternative)


LONG = ["9" * 5_000, "é" * 2_000, "\U0001f600" * 500, "a" * 60_000]
ODD = ["", " ", "\x00", "\x1f", "a\x1fb", "é", "\u202e", "null", "None", "NaN", "-1", "true"]
#: integers at the edges of the widths a decoder or an encoder may have (64 bits: msgpack)
EDGE_INTS = [0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**20, -(2**63) - 1]
big_ints = pick(st.integers(-(2**70), 2**70), st.sampled_from(EDGE_INTS))
floats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([1.5, -0.0, 1e300])
#: numbers written as text: digits and numbers of every script ("²", "١٢٣", "½", "Ⅻ"), forms
#: int() or float() read differently
numeric_text = pick(
    big_ints.map(str),
    st.text(st.characters(categories=["Nd", "No"]).filter(str.isdigit), min_size=1, max_size=9),
    st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=9),
    st.sampled_from(["1e3", "1e999", "0x10", "1_000", "+1", "-0", "1.5", " 12 ", "٣"]),
)
odd_text = pick(st.text(max_size=24), st.sampled_from(ODD), st.sampled_from(LONG), numeric_text)
odd_scalar = pick(odd_text, big_ints, floats, st.none(), st.booleans())


def usually(
    typical: st.SearchStrategy[Any], odd: st.SearchStrategy[Any] = odd_text
) -> st.SearchStrategy[Any]:
    """Mostly ``typical`` (4 in 5); else an ``odd`` value of the field's type (a string by
    default) or any scalar (a wrong type: the parser's lenient path, a defect)."""
    return pick(typical, typical, typical, typical, pick(odd, odd_scalar))


any_text = usually(odd_text)
# The past is the last six hours: the alerting stage judges every 15-s point from the first
# counts on (40 days: 230,000 points, 3 s a run); test_time_trust.py covers long spans.
trusted_timestamps = st.one_of(
    st.integers(RECEIVED - 6 * 3_600, RECEIVED),  # the past
    st.integers(RECEIVED, RECEIVED + SKEW),  # the future inside the trusted skew
)
untrusted_timestamps = pick(
    st.integers(RECEIVED + SKEW + 1, 99_999_999_999),  # beyond the skew
    st.integers(T0 * 1000, (RECEIVED + SKEW) * 1000),  # milliseconds
    st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64]),
)
timestamps = pick(trusted_timestamps, untrusted_timestamps)
ISO = [
    "2026-01-09T00:00:00Z",
    "2026-01-09",
    "0001-01-01",
    "9999-12-31T23:59:59-23:59",
    "2026-13-45",
]
times = usually(
    pick(trusted_timestamps, trusted_timestamps.map(str)),
    pick(untrusted_timestamps, untrusted_timestamps.map(str), numeric_text, st.sampled_from(ISO)),
)

KNOWN_CODES = [131049, 131050, 131026, 130429, 131047, 131051, 132015, 132016, 1026, 498, 131056]
codes = usually(st.sampled_from(KNOWN_CODES), pick(big_ints, numeric_text))
wamids = usually(st.sampled_from(["wamid.A", "wamid.B", "wamid.C", "wamid.D"]))
SENDERS = ["106540352242922", "PN1"]
BUSINESS = ["15550783881", "+1 555 078 3881"]  # the sender's own number
idents = pick(odd_text, big_ints)  # ids some senders write as numbers
senders = usually(st.sampled_from(SENDERS), idents)
recipients = usually(phones | bsuids, idents)

#: callback data: names a template or not; the recipient's number only where it names nothing
opaque = st.one_of(
    st.sampled_from(
        [
            "spring_sale",
            "template=spring_sale;campaign=c-1",
            "template=promo_01&campaign=c%202&category=marketing",
            '{"template": "promo_01", "campaign": "c-2", "category": "marketing"}',
            '{"template": 5, "campaign": null}',
            '{"template": {"a": 1}}',
            "[1, 2]",
            "{not json",
            "{" * 1_000,
            "template=%ZZ",
            "=;&=",
            "3f2b1c9e4d5a4b6c8d7e9f0a1b2c3d4e",
            "x" * 5_000,
        ]
    ),
    odd_text,
    st.sampled_from(PHONES).flatmap(
        lambda p: st.sampled_from(
            [
                p,
                "+" + p,
                f"order:{p}",
                f"cust_{p}",
                f"u{p}",
                f"user={p}",
                f'{{"to": "{p}"}}',
                f"template=spring_sale;to={p}",
                f'{{"template": "promo_01", "recipient": "{p}"}}',
            ]
        )
    ),
)
CATEGORIES = ["marketing", "utility", "authentication", "service", "marketing_lite", "MARKETING"]
categories = usually(st.sampled_from(CATEGORIES))
STATUSES = ["sent", "delivered", "read", "failed", "deleted", "warning", "played", "DELIVERED"]


def obj(
    required: dict[str, Any], optional: dict[str, Any] | None = None
) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(required, optional=optional or {})


errors = st.lists(
    obj(
        {"code": codes},
        {
            "title": any_text,
            "message": odd_text,
            "details": odd_text,
            "error_data": obj({}, {"details": any_text}),
            "href": odd_text,
        },
    ),
    max_size=3,
)
statuses = obj(
    {
        "id": wamids,
        "status": usually(st.sampled_from(STATUSES)),
        "timestamp": times,
    },
    {
        "recipient_id": recipients,
        "recipient_user_id": usually(bsuids),
        "recipient_parent_user_id": any_text,
        "recipient_type": usually(st.sampled_from(["individual", "group"])),
        "recipient_participant_id": usually(phones, idents),
        "recipient_participant_user_id": usually(bsuids),
        "biz_opaque_callback_data": usually(opaque),
        "conversation": obj(
            {}, {"id": odd_text, "origin": obj({}, {"type": categories}), "expiration": times}
        ),
        "pricing": obj(
            {},
            {
                "billable": odd_scalar,
                "pricing_model": usually(st.sampled_from(["CBP", "PMP"])),
                "category": categories,
                "type": usually(st.sampled_from(["regular", "free_customer_service"]), odd_text),
            },
        ),
        "errors": errors,
        "message": obj({}, {"recipient_id": recipients}),
    },
)
inbound = obj(
    {"timestamp": times},
    {
        "from": recipients,
        "from_user_id": usually(bsuids),
        "id": wamids,
        "type": usually(st.sampled_from(["text", "unsupported", "system", "button"])),
        "text": obj({}, {"body": odd_text}),
        "system": obj(
            {},
            {
                "type": any_text,
                "wa_id": recipients,
                "new_wa_id": recipients,
                "user_id": any_text,
                "body": odd_text,
            },
        ),
        "errors": errors,
    },
)
contacts = obj({}, {"wa_id": recipients, "user_id": usually(bsuids)})
preferences = obj(
    {"value": usually(st.sampled_from(["stop", "resume"]))},
    {
        "wa_id": recipients,
        "user_id": usually(bsuids),
        "category": usually(st.just("marketing_messages")),
        "detail": odd_text,
        "timestamp": times,
    },
)
metadata = obj(
    {},
    {
        "phone_number_id": senders,
        "display_phone_number": usually(st.sampled_from(BUSINESS), idents),
    },
)


@dataclass
class Built:
    """A body and how many items the monitor consumes it holds (an event or a defect each)."""

    document: Any
    items: int


def messages_value(field_name: str) -> st.SearchStrategy[Built]:
    def build(value: dict[str, Any]) -> Built:
        if field_name == "user_preferences":
            n = len(value.get("user_preferences", ()))
        else:
            n = sum(len(value.get(k, ())) for k in ("statuses", "messages", "errors"))
        return Built({"field": field_name, "value": value}, n)

    lists = (
        {"user_preferences": st.lists(preferences, max_size=3)}
        if field_name == "user_preferences"
        else {
            "statuses": st.lists(statuses, max_size=4),
            "messages": st.lists(inbound, max_size=2),
            "errors": errors,
        }
    )
    return obj(
        {"messaging_product": st.just("whatsapp")},
        {"metadata": metadata, "contacts": st.lists(contacts, max_size=2), **lists},
    ).map(build)


template_names = usually(st.sampled_from(["spring_sale", "promo_01"]))
QUALITY = ["GREEN", "YELLOW", "RED", "UNKNOWN"]
notifications = {
    "message_template_status_update": {
        "event": usually(
            st.sampled_from(["APPROVED", "REJECTED", "PAUSED", "DISABLED", "REINSTATED"])
        ),
        "message_template_id": usually(big_ints, odd_text),
        "message_template_name": template_names,
        "message_template_language": any_text,
        "message_template_category": categories,
        "reason": any_text,
        "disable_info": obj({}, {"disable_date": times}),
    },
    "message_template_quality_update": {
        "previous_quality_score": usually(st.sampled_from(QUALITY)),
        "new_quality_score": usually(st.sampled_from(QUALITY)),
        "message_template_id": usually(big_ints, odd_text),
        "message_template_name": template_names,
    },
    "template_category_update": {
        "message_template_name": template_names,
        "previous_category": categories,
        "new_category": categories,
        "correct_category": categories,
    },
    "phone_number_quality_update": {
        "display_phone_number": usually(st.sampled_from(BUSINESS), idents),
        "event": usually(
            st.sampled_from(["FLAGGED", "UNFLAGGED", "DOWNGRADE", "UPGRADE", "ONBOARDING"])
        ),
        "current_limit": usually(st.sampled_from(["TIER_1K", "TIER_UNLIMITED"])),
        "max_daily_conversations_per_business": usually(big_ints, odd_text),
    },
    "account_update": {
        "event": usually(
            st.sampled_from(["ACCOUNT_RESTRICTION", "DISABLED_UPDATE", "ACCOUNT_VIOLATION"])
        ),
        "phone_number": usually(st.sampled_from(BUSINESS), idents),
        "restriction_info": st.lists(
            obj(
                {},
                {
                    "restriction_type": any_text,
                    "expiration": times,
                },
            ),
            max_size=2,
        ),
        "ban_info": obj(
            {},
            {
                "waba_ban_state": usually(st.just(["SCHEDULE_FOR_DISABLE"])),
                "waba_ban_date": any_text,
            },
        ),
        "violation_info": obj({}, {"violation_type": any_text}),
    },
}


def notification_change(field_name: str) -> st.SearchStrategy[Built]:
    return obj({}, notifications[field_name]).map(
        lambda value: Built({"field": field_name, "value": value}, 1)
    )


messages_changes = messages_value("messages")
changes = pick(
    messages_changes,
    messages_changes,
    messages_changes,
    messages_value("user_preferences"),
    *(notification_change(name) for name in notifications),
    st.builds(
        Built, obj({"field": st.just("security"), "value": obj({}, {"x": odd_scalar})}), st.just(0)
    ),
)


def cloud(entries: list[tuple[dict[str, Any], list[Built]]]) -> Built:
    document = {
        "object": "whatsapp_business_account",
        "entry": [{**entry, "changes": [c.document for c in built]} for entry, built in entries],
    }
    return Built(document, sum(c.items for _, built in entries for c in built))


entries = st.tuples(
    obj({}, {"id": usually(st.just("102290129340398")), "time": times}),
    st.lists(changes, min_size=1, max_size=3),
)
cloud_bodies = st.lists(entries, min_size=1, max_size=2).map(cloud)
onprem_bodies = obj(
    {"statuses": st.lists(statuses, min_size=1, max_size=3)},
    {"business_phone": usually(st.sampled_from(BUSINESS), idents), "errors": errors},
).map(lambda d: Built(d, len(d["statuses"]) + len(d.get("errors", ()))))
bodies = pick(cloud_bodies, cloud_bodies, cloud_bodies, onprem_bodies)


def encode(document: Any) -> bytes:
    # the standard library writes integers beyond 64 bits (orjson refuses them)
    return json.dumps(document).encode()


# --- hostile send-log records ------------------------------------------------------------------

sent_ats = pick(
    timestamps,
    timestamps.map(str),
    timestamps.map(lambda ts: f"{ts}.5"),
    floats,
    numeric_text,
    st.sampled_from(["inf", "-inf", "nan", "1e999", "abc", "", " ", None, True, [T0]]),
)
send_log_records = st.one_of(
    obj(
        {"wamid": wamids, "template": usually(st.sampled_from(["spring_sale", "promo_01"]))},
        {
            "recipient": usually(phones | bsuids),
            "category": categories,
            "campaign": usually(st.sampled_from(["c-1", "c 2"])),
            "sent_at": sent_ats,
            "phone_number_id": senders,
        },
    ).map(encode),
    st.sampled_from([b"", b"[]", b"null", b"{", b'{"wamid": "wamid.A"}', b"\xff", b"NaN"]),
)


# --- the stages ---------------------------------------------------------------------------------


def where(i: int) -> tuple[int, int]:
    """(raw partition, offset) of the ``i``-th body: they are spread over the partitions."""
    return i % PARTITIONS, i // PARTITIONS


@dataclass
class Ingested:
    """What the ingest stage made of the bodies: its dead letters, and how many events it
    counted of each body (by raw partition and offset)."""

    letters: list[DeadLetter] = field(default_factory=list)
    counted: dict[tuple[int, int], int] = field(default_factory=dict)

    def handle(self, stage: IngestStage, i: int, raw: bytes) -> None:
        stats = stage.stats
        before = stats.statuses + stats.other_events
        partition, offset = where(i)
        stage.handle("raw", partition, offset, raw, RECEIVED + i % 7)
        self.counted[(partition, offset)] = stats.statuses + stats.other_events - before


def ingest_only(raw_bodies: list[bytes]) -> tuple[IngestStage, Ingested]:
    """Stage 1 alone, draining every three bodies; its output is decoded as stages 2-4 do."""
    stage = IngestStage(PARTITIONS, PARTITIONS, clock=lambda: RECEIVED + 60)
    stage.assign(range(PARTITIONS), PARTITIONS)
    ingested = Ingested()
    for i, raw in enumerate(raw_bodies):
        ingested.handle(stage, i, raw)
        if i % 3 == 2 or i == len(raw_bodies) - 1:
            messages, recipients, dead = stage.drain()
            ingested.letters += dead
            for value in [*messages.values(), *recipients.values()]:
                decode_batch(value)
            signals = stage.drain_signals()
            if signals is not None:
                decode_signals(encode_signals(signals))
    return stage, ingested


class Fuzzed(Pipeline):
    """The in-process pipeline (stages 1-4), keeping what the checks need: what the ingest
    stage made of each body, and the send-log records refused (only SendLogError may be)."""

    def __init__(self) -> None:
        super().__init__(partitions=PARTITIONS, wall=RECEIVED + 60)
        self.ingested = Ingested()
        self.ingested.letters = self.dead_letters  # the base pipeline's list, filled as it drains

    def read_raw(self, partition: int, n: int) -> None:
        for offset, value, _ in self.raw.take(partition, n):
            self.ingested.handle(self.ingest, offset * PARTITIONS + partition, value)
        self.flush_ingest()


def _send_log_key(value: bytes, i: int) -> str:
    """The record's key: its wamid (the send log is partitioned like the statuses)."""
    try:
        wamid = json.loads(value).get("wamid")
    except (ValueError, AttributeError):
        wamid = None
    return wamid if isinstance(wamid, str) else f"log{i}"


def run(raw_bodies: list[bytes], logs: list[bytes]) -> Fuzzed:
    pipeline = Fuzzed()
    for i, body in enumerate(raw_bodies):
        partition, _ = where(i)
        pipeline.post(body, RECEIVED + i % 7, partition)
    for i, value in enumerate(logs):
        pipeline.log(_send_log_key(value, i), value, RECEIVED + i % 5)
    pipeline.drain(chunk=3)
    pipeline.settle(180, tick=30)  # idle partitions, the alerting clock moving on
    assert all(pipeline.raw.unread(p) == 0 for p in range(PARTITIONS))
    handled = pipeline.messages.stats.send_log
    assert handled + pipeline.refused_logs == len(logs), "a send-log record lost"
    return pipeline


# --- the checks ---------------------------------------------------------------------------------


def check_accounting(
    stage: IngestStage, ingested: Ingested, built: list[Built], raw_bodies: list[bytes]
) -> None:
    """Every body read once; rejected exactly when the parser refuses it; otherwise each of
    its events counted, or the body dead-lettered as partial (also for any defect); a body
    holding items yields a count or a dead letter; the stage's counters agree."""
    stats = stage.stats
    assert stats.records == len(raw_bodies) == len(ingested.counted)
    letters: dict[tuple[int, int], DeadLetter] = {}
    for letter in ingested.letters:
        at = (letter.partition, letter.offset)
        assert at not in letters, f"two dead letters for one body at {at}"
        assert letter.reason and letter.value == raw_bodies[at[1] * PARTITIONS + at[0]]
        letters[at] = letter
    assert stats.dead_letters == sum(not d.partial for d in letters.values())
    assert stats.partial == sum(d.partial for d in letters.values())
    for i, (body, raw) in enumerate(zip(built, raw_bodies, strict=True)):
        letter = letters.get(where(i))
        try:
            parsed = parse_webhook(raw)
        except ParseError:
            assert letter is not None and not letter.partial, f"body {i} refused, no dead letter"
            continue
        assert letter is None or letter.partial, f"body {i} parses, yet was rejected"
        counted = ingested.counted[where(i)]
        assert counted <= len(parsed.events)
        if counted < len(parsed.events) or parsed.defects:
            assert letter is not None, f"body {i}: items refused or defective, no dead letter"
        if body.items:
            assert counted or letter is not None, f"body {i}: {body.items} items lost silently"


def labels_and_names(pipeline: Fuzzed) -> list[str]:
    """Every metric label value, bucket name, ranked name and notification of the run."""
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    messages = pipeline.messages
    parts = list(range(PARTITIONS))
    metrics.watch_state(
        lambda: StateSnapshot(
            *pipeline.recipients.gauges(parts),
            messages.paused_templates(parts),
            messages.recent.totals(),
        )
    )
    metrics.observe_ingest(pipeline.ingest.stats)
    metrics.observe_messages(messages.stats)
    metrics.observe_recipients(pipeline.recipients.stats)
    metrics.observe_alerting(pipeline.alerting.evaluated, pipeline.alerting.take_late())
    for notification in pipeline.notifications:
        metrics.alert_notified(notification)
    out = [
        str(value)
        for family in registry.collect()
        for sample in family.samples
        for value in sample.labels.values()
    ]
    kv = messages.state.kv
    prefix = BUCKET_PREFIX.encode()
    for p in parts:
        out += [bucket_name(key) for key in kv.keys(p) if key.startswith(prefix)]
    first, end = (T0 - 60 * DAY) // 60, (RECEIVED + SKEW) // 60 + 2
    query = RankingQuery("24h", None, "name", 1_000)
    for dim in Dimension:
        counts = local_counts(kv.scan, parts, dim, first, end)
        _, entries = rank(dim, counts, query)
        out += [str(entry[dim.noun]) for entry in entries]
    out += [encode_notification(n).decode() for n in pipeline.notifications]
    return out


def check_no_recipient_in_labels(pipeline: Fuzzed) -> None:
    for text in labels_and_names(pipeline):
        digits = "".join(c for c in text if c.isascii() and c.isdigit())
        for who in RECIPIENTS:
            assert who not in text and (not who.isdigit() or who not in digits), (
                f"recipient {who} in {text[:200]!r}"
            )


# --- the tests ----------------------------------------------------------------------------------

#: What this fuzzing found, in one body: an error code beyond 64 bits (OverflowError when stage 1
#: encoded its facts), a disable date of digits ``int()`` refuses (ValueError out of the parser),
#: a customer id made of the recipient's number in the callback data (a template label).
FOUND = Built(
    {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "metadata": {"phone_number_id": SENDERS[0]},
                            "statuses": [
                                {
                                    "id": "wamid.A",
                                    "status": "failed",
                                    "timestamp": RECEIVED,
                                    "recipient_id": PHONES[0],
                                    "biz_opaque_callback_data": f"cust_{PHONES[0]}",
                                    "errors": [{"code": 2**64}],
                                }
                            ],
                            "errors": [{"code": -(2**63) - 1}],
                        },
                    },
                    {
                        "field": "message_template_status_update",
                        "value": {
                            "event": "DISABLED",
                            "message_template_name": "spring_sale",
                            "disable_info": {"disable_date": "²"},
                        },
                    },
                ],
            }
        ],
    },
    3,
)


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@fuzz(400)
@given(st.lists(bodies, min_size=1, max_size=8))
@example([FOUND])
def test_hostile_values_through_the_ingest_stage(built: list[Built]) -> None:
    """Stage 1 alone (where the values are read), on many bodies."""
    raw_bodies = [encode(b.document) for b in built]
    stage, ingested = ingest_only(raw_bodies)
    check_accounting(stage, ingested, built, raw_bodies)


@fuzz(250)
@given(st.lists(bodies, min_size=1, max_size=6), st.lists(send_log_records, max_size=6))
@example([FOUND], [])
def test_hostile_values_through_every_stage(built: list[Built], logs: list[bytes]) -> None:
    """Stages 1-4, the metrics and the rankings, with a hostile send log too."""
    raw_bodies = [encode(b.document) for b in built]
    pipeline = run(raw_bodies, logs)
    check_accounting(pipeline.ingest, pipeline.ingested, built, raw_bodies)
    check_no_recipient_in_labels(pipeline)
