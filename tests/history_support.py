"""What a generated recipient history should give (the documented rules, written again from
the README here, independently of the monitor's code), and the three stages run in process.

Used by the unit tests (in process) and the integration tests (the worker on the broker).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from streams.core.advice import Advice, advise
from streams.core.keys import recipient_key
from streams.core.recipient_state import RecipientState
from streams.core.signals import ResendSignal
from streams.simulate_history import History, RecipientTruth
from streams.stages import partition_for
from streams.stages.ingest import IngestStage
from streams.stages.messages import MessageStage
from streams.stages.recipients import RecipientStage
from streams.state import DictKeyValue, decode

HOUR = 3_600
DAY = 24 * HOUR
SETTLE = 120  # RetryPolicy.settle_s, as documented
RETRYABLE = {131049: "not_before", 130429: "slow_down", 131056: "backoff", 131000: "backoff"}


# -- the documented rules --------------------------------------------------------------------


def _n(times: Iterable[int], lo: int, hi: int) -> int:
    return sum(1 for t in times if lo < t <= hi)


def expected_engagement(t: RecipientTruth, at: int) -> dict[str, object]:
    """Counts and tier of the README's engagement rule at ``at``."""
    d7, d30 = _n(t.delivered, at - 7 * DAY, at), _n(t.delivered, at - 30 * DAY, at)
    r7, r30 = _n(t.read, at - 7 * DAY, at), _n(t.read, at - 30 * DAY, at)
    inbound = max((i for i in t.inbound if i <= at), default=0)
    if r7 or inbound > at - 7 * DAY:
        tier = "engaged"
    elif d30 >= 3 and not r30 and inbound <= at - 30 * DAY:
        tier = "unengaged"
    elif d30 or r30 or inbound > at - 30 * DAY:
        tier = "cooling"
    else:
        tier = "unknown"
    return {
        "tier": tier,
        "marketing_delivered_7d": d7,
        "marketing_delivered_30d": d30,
        "marketing_read_7d": r7,
        "marketing_read_30d": r30,
        "last_inbound": inbound or None,
    }


def premature_sends(t: RecipientTruth) -> list[tuple[int, str, str]]:
    """(time, template, wamid) of marketing sends less than 24 h after a 131049."""
    return [s for s in t.sends if any(0 < s[0] - f < DAY for f in t.limit_failures)]


def expected_group(t: RecipientTruth, at: int) -> tuple[str, int | None]:
    """(group, not_before) of the pre-flight at ``at`` (README: advice and audience)."""
    undeliverable = [u for u in t.undeliverable if at - 7 * DAY < u <= at]
    if (
        t.is_us
        or (t.opted_out_at is not None and t.opted_out_at <= at)
        or (len(undeliverable) >= 3 and max(undeliverable) + 7 * DAY > at)
    ):
        return "never", None
    until = max((f + DAY for f in t.limit_failures if f <= at), default=0)
    for s, _, _ in premature_sends(t):
        if s <= at:
            until = max(until, s + DAY)
    if until > at:
        return "wait", until
    return "send_now", None


def plan_jitter(wamid: str, span: int) -> int:
    return int.from_bytes(hashlib.blake2b(wamid.encode(), digest_size=8).digest()) % span


@dataclass(frozen=True)
class ExpectedPlan:
    wamid: str
    recipient: str
    code: int
    failed_at: int
    due: int
    template: str
    cancelled: bool  # a later send of its template came before it was due
    #: ... and that send's template is in its webhooks (biz_opaque_callback_data): known when
    #: it arrives, not only once the send log comes
    cancelled_by_opaque: bool


def expected_plans(history: History) -> dict[str, ExpectedPlan]:
    """Every retryable failure's plan (README: retry plans), by wamid."""
    opaque = {m.wamid: m.opaque for m in history.messages}
    out = {}
    for t in history.truth.values():
        for f in t.failures:
            if f.code not in RETRYABLE or (f.code == 131049 and t.is_us):
                continue
            if f.code == 131049:
                due = f.ts + DAY + plan_jitter(f.wamid, HOUR)
            else:
                due = f.ts + 60 + plan_jitter(f.wamid, 60)
            by = [w for s, tpl, w in t.sends if f.ts < s < due and tpl == f.template]
            out[f.wamid] = ExpectedPlan(
                f.wamid,
                t.recipient,
                f.code,
                f.ts,
                due,
                f.template,
                bool(by),
                any(opaque[w] for w in by),
            )
    return out


def partition_clock(history: History, partitions: int) -> dict[int, int]:
    """The retry timers' clock of each recipients partition once the whole history is in:
    per stage-2 partition the newest status time of its messages to the partition's
    recipients, and the slowest of those (README: retry plans)."""
    newest: dict[tuple[int, int], int] = defaultdict(int)
    for m in history.messages:
        key = (partition_for(m.recipient, partitions), partition_for(m.wamid, partitions))
        newest[key] = max(newest[key], *(ts for _, ts, _ in m.statuses))
    clock: dict[int, int] = {}
    for (p, _), ts in newest.items():
        clock[p] = min(clock.get(p, ts), ts)
    return clock


# -- the stages in process -----------------------------------------------------------------


class Pipeline:
    """Stages 1-3 over dict stores; :meth:`feed` runs inputs in the given order, flushing every
    ``chunk`` inputs, and keeps the retry records and resend signals each flush publishes."""

    def __init__(self, partitions: int = 4) -> None:
        self.n = partitions
        self.ingest = IngestStage(partitions, partitions)
        self.mkv, self.rkv = DictKeyValue(), DictKeyValue()
        self.messages = MessageStage(self.mkv, partitions)
        self.recipients = RecipientStage(self.rkv, status_sources=partitions)
        self._offsets: dict[tuple[str, int], int] = defaultdict(int)
        self.retries: list[dict[str, object]] = []
        self.signals: list[ResendSignal] = []
        self._raw = 0

    def _offset(self, topic: str, partition: int) -> int:
        offset = self._offsets[(topic, partition)]
        self._offsets[(topic, partition)] += 1
        return offset

    def feed(self, inputs: Iterable[tuple[str, bytes, bytes]], chunk: int = 50) -> None:
        """``inputs``: ("raw", b"", body) or ("send_log", wamid, record)."""
        batch: list[tuple[str, bytes, bytes]] = []
        for item in inputs:
            batch.append(item)
            if len(batch) >= chunk:
                self.step(batch)
                batch = []
        if batch:
            self.step(batch)

    def step(self, items: list[tuple[str, bytes, bytes]]) -> None:
        for kind, key, value in items:
            if kind == "raw":
                p = self._raw % self.n
                self._raw += 1
                self.ingest.handle("raw", p, self._offset("raw", p), value)
            else:
                p = partition_for(key.decode(), self.n)
                self.messages.handle_send_log(p, self._offset("send_log", p), value)
        to_messages, to_recipients, _ = self.ingest.drain()
        self.ingest.drain_signals()
        for p, value in sorted(to_messages.items()):
            self.messages.handle_batch(p, self._offset("messages", p), value)
        for p in self.messages.state.partitions():
            self.messages.flush(p)
        outbox = self.messages.drain_outbox()
        self.messages.drain_signals()
        for source in (to_recipients, outbox):
            for p, value in sorted(source.items()):
                self.recipients.handle_batch(p, self._offset("recipients", p), value)
        for p in self.recipients.state.partitions():
            self.recipients.changed_advice(p, advise=lambda s, r, now: (str(now), b""))
            self.recipients.flush(p)
        self.retries += [json.loads(r) for _, r in self.recipients.drain_retries()]
        signals = self.recipients.drain_signals()
        if signals is not None:
            self.signals += signals.resends

    def state(self, recipient: str) -> RecipientState | None:
        raw = self.rkv.get(partition_for(recipient, self.n), recipient_key(recipient))
        return decode(raw, RecipientState) if raw is not None else None

    def advice(self, recipient: str, at: int, is_us: bool = False) -> Advice:
        return advise(self.state(recipient), recipient, at, is_us=is_us)


def inputs_in_order(history: History, order: str) -> list[tuple[str, bytes, bytes]]:
    """The history's webhooks and send log: ``send_log_first``, ``send_log_last`` or
    ``interleaved`` (the send log spread evenly through the webhooks)."""
    raw = [("raw", b"", body) for body in history.payloads]
    log = [("send_log", key, value) for key, value in history.send_log]
    if order == "send_log_first":
        return log + raw
    if order == "send_log_last":
        return raw + log
    out, i = [], 0
    for j, item in enumerate(raw):  # spread the send log evenly through the webhooks
        out.append(item)
        while i < len(log) and i * len(raw) <= j * len(log):
            out.append(log[i])
            i += 1
    return out + log[i:]
