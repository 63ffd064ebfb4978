"""Which Slack channel (or webhook) gets an incident: the routing file and its matcher.

A routing file is TOML::

    default = "C0123DEFAULT"          # optional; else DELIVERY_MONITOR_SLACK_CHANNEL

    [wabas]                           # optional: which sending numbers belong to which WABA
    "102290129340398" = ["106540352242922", "106540352242923"]

    [[route]]
    name = "growth"
    channel = "C0456GROWTH"           # bot mode; webhook mode: webhook = "https://hooks..."
    templates = ["promo_*", "spring_sale"]
    kinds = ["spike", "storm"]

    [[route]]
    channel = "C0789OPS"
    senders = ["106540352242922"]
    continue = true                   # also try the routes below

Routes are tried in file order and the first that matches takes the incident (``continue =
true`` lets it go on to the next matching routes, Alertmanager-style); an incident no route takes
goes to the default. Within a route every condition given must match (AND); a condition matches
when one of its glob patterns (``fnmatch``, case-sensitive) matches one of the incident's values
(OR). A route without conditions takes everything.

The matcher works on :class:`RoutingFacts`, a small extraction from a
:class:`~streams.core.alerts.Notification` (:func:`routing_facts`): new scope kinds or alert
kinds extend that extraction, not the matcher. The file is validated as a whole; every error
names the file and line (``routes.toml:12: ...``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from streams.core.alerts import Notification
from streams.core.catalog import ErrorClass
from streams.core.detector import RULE as SPIKE_RULE
from streams.core.immediate import IMMEDIATE_RULES, RESEND_STORM

#: The alert kind of each rule (what a route's ``kinds`` name); a rule not listed here is its
#: own kind. ``kinds`` patterns may also name a rule (``template_paused``).
RULE_KINDS: dict[str, str] = {
    SPIKE_RULE: "spike",
    RESEND_STORM: "storm",
    **{rule: "immediate" for rule in IMMEDIATE_RULES},
}

CONDITIONS = ("senders", "wabas", "templates", "campaigns", "countries", "kinds", "error_classes")
_ROUTE_KEYS = frozenset({"name", "channel", "webhook", "continue", *CONDITIONS})
_TOP_KEYS = frozenset({"default", "wabas", "route"})
#: What a Slack channel id looks like (public C..., private G..., direct D...).
CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")


class RoutingError(ValueError):
    """The routing file cannot be used; the message starts with ``path:line:``."""


class _Fail(Protocol):
    """Builds a :class:`RoutingError` for a reason, at the line of the key being checked."""

    def __call__(self, reason: str, /) -> RoutingError: ...


class _Fail2(Protocol):
    """Builds a :class:`RoutingError` at the line of ``key`` (in the ``route``-th route)."""

    def __call__(
        self, reason: str, /, key: str | None = None, route: int | None = None
    ) -> RoutingError: ...


@dataclass(frozen=True, slots=True)
class RoutingFacts:
    """What routing looks at in one notification (sets: an incident spans several scopes)."""

    kind: str
    rule: str
    error_class: str
    senders: frozenset[str] = frozenset()
    wabas: frozenset[str] = frozenset()
    templates: frozenset[str] = frozenset()
    campaigns: frozenset[str] = frozenset()
    countries: frozenset[str] = frozenset()

    def values(self, condition: str) -> frozenset[str]:
        if condition == "kinds":
            return frozenset({self.kind, self.rule})
        if condition == "error_classes":
            return frozenset({self.error_class}) if self.error_class else frozenset()
        values: frozenset[str] = getattr(self, condition)
        return values


#: A scope kind's value -> the facts field it feeds (new scope kinds: add them here).
_SCOPE_FIELDS = {
    "sender": "senders",
    "template": "templates",
    "country": "countries",
    "campaign": "campaigns",
    "waba": "wabas",
}


def routing_facts(notification: Notification) -> RoutingFacts:
    """The facts of the incident's headline and related scopes, and the templates and campaigns
    their evidence lists (what its message names)."""
    found: dict[str, set[str]] = {name: set() for name in _SCOPE_FIELDS.values()}
    for snap in (notification.headline, *notification.related):
        scope = snap.scope
        name = _SCOPE_FIELDS.get(scope.kind.value)
        if name is not None and scope.key:
            found[name].add(scope.key)
        if scope.sender:
            found["senders"].add(scope.sender)
        for part in ("templates", "campaigns"):  # a storm names its top ones in its evidence
            found[part].update(name for name, _ in snap.evidence.breakdown.get(part, ()))
    rule = notification.headline.rule
    return RoutingFacts(
        kind=RULE_KINDS.get(rule, rule),
        rule=rule,
        error_class=notification.error_class.value if notification.error_class else "",
        **{name: frozenset(values) for name, values in found.items()},
    )


@dataclass(frozen=True, slots=True)
class Route:
    """One destination and its conditions (``target``: a channel, or a webhook URL: secret)."""

    name: str
    target: str = field(repr=False)
    conditions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    continue_: bool = False

    def matches(self, facts: RoutingFacts) -> bool:
        return all(
            any(fnmatch.fnmatchcase(value, p) for value in facts.values(name) for p in patterns)
            for name, patterns in self.conditions
        )


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """The routes in file order, the default destination, and the WABA of each sender."""

    routes: tuple[Route, ...] = ()
    default: Route | None = None
    wabas: dict[str, frozenset[str]] = field(default_factory=dict)

    def facts(self, notification: Notification) -> RoutingFacts:
        facts = routing_facts(notification)
        declared = {w for w, senders in self.wabas.items() if senders & facts.senders}
        return dataclasses.replace(facts, wabas=facts.wabas | declared) if declared else facts

    def route(self, notification: Notification) -> list[Route]:
        """The routes that take ``notification`` (the default when none does)."""
        facts = self.facts(notification)
        taken: list[Route] = []
        for route in self.routes:
            if route.matches(facts):
                taken.append(route)
                if not route.continue_:
                    break
        if not taken and self.default is not None:
            taken.append(self.default)
        return taken

    def destinations(self) -> list[Route]:
        """Every destination once (the default first), e.g. for ``slack test``."""
        seen: dict[str, Route] = {}
        for route in (self.default, *self.routes):
            if route is not None and route.target not in seen:
                seen[route.target] = route
        return list(seen.values())

    def with_default(self, target: str, name: str = "default") -> RoutingTable:
        """This table with ``target`` as the default unless the file names one."""
        if self.default is not None or not target:
            return self
        return dataclasses.replace(self, default=Route(name, target))


class _Lines:
    """Line numbers of a TOML text's keys, for error messages (tomllib keeps none)."""

    _HEADER = re.compile(r"^\s*\[(\[)?\s*([A-Za-z0-9_.\"' -]+?)\s*\]")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.routes: list[int] = []  # 0-based line of each [[route]] header
        for i, line in enumerate(self.lines):
            header = self._HEADER.match(line)
            if header and header.group(1) and header.group(2).strip("\"'") == "route":
                self.routes.append(i)

    def of(self, key: str | None = None, route: int | None = None) -> int:
        """1-based line of ``key`` (in the ``route``-th [[route]] block, else at top level)."""
        if route is None:
            start, end = 0, len(self.lines)
        elif route < len(self.routes):
            start = self.routes[route]
            end = self.routes[route + 1] if route + 1 < len(self.routes) else len(self.lines)
        else:
            return 1
        if key is not None:
            pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
            for i in range(start, end):
                if pattern.match(self.lines[i]):
                    return i + 1
        return start + 1


def known_kinds() -> frozenset[str]:
    """Alert kinds and rule names a ``kinds`` pattern may name."""
    return frozenset(RULE_KINDS) | frozenset(RULE_KINDS.values())


def parse_routes(text: str, path: str, *, mode: str) -> RoutingTable:
    """The routing table of a TOML ``text`` read from ``path``; ``mode`` is ``bot`` (routes
    name channels) or ``webhook`` (routes name webhook URLs). Raises :class:`RoutingError`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"at line (\d+)", str(exc))
        raise RoutingError(f"{path}:{line.group(1) if line else 1}: {exc}") from None
    lines = _Lines(text)

    def fail(reason: str, key: str | None = None, route: int | None = None) -> RoutingError:
        return RoutingError(f"{path}:{lines.of(key, route)}: {reason}")

    for key in doc:
        if key not in _TOP_KEYS:
            raise fail(f"unknown key {key!r} (expected: {', '.join(sorted(_TOP_KEYS))})", key)
    default = None
    if "default" in doc:
        default = Route("default", _target(doc["default"], mode, lambda r: fail(r, "default")))
    wabas = _wabas(doc.get("wabas", {}), fail)
    raw_routes = doc.get("route", [])
    if not isinstance(raw_routes, list):
        raise fail("'route' must be an array of tables: write [[route]]", "route")
    routes = [_route(i, raw, mode, fail) for i, raw in enumerate(raw_routes)]
    names = [r.name for r in routes]
    for i, name in enumerate(names):
        if name in names[:i] or name == "default":
            raise fail(f"route name {name!r} is used twice", "name", i)
    return RoutingTable(tuple(routes), default, wabas)


def _target(value: object, mode: str, fail: _Fail) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail("a destination must be a non-empty string")
    value = value.strip()
    is_url = value.startswith(("https://", "http://"))
    if mode == "webhook" and not is_url:
        raise fail("webhook mode: a destination must be an incoming webhook URL (https://...)")
    if mode == "bot" and is_url:
        raise fail("bot mode: a destination must be a channel ID (C0123...), not a URL")
    return value


def _strings(value: object, what: str, fail: _Fail) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise fail(f"{what} must be a string or a non-empty list of strings")
    if any(not v.strip() for v in items):
        raise fail(f"{what} has an empty pattern")
    return tuple(v.strip() for v in items)


def _wabas(value: object, fail: _Fail2) -> dict[str, frozenset[str]]:
    if not isinstance(value, dict):
        raise fail("'wabas' must be a table: WABA id = [sending number ids]", "wabas")
    out = {}
    for waba, senders in value.items():
        where: _Fail = functools.partial(fail, key=str(waba))
        out[str(waba)] = frozenset(_strings(senders, f"wabas.{waba}", where))
    return out


def _route(i: int, raw: object, mode: str, fail: _Fail2) -> Route:
    if not isinstance(raw, dict):
        raise fail("each route must be a table", None, i)
    for key in raw:
        if key not in _ROUTE_KEYS:
            raise fail(
                f"route #{i + 1}: unknown key {key!r} (expected: {', '.join(sorted(_ROUTE_KEYS))})",
                key,
                i,
            )
    wanted, other = ("channel", "webhook") if mode == "bot" else ("webhook", "channel")
    if other in raw:
        raise fail(
            f"route #{i + 1}: {other!r} is for {'webhook' if other == 'webhook' else 'bot'} mode; "
            f"this monitor runs in {mode} mode: give {wanted!r}",
            other,
            i,
        )
    if wanted not in raw:
        raise fail(f"route #{i + 1}: no {wanted!r} (where to send its incidents)", None, i)
    target = _target(raw[wanted], mode, lambda r: fail(f"route #{i + 1}: {r}", wanted, i))
    name = raw.get("name", f"route #{i + 1}")
    if not isinstance(name, str) or not name.strip():
        raise fail(f"route #{i + 1}: 'name' must be a non-empty string", "name", i)
    conditions = []
    for key in CONDITIONS:
        if key in raw:
            where: _Fail = functools.partial(fail, key=key, route=i)
            patterns = _strings(raw[key], f"route #{i + 1}: {key}", where)
            _check_patterns(key, patterns, f"route #{i + 1}: ", where)
            conditions.append((key, patterns))
    cont = raw.get("continue", False)
    if not isinstance(cont, bool):
        raise fail(f"route #{i + 1}: 'continue' must be true or false", "continue", i)
    return Route(name.strip(), target, tuple(conditions), cont)


def _check_patterns(key: str, patterns: Iterable[str], prefix: str, fail: _Fail) -> None:
    """Kinds and error classes are a closed set: a pattern matching none of them is a typo."""
    known = {
        "kinds": known_kinds(),
        "error_classes": frozenset(c.value for c in ErrorClass),
    }.get(key)
    if known is None:
        return
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(k, pattern) for k in known):
            known_list = ", ".join(sorted(known))
            raise fail(f"{prefix}{key}: {pattern!r} matches nothing (known: {known_list})")
