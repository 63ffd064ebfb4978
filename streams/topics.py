"""Creating the monitor's source topics before a worker starts (faust needs them to exist)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.settings import Settings

log = logging.getLogger(__name__)


class TopicCreationError(RuntimeError):
    """The broker refused to create a topic the monitor needs."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic the monitor reads or writes, with its partition count and configs."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    #: the partition count must be exactly ``partitions`` (co-partitioned with a table)
    exact: bool = False


#: configs of a compacted topic (each spec gets its own copy when the topic is created)
COMPACT = {"cleanup.policy": "compact"}


def table_partitions(settings: Settings) -> dict[str, int]:
    """The worker's Faust tables and their partitions (one for the alert book and the Slack
    threads: one owner, with the single partition of the signals and alerts topics)."""
    n = settings.topic_partitions
    return {"messages": n, "recipients": n, "alerting": 1, "slack_threads": 1}


def changelog_topic(settings: Settings, table: str) -> str:
    """The changelog topic faust declares for ``table``."""
    return f"{settings.app_id}-{table}-changelog"


def source_topics(settings: Settings) -> list[TopicSpec]:
    """The topics that must exist before the worker starts, faust's internal ones included."""
    n = settings.topic_partitions
    return [
        TopicSpec(settings.topic_raw, n, {"max.message.bytes": str(4 * 1024 * 1024)}),
        # Joined with the statuses by wamid in the messages table: co-partitioned.
        TopicSpec(settings.topic_send_log, n, exact=True),
        TopicSpec(settings.topic_dead_letter, n, {"max.message.bytes": str(4 * 1024 * 1024)}),
        # One partition: a single owner delivers notifications, so workers never double-post.
        TopicSpec(settings.topic_alerts, 1, COMPACT),
        # Latest advice per recipient (key = recipient): a sender's local suppression list.
        TopicSpec(settings.topic_advice, n, COMPACT),
        # Retry plans of failed messages (key = wamid): planned, then due or cancelled.
        TopicSpec(settings.topic_retries, n, COMPACT),
        # Repartition topics (statuses by wamid, facts by recipient): faust would create them
        # too, but only after the agents subscribe.
        TopicSpec(f"{settings.app_id}-messages", n, exact=True),
        TopicSpec(f"{settings.app_id}-recipients", n, exact=True),
        # Signals for the alerting stage: one partition, one owner evaluates every rule.
        TopicSpec(f"{settings.app_id}-signals", 1, exact=True),
        # The tables' changelogs (compacted, co-partitioned with their source topics), as
        # faust would declare them. Created here, they are in the consumer's first metadata:
        # faust creating one while its group formed left it out (or at 0 partitions) of the
        # group's metadata snapshot, and the table's first write then failed faust's partition
        # check (PartitionsMismatch "... has 0 partitions": the worker crashed at startup).
        *(
            TopicSpec(changelog_topic(settings, table), k, COMPACT, exact=True)
            for table, k in table_partitions(settings).items()
        ),
    ]


async def ensure_topics(
    bootstrap: str, specs: list[TopicSpec], replication_factor: int
) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        await _check_partitions(admin, [s for s in specs if s.exact and s.name in existing])
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        new = [
            NewTopic(
                name=s.name,
                num_partitions=s.partitions,
                replication_factor=replication_factor,
                topic_configs=dict(s.configs),
            )
            for s in missing
        ]
        response = await admin.create_topics(new)
        for item in getattr(response, "topic_errors", []):
            name, code = item[0], item[1]
            # 36 = TOPIC_ALREADY_EXISTS: another worker created it between list and create.
            if code not in (0, TopicAlreadyExistsError.errno):
                message = item[2] if len(item) > 2 else ""
                raise TopicCreationError(f"could not create topic {name!r}: error {code} {message}")
        log.info("created topics %s", ", ".join(s.name for s in missing))
        return [s.name for s in missing]
    finally:
        await admin.close()


async def _check_partitions(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> None:
    if not specs:
        return
    described = await admin.describe_topics([s.name for s in specs])
    counts = {d["topic"]: len(d["partitions"]) for d in described}
    for spec in specs:
        have = counts.get(spec.name)
        if have is not None and have != spec.partitions:
            raise TopicCreationError(
                f"topic {spec.name!r} has {have} partitions but the monitor is configured for "
                f"{spec.partitions} (DELIVERY_MONITOR_TOPIC_PARTITIONS); the send log and the "
                "monitor's internal topics must have the same count so the statuses and the "
                "send-log records of one wamid meet in the same partition"
            )
