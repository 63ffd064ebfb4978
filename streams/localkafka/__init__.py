"""A real Apache Kafka broker on 127.0.0.1, resolved from Maven Central (the embedded default).

``LocalKafka`` formats KRaft storage and runs one combined broker+controller JVM on free ports.
The jars come from ``pom.xml`` beside this file via ``mvn dependency:copy-dependencies`` and are
cached under the user cache dir, so a second start needs no network.
"""

from streams.localkafka.broker import (
    BrokerInfo,
    LocalKafka,
    LocalKafkaError,
    read_running_broker,
)
from streams.localkafka.distribution import ensure_distribution

__all__ = [
    "BrokerInfo",
    "LocalKafka",
    "LocalKafkaError",
    "ensure_distribution",
    "read_running_broker",
]
