"""What the tests and the benchmarks both use to run the monitor and stand in for its peers.

- :mod:`testkit.worker`: ``delivery-monitor worker`` as a real subprocess, its environment
  (own app id, topics, data dir and port), polling and HTTP helpers;
- :mod:`testkit.kafka`: producing to, reading from and measuring consumer lag on a real broker;
- :mod:`testkit.slack`: local HTTP servers that answer like Slack (incoming webhook, scripted or
  down for a while; the Web API of the bot mode);
- :mod:`testkit.inprocess`: the whole pipeline in one process, without Kafka.

Why a top-level package next to ``streams/`` and not ``streams.testkit``: it belongs to the
repository, not to the product. It runs the worker from this checkout (``python -m streams.cli``
with the repository as working directory) and knows the repository's layout, and the wheel and
the Docker image (``streams`` only) should not carry test doubles. It is importable wherever the
repository root is on ``sys.path``: ``python -m bench.<module>`` from the root, and pytest
through ``pythonpath`` in pyproject.toml. It imports neither pytest nor ``tests`` nor ``bench``
(tests/unit/test_import_rules.py), so a benchmark can use it without the test suite.
"""
