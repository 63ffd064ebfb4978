"""The checkpoint: how one batch's effects reach Kafka, in named steps, in one place.

A batch's flush hands its :class:`Batch` (the state it wrote, its outputs, signals and dead
letters, and the input offsets it may commit) to its agent's :class:`Checkpoint`, which runs the
steps of its ``order``. The orders differ per agent, for reasons given next to each; every order
ends with the commit (or, for stage 1, leaves it to its own consumer right after the flush), so
no commit covers a record whose effects are not yet in Kafka (at-least-once: a crash before the
commit replays the batch, and the stages apply a replay once).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from streams.core.signals import SignalBatch, encode_signals
from streams.raw_consumer import retry_kafka
from streams.runtime.batching import Taken
from streams.stages import partition_for
from streams.stages.ingest import DeadLetter

log = logging.getLogger(__name__)


class Step(enum.Enum):
    #: the state the batch wrote, to the local store (one write batch per partition); its
    #: changelog records are queued for the next SEND
    WRITE_STATE = "write state"
    #: the batch's output records queued for the next SEND (a keyed one without a partition
    #: goes where Kafka's default partitioner puts its key)
    QUEUE_OUTPUTS = "queue outputs"
    #: send what is queued and wait until Kafka has all of it; then the store records the
    #: changelog offsets written (a restart replays only newer changelog records)
    SEND = "send"
    #: the batch's spike-detector counts to the signals topic, waited for
    SIGNALS = "signals"
    #: each dead letter to the dead-letter topic, waited for, then counted and logged
    DEAD_LETTERS = "dead letters"
    #: the input offsets, unless a rebalance came after their records were handled (their
    #: partitions' unflushed state was dropped and they are read again)
    COMMIT = "commit"


# short names for the orders below
W, Q, S, SIG, DL, C = (
    Step.WRITE_STATE,
    Step.QUEUE_OUTPUTS,
    Step.SEND,
    Step.SIGNALS,
    Step.DEAD_LETTERS,
    Step.COMMIT,
)

#: Stage 1 keeps no state: outputs, dead letters, signals. Its own consumer
#: (:func:`streams.raw_consumer.consume_raw`) commits right after the flush returns.
INGEST = (Q, S, DL, SIG)
#: Stage 2: state and outbox go out together (one send), then signals, dead letters, commit.
MESSAGES = (W, Q, S, SIG, DL, C)
#: Stage 3: outputs first, state after. A crash in between replays the facts from the older
#: state and publishes the same records again (same key and value); the other way round, the
#: newer state would skip the facts, and their advice, retry plans, due timers and resend
#: signals would be lost. The state's buffered writes are this batch's only (the next flush
#: waits for this one).
RECIPIENTS = (Q, S, SIG, W, S, C)
#: Alerting: the flush itself sends its notifications and then saves the book through Faust's
#: per-key table path, whose changelog records the commit flushes first.
ALERTING = (C,)
#: The Slack thread records: written and in Kafka before the notifier posts (no offsets).
THREADS = (W, S)


class Batcher(Protocol):
    """Records per (topic, partition), sent together
    (:class:`streams.runtime.tables.RecordBatcher`)."""

    records: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]]
    sent: dict[tuple[str, int], int]

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None: ...

    async def send(self) -> dict[tuple[str, int], int]: ...


class StateTable(Protocol):
    """A table whose writes are applied per batch
    (:class:`streams.runtime.tables.BatchedTableKV`)."""

    def commit(self, batcher: Batcher) -> None: ...

    def persisted(self, offsets: dict[tuple[str, int], int]) -> None: ...


class Broker(Protocol):
    """What a checkpoint and the agents need of the runtime under them (Faust's, or the fake)."""

    @property
    def generation(self) -> int: ...

    def batcher(self) -> Batcher: ...

    async def partitions(self, topic: str) -> int: ...

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send one record and return once Kafka has it."""

    async def commit(self, offsets: dict[Any, int]) -> object: ...


@dataclass(frozen=True)
class Output:
    """An output record: to ``partition``, or (None) to the partition of ``key``."""

    topic: str
    partition: int | None
    key: bytes | None
    value: bytes


@dataclass
class Batch:
    """What one flush hands to its checkpoint."""

    state: StateTable | None = None
    outputs: list[Output] = field(default_factory=list)
    signals: SignalBatch | None = None
    dead_letters: list[DeadLetter] = field(default_factory=list)
    taken: Taken = field(default_factory=Taken)


class Checkpoint:
    """Runs a batch's steps in ``order`` (see :class:`Step`) on ``broker``."""

    def __init__(
        self,
        name: str,
        order: tuple[Step, ...],
        broker: Broker,
        *,
        signals_topic: str = "",
        dead_letter_topic: str = "",
        dead_letter_stage: str = "",
        on_dead_letter: Callable[[DeadLetter, str], object] = lambda letter, stage: None,
        retry_pause_s: float = 1.0,
    ) -> None:
        self.name = name
        self.order = order
        self.broker = broker
        self.signals_topic = signals_topic
        self.dead_letter_topic = dead_letter_topic
        self.dead_letter_stage = dead_letter_stage or name
        self.on_dead_letter = on_dead_letter
        self.retry_pause_s = retry_pause_s

    async def run(self, batch: Batch) -> None:
        """The steps, in order. Steps before the first that awaits run at once: a flush that
        calls this before awaiting anything has its state written before the next record is
        handled."""
        broker = self.broker
        batcher = broker.batcher() if Step.SEND in self.order else None
        state_queued = False
        for step in self.order:
            if step is Step.WRITE_STATE:
                assert batcher is not None, "state written without a send"
                if batch.state is not None:
                    batch.state.commit(batcher)
                    state_queued = True
            elif step is Step.QUEUE_OUTPUTS:
                assert batcher is not None, "outputs queued without a send"
                for out in batch.outputs:
                    partition = out.partition
                    if partition is None:
                        assert out.key is not None, "an output needs a partition or a key"
                        n = await broker.partitions(out.topic)  # (the broker caches it)
                        partition = partition_for(out.key.decode(), n)
                    batcher.add(out.topic, partition, out.key, out.value)
            elif step is Step.SEND:
                assert batcher is not None
                await retry_kafka(self.name, batcher.send, self.retry_pause_s)
                if state_queued and batch.state is not None:
                    batch.state.persisted(batcher.sent)
                batcher, state_queued = broker.batcher(), False
            # Signals and dead letters are retried like the batched send: the batch's offsets
            # are committed after them, so giving up would lose them (a repeat is a replay)
            elif step is Step.SIGNALS:
                if batch.signals is not None:
                    value = encode_signals(batch.signals)
                    send = partial(broker.send, self.signals_topic, None, value, partition=0)
                    await retry_kafka(f"{self.name} signals", send, self.retry_pause_s)
            elif step is Step.DEAD_LETTERS:
                for letter in batch.dead_letters:
                    send = partial(
                        broker.send,
                        self.dead_letter_topic,
                        letter.key,
                        letter.value,
                        headers=letter.headers(),
                    )
                    await retry_kafka(f"{self.name} dead letter", send, self.retry_pause_s)
                    self.on_dead_letter(letter, self.dead_letter_stage)
            elif step is Step.COMMIT:
                taken = batch.taken
                if taken.offsets and taken.generation == broker.generation:
                    await broker.commit(taken.offsets)
