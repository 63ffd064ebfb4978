"""No timestamp a sender's data carries can erase what the monitor knows: for any sequence of
webhooks and send-log records with arbitrary timestamps (past, the future inside and beyond the
trusted skew, milliseconds, 0, huge, negative; for ``sent_at`` also numeric strings, floats and
strings that are no number), nothing raises but a dead letter's error, every recipient whose last
trusted event is within retention is still there, and no opt-out is lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core.eventtime import DEFAULT_TRUST, TimeVerdict, trust
from streams.core.facts import SendLogError
from streams.core.keys import recipient_key
from streams.core.recipient_state import RecipientState
from streams.stages.ingest import IngestStage
from streams.stages.messages import MessageStage
from streams.stages.recipients import RecipientRetention, RecipientStage
from streams.state import DictKeyValue, decode

T0 = 1_767_225_600
DAY = 86_400
RECEIVED = T0 + 600  # every record reached Kafka ten minutes after T0
SKEW = DEFAULT_TRUST.max_future_skew  # DELIVERY_MONITOR_MAX_FUTURE_SKEW's default, 3600 s
RECIPIENTS = ["5511987650001", "5511987650002", "4915123000003", "447700900004"]


def _change(field: str, value: dict[str, object]) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": "PN1"},
        **value,
    }
    change = {"field": field, "value": value}
    return orjson.dumps(
        {"object": "whatsapp_business_account", "entry": [{"id": "W", "changes": [change]}]}
    )


def inbound(who: str, ts: int) -> bytes:
    message = {"from": who, "id": f"wamid.in{ts}", "timestamp": str(ts), "type": "text"}
    return _change("messages", {"contacts": [{"wa_id": who}], "messages": [message]})


def preference(who: str, ts: int, value: str) -> bytes:
    item = {"wa_id": who, "category": "marketing_messages", "value": value, "timestamp": ts}
    return _change("user_preferences", {"user_preferences": [item]})


def opt_out_failure(who: str, ts: int, n: int) -> bytes:
    error = {"code": 131050, "title": "stopped marketing"}
    status = {
        "id": f"wamid.f{n}",
        "status": "failed",
        "timestamp": str(ts),
        "recipient_id": who,
        "errors": [error],
    }
    return _change("messages", {"statuses": [status]})


def send_log(who: str, sent_at: object, n: int) -> bytes:
    """A send-log record of a marketing message to ``who`` (``sent_at`` ABSENT: no key)."""
    record: dict[str, object] = {
        "wamid": f"wamid.log{n}",
        "recipient": who,
        "template": "spring_sale",
        "category": "marketing",
    }
    if sent_at is not ABSENT:
        record["sent_at"] = sent_at
    return json.dumps(record).encode()  # orjson refuses integers beyond 64 bits


ABSENT = object()


@dataclass(frozen=True)
class Input:
    kind: str  # inbound | stop | resume | failure (webhooks) | sent (a send-log record)
    who: str
    value: object  # the timestamp as written (for a send-log record: its sent_at)
    seconds: int | None  # what it says, in unix seconds (None: not a time)


timestamps = st.one_of(
    st.integers(T0 - 30 * DAY, T0),  # the past (replayed logs included)
    st.integers(RECEIVED, RECEIVED + SKEW),  # the future inside the trusted skew
    st.sampled_from([RECEIVED + SKEW, RECEIVED + SKEW + 1]),  # its edge
    st.integers(RECEIVED + SKEW + 1, 99_999_999_999),  # the future, beyond the skew
    st.integers(10**12, 10**13),  # milliseconds
    st.sampled_from([0, -1, 1, 2**31, 2**63]),
)
#: milliseconds whose second is trusted (the send log's are used, divided by 1000)
trusted_millis = st.integers((T0 - 30 * DAY) * 1000, (RECEIVED + SKEW) * 1000 + 999)


def _as_written(ts: int) -> st.SearchStrategy[tuple[object, int | None]]:
    """``ts`` as a send log may write it: a number, a numeric string, a decimal string (whole
    seconds count), a JSON float (not the documented int or string: refused)."""
    return st.sampled_from([(ts, ts), (str(ts), ts), (f"{ts}.75", ts), (float(ts) + 0.5, None)])


sent_ats = st.one_of(
    (timestamps | trusted_millis).flatmap(_as_written),
    st.sampled_from(
        [
            (ABSENT, None),  # no sent_at: the record has no time of its own
            (None, None),
            ("inf", None),
            ("-inf", None),
            ("nan", None),
            ("NaN", None),
            ("1e999", None),
            ("abc", None),
            ("", None),
            (True, None),
            ([T0], None),
            (2**64, 2**64),
            (-(2**70), -(2**70)),
            (str(10**30), 10**30),
            ("1e30", 10**30),
            ("-5", -5),
        ]
    ),
)
webhooks = st.builds(
    lambda kind, who, ts: Input(kind, who, ts, ts),
    st.sampled_from(["inbound", "stop", "resume", "failure"]),
    st.sampled_from(RECIPIENTS),
    timestamps,
)
send_logs = st.builds(
    lambda who, written: Input("sent", who, written[0], written[1]),
    st.sampled_from(RECIPIENTS),
    sent_ats,
)
inputs = st.lists(webhooks, min_size=1, max_size=40)
mixed_inputs = st.lists(webhooks | send_logs, min_size=1, max_size=40)


def trusted_time(i: Input, received: int) -> int | None:
    """The model: the event time an input's timestamp counts as, None when refused. Webhooks:
    seconds only (Meta never sends milliseconds, the parser refuses them); the send log:
    seconds, or milliseconds whose second is trusted (converted)."""
    if i.seconds is None:
        return None
    used, verdict = trust(i.seconds, received)
    if i.kind == "sent":
        return used
    return used if verdict is TimeVerdict.OK else None


def body(i: Input, n: int) -> bytes:
    assert isinstance(i.value, int)
    if i.kind == "inbound":
        return inbound(i.who, i.value)
    if i.kind == "failure":
        return opt_out_failure(i.who, i.value, n)
    return preference(i.who, i.value, i.kind)


def run(sequence: list[Input], received: int) -> DictKeyValue:
    """Stages 1 to 3 on one partition each, every input read as it comes; the recipients'
    table. A send-log record may only fail with the error that dead-letters it."""
    ingest = IngestStage(1, 1, clock=lambda: received)
    ingest.assign([0], 1)
    messages = MessageStage(DictKeyValue(), 1, clock=lambda: received)
    kv = DictKeyValue()
    recipients = RecipientStage(kv, RecipientRetention(sweep_budget=1_000))
    for n, i in enumerate(sequence):
        if i.kind == "sent":
            try:
                messages.handle_send_log(0, n, send_log(i.who, i.value, n), received)
            except SendLogError:
                assert trusted_time(i, received) is None, "a trusted sent_at was refused"
            to_recipients: dict[int, bytes] = {}
        else:
            ingest.handle("raw", 0, n, body(i, n), received)
            to_messages, to_recipients, _ = ingest.drain()
            for offset, value in enumerate(to_messages.values()):
                messages.handle_batch(0, 2 * n + offset, value)
        messages.flush(0)
        facts = [*to_recipients.values(), *messages.drain_outbox().values()]
        for offset, value in enumerate(facts):
            recipients.handle_batch(0, 3 * n + offset, value)
        recipients.flush(0)
    return kv


def check(sequence: list[Input], kv: DictKeyValue, received: int) -> None:
    """Every recipient whose last trusted event is within the idle retention of the newest
    trusted event is there; every recipient whose last trusted stop is after their last
    trusted resume is opted out."""
    trusted = [(i, ts) for i in sequence if (ts := trusted_time(i, received)) is not None]
    watermark = max((ts for _, ts in trusted), default=0)
    assert watermark <= received + SKEW  # nothing untrusted moved the clock
    for who in RECIPIENTS:
        mine = [(i, ts) for i, ts in trusted if i.who == who]
        raw = kv.get(0, recipient_key(who))
        state = decode(raw, RecipientState) if raw is not None else None
        if mine and max(ts for _, ts in mine) >= watermark - 8 * DAY:
            assert state is not None, f"{who} disappeared"
        stops = [ts for i, ts in mine if i.kind in ("stop", "failure")]
        resumes = [ts for i, ts in mine if i.kind == "resume"]
        if stops and max(stops) > max(resumes, default=0):
            assert state is not None and state.opted_out, f"{who}'s opt-out was lost"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs)
def test_no_timestamp_erases_a_recipient_or_an_opt_out(sequence: list[Input]) -> None:
    check(sequence, run(sequence, RECEIVED), RECEIVED)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_inputs)
def test_no_webhook_or_send_log_time_erases_a_recipient_or_an_opt_out(
    sequence: list[Input],
) -> None:
    """Webhooks and send-log records mixed: a refused ``sent_at`` is a SendLogError (the
    worker dead-letters it), nothing else raises; a trusted one (milliseconds converted) is
    the recipient's marketing attempt, an event of theirs like any other."""
    check(sequence, run(sequence, RECEIVED), RECEIVED)
