"""``delivery-monitor slack test`` against local servers that answer like Slack (Web API and
webhooks): it posts a test message with the configured mode and says what is wrong when that
fails; a bad routing file stops it and the worker with ``path:line: reason`` (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.slack import FakeSlack, SlackApi
from testkit.worker import REPO


@pytest.fixture
def slack() -> Iterator[SlackApi]:
    server = SlackApi(["C0DEFAULT", "C0GROWTH", "C0SECRET"], outside=["C0SECRET"]).start()
    yield server
    server.stop()


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "DELIVERY_MONITOR_DATA_DIR": str(tmp_path / "state"),
            **env,
        },
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def bot(slack: SlackApi, **env: str) -> dict[str, str]:
    return {
        "DELIVERY_MONITOR_SLACK_BOT_TOKEN": SlackApi.TOKEN,
        "DELIVERY_MONITOR_SLACK_CHANNEL": "C0DEFAULT",
        "DELIVERY_MONITOR_SLACK_API_URL": slack.api_url,
        **env,
    }


def test_bot_mode_posts_to_every_configured_channel(tmp_path: Path, slack: SlackApi) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text('[[route]]\nname = "growth"\nchannel = "C0GROWTH"\ntemplates = "promo_*"\n')
    result = cli(tmp_path, "slack", "test", **bot(slack, DELIVERY_MONITOR_SLACK_ROUTES=str(routes)))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok   bot token: token ok: bot monitor in workspace Test")
    assert lines[1].startswith("ok   default: posted to C0DEFAULT (ts ")
    assert lines[2].startswith("ok   growth: posted to C0GROWTH")
    assert len(slack.top_level("C0DEFAULT")) == len(slack.top_level("C0GROWTH")) == 1
    assert "Test message" in slack.top_level("C0GROWTH")[0].text


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        (
            {"DELIVERY_MONITOR_SLACK_BOT_TOKEN": "xoxb-wrong-SECRETTOKEN"},
            (),
            "FAIL bot token: the bot token is not valid: check DELIVERY_MONITOR_SLACK_BOT_TOKEN",
        ),
        ({}, ("--channel", "C0NOWHERE"), "FAIL C0NOWHERE: channel C0NOWHERE does not exist"),
        ({}, ("--channel", "C0SECRET"), "FAIL C0SECRET: the bot is not a member of C0SECRET"),
    ],
    ids=["invalid_auth", "channel_not_found", "not_in_channel"],
)
def test_bot_mode_failures_say_what_to_do(
    tmp_path: Path, slack: SlackApi, env: dict[str, str], args: tuple[str, ...], expected: str
) -> None:
    result = cli(tmp_path, "slack", "test", *args, **bot(slack, **env))
    assert result.returncode == 1
    assert expected in result.stdout, result.stdout
    assert "SECRETTOKEN" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_a_bot_that_cannot_read_history_is_told_what_it_risks(
    tmp_path: Path, slack: SlackApi
) -> None:
    slack.fail("conversations.history", "missing_scope")
    result = cli(tmp_path, "slack", "test", **bot(slack))
    assert result.returncode == 0
    assert "cannot read its history" in result.stdout and "may then show twice" in result.stdout


def test_webhook_mode_reports_a_revoked_webhook_without_its_url(tmp_path: Path) -> None:
    broken = FakeSlack([(404, "no_service", {})]).start()
    working = FakeSlack().start()
    routes = tmp_path / "routes.toml"
    routes.write_text(f'[[route]]\nname = "growth"\nwebhook = "{working.url}"\n')
    try:
        env = {
            "DELIVERY_MONITOR_SLACK_WEBHOOK_URL": broken.url,
            "DELIVERY_MONITOR_SLACK_ROUTES": str(routes),
        }
        result = cli(tmp_path, "slack", "test", **env)
        assert result.returncode == 1
        assert result.stdout.splitlines() == [
            "FAIL default: the webhook URL was revoked or its app removed: create a new webhook",
            "ok   growth: posted",
        ]
        assert "/services/" not in result.stdout + result.stderr
        assert len(working.delivered()) == 1
        channel = cli(tmp_path, "slack", "test", "--channel", "C0X", **env)
        assert channel.returncode == 2 and "--channel needs the bot mode" in channel.stderr
    finally:
        broken.stop()
        working.stop()


def test_not_configured_and_bad_routing_files_are_exit_2(tmp_path: Path, slack: SlackApi) -> None:
    result = cli(tmp_path, "slack", "test")
    assert result.returncode == 2 and "Slack is not configured" in result.stderr
    routes = tmp_path / "routes.toml"
    routes.write_text('[[route]]\nchannel = "C0GROWTH"\nkinds = ["spikes"]\n')
    env = bot(slack, DELIVERY_MONITOR_SLACK_ROUTES=str(routes))
    for command in (["slack", "test"], ["worker"]):  # the worker refuses to start
        result = cli(tmp_path, *command, **env)
        assert result.returncode == 2
        (line,) = result.stderr.splitlines()
        assert line.startswith(
            f"delivery-monitor: error: {routes}:3: route #1: kinds: 'spikes' matches nothing "
            "(known: "
        )
        assert " spike, storm, " in line
    assert not slack.calls  # nothing was sent
