"""``delivery-monitor``: the command line. Each subcommand is a thin shell over a module."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path

from aiokafka.errors import KafkaError

from streams import __version__, logs
from streams.asyncutil import run_sync
from streams.core.routing import RoutingError
from streams.localkafka import (
    LocalKafka,
    LocalKafkaError,
    ensure_distribution,
    read_running_broker,
)
from streams.localkafka.distribution import ToolMissingError
from streams.settings import Settings, SettingsError
from streams.topics import TopicCreationError

log = logging.getLogger("streams.cli")


class CliError(Exception):
    """A failure the user can act on: printed as one line, exit code 2."""


def local_kafka_dir(settings: Settings, version: str) -> Path:
    return settings.data_dir / f"kafka-{version}"


def local_kafka(settings: Settings, version: str | None = None) -> LocalKafka:
    version = version or settings.kafka_version
    return LocalKafka(local_kafka_dir(settings, version), settings.cache_dir, version)


def resolve_bootstrap(settings: Settings) -> str:
    """The external cluster if configured, else the running local broker."""
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    info = read_running_broker(local_kafka_dir(settings, settings.kafka_version))
    if info is None:
        for candidate in sorted(settings.data_dir.glob("kafka-*")):
            info = read_running_broker(candidate)
            if info is not None:
                break
    if info is None:
        raise CliError(
            "no Kafka broker: run `delivery-monitor kafka start` first, "
            "or set KAFKA_BOOTSTRAP_SERVERS to an existing cluster"
        )
    return info.bootstrap


def cmd_kafka(settings: Settings, args: argparse.Namespace) -> int:
    kafka = local_kafka(settings, args.kafka_version)
    if args.action == "fetch":
        lib = ensure_distribution(kafka.version, settings.cache_dir)
        print(f"Apache Kafka {kafka.version}: {len(list(lib.glob('*.jar')))} jars in {lib}")
        return 0
    if args.action == "start":
        if settings.bootstrap_servers:
            print(
                "note: KAFKA_BOOTSTRAP_SERVERS is set; the worker uses that cluster, "
                "not this local broker",
                file=sys.stderr,
            )
        info = kafka.start(timeout_s=args.timeout)
        print(
            f"Apache Kafka {info.version} (KRaft, single node) is running, pid {info.pid}\n"
            f"  log: {info.log_file}\n"
            f"  use it: export KAFKA_BOOTSTRAP_SERVERS={info.bootstrap}",
            file=sys.stderr,
        )
        print(info.bootstrap)
        return 0
    if args.action == "stop":
        stopped = kafka.stop()
        print("stopped" if stopped else "not running", file=sys.stderr)
        return 0
    running = read_running_broker(kafka.data_dir)
    if running is None:
        print(f"Kafka {kafka.version}: not running", file=sys.stderr)
        return 1
    print(
        f"Kafka {running.version}: running at {running.bootstrap}, "
        f"pid {running.pid}, log {running.log_file}"
    )
    return 0


def prepare_topics(settings: Settings, bootstrap: str) -> None:
    from streams.topics import ensure_topics, source_topics

    run_sync(  # logs the topics it creates
        ensure_topics(bootstrap, source_topics(settings), settings.topic_replication_factor),
        timeout_s=120,
    )


#: CPython's cyclic collector thresholds for the worker. It allocates many short-lived
#: containers per event (parsed payloads, facts, state updates) that reference counting frees,
#: almost none of them in cycles; the defaults (700, 10, 10) still run a young collection every
#: 700 net allocations and a full one every 70,000, which scans all the live state. These run
#: them ~140x less often (cycles that faust and aiokafka make are still collected). Measured by
#: ``bench/bench_pipeline.py`` (300k events): 45 -> 36 CPU s per million events.
GC_THRESHOLDS = (100_000, 50, 100)


def tune_gc() -> None:
    """Collect once, move everything built at startup out of the collector's way
    (``gc.freeze``), then use :data:`GC_THRESHOLDS`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_worker(settings: Settings, bootstrap: str, slack: str | None = None) -> int:
    from streams.app import create_app
    from streams.runtime.worker import execute
    from streams.slack import describe_slack

    slack = slack or describe_slack(settings)  # a bad routing file stops the worker here
    prepare_topics(settings, bootstrap)
    if settings.processing_guarantee == "exactly_once":
        log.warning(
            "processing_guarantee=exactly_once is experimental in faust and stalls this "
            "pipeline's repartition stages (see README); at_least_once is exact here too"
        )
    app = create_app(settings, bootstrap)
    base = f"http://{settings.web_host}:{settings.web_port}"
    print(
        f"worker {settings.app_id}: Kafka {bootstrap}, consuming {settings.topic_raw}\n"
        f"  overview page: {base}/   (metrics: {base}/metrics, API: {base}/v1/...)\n"
        f"  {slack}",
        file=sys.stderr,
    )

    tune_gc()
    execute(
        app,
        settings.log_level,
        lambda: logs.configure(settings.log_level, settings.faust_log_level),
    )


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from streams.slack import describe_slack

    if args.web_port is not None:
        settings = settings.replace(web_port=args.web_port)
    slack = describe_slack(settings)  # before Kafka: a bad routing file is the first error
    return run_worker(settings, resolve_bootstrap(settings), slack)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """Local development: the local broker (unless an external one is set), a worker and the
    demo traffic (on the local broker; with KAFKA_BOOTSTRAP_SERVERS only when ``--demo``)."""
    started: LocalKafka | None = None
    if settings.bootstrap_servers:
        bootstrap = settings.bootstrap_servers
    else:
        kafka = local_kafka(settings)
        already = read_running_broker(kafka.data_dir)
        info = kafka.start()
        if already is None:
            started = kafka
        bootstrap = info.bootstrap
        print(f"Apache Kafka {info.version} at {bootstrap} (log {info.log_file})", file=sys.stderr)
    background = None
    try:
        if args.demo or (args.demo is None and not settings.bootstrap_servers):
            from streams import demo

            prepare_topics(settings, bootstrap)
            options = demo.DemoOptions(progress_every=30.0)
            background = demo.BackgroundDemo(settings, bootstrap, options).start()
            print(demo.how_to_look(settings, background.traffic), file=sys.stderr)
        elif args.demo is None:
            print("no demo traffic on an external cluster (--demo to send it)", file=sys.stderr)
        return run_worker(settings, bootstrap)
    finally:
        if background is not None:
            background.stop()
        if started is not None and not args.keep_kafka:
            print("stopping the local Kafka broker", file=sys.stderr)
            started.stop()


def cmd_ingress(settings: Settings, args: argparse.Namespace) -> int:
    from streams.ingress import app_secret_or_refuse, run_ingress

    if args.port is not None:
        settings = settings.replace(ingress_port=args.port)
    app_secret_or_refuse(settings, args.insecure_no_signature)  # refuse before touching Kafka
    bootstrap = resolve_bootstrap(settings)
    prepare_topics(settings, bootstrap)
    return run_ingress(settings, bootstrap, insecure=args.insecure_no_signature)


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from streams import demo

    options = demo.options_from(args)
    bootstrap = resolve_bootstrap(settings)
    prepare_topics(settings, bootstrap)
    return demo.run(settings, bootstrap, options)


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from streams import replay

    return replay.run(settings, replay.options_from(args), lambda: resolve_bootstrap(settings))


def cmd_audience(settings: Settings, args: argparse.Namespace) -> int:
    from streams import audience_cli

    try:
        return audience_cli.run(audience_cli.options_from(args, settings))
    except audience_cli.AudienceError as exc:
        raise CliError(str(exc)) from exc


def cmd_slack(settings: Settings, args: argparse.Namespace) -> int:
    from streams import slack_check

    try:
        return slack_check.run(settings, args.channel)
    except slack_check.NotConfigured as exc:
        raise CliError(str(exc)) from None


def cmd_inspect(settings: Settings, args: argparse.Namespace) -> int:
    from streams import inspection

    return inspection.main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="delivery-monitor",
        description="Stream-processing delivery monitor for WhatsApp Business senders.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    kafka = sub.add_parser(
        "kafka", help="run a local Apache Kafka broker (start|stop|status|fetch)"
    )
    kafka.add_argument("action", choices=["start", "stop", "status", "fetch"])
    kafka.add_argument(
        "--kafka-version",
        default=None,
        help="Kafka release, e.g. 3.9.1 (default) or 4.1.1; env DELIVERY_MONITOR_KAFKA_VERSION",
    )
    kafka.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for start")
    kafka.set_defaults(func=cmd_kafka)

    worker = sub.add_parser("worker", help="run the stream-processing worker")
    worker.add_argument("--web-port", type=int, default=None, help="port of /metrics and the API")
    worker.set_defaults(func=cmd_worker)

    run = sub.add_parser(
        "run", help="local Kafka (unless KAFKA_BOOTSTRAP_SERVERS) + worker + demo traffic"
    )
    run.add_argument("--keep-kafka", action="store_true", help="leave the broker running on exit")
    run.add_argument(
        "--demo",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send demo traffic (default: only to the local broker, never to an external one)",
    )
    run.set_defaults(func=cmd_run)

    ingress = sub.add_parser("ingress", help="receive Meta's webhooks into the raw topic")
    ingress.add_argument("--port", type=int, default=None, help="listen port (default: settings)")
    ingress.add_argument(
        "--insecure-no-signature",
        action="store_true",
        help="accept unsigned POSTs when no app secret is set (local demos only)",
    )
    ingress.set_defaults(func=cmd_ingress)

    slack = sub.add_parser(
        "slack",
        help="check the Slack settings: a test message to each destination (exit 1: refused)",
    )
    slack.add_argument("action", choices=["test"])
    slack.add_argument(
        "--channel", default=None, help="bot mode: test this channel instead of the configured"
    )
    slack.set_defaults(func=cmd_slack)

    inspect = sub.add_parser(
        "inspect", help="parse webhook files and print normalized events", add_help=False
    )
    inspect.add_argument("rest", nargs=argparse.REMAINDER)
    inspect.set_defaults(func=cmd_inspect)

    from streams import audience_cli, demo, replay

    for name, func, module, text in (
        ("demo", cmd_demo, demo, "realistic webhook traffic with a 131049 spike, to the raw topic"),
        ("replay", cmd_replay, replay, "produce saved webhook logs to the raw topic, in order"),
        (
            "audience",
            cmd_audience,
            audience_cli,
            "pre-flight of a recipient list: now, wait, never",
        ),
    ):
        command = sub.add_parser(name, help=text, description=module.DESCRIPTION)
        module.add_arguments(command)
        command.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["inspect"]:
        from streams import inspection  # its own options, leading ones included

        return inspection.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_level, settings.faust_log_level)
        result: int = args.func(settings, args)
        return result
    except (
        CliError,
        SettingsError,
        RoutingError,
        ToolMissingError,
        LocalKafkaError,
        TopicCreationError,
    ) as exc:
        print(f"delivery-monitor: error: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:
        print(
            f"delivery-monitor: error: Kafka at {settings.bootstrap_servers or 'the local broker'} "
            f"is not reachable or refused the request: {exc}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
