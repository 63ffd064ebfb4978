"""One frozen settings object, built from the environment in one place.

Nothing else in the package reads ``os.environ``. Every setting has a default that works with the
embedded local broker; ``KAFKA_BOOTSTRAP_SERVERS`` points the monitor at an existing cluster.
Secrets are wrapped in :class:`Secret` so they never show up in reprs or logs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streams.core.attribution import PatternError, compile_pattern
from streams.core.phones import check_region

ENV_PREFIX = "DELIVERY_MONITOR_"
DEFAULT_KAFKA_VERSION = "3.9.1"
KAFKA4_VERSION = "4.1.1"


class SettingsError(ValueError):
    """A setting in the environment has a value that cannot be used."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret value (webhook URL, app secret): masked in ``repr`` and ``str``."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')" if self.value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self.value)


def _user_dir(env: Mapping[str, str], xdg: str, fallback: str) -> Path:
    base = env.get(xdg) or str(Path(env.get("HOME", str(Path.home()))) / fallback)
    return Path(base) / "whatsapp-delivery-monitor"


def _guarantee(value: str) -> str:
    value = value.strip().lower()
    if value not in ("at_least_once", "exactly_once"):
        raise SettingsError(
            f"{ENV_PREFIX}PROCESSING_GUARANTEE={value!r}: use at_least_once or exactly_once"
        )
    return value


def _template_pattern(value: str) -> str | None:
    if not value.strip():
        return None
    try:
        compile_pattern(value)
    except PatternError as exc:
        raise SettingsError(f"{ENV_PREFIX}CALLBACK_TEMPLATE_PATTERN: {exc}") from None
    return value


def _phone_region(value: str) -> str | None:
    if not value.strip():
        return None
    try:
        return check_region(value)
    except ValueError as exc:
        raise SettingsError(f"{ENV_PREFIX}DEFAULT_PHONE_REGION: {exc}") from None


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _level(name: str, value: str) -> str:
    value = value.strip().lower()
    if value not in LOG_LEVELS:
        raise SettingsError(f"{ENV_PREFIX}{name}={value!r}: use one of {', '.join(LOG_LEVELS)}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """Configuration of every ``delivery-monitor`` command. See the README's configuration table."""

    bootstrap_servers: str | None = None
    app_id: str = "whatsapp-delivery-monitor"
    topic_raw: str = "whatsapp.webhooks.raw"
    topic_send_log: str = "whatsapp.send-log"
    topic_dead_letter: str = "whatsapp.webhooks.dead-letter"
    topic_alerts: str = "whatsapp.monitor.alerts"
    topic_advice: str = "whatsapp.monitor.recipient-advice"
    topic_retries: str = "whatsapp.monitor.retry-plans"
    topic_partitions: int = 4
    topic_replication_factor: int = 1
    store: str = "rocksdb://"
    #: RocksDB memory of the whole process, in MiB: one block cache shared by every table
    #: partition's database, memtables charged to it (see streams.runtime.tables.SharedRocksDB)
    rocksdb_memory_mb: int = 64
    #: RocksDB memtable size per partition database, in MiB (at most two each, within the budget)
    rocksdb_write_buffer_mb: int = 4
    processing_guarantee: str = "at_least_once"
    session_timeout_s: float = 30.0
    data_dir: Path = Path(".")
    cache_dir: Path = Path(".")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    kafka_version: str = DEFAULT_KAFKA_VERSION
    log_level: str = "info"
    #: level of Faust's, mode's and aiokafka's loggers (their start-up and recovery lines are INFO)
    faust_log_level: str = "warning"
    #: seconds between two summary lines in the worker's log (0: none)
    summary_interval_s: float = 60.0
    slack_webhook_url: Secret = Secret("")
    #: Slack bot mode (one threaded, edited message per incident): the bot token, the default
    #: channel (an ID), and the Web API's base URL (a proxy, or a local server in tests).
    slack_bot_token: Secret = Secret("")
    slack_channel: str = ""
    slack_api_url: str = "https://slack.com/api/"
    #: A routing file (TOML) sending incidents to channels or webhooks (streams.core.routing).
    slack_routes: Path | None = None
    #: Slack: seconds per POST, the cap of the backoff between retries (a recovered Slack is
    #: noticed within about that long), and how long after enqueueing a notification that
    #: Slack keeps failing (5xx, 429, timeouts) is given up.
    slack_request_timeout_s: float = 10.0
    slack_max_backoff_s: float = 60.0
    slack_give_up_after_s: float = 24 * 3600.0
    grafana_url: str = "http://localhost:3000"
    ingress_host: str = "127.0.0.1"
    ingress_port: int = 8080
    app_secret: Secret = Secret("")
    verify_token: Secret = Secret("")
    #: Ingress: seconds a client gets to send a request's body once its headers are in (slower
    #: ones get 408); seconds a connection may stay open without a complete request (idle
    #: keep-alive, or headers that never end: keep it above a load balancer's idle timeout);
    #: how many digests of recently stored bodies it remembers to answer an exact repeat
    #: without producing it again (0: off; about 170 bytes each).
    ingress_read_timeout_s: float = 10.0
    ingress_idle_timeout_s: float = 75.0
    ingress_recent_bodies: int = 100_000
    template_label_cap: int = 100
    #: Event time: how far after Kafka received a record its timestamp may lie (seconds)
    max_future_skew_s: int = 3_600
    #: Alerting waits for every input partition before judging a minute; it stops waiting for a
    #: partition read to its end and quiet for ``alert_idle_s``, and for one that reports nothing
    #: new for ``alert_max_wait_s`` (a stalled reader)
    alert_idle_s: float = 30.0
    alert_max_wait_s: float = 120.0
    #: a regular expression with a named group ``template`` (optional ``campaign``,
    #: ``category``) for bare ``biz_opaque_callback_data`` strings in the sender's own format
    callback_template_pattern: str | None = None
    #: ISO region in which the API reads phone numbers typed in a national format (unset: such
    #: numbers are refused with 400)
    default_phone_region: str | None = None
    campaign_label_cap: int = 100
    #: seconds between two measurements of the Kafka consumer lag
    lag_interval_s: float = 15.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        d = cls()

        def get(name: str, default: str) -> str:
            return env.get(ENV_PREFIX + name, default)

        def get_int(name: str, default: int, minimum: int = 0) -> int:
            raw = get(name, str(default))
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"{ENV_PREFIX}{name}={raw!r} is not an integer") from None
            if value < minimum:
                raise SettingsError(f"{ENV_PREFIX}{name}={value} must be >= {minimum}")
            return value

        state = _user_dir(env, "XDG_STATE_HOME", ".local/state")
        cache = _user_dir(env, "XDG_CACHE_HOME", ".cache")
        return cls(
            bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS") or None,
            app_id=get("APP_ID", d.app_id),
            topic_raw=get("TOPIC_RAW", d.topic_raw),
            topic_send_log=get("TOPIC_SEND_LOG", d.topic_send_log),
            topic_dead_letter=get("TOPIC_DEAD_LETTER", d.topic_dead_letter),
            topic_alerts=get("TOPIC_ALERTS", d.topic_alerts),
            topic_advice=get("TOPIC_ADVICE", d.topic_advice),
            topic_retries=get("TOPIC_RETRIES", d.topic_retries),
            topic_partitions=get_int("TOPIC_PARTITIONS", d.topic_partitions, minimum=1),
            topic_replication_factor=get_int(
                "TOPIC_REPLICATION_FACTOR", d.topic_replication_factor, minimum=1
            ),
            store=get("STORE", d.store),
            rocksdb_memory_mb=get_int("ROCKSDB_MEMORY_MB", d.rocksdb_memory_mb, minimum=8),
            rocksdb_write_buffer_mb=get_int(
                "ROCKSDB_WRITE_BUFFER_MB", d.rocksdb_write_buffer_mb, minimum=1
            ),
            session_timeout_s=float(get_int("SESSION_TIMEOUT", int(d.session_timeout_s), 6)),
            processing_guarantee=_guarantee(get("PROCESSING_GUARANTEE", d.processing_guarantee)),
            data_dir=Path(get("DATA_DIR", str(state))),
            cache_dir=Path(get("CACHE_DIR", str(cache))),
            web_host=get("WEB_HOST", d.web_host),
            web_port=get_int("WEB_PORT", d.web_port, minimum=0),
            kafka_version=get("KAFKA_VERSION", d.kafka_version),
            log_level=_level("LOG_LEVEL", get("LOG_LEVEL", d.log_level)),
            faust_log_level=_level("FAUST_LOG_LEVEL", get("FAUST_LOG_LEVEL", d.faust_log_level)),
            summary_interval_s=float(
                get_int("SUMMARY_INTERVAL", int(d.summary_interval_s), minimum=0)
            ),
            slack_webhook_url=Secret(get("SLACK_WEBHOOK_URL", "")),
            slack_bot_token=Secret(get("SLACK_BOT_TOKEN", "").strip()),
            slack_channel=get("SLACK_CHANNEL", "").strip(),
            slack_api_url=get("SLACK_API_URL", d.slack_api_url),
            slack_routes=Path(routes) if (routes := get("SLACK_ROUTES", "").strip()) else None,
            slack_request_timeout_s=float(
                get_int("SLACK_REQUEST_TIMEOUT", int(d.slack_request_timeout_s), minimum=1)
            ),
            slack_max_backoff_s=float(
                get_int("SLACK_MAX_BACKOFF", int(d.slack_max_backoff_s), minimum=1)
            ),
            slack_give_up_after_s=float(
                get_int("SLACK_GIVE_UP_AFTER", int(d.slack_give_up_after_s), minimum=1)
            ),
            grafana_url=get("GRAFANA_URL", d.grafana_url),
            ingress_host=get("INGRESS_HOST", d.ingress_host),
            ingress_port=get_int("INGRESS_PORT", d.ingress_port, minimum=0),
            app_secret=Secret(get("APP_SECRET", "")),
            verify_token=Secret(get("VERIFY_TOKEN", "")),
            ingress_read_timeout_s=float(
                get_int("INGRESS_READ_TIMEOUT", int(d.ingress_read_timeout_s), minimum=1)
            ),
            ingress_idle_timeout_s=float(
                get_int("INGRESS_IDLE_TIMEOUT", int(d.ingress_idle_timeout_s), minimum=1)
            ),
            ingress_recent_bodies=get_int("INGRESS_RECENT_BODIES", d.ingress_recent_bodies),
            template_label_cap=get_int("TEMPLATE_LABEL_CAP", d.template_label_cap, minimum=1),
            max_future_skew_s=get_int("MAX_FUTURE_SKEW", d.max_future_skew_s, minimum=0),
            alert_idle_s=float(get_int("ALERT_IDLE_SECONDS", int(d.alert_idle_s), minimum=1)),
            alert_max_wait_s=float(
                get_int("ALERT_MAX_WAIT_SECONDS", int(d.alert_max_wait_s), minimum=1)
            ),
            callback_template_pattern=_template_pattern(get("CALLBACK_TEMPLATE_PATTERN", "")),
            default_phone_region=_phone_region(get("DEFAULT_PHONE_REGION", "")),
            campaign_label_cap=get_int("CAMPAIGN_LABEL_CAP", d.campaign_label_cap, minimum=1),
            lag_interval_s=float(get_int("LAG_INTERVAL", int(d.lag_interval_s), minimum=1)),
        )

    def __post_init__(self) -> None:
        if self.slack_bot_token and self.slack_webhook_url:
            raise SettingsError(
                f"{ENV_PREFIX}SLACK_BOT_TOKEN and {ENV_PREFIX}SLACK_WEBHOOK_URL are both set: "
                "use the bot token (threads, edits, channels) or the webhook, not both"
            )
        if self.slack_channel and not self.slack_bot_token:
            raise SettingsError(
                f"{ENV_PREFIX}SLACK_CHANNEL is set but not {ENV_PREFIX}SLACK_BOT_TOKEN: a "
                "channel needs the bot mode (a webhook posts to its own channel)"
            )

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed (settings are immutable)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
