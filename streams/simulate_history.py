"""Weeks of one sender's marketing to a set of recipients, with the ground truth of each
recipient's history: for tests of engagement, advice, the audience pre-flight and retry plans.

Every recipient follows a persona (readers, recipients who never read, repliers, lapsed ones,
131049 cool-downs, resend storms, opt-outs, undeliverable and US numbers, throttled sends...).
The truth lists what happened to each recipient (deliveries, reads, inbound messages, sends,
failures) from the generated events alone, independently of the monitor's code. Event times
stay an hour away from the edges of the 24 h / 7 d / 30 d windows ending at ``History.end``,
so a status that arrives out of order cannot move a count across an edge; bodies arrive up to
``max_delay`` seconds late (out of order by at most that), less than a retry plan's settle
time, so whether a resend cancels a plan follows from the event times alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from streams.core.catalog import lookup
from streams.simulate import Message, _change_body, envelope, phone_for, status_item

HOUR = 3_600
DAY = 24 * HOUR

PERSONAS = (
    "reader",  # reads most marketing, the last a few days ago
    "ignorer",  # 4 deliveries in the last 30 days, nothing read
    "replier",  # wrote to the business in the last week
    "lapsed",  # only messaged more than 32 days ago
    "cooling",  # read something 10-25 days ago, nothing since
    "limited",  # a 131049 in the last 20 hours
    "storm",  # a 131049, then the same template resent within 24 h
    "opted_out",  # a 131050
    "undeliverable",  # three 131026 in the last 5 days
    "us",  # a US number: 131049 is the US marketing pause
    "throttled",  # a 130429 / 131056 / 131000, half resent at once
    "recovered",  # a 131049 days ago: its cool-down is over
)


@dataclass(frozen=True)
class HistorySpec:
    recipients: int = 360
    days: int = 40
    start: int = 1_767_225_600  # 2026-01-01T00:00:00Z
    senders: int = 2
    templates: tuple[str, ...] = ("spring_sale", "new_arrivals", "loyalty_points")
    countries: tuple[str, ...] = ("BR", "IN", "DE", "GB", "MX", "ID", "CA")
    opaque_ratio: float = 0.5  # the rest is attributed by the send log only
    duplicate_ratio: float = 0.05
    max_delay: int = 30  # webhook delivery delay (seconds): bodies arrive out of order


@dataclass(frozen=True)
class FailureTruth:
    wamid: str
    code: int
    ts: int
    template: str
    sender: str


@dataclass
class RecipientTruth:
    recipient: str
    country: str
    persona: str
    delivered: list[int] = field(default_factory=list)  # marketing deliveries
    read: list[int] = field(default_factory=list)
    inbound: list[int] = field(default_factory=list)
    sends: list[tuple[int, str, str]] = field(default_factory=list)  # (time, template, wamid)
    limit_failures: list[int] = field(default_factory=list)  # 131049 (not US)
    undeliverable: list[int] = field(default_factory=list)
    opted_out_at: int | None = None
    failures: list[FailureTruth] = field(default_factory=list)  # every failed message

    @property
    def is_us(self) -> bool:
        return self.country == "US"


@dataclass
class History:
    spec: HistorySpec
    end: int
    messages: list[Message]
    payloads: list[bytes]  # webhook bodies in the order they arrive (statuses and inbound)
    send_log: list[tuple[bytes, bytes]]  # (wamid, JSON) in send order
    truth: dict[str, RecipientTruth]


def _status_item(m: Message, status: str, ts: int, code: int | None) -> dict[str, object]:
    """A status item; a failure carries any catalog code with its title."""
    item = status_item(m, status, ts, None)
    if code is not None:
        title = lookup(code).title
        item["errors"] = [{"code": code, "title": title, "message": title}]
    return item


class _Builder:
    def __init__(self, spec: HistorySpec, seed: int) -> None:
        self.spec = spec
        self.rng = random.Random(seed)
        self.end = spec.start + spec.days * DAY
        self.seed = seed
        self.senders = [(f"10654035225{i:04d}", f"1555079{i:04d}") for i in range(spec.senders)]
        self.messages: list[Message] = []
        self.events: list[tuple[int, int, bytes]] = []  # (time, seq, body)
        self.truth: dict[str, RecipientTruth] = {}

    def clear_time(self, lo: int, hi: int) -> int:
        """A time in [end - hi, end - lo] an hour away from the window edges, and nothing in
        the two days before the 30-day edge (what engagement keeps ends there: a history
        asked about up to two days before its end finds the same there in any order)."""
        edges = (self.end - DAY, self.end - 7 * DAY, self.end - 30 * DAY)
        gap = (self.end - 32 * DAY, self.end - 30 * DAY + HOUR)
        while True:
            t = self.end - self.rng.randint(lo, hi)
            clear = all(abs(t - e) > HOUR for e in edges) and not gap[0] <= t <= gap[1]
            if clear and t > self.spec.start:
                return t

    def _body(self, ts: int, body: bytes) -> None:
        self.events.append((ts, len(self.events), body))

    def send(
        self,
        who: RecipientTruth,
        t0: int,
        outcome: str,
        code: int | None = None,
        template: str | None = None,
    ) -> Message:
        """One marketing template to ``who`` at ``t0``: ``delivered``, ``read`` or ``failed``."""
        rng = self.rng
        sender, display = self.senders[len(self.messages) % len(self.senders)]
        template = template or rng.choice(self.spec.templates)
        m = Message(
            wamid=f"wamid.HIST{self.seed:03d}{len(self.messages):08d}",
            sender=sender,
            display=display,
            recipient=who.recipient,
            country=who.country,
            template=template,
            category="marketing",
            sent_at=t0,
            statuses=[("sent", t0, None)],
            opaque=rng.random() < self.spec.opaque_ratio,
        )
        who.sends.append((t0, template, m.wamid))
        if outcome == "failed":
            assert code is not None
            failed_at = t0 + rng.randint(1, 5)
            m.statuses.append(("failed", failed_at, code))
            who.failures.append(FailureTruth(m.wamid, code, failed_at, template, sender))
            if code == 131049 and not who.is_us:
                who.limit_failures.append(failed_at)
            elif code == 131026:
                who.undeliverable.append(failed_at)
            elif code == 131050:
                who.opted_out_at = max(who.opted_out_at or 0, failed_at)
        else:
            delivered = t0 + rng.randint(1, 30)
            m.statuses.append(("delivered", delivered, None))
            who.delivered.append(delivered)
            if outcome == "read":
                read = delivered + rng.randint(60, 1_800)
                m.statuses.append(("read", read, None))
                who.read.append(read)
        for status, ts, c in m.statuses:
            self._body(ts, envelope(sender, display, [_status_item(m, status, ts, c)]))
        self.messages.append(m)
        return m

    def inbound(self, who: RecipientTruth, ts: int) -> None:
        sender, display = self.senders[0]
        value = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": display, "phone_number_id": sender},
            "contacts": [{"profile": {"name": "Ana"}, "wa_id": who.recipient}],
            "messages": [
                {
                    "from": who.recipient,
                    "id": f"wamid.HISTIN{self.seed:03d}{len(self.events):08d}",
                    "timestamp": str(ts),
                    "type": "text",
                    "text": {"body": "hello"},
                }
            ],
        }
        who.inbound.append(ts)
        self._body(ts, _change_body("messages", value))

    def persona(self, who: RecipientTruth) -> None:
        rng, t = self.rng, self.clear_time
        p = who.persona
        if p == "reader":
            for _ in range(rng.randint(2, 4)):
                self.send(who, t(8 * DAY, 38 * DAY), rng.choice(("read", "delivered")))
            self.send(who, t(HOUR * 2, 6 * DAY), "read")
        elif p == "ignorer":
            for _ in range(4):
                self.send(who, t(2 * HOUR, 29 * DAY), "delivered")
        elif p == "replier":
            self.send(who, t(10 * DAY, 20 * DAY), "delivered")
            self.inbound(who, t(2 * HOUR, 6 * DAY))
        elif p == "lapsed":
            for _ in range(2):
                self.send(who, t(32 * DAY, 39 * DAY), "read")
        elif p == "cooling":
            self.send(who, t(10 * DAY, 25 * DAY), "read")
            self.send(who, t(10 * DAY, 25 * DAY), "delivered")
        elif p == "limited":
            self.send(who, t(3 * DAY, 20 * DAY), "delivered")
            self.send(who, t(2 * HOUR, 20 * HOUR), "failed", 131049)
        elif p == "storm":
            # the cool-down is over at the end, the resend's extension is not
            failed = self.send(who, t(25 * HOUR + 600, 28 * HOUR), "failed", 131049)
            resend_at = failed.sent_at + rng.randint(5 * HOUR, 10 * HOUR)
            self.send(who, resend_at, "delivered", template=failed.template)
        elif p == "opted_out":
            self.send(who, t(5 * DAY, 20 * DAY), "read")
            self.send(who, t(2 * HOUR, 4 * DAY), "failed", 131050)
        elif p == "undeliverable":
            for _ in range(3):
                self.send(who, t(2 * HOUR, 5 * DAY), "failed", 131026)
        elif p == "us":
            self.send(who, t(2 * HOUR, 10 * DAY), "failed", 131049)
        elif p == "throttled":
            code = rng.choice((130429, 131056, 131000))
            failed = self.send(who, t(3 * HOUR, 20 * DAY), "failed", code)
            if rng.random() < 0.5:  # the sender's own retry, right after the failure
                again = failed.statuses[-1][1] + rng.randint(5, 20)
                self.send(who, again, "read", None, failed.template)
        elif p == "recovered":
            self.send(who, t(3 * DAY, 6 * DAY), "failed", 131049)

    def payloads(self) -> list[bytes]:
        """Bodies in arrival order: each arrives up to ``max_delay`` s after its event time,
        a repeated POST (Meta's retry) up to a minute after that."""
        rng, delay = self.rng, self.spec.max_delay
        arrivals: list[tuple[float, int, bytes]] = []
        for ts, seq, body in self.events:
            at = ts + rng.uniform(0, delay)
            arrivals.append((at, seq, body))
            if rng.random() < self.spec.duplicate_ratio:
                arrivals.append((at + rng.uniform(1, 60), seq, body))
        arrivals.sort()
        return [body for _, _, body in arrivals]


def generate_history(spec: HistorySpec = HistorySpec(), seed: int = 11) -> History:
    """Recipients round-robin over :data:`PERSONAS`, their messages and webhooks, the truth."""
    b = _Builder(spec, seed)
    for i in range(spec.recipients):
        persona = PERSONAS[i % len(PERSONAS)]
        country = "US" if persona == "us" else spec.countries[i % len(spec.countries)]
        phone = phone_for(country, b.rng)
        while phone in b.truth:
            phone = phone_for(country, b.rng)
        who = b.truth[phone] = RecipientTruth(phone, country, persona)
        b.persona(who)
    send_log = []
    for m in sorted(b.messages, key=lambda m: m.sent_at):
        if m.opaque:
            continue  # attributed by biz_opaque_callback_data
        value = (
            b'{"wamid":"%s","recipient":"%s","template":"%s","category":"marketing",'
            b'"campaign":"weeks","sent_at":%d,"phone_number_id":"%s"}'
            % (
                m.wamid.encode(),
                m.recipient.encode(),
                m.template.encode(),
                m.sent_at,
                m.sender.encode(),
            )
        )
        send_log.append((m.wamid.encode(), value))
    return History(spec, b.end, b.messages, b.payloads(), send_log, b.truth)
