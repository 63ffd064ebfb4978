"""A labelled suite of alerting scenarios: campaigns with the incidents they should raise.

Each scenario is about an hour of event time of one account's WhatsApp traffic, made with
:class:`streams.simulate.LiveTraffic` (the demo's lifecycles and wire shapes): three sending
numbers, marketing and utility templates with a long-tailed volume, recipients in eight countries
(US and Canadian +1 numbers among them), a natural background of failures (131049 at about 1.6 %
of marketing sends, some 131026 / 131050 / 131056), inbound replies and opt-outs, batched and
repeated POSTs (10 %), statuses out of order by a few seconds, a few garbage bodies, half of the
messages attributed by ``biz_opaque_callback_data`` and every send in the send log. On top of
that background, each scenario has one twist and its *labels*: the incidents an ideal monitor
raises (:class:`Expected`: kind, error class, headline scope, onset, end), or none.

The sender behaves unless a scenario says otherwise: no marketing to US numbers (Meta's US
marketing pause), none to a recipient within 24 h of its 131049 or after its opt-out. Traffic
goes on at least 18 minutes after every spike ends, so a monitor can resolve while data flows.

Pure: no Kafka, no I/O, no clock. :func:`build` makes a scenario for a base time; the records it
returns carry their event time, and :func:`feed_order` orders them for one feeding mode. The bench
(``bench/alert_quality.py``) and ``tests/integration/test_alert_determinism.py`` produce them with
:mod:`streams.feed`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from streams.simulate import (
    DEMO_COUNTRIES,
    LiveRecord,
    LiveSpec,
    LiveTraffic,
    Message,
    TemplatePlan,
    Truth,
    garbage_body,
    truth_of,
)

START = 1_767_225_600  # 2026-01-01T00:00:00Z, as streams.simulate
MINUTE = 60

SPIKE = "spike"
STANDING = "standing"
STORM = "storm"
IMMEDIATE = "immediate"
KINDS = (SPIKE, STANDING, STORM, IMMEDIATE)

LIMIT = "per_user_marketing_limit"
US_PAUSE = "us_marketing_pause"

#: Feeding modes (see :func:`feed_order`; ``sigkill`` is paced, with the worker killed twice).
MODES = ("paced", "backlog", "send_log_late", "sigkill")

#: Background marketing templates: (name, campaign, sends per minute over all numbers).
MARKETING = (
    ("spring_sale", "spring_push", 30.0),
    ("new_arrivals", "spring_push", 22.0),
    ("back_in_stock", "restock", 16.0),
    ("vip_early_access", "vip", 12.0),
    ("abandoned_cart", "cart", 10.0),
    ("price_drop_alert", "restock", 8.0),
    ("loyalty_points_reminder", "loyalty", 7.0),
    ("birthday_offer", "loyalty", 6.0),
    ("referral_bonus", "loyalty", 5.0),
    ("bundle_offer", "spring_push", 5.0),
    ("free_shipping_week", "spring_push", 4.0),
    ("event_invite", "vip", 4.0),
    ("feedback_survey", "loyalty", 3.0),
    ("newsletter_weekly", "newsletter", 3.0),
    ("winback_we_miss_you", "winback", 3.0),
    ("clearance_final_days", "restock", 2.0),
)
UTILITY = (
    ("order_confirmation", 30.0),
    ("shipping_update", 25.0),
    ("delivery_scheduled", 12.0),
    ("payment_received", 10.0),
    ("appointment_reminder", 6.0),
    ("invoice_ready", 5.0),
    ("account_update", 3.0),
    ("booking_confirmed", 3.0),
)

#: Natural failures per send: (code, probability) by category.
NATURAL: dict[str, tuple[tuple[int, float], ...]] = {
    "marketing": ((131049, 0.016), (131026, 0.006), (131050, 0.002), (131056, 0.001)),
    "utility": ((131026, 0.008), (131056, 0.001)),
}

SENDERS = 3


def sender_id(index: int) -> str:
    """The phone_number_id of sending number ``index`` (as :class:`LiveTraffic` names them)."""
    return f"10654035224{index:04d}"


@dataclass(frozen=True)
class Expected:
    """One incident a scenario should raise.

    ``scope_kind``/``scope_key`` is the headline an ideal monitor names (``template`` and the
    template, ``sender`` and the phone_number_id, ``account`` and ""); with ``account_ok`` an
    account-wide incident of the same kind and class covers it too (a standing condition or a
    resend storm may be reported per number or for the account). ``onset`` and ``end`` are event
    times; ``end`` is None for a condition that lasts to the end of the data. ``clear`` marks a
    clear spike, which must be detected within minutes (a slow ramp has no such target).
    """

    label: str
    kind: str
    error_class: str
    scope_kind: str
    scope_key: str
    onset: int
    end: int | None = None
    clear: bool = True
    account_ok: bool = False


@dataclass
class Scenario:
    name: str
    description: str
    start: int  # event time of the first send
    sends_end: int  # event time after the last send (webhooks of its messages come later)
    records: list[tuple[float, LiveRecord]]  # (event time due, record), in live order
    messages: list[Message]
    expected: tuple[Expected, ...]
    facts: dict[str, object] = field(default_factory=dict)  # figures behind the labels

    @property
    def end(self) -> float:
        """Event time of the last record."""
        return self.records[-1][0] if self.records else float(self.start)

    @property
    def truth(self) -> Truth:
        return truth_of(self.messages)

    def recipients(self) -> list[str]:
        return sorted({m.recipient for m in self.messages})


# -- the generator ------------------------------------------------------------------------------


@dataclass
class _Plan:
    """How one scenario departs from the background."""

    minutes: int = 60
    scale: float = 1.0  # background volume
    templates: list[tuple[str, str, str, float]] = field(default_factory=list)  # extra ones
    #: the 131049 probability of a marketing send (template, sender index, minute), or None for
    #: the natural mix
    limit_ratio: Callable[[str, int, int], float | None] = lambda t, s, m: None
    us_marketing: frozenset[int] = frozenset()  # numbers that send marketing to US numbers
    storm_sender: int | None = None  # resends to recipients with a 131049, minutes 20-40
    storm_per_minute: int = 3
    sparse_bursts: int = 0  # minutes where a sparse template fails 2 of 5


class _Builder:
    def __init__(self, name: str, plan: _Plan, start: int, seed: int) -> None:
        self.name, self.plan, self.start = name, plan, start
        self.rng = random.Random(f"{name}/{seed}")
        spec = LiveSpec(
            senders=SENDERS,
            recipients=12_000,
            countries=DEMO_COUNTRIES,
            duplicate_ratio=0.10,
            batch_ratio=0.15,
            max_delay=6.0,
            opaque_ratio=0.5,
        )
        self.traffic = LiveTraffic(spec, float(start), seed=seed)
        self.plans: dict[str, TemplatePlan] = {}
        self.campaigns: dict[str, str] = {}
        self.rates: list[tuple[str, float]] = []
        for name_, campaign, rate in MARKETING:
            self._template(name_, "marketing", campaign, rate * plan.scale)
        for name_, rate in UTILITY:
            self._template(name_, "utility", "transactional", rate * plan.scale)
        for name_, category, campaign, rate in plan.templates:
            self._template(name_, category, campaign, rate)
        self.marketing = [n for n, p in self.plans.items() if p.category == "marketing"]
        people = self.traffic.people
        self.non_us = [p for p in people if p[1] != "US"]
        self.messages: list[Message] = []
        #: (time of the failed status, phone, country) of every 131049 (US pause excepted)
        self.limit_failed: list[tuple[int, str, str]] = []
        self.resends: list[Message] = []
        self._retried = 0  # recipients of limit_failed the retry job resent to

    def _template(self, name: str, category: str, campaign: str, rate: float) -> None:
        read, reply = (0.4, 0.03) if category == "marketing" else (0.7, 0.05)
        self.plans[name] = TemplatePlan(name, category, rate, read, reply)
        self.campaigns[name] = campaign
        self.rates.append((name, rate))

    def slots(self) -> list[tuple[float, str, int]]:
        """(event time, template, sender index) of every background send, in time order."""
        rng, out = self.rng, []
        for minute in range(self.plan.minutes):
            for name, rate in self.rates:
                n = int(rate) + (rng.random() < rate - int(rate))
                for _ in range(n):
                    ts = self.start + minute * MINUTE + rng.random() * MINUTE
                    out.append((ts, name, rng.randrange(SENDERS)))
        out.sort()
        return out

    def pick(self, marketing: bool, sender: int, ts: float) -> tuple[str, str] | None:
        pool = self.traffic.people
        if marketing and sender not in self.plan.us_marketing:
            pool = self.non_us
        for _ in range(10):
            phone, country = pool[self.rng.randrange(len(pool))]
            if not marketing or not self.traffic.on_hold(phone, ts):
                return phone, country
        return None  # everyone picked was on hold: the sender skips this send

    def outcome(self, template: str, sender: int, ts: float, country: str) -> int | None:
        plan, rng = self.plans[template], self.rng
        if plan.category == "marketing":
            if country == "US":
                return 131049  # Meta's US marketing pause: every marketing send fails
            ratio = self.plan.limit_ratio(template, sender, int(ts - self.start) // MINUTE)
            if ratio is not None:
                return 131049 if rng.random() < ratio else None
        x = rng.random()
        for code, p in NATURAL[plan.category]:
            if x < p:
                return code
            x -= p
        return None

    def send(
        self,
        ts: float,
        template: str,
        sender: int,
        who: tuple[str, str],
        code: int | None,
        campaign: str | None = None,
    ) -> Message:
        plan = self.plans[template]
        campaign = campaign or self.campaigns[template]
        m = self.traffic.send_chosen(ts, plan, sender, who, code, campaign)
        self.messages.append(m)
        return m

    def run(self) -> None:
        slots = self.slots()
        sparse = self._sparse_bursts()
        i = 0
        for minute in range(self.plan.minutes):
            if self.plan.storm_sender is not None and 20 <= minute < 40:
                self._retry_job(self.plan.storm_sender, minute)
            t_end = self.start + (minute + 1) * MINUTE
            while i < len(slots) and slots[i][0] < t_end:
                ts, template, sender = slots[i]
                i += 1
                marketing = self.plans[template].category == "marketing"
                who = self.pick(marketing, sender, ts)
                if who is None:
                    continue
                code = self.outcome(template, sender, ts, who[1])
                m = self.send(ts, template, sender, who, code)
                if code == 131049 and who[1] != "US":
                    failed = max(t for status, t, _ in m.statuses if status == "failed")
                    self.limit_failed.append((failed, *who))
            for template in sparse.get(minute, ()):
                self._burst(template, minute)

    def _retry_job(self, sender: int, minute: int) -> None:
        """Number ``sender`` resends marketing, on a random template, to recipients whose
        131049 came before this minute (each once): premature resends (< 24 h)."""
        for _ in range(self.plan.storm_per_minute):
            if self._retried >= len(self.limit_failed):
                return
            failed, phone, country = self.limit_failed[self._retried]
            if failed >= self.start + minute * MINUTE:
                return  # its 131049 comes later in this minute than the resend may
            self._retried += 1
            ts = self.start + minute * MINUTE + self.rng.random() * MINUTE
            code = 131049 if self.rng.random() < 0.5 else None
            template = self.rng.choice(self.marketing)
            self.resends.append(self.send(ts, template, sender, (phone, country), code, "retry"))

    def _sparse_bursts(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        sparse = [n for n, _, _, _ in self.plan.templates if n.startswith("sparse_")]
        for _ in range(self.plan.sparse_bursts):
            minute = self.rng.randrange(5, self.plan.minutes - 2)
            out.setdefault(minute, []).append(self.rng.choice(sparse))
        return out

    def _burst(self, template: str, minute: int) -> None:
        """Five sends of ``template`` in one minute, two of them failing with 131049."""
        for k in range(5):
            ts = self.start + minute * MINUTE + self.rng.random() * MINUTE
            sender = self.rng.randrange(SENDERS)
            who = self.pick(True, sender, ts)
            if who is not None:
                self.send(ts, template, sender, who, 131049 if k < 2 else None)

    def records(self, garbage_ratio: float = 0.005) -> list[tuple[float, LiveRecord]]:
        """Every record in live order: the send log at send time, webhooks as they come."""
        out: list[tuple[float, LiveRecord]] = []
        now = float(self.start)
        horizon = self.start + self.plan.minutes * MINUTE + 15 * MINUTE
        k = 0
        while now <= horizon:
            for record in self.traffic.due(now):
                out.append((now, record))
                if record.kind != "send_log" and self.rng.random() < garbage_ratio:
                    out.append((now, LiveRecord("garbage", garbage_body(self.rng, k))))
                    k += 1
            now += 1.0
        while out and out[-1][1].kind == "garbage":
            out.pop()
        return out


# -- the suite ------------------------------------------------------------------------------------


LimitRatio = Callable[[str, int, int], float | None]


def _spike(template: str, ratio: float, first: int, last: int) -> LimitRatio:
    def limit(t: str, s: int, m: int) -> float | None:
        return ratio if t == template and first <= m < last else None

    return limit


def _window(start: int, first: int, last: int) -> tuple[int, int]:
    return start + first * MINUTE, start + last * MINUTE


def build(name: str, start: int = START, seed: int = 7) -> Scenario:
    """The scenario ``name`` (one of :data:`SCENARIOS`) with its first send at ``start``."""
    try:
        describe, make = SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}: choose from {sorted(SCENARIOS)}") from None
    plan, expect = make(start)
    b = _Builder(name, plan, start, seed)
    b.run()
    records = b.records()
    expected, facts = expect(b)
    return Scenario(
        name=name,
        description=describe,
        start=start,
        sends_end=start + plan.minutes * MINUTE,
        records=records,
        messages=b.messages,
        expected=tuple(expected),
        facts=facts,
    )


Labels = Callable[[_Builder], tuple[list[Expected], dict[str, object]]]


def _spike_labels(label: str, kind: str, key: str, first: int, last: int, clear: bool) -> Labels:
    def labels(b: _Builder) -> tuple[list[Expected], dict[str, object]]:
        onset, end = _window(b.start, first, last)
        spiked = [
            m
            for m in b.messages
            if onset <= m.sent_at < end and (m.template == key or m.sender == key)
        ]
        failed = sum(1 for m in spiked if any(c == 131049 for _, _, c in m.statuses))
        e = Expected(label, SPIKE, LIMIT, kind, key, onset, end, clear=clear)
        return [e], {"sends_in_spike": len(spiked), "failed_131049_in_spike": failed}

    return labels


def _no_labels(b: _Builder) -> tuple[list[Expected], dict[str, object]]:
    return [], {}


def _us_labels(b: _Builder) -> tuple[list[Expected], dict[str, object]]:
    out: list[Expected] = []
    facts: dict[str, object] = {}
    for s in sorted(b.plan.us_marketing):
        number = sender_id(s)
        failed = [
            ts
            for m in b.messages
            if m.sender == number and m.country == "US" and m.category == "marketing"
            for status, ts, _ in m.statuses
            if status == "failed"
        ]
        out.append(
            Expected(
                f"US marketing pause from {number}",
                STANDING,
                US_PAUSE,
                "sender",
                number,
                min(failed),
                account_ok=True,
            )
        )
        facts[f"us_marketing_failures_{number}"] = len(failed)
    return out, facts


def _storm_labels(b: _Builder) -> tuple[list[Expected], dict[str, object]]:
    assert b.plan.storm_sender is not None
    number = sender_id(b.plan.storm_sender)
    resends = sorted(b.resends, key=lambda m: m.sent_at)
    onset = resends[9].sent_at  # the 10th distinct recipient (each is resent once)
    facts: dict[str, object] = {
        "resends": len(resends),
        "recipients": len({m.recipient for m in resends}),
        "templates": len({m.template for m in resends}),
    }
    e = Expected(f"resend storm from {number}", STORM, LIMIT, "sender", number, onset)
    return [e], facts


def _combine(*parts: Labels) -> Labels:
    def labels(b: _Builder) -> tuple[list[Expected], dict[str, object]]:
        out: list[Expected] = []
        facts: dict[str, object] = {}
        for part in parts:
            e, f = part(b)
            out.extend(e)
            facts.update(f)
        return out, facts

    return labels


SPIKE_MINUTES = (20, 32)  # the spikes of the suite (minutes from the start; sends go on to 60)
RAMP_MINUTES = (12, 42)
SMALL = ("promo_small", "marketing", "flash", 12.0)  # ~60 sends per 5 minutes
LARGE = ("promo_large", "marketing", "flash", 50.0)
SPARSE = [(f"sparse_{i:02d}", "marketing", "long_tail", 0.2 + 0.03 * i) for i in range(30)]


def _small_spike(start: int) -> tuple[_Plan, Labels]:
    plan = _Plan(templates=[SMALL], limit_ratio=_spike("promo_small", 0.45, *SPIKE_MINUTES))
    labels = _spike_labels("spike on promo_small", "template", "promo_small", *SPIKE_MINUTES, True)
    return plan, labels


def _large_spike(start: int) -> tuple[_Plan, Labels]:
    plan = _Plan(templates=[LARGE], limit_ratio=_spike("promo_large", 0.30, *SPIKE_MINUTES))
    labels = _spike_labels("spike on promo_large", "template", "promo_large", *SPIKE_MINUTES, True)
    return plan, labels


def _sender_spike(start: int) -> tuple[_Plan, Labels]:
    first, last = SPIKE_MINUTES

    def limit(t: str, s: int, m: int) -> float | None:
        return 0.30 if s == 1 and first <= m < last else None

    key = sender_id(1)
    labels = _spike_labels(f"spike on {key}", "sender", key, first, last, True)
    return _Plan(limit_ratio=limit), labels


def _slow_ramp(start: int) -> tuple[_Plan, Labels]:
    first, last = RAMP_MINUTES

    def limit(t: str, s: int, m: int) -> float | None:
        if t != "new_arrivals" or not first <= m < last:
            return None
        return min(0.30, 0.016 + (0.30 - 0.016) * (m - first) / (last - first - 2))

    labels = _spike_labels("ramp on new_arrivals", "template", "new_arrivals", first, last, False)
    return _Plan(limit_ratio=limit), labels


def _us_audience(start: int) -> tuple[_Plan, Labels]:
    return _Plan(us_marketing=frozenset({0, 1})), _us_labels


def _resend_storm(start: int) -> tuple[_Plan, Labels]:
    return _Plan(storm_sender=2), _storm_labels


def _sparse(start: int) -> tuple[_Plan, Labels]:
    return _Plan(templates=list(SPARSE), sparse_bursts=8), _no_labels


def _quiet(start: int) -> tuple[_Plan, Labels]:
    return _Plan(), _no_labels


def _mixed(start: int) -> tuple[_Plan, Labels]:
    """Smaller and shorter (for the end-to-end test): a small-template spike, US numbers in a
    number's audience and a retry job on another number, together."""
    plan = _Plan(
        minutes=45,
        scale=0.4,
        templates=[SMALL],
        limit_ratio=_spike("promo_small", 0.45, 15, 25),
        us_marketing=frozenset({0}),
        storm_sender=2,
        storm_per_minute=2,
    )
    spike = _spike_labels("spike on promo_small", "template", "promo_small", 15, 25, True)
    return plan, _combine(spike, _us_labels, _storm_labels)


SCENARIOS: dict[str, tuple[str, Callable[[int], tuple[_Plan, Labels]]]] = {
    "small_spike": (
        "131049 at 45 % for 12 minutes on a small template (~12 sends a minute, natural 1.6 %)",
        _small_spike,
    ),
    "large_spike": ("131049 at 30 % for 12 minutes on a 50-sends-a-minute template", _large_spike),
    "sender_spike": (
        "131049 at 30 % for 12 minutes on every marketing template of one sending number",
        _sender_spike,
    ),
    "slow_ramp": (
        "131049 on one template rising from 1.6 % to 30 % over 28 minutes, then back",
        _slow_ramp,
    ),
    "us_audience": (
        "two of the three numbers send marketing to US numbers too (every one fails: US pause)",
        _us_audience,
    ),
    "resend_storm": (
        "a retry job on one number resends marketing, over many templates, to recipients less "
        "than 24 h after their 131049 (3 a minute for 20 minutes; half fail again)",
        _resend_storm,
    ),
    "sparse_templates": (
        "30 low-volume templates (0.2-1 sends a minute) at natural rates, 8 minutes where one "
        "fails 2 of 5 sends",
        _sparse,
    ),
    "quiet_day": ("the background alone: nothing to alert", _quiet),
    "mixed": (
        "smaller, 45 minutes: a small-template spike, US numbers in one number's audience and a "
        "retry job on another",
        _mixed,
    ),
}

#: The benchmark's default suite (``mixed`` is the end-to-end test's campaign).
SUITE = tuple(n for n in SCENARIOS if n != "mixed")


def feed_order(
    records: list[tuple[float, LiveRecord]], mode: str
) -> list[tuple[float, LiveRecord]]:
    """The records in the order ``mode`` produces them: live order (``paced``, ``sigkill``),
    the send log first (``backlog``), or the webhooks first and the send log after them
    (``send_log_late``)."""
    if mode in ("paced", "sigkill"):
        return list(records)
    logs = [r for r in records if r[1].kind == "send_log"]
    rest = [r for r in records if r[1].kind != "send_log"]
    if mode == "backlog":
        return logs + rest
    if mode == "send_log_late":
        return rest + logs
    raise ValueError(f"unknown mode {mode!r}: choose from {MODES}")
