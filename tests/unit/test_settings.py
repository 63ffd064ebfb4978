"""Settings come from the environment in one place, validated, with secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import Secret, Settings, SettingsError


def test_defaults_work_with_the_embedded_broker() -> None:
    s = Settings.from_env({"HOME": "/home/u"})
    assert s.bootstrap_servers is None
    assert s.kafka_version == "3.9.1"
    assert s.topic_raw == "whatsapp.webhooks.raw"
    assert s.processing_guarantee == "at_least_once"
    assert s.data_dir == Path("/home/u/.local/state/whatsapp-delivery-monitor")
    assert s.cache_dir == Path("/home/u/.cache/whatsapp-delivery-monitor")


def test_environment_overrides() -> None:
    s = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
            "DELIVERY_MONITOR_TOPIC_RAW": "raw",
            "DELIVERY_MONITOR_WEB_PORT": "7000",
            "DELIVERY_MONITOR_PROCESSING_GUARANTEE": "EXACTLY_ONCE",
            "XDG_CACHE_HOME": "/c",
        }
    )
    assert s.bootstrap_servers == "k1:9092,k2:9092"
    assert s.topic_raw == "raw"
    assert s.web_port == 7000
    assert s.processing_guarantee == "exactly_once"
    assert s.cache_dir == Path("/c/whatsapp-delivery-monitor")


def test_operator_settings() -> None:
    d = Settings.from_env({})
    assert (d.faust_log_level, d.summary_interval_s, d.lag_interval_s) == ("warning", 60.0, 15.0)
    assert d.campaign_label_cap == 100
    s = Settings.from_env(
        {
            "DELIVERY_MONITOR_FAUST_LOG_LEVEL": "INFO",
            "DELIVERY_MONITOR_SUMMARY_INTERVAL": "0",
            "DELIVERY_MONITOR_LAG_INTERVAL": "5",
            "DELIVERY_MONITOR_CAMPAIGN_LABEL_CAP": "20",
        }
    )
    assert (s.faust_log_level, s.summary_interval_s, s.lag_interval_s) == ("info", 0.0, 5.0)
    assert s.campaign_label_cap == 20


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"DELIVERY_MONITOR_WEB_PORT": "x"}, "DELIVERY_MONITOR_WEB_PORT='x' is not an integer"),
        ({"DELIVERY_MONITOR_TOPIC_PARTITIONS": "0"}, "must be >= 1"),
        ({"DELIVERY_MONITOR_PROCESSING_GUARANTEE": "maybe"}, "at_least_once or exactly_once"),
        ({"DELIVERY_MONITOR_FAUST_LOG_LEVEL": "loud"}, "FAUST_LOG_LEVEL='loud': use one of"),
        ({"DELIVERY_MONITOR_LOG_LEVEL": "verbose"}, "LOG_LEVEL='verbose': use one of"),
        ({"DELIVERY_MONITOR_CAMPAIGN_LABEL_CAP": "0"}, "must be >= 1"),
        ({"DELIVERY_MONITOR_LAG_INTERVAL": "0"}, "must be >= 1"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_env(env)


def test_secret_never_appears_in_reprs() -> None:
    url = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
    s = Settings.from_env({"DELIVERY_MONITOR_SLACK_WEBHOOK_URL": url})
    assert s.slack_webhook_url.value == url
    assert "XXXXSECRET" not in repr(s)
    assert "XXXXSECRET" not in str(s.slack_webhook_url)
    assert bool(s.slack_webhook_url)
    assert not Secret("")


def test_callback_template_pattern_and_phone_region_are_validated_at_start() -> None:
    s = Settings.from_env(
        {
            "DELIVERY_MONITOR_CALLBACK_TEMPLATE_PATTERN": r"^c\d+/(?P<template>\w+)$",
            "DELIVERY_MONITOR_DEFAULT_PHONE_REGION": "us",
        }
    )
    assert s.callback_template_pattern == r"^c\d+/(?P<template>\w+)$"
    assert s.default_phone_region == "US"
    unset = Settings.from_env({})
    assert (unset.callback_template_pattern, unset.default_phone_region) == (None, None)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        (
            {"DELIVERY_MONITOR_CALLBACK_TEMPLATE_PATTERN": "(unclosed"},
            "CALLBACK_TEMPLATE_PATTERN: not a valid regular expression",
        ),
        (
            {"DELIVERY_MONITOR_CALLBACK_TEMPLATE_PATTERN": r"tpl-(\w+)"},
            "CALLBACK_TEMPLATE_PATTERN: needs a named group 'template'",
        ),
        (
            {"DELIVERY_MONITOR_DEFAULT_PHONE_REGION": "USA"},
            "DEFAULT_PHONE_REGION: 'USA' is not a region code",
        ),
    ],
)
def test_bad_attribution_and_phone_settings_name_the_variable(
    env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_env(env)
