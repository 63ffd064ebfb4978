"""Routing incidents to Slack channels: the facts of a notification, the matcher, and the routing
file's validation (every error names the file and the line)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from support import incident_lifecycle

from streams.core.alerts import Notification, Scope
from streams.core.routing import RoutingError, RoutingTable, parse_routes, routing_facts
from streams.settings import Secret, Settings
from streams.slack import describe_slack, load_routes

EXAMPLE = """\
default = "C0DEFAULT"

[wabas]
"102290129340398" = ["106540352242922"]

[[route]]
name = "growth"
channel = "C0GROWTH"
templates = ["promo_*", "spring_sale"]
kinds = ["spike", "storm"]

[[route]]
name = "number ops"
channel = "C0OPS"
wabas = "102290129340398"
continue = true

[[route]]
name = "template health"
channel = "C0TEMPLATES"
kinds = ["template_*"]

[[route]]
name = "optouts"
channel = "C0OPTOUT"
error_classes = ["opt_out"]
"""


def with_scopes(note: Notification, *scopes: Scope) -> Notification:
    """``note`` with its headline on the first scope and the others related."""
    snaps = [msgspec.structs.replace(note.headline, scope=s, key=str(s)) for s in scopes]
    return msgspec.structs.replace(note, headline=snaps[0], related=tuple(snaps[1:]))


def table() -> RoutingTable:
    return parse_routes(EXAMPLE, "routes.toml", mode="bot")


def names(routes: RoutingTable, note: Notification) -> list[str]:
    return [r.name for r in routes.route(note)]


def test_facts_come_from_every_scope_the_incident_names() -> None:
    firing = incident_lifecycle()[0]
    note = with_scopes(
        firing,
        Scope.for_template("spring_sale", "106540352242922"),
        Scope.for_sender("106540352242923"),
        Scope.for_country("BR"),
        Scope.for_account(),
    )
    facts = routing_facts(note)
    assert (facts.kind, facts.rule, facts.error_class) == (
        "spike",
        "spike",
        "per_user_marketing_limit",
    )
    assert facts.templates == {"spring_sale"}
    assert facts.senders == {"106540352242922", "106540352242923"}
    assert facts.countries == {"BR"}
    assert facts.wabas == frozenset() and facts.campaigns == frozenset()


def test_first_matching_route_wins_and_the_default_takes_the_rest() -> None:
    firing = incident_lifecycle()[0]
    routes = table()
    assert names(routes, with_scopes(firing, Scope.for_template("promo_7"))) == ["growth"]
    assert names(routes, with_scopes(firing, Scope.for_template("other"))) == ["default"]
    # an opt-out spike on a promo template: kinds match, the growth route takes it first
    optout = incident_lifecycle(template="promo_1", error_class="opt_out")[1]
    assert names(routes, optout) == ["growth"]
    assert names(routes, with_scopes(optout, Scope.for_template("x"))) == ["optouts"]


def test_continue_lets_an_incident_reach_several_channels_and_wabas_map_senders() -> None:
    firing = incident_lifecycle()[0]
    on_number = with_scopes(firing, Scope.for_template("other", "106540352242922"))
    # the sender belongs to the declared WABA: number ops takes it (and continues, but no
    # route below matches, and the default only takes what no route took)
    assert names(table(), on_number) == ["number ops"]
    both = with_scopes(firing, Scope.for_sender("106540352242922"), Scope.for_template("promo_1"))
    assert names(table(), both) == ["growth"]  # growth comes first and does not continue
    head, growth, ops, *_ = EXAMPLE.split("[[route]]")
    reordered = parse_routes("[[route]]".join([head, ops, growth]), "r.toml", mode="bot")
    assert names(reordered, both) == ["number ops", "growth"]


def test_campaigns_and_senders_route_from_scopes_and_from_a_storm_s_evidence() -> None:
    routes = parse_routes(
        'default = "C0DEFAULT"\n'
        '[[route]]\nname = "retries"\nchannel = "C0RETRY"\ncampaigns = ["retry*"]\n'
        '[[route]]\nname = "number"\nchannel = "C0NUM"\nsenders = ["106540352242923"]\n',
        "r.toml",
        mode="bot",
    )
    firing = incident_lifecycle()[0]
    on_campaign = with_scopes(firing, Scope.for_campaign("retry-2026-12"))
    assert names(routes, on_campaign) == ["retries"]
    on_number = with_scopes(firing, Scope.for_sender("106540352242923"))
    assert names(routes, on_number) == ["number"]
    assert names(routes, with_scopes(firing, Scope.for_sender("1555"))) == ["default"]
    # a resend storm is about a number; the campaigns it names are in its evidence
    storm = with_scopes(firing, Scope.for_sender("1555"))
    evidence = msgspec.structs.replace(
        storm.headline.evidence, breakdown={"campaigns": [("retry-job", 40)], "templates": []}
    )
    storm = msgspec.structs.replace(
        storm, headline=msgspec.structs.replace(storm.headline, evidence=evidence)
    )
    assert routing_facts(storm).campaigns == {"retry-job"}
    assert names(routes, storm) == ["retries"]


def test_kinds_match_the_alert_kind_or_the_rule() -> None:
    firing = incident_lifecycle()[0]
    paused = msgspec.structs.replace(
        firing.headline, rule="template_paused", scope=Scope.for_template("other")
    )
    note = msgspec.structs.replace(firing, headline=paused, related=(), error_class=None)
    assert routing_facts(note).kind == "immediate"
    assert names(table(), note) == ["template health"]


def test_a_route_without_conditions_takes_everything() -> None:
    routes = parse_routes('[[route]]\nchannel = "C0ALL"\n', "r.toml", mode="bot")
    assert [r.target for r in routes.route(incident_lifecycle()[0])] == ["C0ALL"]
    assert routes.default is None  # the settings' channel becomes the default


def test_webhook_mode_routes_name_webhooks_and_never_show_them() -> None:
    text = (
        'default = "https://hooks.slack.com/services/T/B/DEFAULTSECRET"\n'
        "[[route]]\n"
        'name = "growth"\n'
        'webhook = "https://hooks.slack.com/services/T/B/GROWTHSECRET"\n'
        'templates = ["promo_*"]\n'
    )
    routes = parse_routes(text, "r.toml", mode="webhook")
    assert [r.name for r in routes.destinations()] == ["default", "growth"]
    assert "SECRET" not in repr(routes)


@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    [
        # TOML syntax: tomllib's own line
        ('default = "C0X"\n[[route]]\nchannel = C0Y\n', "bot", "r.toml:3: Invalid value"),
        ('defualt = "C0X"\n', "bot", "r.toml:1: unknown key 'defualt'"),
        # the second route's unknown key, on its own line
        ('[[route]]\nchannel = "C0A"\n\n[[route]]\nchannel = "C0B"\ntemplate = "x"\n', "bot",
         "r.toml:6: route #2: unknown key 'template'"),
        ('[[route]]\nname = "x"\ntemplates = ["a"]\n', "bot", "r.toml:1: route #1: no 'channel'"),
        ('[[route]]\nwebhook = "https://hooks.slack.com/x"\n', "bot",
         "r.toml:2: route #1: 'webhook' is for webhook mode"),
        ('[[route]]\nchannel = "https://hooks.slack.com/x"\n', "bot",
         "r.toml:2: route #1: bot mode: a destination must be a channel ID"),
        ('[[route]]\nwebhook = "C0A"\n', "webhook",
         "r.toml:2: route #1: webhook mode: a destination must be an incoming webhook URL"),
        ('[[route]]\nchannel = "C0A"\nkinds = ["spikes"]\n', "bot",
         "r.toml:3: route #1: kinds: 'spikes' matches nothing (known: "),
        ('[[route]]\nchannel = "C0A"\nerror_classes = ["131049"]\n', "bot",
         "r.toml:3: route #1: error_classes: '131049' matches nothing"),
        ('[[route]]\nchannel = "C0A"\ntemplates = []\n', "bot",
         "r.toml:3: route #1: templates must be a string or a non-empty list of strings"),
        ('[[route]]\nchannel = "C0A"\ncontinue = "yes"\n', "bot",
         "r.toml:3: route #1: 'continue' must be true or false"),
        ('[[route]]\nname = "a"\nchannel = "C0A"\n[[route]]\nname = "a"\nchannel = "C0B"\n',
         "bot", "r.toml:5: route name 'a' is used twice"),
        ('[wabas]\n"1" = 5\n', "bot", "r.toml:2: wabas.1 must be a string or a non-empty list"),
        ('route = "C0A"\n', "bot", "r.toml:1: 'route' must be an array of tables"),
    ],
)  # fmt: skip
def test_a_bad_routing_file_is_refused_with_its_line(text: str, mode: str, expected: str) -> None:
    with pytest.raises(RoutingError) as err:
        parse_routes(text, "r.toml", mode=mode)
    assert str(err.value).startswith(expected), str(err.value)


def test_the_settings_choose_the_mode_and_need_a_default(tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text('[[route]]\nchannel = "C0GROWTH"\ntemplates = ["promo_*"]\n')
    bot = Settings(slack_bot_token=Secret("xoxb-1"), slack_routes=routes)
    with pytest.raises(RoutingError, match=r"routes.toml:1: no default destination"):
        load_routes(bot)
    table = load_routes(bot.replace(slack_channel="C0DEFAULT"))
    assert table is not None and [r.target for r in table.destinations()] == [
        "C0DEFAULT",
        "C0GROWTH",
    ]
    with pytest.raises(RoutingError, match="no channel"):
        load_routes(Settings(slack_bot_token=Secret("xoxb-1")))
    # webhook mode reads the same file as webhook routes: a channel there is an error
    with pytest.raises(RoutingError, match="'channel' is for bot mode"):
        load_routes(Settings(slack_routes=routes))
    assert load_routes(Settings()) is None
    with pytest.raises(RoutingError, match="cannot read the routing file"):
        load_routes(bot.replace(slack_routes=tmp_path / "missing.toml"))
    assert "2 routes" not in describe_slack(bot.replace(slack_channel="C0DEFAULT"))
    assert "bot mode" in describe_slack(bot.replace(slack_channel="C0DEFAULT"))


def test_the_bot_token_is_a_secret_and_excludes_the_webhook() -> None:
    env = {
        "DELIVERY_MONITOR_SLACK_BOT_TOKEN": "xoxb-123-SECRETTOKEN",
        "DELIVERY_MONITOR_SLACK_CHANNEL": "C0DEFAULT",
        "DELIVERY_MONITOR_SLACK_ROUTES": "/etc/monitor/routes.toml",
    }
    settings = Settings.from_env(env)
    assert settings.slack_bot_token.value == "xoxb-123-SECRETTOKEN"
    assert settings.slack_routes == Path("/etc/monitor/routes.toml")
    assert "SECRETTOKEN" not in repr(settings)
    with pytest.raises(ValueError, match="both set"):
        Settings.from_env({**env, "DELIVERY_MONITOR_SLACK_WEBHOOK_URL": "https://hooks.x/y"})
    with pytest.raises(ValueError, match="needs the bot mode"):
        Settings.from_env({"DELIVERY_MONITOR_SLACK_CHANNEL": "C0DEFAULT"})
