"""The stages' own CPU: the throughput workload through stages 1-4 in one process.

    python -m bench.profile_stages [--events 300000] [--chunk 200] [--store dict|rocksdb]
                                   [--profile] [--top 40]

No Kafka, no Faust: the in-process pipeline of ``testkit.inprocess`` (list topics; state in
dicts, or in one RocksDB database per partition with ``--store rocksdb``), so the figures are
the stage code alone: what a faster runtime under the stages cannot remove. Prints CPU seconds
per million events per stage (thread CPU of each stage's reads and flushes), a digest of the
state and topics written (dict store: a change that must not change them keeps it), and, with
``--profile``, cProfile's functions by own time. ``--chunk``: records each stage reads per
partition between flushes (the worker flushes every 0.25 s: thousands of statuses).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from rocksdict import Options, Rdict

from bench.workload import throughput_bodies
from streams.state import DictKeyValue
from testkit.inprocess import T0, Pipeline


class RocksKeyValue:
    """A :class:`streams.state.KeyValue` over one RocksDB database per partition (no
    changelog): the local store's share of the worker's state cost."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="profile-stages-")
        self.dbs: dict[int, Rdict] = {}

    def db(self, partition: int) -> Rdict:
        db = self.dbs.get(partition)
        if db is None:
            db = self.dbs[partition] = Rdict(
                f"{self.directory}/{partition}", Options(raw_mode=True)
            )
        return db

    def get(self, partition: int, key: bytes) -> bytes | None:
        value: bytes | None = self.db(partition).get(key)
        return value

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        self.db(partition)[key] = value

    def delete(self, partition: int, key: bytes) -> None:
        self.db(partition).delete(key)

    def keys(self, partition: int) -> Iterator[bytes]:
        return iter([k for k, _ in self.db(partition).items() if isinstance(k, bytes)])

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def scan(self, partition: int, lo: bytes, hi: bytes) -> Iterator[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        for key, value in self.db(partition).items(from_key=lo):
            if not isinstance(key, bytes) or key >= hi:
                break
            out.append((key, value))
        return iter(out)


def run(
    events: int, chunk: int, seed: int, store: str = "dict", profile: bool = False, top: int = 40
) -> dict[str, Any]:
    # received a day after the workload's event time begins: the benchmark's broker receives
    # it later than its event time too (never "from the future")
    received = T0 + 86_400
    pipeline = Pipeline(partitions=4, wall=received)
    if store == "rocksdb":
        pipeline.messages.state.kv = RocksKeyValue()
        pipeline.recipients.state.kv = RocksKeyValue()
    n = 0
    for i, (body, statuses) in enumerate(throughput_bodies(events, seed)):
        pipeline.post(body, received, i % pipeline.n)
        n += statuses
        if n >= events:
            break
    spent = {"ingest": 0.0, "messages": 0.0, "recipients": 0.0, "alerting": 0.0}

    def timed(stage: str, fn: Callable[..., None], *args: Any) -> None:
        start = time.thread_time()
        fn(*args)
        spent[stage] += time.thread_time() - start

    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    p = pipeline
    moved = True
    while moved:
        moved = False
        for part in range(p.n):
            if p.raw.unread(part):
                timed("ingest", p.read_raw, part, chunk)
                moved = True
        for part in range(p.n):
            if p.messages_topic.unread(part) or p.send_log.unread(part):
                timed("messages", p.read_messages, part, chunk, chunk)
                moved = True
        for part in range(p.n):
            if p.recipients_topic.unread(part):
                timed("recipients", p.read_recipients, part, chunk)
                moved = True
        timed("alerting", p.evaluate)
        p.clock.now += 0.05
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(top)
    digest = hashlib.sha256()  # of every state value written: equal before and after a change
    for kv in (p.messages.state.kv, p.recipients.state.kv):
        if isinstance(kv, DictKeyValue):
            for partition in sorted(kv.data):
                for key in sorted(kv.data[partition]):
                    digest.update(b"%d %s %s;" % (partition, key, kv.data[partition][key]))
        if isinstance(kv, RocksKeyValue):
            kv.close()
    for topic in (p.messages_topic, p.recipients_topic):
        for partition in sorted(topic.records):
            for value, _ in topic.records[partition]:
                digest.update(value)
    for recipient, record in p.advice:
        digest.update(b"%s %s;" % (recipient.encode(), record))
    assert p.messages.stats.statuses == n, "every status reached stage 2"
    scale = 1e6 / n
    per_stage = {k: round(v * scale, 2) for k, v in spent.items()}
    total = round(sum(per_stage.values()), 2)
    return {"events": n, **per_stage, "total": total, "state": digest.hexdigest()[:16]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--chunk", type=int, default=200)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--store", choices=("dict", "rocksdb"), default="dict")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    result = run(args.events, args.chunk, args.seed, args.store, args.profile, args.top)
    print(f"CPU s per million events, stage code in process ({args.store}):", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
