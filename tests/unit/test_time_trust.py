"""No timestamp a sender's data carries can erase what the monitor knows: for any sequence of
webhooks with arbitrary timestamps (past, far future, milliseconds, 0, huge, negative), every
recipient whose last trusted event is within retention is still there, and no opt-out is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core.eventtime import TimeVerdict, trust
from streams.core.keys import recipient_key
from streams.core.recipient_state import RecipientState
from streams.stages.ingest import IngestStage
from streams.stages.messages import MessageStage
from streams.stages.recipients import RecipientRetention, RecipientStage
from streams.state import DictKeyValue, decode

T0 = 1_767_225_600
DAY = 86_400
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


@dataclass(frozen=True)
class Input:
    kind: str  # inbound | stop | resume | failure
    who: str
    ts: int


timestamps = st.one_of(
    st.integers(T0 - 30 * DAY, T0),  # the past (replayed logs included)
    st.integers(T0 + 3_601, 99_999_999_999),  # the future, beyond the skew
    st.integers(10**12, 10**13),  # milliseconds
    st.sampled_from([0, -1, 1, 2**31, 2**63]),
)
inputs = st.lists(
    st.builds(
        Input,
        st.sampled_from(["inbound", "stop", "resume", "failure"]),
        st.sampled_from(RECIPIENTS),
        timestamps,
    ),
    min_size=1,
    max_size=40,
)


def webhook_time(ts: int, received: int) -> int | None:
    """The model: what a webhook timestamp counts as (seconds only: Meta never sends
    milliseconds, the parser refuses them)."""
    used, verdict = trust(ts, received)
    return used if verdict is TimeVerdict.OK else None


def body(i: Input, n: int) -> bytes:
    if i.kind == "inbound":
        return inbound(i.who, i.ts)
    if i.kind == "failure":
        return opt_out_failure(i.who, i.ts, n)
    return preference(i.who, i.ts, i.kind)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs)
def test_no_timestamp_erases_a_recipient_or_an_opt_out(sequence: list[Input]) -> None:
    received = T0 + 600  # every record reached Kafka ten minutes after T0
    ingest = IngestStage(1, 1, clock=lambda: received)
    ingest.assign([0], 1)
    messages = MessageStage(DictKeyValue(), 1, clock=lambda: received)
    kv = DictKeyValue()
    recipients = RecipientStage(kv, RecipientRetention(sweep_budget=1_000))
    for n, i in enumerate(sequence):
        ingest.handle("raw", 0, n, body(i, n), received)
        to_messages, to_recipients, _ = ingest.drain()
        for offset, value in enumerate(to_messages.values()):
            messages.handle_batch(0, 2 * n + offset, value)
        messages.flush(0)
        facts = [*to_recipients.values(), *messages.drain_outbox().values()]
        for offset, value in enumerate(facts):
            recipients.handle_batch(0, 3 * n + offset, value)
        recipients.flush(0)

    trusted = [(i, ts) for i in sequence if (ts := webhook_time(i.ts, received)) is not None]
    watermark = max((ts for _, ts in trusted), default=0)
    assert watermark <= received + 3_600  # nothing untrusted moved the clock
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
