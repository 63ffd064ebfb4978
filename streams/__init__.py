"""WhatsApp delivery monitor: stream processing of WhatsApp Business status webhooks.

Layout: ``streams.core`` is the pure domain (parsing, error catalog, windows, detection);
``streams.stages`` run it over partitions; ``streams.runtime`` is the only package that imports
Faust (agents, checkpoint, fake runtime) and ``streams.app`` assembles the worker;
``streams.localkafka`` runs a real Apache Kafka broker locally; everything else is an adapter at
the edge (metrics, Slack, HTTP).
"""

__version__ = "0.1.0"
