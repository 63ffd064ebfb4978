"""The whole pipeline in one process, without Kafka: topics are lists, the clock is fake.

Stage 1 (ingest), stage 2 (messages), stage 3 (recipients) and stage 4 (alerting) run over
in-memory partitions exactly as the worker wires them (marks, idle raw partitions, signals,
reports), so a test can feed the same traffic in different orders and paces (live, a backlog
whose partitions run at different speeds, a send log that comes after the webhooks) and compare
what the monitor concludes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import orjson

from streams.core.alerts import Notification
from streams.core.facts import SendLogError
from streams.core.signals import SignalBatch, decode_signals, encode_signals
from streams.scenarios import Scenario
from streams.simulate import Message, envelope, phone_for, status_item
from streams.stages import partition_for
from streams.stages.alerting import AlertingStage
from streams.stages.ingest import DeadLetter, IngestStage
from streams.stages.messages import MessageStage
from streams.stages.recipients import RecipientStage
from streams.state import DictKeyValue

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Topic:
    """Records per partition (offset = index) and how far the reader got."""

    partitions: int
    records: dict[int, list[tuple[bytes, int]]] = field(default_factory=dict)
    read: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for p in range(self.partitions):
            self.records.setdefault(p, [])
            self.read.setdefault(p, 0)

    def append(self, partition: int, value: bytes, received: int) -> None:
        self.records[partition].append((value, received))

    def unread(self, partition: int) -> int:
        return len(self.records[partition]) - self.read[partition]

    def take(self, partition: int, n: int) -> list[tuple[int, bytes, int]]:
        start = self.read[partition]
        out = [
            (start + i, v, r) for i, (v, r) in enumerate(self.records[partition][start : start + n])
        ]
        self.read[partition] = start + len(out)
        return out


class Pipeline:
    """Stages 1-4 over list topics (``raw`` and ``send_log`` are fed by the test)."""

    def __init__(
        self, partitions: int = 4, wall: float = T0, idle_s: float = 30, max_wait_s: float = 120
    ) -> None:
        self.n = partitions
        self.clock = Clock(wall)
        self.raw = Topic(partitions)
        self.send_log = Topic(partitions)
        self.messages_topic = Topic(partitions)
        self.recipients_topic = Topic(partitions)
        self.ingest = IngestStage(partitions, partitions, clock=self.clock, idle_s=idle_s)
        self.ingest.assign(range(partitions), partitions)
        self.messages = MessageStage(DictKeyValue(), partitions, clock=self.clock)
        self.recipients = RecipientStage(DictKeyValue())
        self.alerting = AlertingStage(
            clock=self.clock, partitions=partitions, idle_s=idle_s, max_wait_s=max_wait_s
        )
        self.signal_offset = 0
        self.notifications: list[Notification] = []
        self.dead_letters: list[DeadLetter] = []  # of stage 1
        self.refused_logs = 0  # send-log records refused (SendLogError)
        self.advice: list[tuple[str, bytes]] = []  # (recipient, record) of the advice topic

    # -- producing -------------------------------------------------------------------------------
    def post(self, body: bytes, received: int, partition: int) -> None:
        self.raw.append(partition, body, received)

    def log(self, wamid: str, value: bytes, received: int) -> None:
        self.send_log.append(partition_for(wamid, self.n), value, received)

    # -- the stages ------------------------------------------------------------------------------
    def read_raw(self, partition: int, n: int) -> None:
        for offset, value, received in self.raw.take(partition, n):
            self.ingest.handle("raw", partition, offset, value, received)
        self.flush_ingest()

    def flush_ingest(self) -> None:
        for p in range(self.n):
            self.ingest.caught_up(p, self.raw.unread(p) == 0)
        messages, recipients, dead = self.ingest.drain()
        self.dead_letters += dead
        for p, value in messages.items():
            self.messages_topic.append(p, value, 0)
        for p, value in recipients.items():
            self.recipients_topic.append(p, value, 0)
        self._signal(self.ingest.drain_signals())

    def read_messages(self, partition: int, n: int, n_log: int) -> None:
        for offset, value, _ in self.messages_topic.take(partition, n):
            self.messages.handle_batch(partition, offset, value)
        for offset, value, received in self.send_log.take(partition, n_log):
            try:
                self.messages.handle_send_log(partition, offset, value, received)
            except SendLogError as exc:
                assert str(exc), "a refusal without a reason"
                self.refused_logs += 1
        for p in self.messages.state.partitions():
            self.messages.flush(p)
        for p, value in self.messages.drain_outbox().items():
            self.recipients_topic.append(p, value, 0)
        self._signal(self.messages.drain_signals())

    def read_recipients(self, partition: int, n: int) -> None:
        for offset, value, _ in self.recipients_topic.take(partition, n):
            self.recipients.handle_batch(partition, offset, value)
        for p in self.recipients.state.partitions():
            self.advice += self.recipients.changed_advice(p)  # as the worker's flush does
            self.recipients.flush(p)
        self._signal(self.recipients.drain_signals())

    def _signal(self, batch: SignalBatch | None) -> None:
        if batch is not None:  # through its encoding, as the signals topic carries it
            self.alerting.handle(decode_signals(encode_signals(batch)), self.signal_offset)
            self.signal_offset += 1

    def evaluate(self) -> None:
        self.notifications += self.alerting.evaluate()

    def step_all(self, rng: random.Random | None, chunk: int) -> bool:
        """Every stage reads up to ``chunk`` records of every partition (in a random order of
        partitions and sizes with ``rng``); False when nothing was left to read."""
        moved = False
        order = list(range(self.n))
        if rng is not None:
            rng.shuffle(order)
        for p in order:
            k = rng.randint(1, chunk) if rng is not None else chunk
            if self.raw.unread(p):
                self.read_raw(p, k)
                moved = True
        for p in order:
            k = rng.randint(1, chunk) if rng is not None else chunk
            if self.messages_topic.unread(p) or self.send_log.unread(p):
                self.read_messages(p, k, k)
                moved = True
        for p in order:
            if self.recipients_topic.unread(p):
                self.read_recipients(p, chunk * 4)
                moved = True
        self.evaluate()
        return moved

    def drain(self, rng: random.Random | None = None, chunk: int = 20, tick: float = 0.05) -> None:
        """Read everything there is, advancing the wall clock by ``tick`` per round."""
        while self.step_all(rng, chunk):
            self.clock.now += tick
        self.flush_ingest()

    def settle(self, seconds: int, tick: float = 5.0) -> None:
        """Let wall time pass with nothing new: idle partitions, time advancing, resolves."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now += tick
            self.flush_ingest()
            for p in range(self.n):
                self.read_messages(p, 1_000, 1_000)
                self.read_recipients(p, 1_000)
            self.evaluate()


# --- traffic ------------------------------------------------------------------------------------


@dataclass
class Traffic:
    """Bodies with the time Meta POSTed them, and send-log records with the time they were
    produced (at send)."""

    bodies: list[tuple[int, bytes]]
    send_log: list[tuple[int, str, bytes]]
    messages: list[Message]


def campaign(
    *,
    minutes: int = 45,
    per_minute: int = 6,
    templates: int = 8,
    spike: tuple[int, int, float] = (15, 12, 0.45),  # start minute, minutes, 131049 share
    natural: float = 0.016,
    us_share: float = 0.0,
    logged_share: float = 0.5,
    seed: int = 3,
) -> Traffic:
    """Marketing traffic per template and minute, a 131049 spike on template ``small``, some
    recipients in the US (the US pause), and a share of messages attributed only by the send
    log (the rest by ``biz_opaque_callback_data``)."""
    rng = random.Random(seed)
    names = ["small"] + [f"promo_{i:02d}" for i in range(templates - 1)]
    spike_start, spike_minutes, spike_share = spike
    messages: list[Message] = []
    for minute in range(minutes):
        for name in names:
            rate = per_minute if name == "small" else per_minute * 3
            share = natural
            if name == "small" and spike_start <= minute < spike_start + spike_minutes:
                share = spike_share
            for _ in range(rate):
                country = "US" if rng.random() < us_share else rng.choice(["BR", "IN", "DE"])
                t0 = T0 + minute * 60 + rng.randrange(60)
                if country == "US" or rng.random() < share:
                    statuses: list[tuple[str, int, int | None]] = [("failed", t0 + 1, 131049)]
                else:
                    statuses = [("sent", t0, None), ("delivered", t0 + rng.randint(1, 20), None)]
                messages.append(
                    Message(
                        wamid=f"wamid.IP{seed:03d}{len(messages):08d}",
                        sender=f"PN{len(messages) % 2}",
                        display=f"1555000000{len(messages) % 2}",
                        recipient=phone_for(country, rng),
                        country=country,
                        template=name,
                        category="marketing",
                        sent_at=t0,
                        statuses=statuses,
                        opaque=rng.random() >= logged_share,
                    )
                )
    events = sorted(
        ((ts, m, s, code) for m in messages for s, ts, code in m.statuses),
        key=lambda e: (e[0], e[1].wamid),
    )
    bodies = [
        (ts + rng.randint(0, 3), envelope(m.sender, m.display, [status_item(m, s, ts, code)]))
        for ts, m, s, code in events
    ]
    bodies.sort(key=lambda b: b[0])
    log = [
        (
            m.sent_at,
            m.wamid,
            orjson.dumps(
                {
                    "wamid": m.wamid,
                    "recipient": m.recipient,
                    "template": m.template,
                    "category": m.category,
                    "campaign": "c-" + m.template[:3],
                    "sent_at": m.sent_at,
                }
            ),
        )
        for m in messages
    ]
    return Traffic(bodies, log, messages)


def scenario_traffic(scenario: Scenario) -> Traffic:
    """A scenario of :mod:`streams.scenarios` as traffic for the feeds below."""
    bodies = [(int(ts), r.value) for ts, r in scenario.records if r.kind != "send_log"]
    log = [
        (int(ts), (r.key or b"").decode(), r.value)
        for ts, r in scenario.records
        if r.kind == "send_log"
    ]
    return Traffic(bodies, log, scenario.messages)


def keyless(i: int, partitions: int) -> int:
    """The raw partition of the ``i``-th body (a keyless producer spreads them)."""
    return (i * 7919) % partitions


def feed_live(traffic: Traffic, pipeline: Pipeline, step: int = 5, first_index: int = 0) -> None:
    """Live: each record is read a moment after it is produced; the send log at send time.
    ``first_index``: the index of the first body in the whole traffic (its raw partition)."""
    events = [(ts, 0, i) for i, (ts, _) in enumerate(traffic.bodies)]
    events += [(ts, 1, i) for i, (ts, _, _) in enumerate(traffic.send_log)]
    events.sort()
    t = events[0][0]
    i = 0
    while i < len(events):
        t += step
        while i < len(events) and events[i][0] < t:
            ts, kind, k = events[i]
            if kind == 0:
                pipeline.post(traffic.bodies[k][1], ts, keyless(first_index + k, pipeline.n))
            else:
                _, wamid, value = traffic.send_log[k]
                pipeline.log(wamid, value, ts)
            i += 1
        pipeline.clock.now = t
        pipeline.drain()


def feed_backlog(
    traffic: Traffic, pipeline: Pipeline, seed: int, send_log_first: bool = True
) -> None:
    """A backlog: everything produced before the worker reads; partitions at random speeds."""
    end = traffic.bodies[-1][0] + 60
    if send_log_first:
        for ts, wamid, value in traffic.send_log:
            pipeline.log(wamid, value, ts)
    for i, (ts, body) in enumerate(traffic.bodies):
        pipeline.post(body, ts, keyless(i, pipeline.n))
    if not send_log_first:
        for _, wamid, value in traffic.send_log:
            pipeline.log(wamid, value, end)
    pipeline.clock.now = end + 600
    pipeline.drain(random.Random(seed), chunk=60)


def feed_send_log_late(
    traffic: Traffic, pipeline: Pipeline, seed: int, read_all_first: bool = False
) -> None:
    """The webhooks as a backlog read at once, the send log produced a few seconds after
    (``read_all_first``: after every webhook was read)."""
    end = traffic.bodies[-1][0] + 60
    for i, (ts, body) in enumerate(traffic.bodies):
        pipeline.post(body, ts, keyless(i, pipeline.n))
    pipeline.clock.now = end + 600
    rng = random.Random(seed)
    steps = 0
    while steps < 40 or read_all_first:  # the worker reads webhooks for a few seconds
        steps += 1
        if not pipeline.step_all(rng, 60) and read_all_first:
            break
        pipeline.clock.now += 0.1
    for _, wamid, value in traffic.send_log:
        pipeline.log(wamid, value, int(pipeline.clock.now))
    pipeline.drain(rng, chunk=60)


def feed_live_send_log_at_end(traffic: Traffic, pipeline: Pipeline, step: int = 5) -> None:
    """Webhooks live; the sender's send log only after the campaign (longer than the time
    alerting waits for a quiet input): its attributions arrive late."""
    t = traffic.bodies[0][0]
    i = 0
    while i < len(traffic.bodies):
        t += step
        while i < len(traffic.bodies) and traffic.bodies[i][0] < t:
            ts, body = traffic.bodies[i]
            pipeline.post(body, ts, keyless(i, pipeline.n))
            i += 1
        pipeline.clock.now = t
        pipeline.drain()
    for _, wamid, value in traffic.send_log:
        pipeline.log(wamid, value, int(pipeline.clock.now))
    pipeline.drain()


def feed_live_one_partition_behind(
    traffic: Traffic, pipeline: Pipeline, behind: int, lag_s: int, step: int = 5
) -> None:
    """Live, but stage 1 reads raw partition ``behind`` ``lag_s`` seconds after the others (as
    it reads a backlog after a restart: partitions at different speeds), and a body POSTed
    again (Meta's retry) lands on the partition after its first copy's: a retry can be read
    before the status it repeats. ``lag_s=0``: live, with the same partitions."""
    first: dict[bytes, int] = {}
    where = []
    for i, (_, body) in enumerate(traffic.bodies):
        if body in first:
            where.append((first[body] + 1) % pipeline.n)
        else:
            where.append(first.setdefault(body, keyless(i, pipeline.n)))
    events = [(ts, 0, i) for i, (ts, _) in enumerate(traffic.bodies)]
    events += [(ts, 1, i) for i, (ts, _, _) in enumerate(traffic.send_log)]
    events.sort()
    t, i, raw = events[0][0], 0, pipeline.raw
    while i < len(events) or any(raw.unread(p) for p in range(pipeline.n)):
        t += step
        while i < len(events) and events[i][0] < t:
            ts, kind, k = events[i]
            if kind == 0:
                pipeline.post(traffic.bodies[k][1], ts, where[k])
            else:
                _, wamid, value = traffic.send_log[k]
                pipeline.log(wamid, value, ts)
            i += 1
        pipeline.clock.now = t
        for p in range(pipeline.n):
            records, start = raw.records[p], raw.read[p]
            end = start
            while end < len(records) and (p != behind or records[end][1] < t - lag_s):
                end += 1
            if end > start:
                pipeline.read_raw(p, end - start)
        for p in range(pipeline.n):
            pipeline.read_messages(p, 1_000_000, 1_000_000)
        for p in range(pipeline.n):
            pipeline.read_recipients(p, 1_000_000)
        pipeline.evaluate()


def summary(notes: list[Notification]) -> list[tuple[str, str, str, int, int]]:
    """What a comparison of runs looks at: kind, incident, headline scope, at, since."""
    return [(n.kind.value, n.incident, str(n.headline.scope), n.at, n.since) for n in notes]
