"""Realistic WhatsApp webhook traffic with its ground truth: for tests, the demo and benchmarks.

A campaign is a set of outbound template messages from several sending numbers to recipients in
several countries; each message goes through a lifecycle (sent -> delivered -> read, or failed
with an error code) and produces the status webhooks Meta would send: batched or single,
duplicated (Meta retries), shuffled (out of order), some attributed by
``biz_opaque_callback_data`` and the rest only through the sender's send log. The truth is
computed from the lifecycles alone, independently of the monitor's code.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from streams.core.catalog import lookup

START = 1_767_225_600  # 2026-01-01T00:00:00Z: where generated event time begins by default

# Valid mobile numbers per country (prefix + random digits to the national length).
COUNTRY_PREFIXES: dict[str, tuple[str, int]] = {
    "US": ("1212555", 11),
    "CA": ("1416555", 11),
    "BR": ("5511987", 13),
    "IN": ("9198765", 12),
    "ID": ("6281234", 13),
    "DE": ("4915123", 13),
    "GB": ("4477009", 12),
    "MX": ("5215512", 13),
}

ERRORS: dict[int, tuple[str, str]] = {
    131049: (
        "This message was not delivered to maintain healthy ecosystem engagement.",
        "per_user_marketing_limit",
    ),
    131050: (
        "Unable to deliver the message. This recipient has chosen to stop receiving "
        "marketing messages on WhatsApp from your business.",
        "opt_out",
    ),
    131026: ("Message undeliverable", "undeliverable"),
    131047: ("Re-engagement message", "csw_rule"),
    131056: ("(Business Account, Consumer Account) pair rate limit hit", "pair_rate_limit"),
}


#: Recipient countries of the spike traffic: no US numbers, so a 131049 is the per-user limit
#: (in the US it is the marketing pause).
NON_US = tuple(c for c in COUNTRY_PREFIXES if c != "US")


def phone_for(country: str, rng: random.Random) -> str:
    prefix, length = COUNTRY_PREFIXES[country]
    return prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix)))


def sending_numbers(n: int) -> list[tuple[str, str]]:
    """(phone_number_id, display number) of ``n`` sending numbers."""
    return [(f"10654035224{i:04d}", f"1555078{i:04d}") for i in range(n)]


def template_names(n: int) -> list[str]:
    """``n`` templates, ``promo_00`` on; see :func:`template_category`."""
    return [f"promo_{i:02d}" for i in range(n)]


def template_category(template: str) -> str:
    """Even-numbered templates of :func:`template_names` are marketing, odd ones utility."""
    return "marketing" if template[-1] in "02468" else "utility"


@dataclass
class Message:
    wamid: str
    sender: str  # phone_number_id
    display: str
    recipient: str
    country: str
    template: str
    category: str
    sent_at: int
    statuses: list[tuple[str, int, int | None]]  # (status, timestamp, error code)
    opaque: bool  # template carried in biz_opaque_callback_data
    campaign: str = "sim"  # "" = none (neither the callback data nor the send log names one)
    opaque_campaign: bool = True  # the callback data names the campaign (else the send log only)


@dataclass
class Truth:
    """Expected counts: per dimension value, outcome -> messages."""

    templates: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    senders: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    countries: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    campaigns: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    marketing_delivered: Counter[str] = field(default_factory=Counter)
    limit_failures: Counter[str] = field(default_factory=Counter)


@dataclass
class Campaign:
    messages: list[Message]
    payloads: list[bytes]  # webhook bodies in the order Meta would POST them (with retries)
    send_log: list[tuple[bytes, bytes]]  # (key=wamid, JSON) records
    garbage: list[bytes]
    truth: Truth


@dataclass(frozen=True)
class CampaignSpec:
    messages: int = 20_000
    templates: int = 12
    senders: int = 3
    start: int = START
    duration: int = 1_800  # seconds over which messages are sent
    countries: tuple[str, ...] = tuple(COUNTRY_PREFIXES)
    failure_ratio: float = 0.12
    read_ratio: float = 0.5
    skip_delivered_ratio: float = 0.5  # read messages whose delivered status never comes
    opaque_ratio: float = 0.5  # the rest is attributed by the send log only
    duplicate_ratio: float = 0.10
    batch_ratio: float = 0.2  # share of bodies that batch several statuses
    garbage_ratio: float = 0.01
    shuffle_window: int = 200  # bodies are shuffled within windows of this many
    recipients: int | None = None  # distinct recipients (default: messages // 2)
    #: message i belongs to campaigns[i % len(campaigns)] ("" = no campaign); every fifth
    #: message's callback data leaves the campaign out (only its send-log record names it)
    campaigns: tuple[str, ...] = ("sim",)


def _outcome_class(code: int, country: str) -> str:
    cls = ERRORS[code][1]
    if code == 131049 and country == "US":
        return "us_marketing_pause"
    return cls


def lifecycle(
    rng: random.Random, spec: CampaignSpec, category: str, t0: int, *, spread: bool = True
) -> list[tuple[str, int, int | None]]:
    """The statuses of one message sent at ``t0``: failed (``failure_ratio``; marketing-only
    codes become 131026 for other categories), now and then after a sent; or sent, delivered and
    read (``read_ratio``), the delivered missing at ``skip_delivered_ratio``. ``spread``: the
    later statuses come seconds to minutes after ``t0``; else every status carries ``t0`` (for
    bodies whose timestamps are set when they are sent)."""

    def later(low: int, high: int) -> int:
        return t0 + rng.randint(low, high) if spread else t0

    statuses: list[tuple[str, int, int | None]] = []
    if rng.random() < spec.failure_ratio:
        code = rng.choice(list(ERRORS))
        if category != "marketing" and code in (131049, 131050):
            code = 131026
        if rng.random() < 0.3:
            statuses.append(("sent", t0, None))
        statuses.append(("failed", later(0, 5), code))
    else:
        statuses.append(("sent", t0, None))
        statuses.append(("delivered", later(1, 30), None))
        if rng.random() < spec.read_ratio:
            statuses.append(("read", later(31, 300), None))
            # no draw at a ratio of 0: the other statuses stay as they were
            if spec.skip_delivered_ratio and rng.random() < spec.skip_delivered_ratio:
                statuses.remove(statuses[1])  # read without delivered
    return statuses


def generate(spec: CampaignSpec = CampaignSpec(), seed: int = 7) -> Campaign:
    rng = random.Random(seed)
    senders = sending_numbers(spec.senders)
    templates = template_names(spec.templates)
    n_recipients = spec.recipients or max(1, spec.messages // 2)
    people = []
    for _ in range(n_recipients):
        country = rng.choice(spec.countries)
        people.append((phone_for(country, rng), country))
    messages: list[Message] = []
    for i in range(spec.messages):
        sender, display = senders[i % len(senders)]
        phone, country = people[rng.randrange(len(people))]
        template = templates[rng.randrange(len(templates))]
        category = template_category(template)
        t0 = spec.start + rng.randrange(spec.duration)
        statuses = lifecycle(rng, spec, category, t0)
        messages.append(
            Message(
                wamid=f"wamid.SIM{seed:03d}{i:09d}",
                sender=sender,
                display=display,
                recipient=phone,
                country=country,
                template=template,
                category=category,
                sent_at=t0,
                statuses=statuses,
                opaque=rng.random() < spec.opaque_ratio,
                campaign=spec.campaigns[i % len(spec.campaigns)],
                opaque_campaign=i % 5 != 4,
            )
        )
    payloads = bodies(messages, spec, rng)
    garbage = [garbage_body(rng, k) for k in range(int(len(payloads) * spec.garbage_ratio))]
    for g in garbage:
        payloads.insert(rng.randrange(len(payloads) + 1), g)
    send_log = [
        (
            m.wamid.encode(),
            orjson.dumps(
                {
                    "wamid": m.wamid,
                    "recipient": m.recipient,
                    "template": m.template,
                    "category": m.category,
                    "campaign": m.campaign or None,
                    "sent_at": m.sent_at,
                }
            ),
        )
        for m in messages
    ]
    return Campaign(messages, payloads, send_log, garbage, truth_of(messages))


def truth_of(messages: list[Message]) -> Truth:
    truth = Truth()
    for m in messages:
        kinds = {s for s, _, _ in m.statuses}
        outcomes = ["attempted"]
        if kinds & {"sent", "delivered", "read"}:
            outcomes.append("sent")
        if kinds & {"delivered", "read"}:
            outcomes.append("delivered")
            if m.category == "marketing":
                truth.marketing_delivered[m.recipient] += 1
        if "read" in kinds:
            outcomes.append("read")
        for s, _, code in m.statuses:
            if s == "failed" and code is not None:
                cls = _outcome_class(code, m.country)
                outcomes.append(f"failed.{cls}")
                if cls == "per_user_marketing_limit":
                    truth.limit_failures[m.recipient] += 1
        for o in outcomes:
            truth.templates[m.template][o] += 1
            truth.senders[m.sender][o] += 1
            truth.countries[m.country][o] += 1
            if m.campaign:
                truth.campaigns[m.campaign][o] += 1
    return truth


def status_item(m: Message, status: str, ts: int, code: int | None) -> dict[str, object]:
    item: dict[str, object] = {
        "id": m.wamid,
        "status": status,
        "timestamp": str(ts),
        "recipient_id": m.recipient,
    }
    if m.opaque:
        data = {"template": m.template, "category": m.category}
        if m.campaign and m.opaque_campaign:
            data["campaign"] = m.campaign
        item["biz_opaque_callback_data"] = orjson.dumps(data).decode()
    if status == "failed" and code is not None:
        title = ERRORS[code][0]
        item["errors"] = [
            {"code": code, "title": title, "message": title, "error_data": {"details": title}}
        ]
    elif status in ("sent", "delivered"):
        item["pricing"] = {
            "billable": True,
            "pricing_model": "PMP",
            "type": "regular",
            "category": m.category,
        }
    return item


def envelope(sender: str, display: str, items: list[dict[str, object]]) -> bytes:
    return orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "102290129340398",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": display,
                                    "phone_number_id": sender,
                                },
                                "statuses": items,
                            },
                        }
                    ],
                }
            ],
        }
    )


def errors_envelope(sender: str | None, codes: list[int], time: int | None) -> bytes:
    """A ``messages`` change with account-level errors (``value.errors``) of ``sender`` (no
    ``metadata`` when None) in an entry of ``time`` (no ``time`` when None)."""
    value: dict[str, object] = {
        "messaging_product": "whatsapp",
        "errors": [
            {"code": code, "title": lookup(code).title, "error_data": {"details": "-"}}
            for code in codes
        ],
    }
    if sender is not None:
        value["metadata"] = {"display_phone_number": "15550783881", "phone_number_id": sender}
    entry: dict[str, object] = {
        "id": "102290129340398",
        "changes": [{"field": "messages", "value": value}],
    }
    if time is not None:
        entry["time"] = time
    return orjson.dumps({"object": "whatsapp_business_account", "entry": [entry]})


def bodies(messages: list[Message], spec: CampaignSpec, rng: random.Random) -> list[bytes]:
    """The webhook bodies of ``messages`` in the order Meta would POST them: statuses in time
    order, ``batch_ratio`` of the bodies carrying 2-6 statuses of one sending number,
    ``duplicate_ratio`` POSTed twice, shuffled within windows of ``shuffle_window``."""
    events = [(ts, m, s, code) for m in messages for s, ts, code in m.statuses]
    events.sort(key=lambda e: e[0])
    bodies: list[bytes] = []
    i = 0
    while i < len(events):
        take = rng.randint(2, 6) if rng.random() < spec.batch_ratio else 1
        chunk = [events[i]]
        while len(chunk) < take and i + len(chunk) < len(events):
            nxt = events[i + len(chunk)]
            if nxt[1].sender != chunk[0][1].sender:
                break  # one body carries one sending number's statuses
            chunk.append(nxt)
        i += len(chunk)
        m0 = chunk[0][1]
        body = envelope(m0.sender, m0.display, [status_item(m, s, ts, c) for ts, m, s, c in chunk])
        bodies.append(body)
        if rng.random() < spec.duplicate_ratio:
            bodies.append(body)  # Meta retried this POST
    w = spec.shuffle_window
    for start in range(0, len(bodies), w):
        window = bodies[start : start + w]
        rng.shuffle(window)
        bodies[start : start + w] = window
    return bodies


def garbage_body(rng: random.Random, k: int) -> bytes:
    """The ``k``-th of a few kinds of bodies the monitor must dead-letter (not JSON, cut off,
    not a webhook, a status without its fields, random bytes)."""
    kinds = [
        lambda: b"not json at all %d" % k,
        lambda: b'{"object": "whatsapp_business_account", "entry": [%d' % k,
        lambda: orjson.dumps({"hello": "world", "n": k}),
        lambda: orjson.dumps(
            {
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "id": "1",
                        "changes": [
                            {"field": "messages", "value": {"statuses": [{"id": f"w{k}"}]}}
                        ],
                    }
                ],
            }
        ),
        lambda: bytes(rng.randrange(256) for _ in range(40)) + b"%d" % k,
    ]
    return kinds[k % len(kinds)]()


def spike_campaign(
    *,
    minutes: int = 40,
    per_minute: int = 30,
    templates: int = 6,
    spike_template: str = "promo_spike",
    spike_start: int = 18,
    spike_minutes: int = 6,
    spike_ratio: float = 0.45,
    background_ratio: float = 0.01,
    start: int = START,
    seed: int = 21,
    campaign: str = "sim",
    spike_campaign_id: str | None = None,
) -> Campaign:
    """Steady marketing traffic with a 131049 spike on one template (non-US recipients, so the
    spike is the per-user limit, not the US pause). Every template (the spiking one included)
    sends ``per_minute`` messages a minute, in ``campaign`` (the spike template in
    ``spike_campaign_id`` when given)."""
    rng = random.Random(seed)
    names = [*template_names(templates - 1), spike_template]
    messages: list[Message] = []
    recipients: set[str] = set()
    n = 0
    for minute in range(minutes):
        for name in names:
            in_spike = (
                name == spike_template and spike_start <= minute < spike_start + spike_minutes
            )
            ratio = spike_ratio if in_spike else background_ratio
            for _ in range(per_minute):
                country = rng.choice(NON_US)
                t0 = start + minute * 60 + rng.randrange(60)
                if rng.random() < ratio:
                    statuses: list[tuple[str, int, int | None]] = [("failed", t0, 131049)]
                else:
                    statuses = [("sent", t0, None), ("delivered", t0 + rng.randint(1, 20), None)]
                recipient = phone_for(country, rng)
                while recipient in recipients:  # one message each: no resends to anyone
                    recipient = phone_for(country, rng)
                recipients.add(recipient)
                messages.append(
                    Message(
                        wamid=f"wamid.SPK{seed:03d}{n:09d}",
                        sender="106540352242922",
                        display="15550783881",
                        recipient=recipient,
                        country=country,
                        template=name,
                        category="marketing",
                        sent_at=t0,
                        statuses=statuses,
                        opaque=True,
                        campaign=spike_campaign_id
                        if spike_campaign_id and name == spike_template
                        else campaign,
                    )
                )
                n += 1
    spec = CampaignSpec(duplicate_ratio=0.0, garbage_ratio=0.0, batch_ratio=0.0, shuffle_window=20)
    payloads = bodies(messages, spec, rng)
    send_log: list[tuple[bytes, bytes]] = []
    return Campaign(messages, payloads, send_log, [], truth_of(messages))


# --- live traffic: the demo's endless, clock-driven generator ---------------------------------

DAY = 86_400

#: Marketing templates of the demo (the spike template is added to these).
DEMO_MARKETING = (
    "spring_sale",
    "new_arrivals",
    "loyalty_points_reminder",
    "abandoned_cart",
    "back_in_stock",
    "vip_early_access",
    "birthday_offer",
    "referral_bonus",
    "price_drop_alert",
    "seasonal_lookbook",
    "app_download_promo",
    "feedback_survey",
    "event_invite",
    "free_shipping_week",
    "bundle_offer",
    "clearance_final_days",
    "winback_we_miss_you",
    "newsletter_weekly",
    "product_launch_teaser",
    "store_opening",
)
DEMO_UTILITY = (
    "order_confirmation",
    "shipping_update",
    "delivery_scheduled",
    "payment_received",
    "appointment_reminder",
    "account_update",
    "invoice_ready",
    "return_processed",
    "subscription_renewal",
    "booking_confirmed",
)
DEMO_AUTHENTICATION = ("login_code", "verify_phone", "password_reset_code")

#: Recipient countries of the demo and their shares of recipients.
DEMO_COUNTRIES: tuple[tuple[str, float], ...] = (
    ("IN", 0.28),
    ("BR", 0.20),
    ("ID", 0.12),
    ("MX", 0.10),
    ("US", 0.10),
    ("DE", 0.07),
    ("GB", 0.07),
    ("CA", 0.06),
)

#: Background failures by category: (error code, share of the failures).
DEMO_FAILURES: dict[str, tuple[tuple[int, float], ...]] = {
    "marketing": ((131049, 0.40), (131026, 0.30), (131050, 0.15), (131056, 0.15)),
    "utility": ((131026, 0.70), (131056, 0.30)),
    "authentication": ((131026, 0.80), (131056, 0.20)),
}
SPIKE_TEMPLATE_FAILURES: tuple[tuple[int, float], ...] = ((131026, 1.0),)

_REPLIES = (
    "Yes please!",
    "How much is it?",
    "Do you ship to my city?",
    "Thanks",
    "Is this still available?",
    "What sizes do you have?",
)
_NAMES = ("Ana", "Ravi", "Siti", "Lukas", "Emma", "Carlos", "Priya", "Budi", "Sofia", "Jonas")


@dataclass(frozen=True)
class TemplatePlan:
    """One template of the live traffic: its share of the sends and how recipients engage."""

    name: str
    category: str  # marketing, utility or authentication
    weight: float
    read_ratio: float
    reply_ratio: float  # share of the read messages answered with an inbound message
    campaign: str = ""  # marketing templates belong to a campaign; the others to none


@dataclass(frozen=True)
class LiveSpec:
    """Shape of the demo's live traffic. Times are event-time seconds from the start."""

    senders: int = 3
    recipients: int = 20_000
    countries: tuple[tuple[str, float], ...] = DEMO_COUNTRIES
    failure_ratio: float = 0.02  # background failures of all classes
    opaque_ratio: float = 0.8  # the rest is attributed through the send log
    duplicate_ratio: float = 0.05  # bodies Meta POSTs twice
    batch_ratio: float = 0.15  # bodies that carry several statuses
    max_delay: float = 4.0  # webhook delivery jitter (seconds): statuses arrive out of order
    skip_delivered_ratio: float = 0.1  # read messages whose delivered status never comes
    opt_out_ratio: float = 0.003  # read marketing messages answered with "stop promotions"
    spike_template: str = "weekend_flash_deal"
    spike_share: float = 0.05  # share of all sends that use the spike template
    spike_at: float = 60.0
    spike_seconds: float = 240.0
    spike_ratio: float = 0.5  # share of the spike template's sends failing with 131049


@dataclass(frozen=True, slots=True)
class _Due:
    """A scheduled output of :class:`LiveTraffic`: a status, a reply, an opt-out, a send-log
    record or a repeated POST."""

    kind: str
    message: Message | None = None
    status: str = ""
    ts: int = 0
    code: int | None = None
    record: LiveRecord | None = None


@dataclass(frozen=True, slots=True)
class LiveRecord:
    """One record to produce: a webhook body for the raw topic, or a send-log record."""

    kind: str  # statuses, inbound, preferences or send_log
    value: bytes
    key: bytes | None = None
    statuses: int = 0  # status items in the body
    duplicate: bool = False  # a repeated POST (Meta's retry)


def demo_templates(spec: LiveSpec, rng: random.Random) -> list[TemplatePlan]:
    """Dozens of templates with a long-tailed popularity and their own engagement; the spike
    template is a marketing template taking ``spike_share`` of the sends."""
    names = [(n, "marketing") for n in DEMO_MARKETING if n != spec.spike_template]
    names += [(n, "utility") for n in DEMO_UTILITY]
    names += [(n, "authentication") for n in DEMO_AUTHENTICATION]
    rng.shuffle(names)
    raw = [1.0 / (rank + 1) ** 0.8 for rank in range(len(names))]
    scale = (1.0 - spec.spike_share) / sum(raw)
    plans = []
    for (name, category), w in zip(names, raw, strict=True):
        low, high = (0.55, 0.9) if category != "marketing" else (0.2, 0.7)
        plans.append(
            TemplatePlan(
                name,
                category,
                w * scale,
                round(rng.uniform(low, high), 2),
                round(rng.uniform(0.01, 0.15), 3),
                demo_campaign(name) if category == "marketing" else "",
            )
        )
    plans.append(
        TemplatePlan(
            spec.spike_template, "marketing", spec.spike_share, 0.45, 0.05, DEMO_SPIKE_CAMPAIGN
        )
    )
    return plans


#: The demo's campaigns: every marketing template belongs to one (the spike template to its own).
DEMO_CAMPAIGNS = ("spring-launch", "loyalty-2026", "winback-q2", "weekly-news")
DEMO_SPIKE_CAMPAIGN = "weekend-flash"


def demo_campaign(template: str) -> str:
    """The campaign of one of the demo's marketing templates (by its place in the list)."""
    index = DEMO_MARKETING.index(template) if template in DEMO_MARKETING else 0
    return DEMO_CAMPAIGNS[index % len(DEMO_CAMPAIGNS)]


class LiveTraffic:
    """Endless WhatsApp traffic at event time: call :meth:`send` to start a message at ``ts``
    and :meth:`due` to collect the records whose time has come.

    Several sending numbers, dozens of templates (see :func:`demo_templates`), recipients in
    several countries (US numbers only get utility and authentication templates, as senders do
    under Meta's US marketing pause), inbound replies with ``contacts`` (they open service
    windows), a few ``stop promotions`` opt-outs, background failures, duplicated and
    out-of-order statuses, and between ``spike_at`` and ``spike_at + spike_seconds`` a 131049
    spike on ``spike_template``. The sender behaves: no marketing to a recipient within 24 h of
    its 131049 or after its opt-out, so the only incident is the spike. Deterministic for a seed
    and a sequence of calls; no clock of its own.
    """

    def __init__(self, spec: LiveSpec, start: float, seed: int = 7) -> None:
        self.spec = spec
        self.start = start
        self.seed = seed
        self.rng = random.Random(seed)
        rng = self.rng
        self.senders = sending_numbers(spec.senders)
        self.templates = demo_templates(spec, rng)
        self._template_cum = _cumulative([t.weight for t in self.templates])
        countries = [c for c, _ in spec.countries]
        weights = [w for _, w in spec.countries]
        self.people = [
            (phone_for(c, rng), c)
            for c in rng.choices(countries, weights=weights, k=spec.recipients)
        ]
        self._non_us = [i for i, (_, c) in enumerate(self.people) if c != "US"]
        self.showcase = phone_for("BR", rng)  # the demo recipient the spike hits first
        self._blocked_until: dict[str, float] = {}  # marketing hold after 131049 / opt-out
        self._heap: list[tuple[float, int, _Due]] = []
        self._seq = 0
        self.messages = 0
        self.scheduled_statuses = 0
        self.spike_failures = 0
        self._showcase_done = False

    # -- spike window ---------------------------------------------------------------------

    @property
    def spike_start(self) -> float:
        return self.start + self.spec.spike_at

    @property
    def spike_end(self) -> float:
        return self.spike_start + self.spec.spike_seconds

    def in_spike(self, ts: float) -> bool:
        return self.spike_start <= ts < self.spike_end

    @property
    def statuses_per_message(self) -> float:
        """Status items per message so far (a prior of 2.3 until there are enough messages)."""
        if self.messages < 50:
            return 2.3
        return self.scheduled_statuses / self.messages

    # -- generation -----------------------------------------------------------------------

    def _push(self, at: float, item: _Due) -> None:
        heapq.heappush(self._heap, (at, self._seq, item))
        self._seq += 1

    def _pick_template(self) -> TemplatePlan:
        x = self.rng.random() * self._template_cum[-1]
        return self.templates[bisect.bisect_right(self._template_cum, x)]

    def _pick_recipient(self, marketing: bool, ts: float) -> tuple[str, str] | None:
        for _ in range(10):
            if marketing:
                phone, country = self.people[self._non_us[self.rng.randrange(len(self._non_us))]]
            else:
                phone, country = self.people[self.rng.randrange(len(self.people))]
            if not marketing or self._blocked_until.get(phone, 0.0) <= ts:
                return phone, country
        return None

    def send(self, ts: float) -> Message | None:
        """Start one message at event time ``ts`` and schedule its webhooks; ``None`` when the
        chosen recipients were all on hold (the sender skipped the send)."""
        spec, rng = self.spec, self.rng
        template = self._pick_template()
        marketing = template.category == "marketing"
        spike_template = template.name == spec.spike_template
        spiking = spike_template and self.in_spike(ts)
        forced: int | None = None
        if spiking and not self._showcase_done:
            self._showcase_done = True
            picked: tuple[str, str] | None = (self.showcase, "BR")
            forced = 131049
        else:
            picked = self._pick_recipient(marketing, ts)
        if picked is None:
            return None
        phone, country = picked
        message = self._message(ts, template, rng.randrange(len(self.senders)), phone, country)
        code = forced
        if code is None and spiking and rng.random() < spec.spike_ratio:
            code = 131049
        elif code is None and rng.random() < spec.failure_ratio:
            # The spike template fails otherwise only as undeliverable, so its one incident is
            # the spike (other classes on the same scope would make incidents of their own).
            mix = SPIKE_TEMPLATE_FAILURES if spike_template else DEMO_FAILURES[template.category]
            code = _weighted(rng, mix)
        self._launch(message, template, ts, code, spiking, send_log=not message.opaque)
        return message

    def send_chosen(
        self,
        ts: float,
        template: TemplatePlan,
        sender: int,
        recipient: tuple[str, str],
        code: int | None,
        campaign: str = "demo",
    ) -> Message:
        """Start a message the caller chose (template, sending number by index, recipient and
        country, failure code or ``None`` for a delivery) at event time ``ts``: its lifecycle,
        replies and webhooks are made as :meth:`send` makes them, and it is in the send log
        whether it carries ``biz_opaque_callback_data`` or not (a sender logs every send)."""
        message = self._message(ts, template, sender, *recipient, campaign=campaign)
        self._launch(message, template, ts, code, spiking=False, send_log=True)
        return message

    def on_hold(self, phone: str, ts: float) -> bool:
        """Whether a behaving sender holds marketing to ``phone`` at ``ts`` (a 131049 less than
        24 h ago, or an opt-out)."""
        return self._blocked_until.get(phone, 0.0) > ts

    def _message(
        self,
        ts: float,
        template: TemplatePlan,
        sender: int,
        phone: str,
        country: str,
        campaign: str | None = None,
    ) -> Message:
        number, display = self.senders[sender]
        message = Message(
            wamid=f"wamid.DEMO{self.seed:03d}{self.messages:010d}",
            sender=number,
            display=display,
            recipient=phone,
            country=country,
            template=template.name,
            category=template.category,
            sent_at=int(ts),
            statuses=[],
            opaque=self.rng.random() < self.spec.opaque_ratio,
            campaign=template.campaign if campaign is None else campaign,
        )
        self.messages += 1
        return message

    def _launch(
        self,
        message: Message,
        template: TemplatePlan,
        ts: float,
        code: int | None,
        spiking: bool,
        send_log: bool,
    ) -> None:
        if send_log:
            self._push(ts, _Due("send_log", message))
        if code is not None:
            self._fail(message, ts, code, spiking)
        else:
            self._deliver(message, template, ts)
        for status, at, error in message.statuses:
            due = _Due("status", message, status, at, error)
            self._push(at + self.rng.uniform(0.0, self.spec.max_delay), due)
            self.scheduled_statuses += 1

    def _fail(self, message: Message, ts: float, code: int, spiking: bool) -> None:
        if self.rng.random() < 0.3:
            message.statuses.append(("sent", int(ts), None))
        failed_at = ts + self.rng.uniform(0.5, 5.0)
        message.statuses.append(("failed", int(failed_at), code))
        if code in (131049, 131050):
            hold = DAY if code == 131049 else 400 * DAY
            self._blocked_until[message.recipient] = ts + hold
        if spiking and code == 131049:
            self.spike_failures += 1

    def _deliver(self, message: Message, template: TemplatePlan, ts: float) -> None:
        spec, rng = self.spec, self.rng
        sent = ts + rng.uniform(0.2, 2.0)
        delivered = sent + rng.uniform(1.0, 20.0)
        message.statuses.append(("sent", int(sent), None))
        if rng.random() >= template.read_ratio:
            message.statuses.append(("delivered", int(delivered), None))
            return
        read = delivered + min(600.0, rng.expovariate(1 / 90))
        if rng.random() >= spec.skip_delivered_ratio:
            message.statuses.append(("delivered", int(delivered), None))
        message.statuses.append(("read", int(read), None))
        if rng.random() < template.reply_ratio:
            self._push(read + rng.uniform(3.0, 120.0), _Due("inbound", message))
        elif template.category == "marketing" and rng.random() < spec.opt_out_ratio:
            self._blocked_until[message.recipient] = ts + 400 * DAY
            self._push(read + rng.uniform(3.0, 60.0), _Due("stop", message))

    # -- output ---------------------------------------------------------------------------

    def due(self, now: float) -> list[LiveRecord]:
        """Every record whose event time is ``<= now``, in the order Meta would POST them."""
        out: list[LiveRecord] = []
        statuses: list[_Due] = []
        while self._heap and self._heap[0][0] <= now:
            at, _, item = heapq.heappop(self._heap)
            m = item.message
            if item.kind == "status":
                statuses.append(item)
            elif item.kind == "send_log" and m is not None:
                out.append(_send_log_record(m))
            elif item.kind == "inbound" and m is not None:
                out.append(LiveRecord("inbound", self._inbound(m, at)))
            elif item.kind == "stop" and m is not None:
                out.append(LiveRecord("preferences", _stop_body(m, at)))
            elif item.kind == "duplicate" and item.record is not None:
                r = item.record
                out.append(LiveRecord(r.kind, r.value, None, r.statuses, duplicate=True))
        out.extend(self._status_bodies(statuses, now))
        return out

    def _status_bodies(self, statuses: list[_Due], now: float) -> list[LiveRecord]:
        spec, rng = self.spec, self.rng
        out: list[LiveRecord] = []
        i = 0
        while i < len(statuses):
            take = rng.randint(2, 6) if rng.random() < spec.batch_ratio else 1
            chunk = [statuses[i]]
            while len(chunk) < take and i + len(chunk) < len(statuses):
                nxt = statuses[i + len(chunk)]
                if _sender(nxt) != _sender(chunk[0]):
                    break  # one body carries one sending number's statuses
                chunk.append(nxt)
            i += len(chunk)
            first = chunk[0].message
            assert first is not None
            items = [status_item(d.message, d.status, d.ts, d.code) for d in chunk if d.message]
            body = envelope(first.sender, first.display, items)
            record = LiveRecord("statuses", body, statuses=len(items))
            out.append(record)
            if rng.random() < spec.duplicate_ratio:
                self._push(now + rng.uniform(1.0, 20.0), _Due("duplicate", record=record))
        return out

    def _inbound(self, m: Message, at: float) -> bytes:
        value = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": m.display, "phone_number_id": m.sender},
            "contacts": [{"profile": {"name": self.rng.choice(_NAMES)}, "wa_id": m.recipient}],
            "messages": [
                {
                    "from": m.recipient,
                    "id": f"wamid.IN{m.wamid[5:]}",
                    "timestamp": str(int(at)),
                    "type": "text",
                    "text": {"body": self.rng.choice(_REPLIES)},
                    "context": {"from": m.display, "id": m.wamid},
                }
            ],
        }
        return _change_body("messages", value)


def _cumulative(weights: list[float]) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


def _weighted(rng: random.Random, choices: tuple[tuple[int, float], ...]) -> int:
    codes = [c for c, _ in choices]
    return rng.choices(codes, weights=[w for _, w in choices], k=1)[0]


def _sender(due: _Due) -> str:
    return due.message.sender if due.message is not None else ""


def _change_body(field_name: str, value: Mapping[str, object]) -> bytes:
    return orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {"id": "102290129340398", "changes": [{"field": field_name, "value": value}]}
            ],
        }
    )


def _stop_body(m: Message, at: float) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": m.display, "phone_number_id": m.sender},
        "contacts": [{"wa_id": m.recipient}],
        "user_preferences": [
            {
                "wa_id": m.recipient,
                "detail": "User requested to stop marketing messages",
                "category": "marketing_messages",
                "value": "stop",
                "timestamp": int(at),
            }
        ],
    }
    return _change_body("user_preferences", value)


def _send_log_record(m: Message) -> LiveRecord:
    value = orjson.dumps(
        {
            "wamid": m.wamid,
            "recipient": m.recipient,
            "template": m.template,
            "category": m.category,
            "campaign": m.campaign or None,
            "sent_at": m.sent_at,
        }
    )
    return LiveRecord("send_log", value, m.wamid.encode())
