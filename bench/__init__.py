"""The benchmarks, run from the repository root as modules::

    python -m bench.run [sections...]         # make bench
    python -m bench.alert_quality [options]   # make bench-alerts
    python -m bench.write_benchmarks_md       # BENCHMARKS.md from bench/results/
    python -m bench.bench_parse | bench_ingress | bench_pipeline | bench_advice
           | bench_audience | slack_outage | soak_state | fuzz_parser_atheris

Traffic comes from :mod:`streams.simulate` (see :mod:`bench.workload`); the worker subprocess,
the Kafka helpers and the local Slack servers from :mod:`testkit`, never from ``tests``.
"""
