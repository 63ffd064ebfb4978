"""Spike detection of limit errors per scope, on per-minute counts at event time.

What it watches: for every *scope* (the whole account, each sending number, each template, each
recipient country) and every monitored *error class* (per-user marketing limit 131049 and the US
marketing pause separately, opt-outs, pair rate limit, throughput, spam/quality, account
enforcement, template errors), the share of sends that failed with that class.

Input: per-minute counts, the same numbers as the pipeline's minute buckets: sends
(``attempted``) and failures by class (``failed.<class>``). :meth:`SpikeDetector.observe` *sets*
one minute of one scope (idempotent: feed a bucket again whenever it changes, corrections
included); :meth:`SpikeDetector.add` adds deltas instead. The account scope is derived: it is
the sum of the sending-number scopes (every message has exactly one sender), so feed senders,
templates and countries, never the account.

Method, at each evaluation (event time ``now``; minute ``m = now // 60``; minutes before ``m``
are complete):

- window: the ``window_minutes`` (default 5) minutes ``[m - W, m)``: ``k`` errors of the class
  out of ``n`` sends; ratio ``k / n``.
- baseline: the scope's own trailing ``baseline_minutes`` (default 24 h) before the window, with
  a small prior so a scope with no history (a new template) is judged sensibly:
  ``p0 = (K_base + prior_ratio * prior_attempts) / (N_base + prior_attempts)``.
- *positive* when all hold:
  1. volume: ``k >= min_count`` (a sparse template with 2 errors never pages);
  2. floor: ``k / n >= ratio_floor`` (an absolute share worth waking someone for);
  3. rise: ``k / n >= min_rise * p0`` (an effect size: a scope that always runs at 6% is not
     spiking at 6.1%, however many sends make that significant);
  4. significance: the one-sided binomial test ``P(X >= k | n, p0) <= alpha``.
- *hold* when not positive but ``k / n >= resolve_ratio * ratio_floor`` (hysteresis band).
- otherwise *clear* (scopes not listed in the evaluation are clear).

The :class:`~streams.core.alerts.AlertBook` fires after ``for_evaluations`` consecutive positive
evaluations (default 2) and resolves after ``resolve_evaluations`` consecutive clear ones
(default 5), i.e. the ratio under half the floor for 5 minutes. Fast path: a positive whose
p-value is at most ``fast_alpha`` (1e-9), on the 5-minute window or on the last complete minute
alone (same floors; the minute alone is judged whenever the window is not that clear), fires on
that evaluation: a spike that clear needs no second minute, and a spike diluted in the 5-minute
window is not in its own minute. At 1e-9 per test, even a million tests a day expect one false
alarm in about three years.

The minute in progress (:meth:`SpikeDetector.evaluate_partial`): complete minutes alone would
make a spike that starts at second 55 of minute ``m`` wait for ``m + 1`` to end (its 5 s in ``m``
are too few), about 65 s. So every ``partial_every`` seconds of event time (default 15: at
``m * 60 + 15``, ``+ 30``, ``+ 45``) the minute so far is judged alone on the fast path, with the
same floors and baseline as the complete minute will be, but *projected to a whole minute*: its
``k`` errors against ``n * 60 / elapsed`` sends, as if the rest of the minute brought sends at the
same rate and not one more error. That projection is what the complete minute at least shows
unless its send rate rises or errors are taken back (the binomial tail only falls as errors are
added and only rises as clean sends are), so a partial positive fires an alert the complete
minute would fire anyway, only up to 45 s sooner: which minute checks see which batch of data
(the in-progress counts depend on batching) moves *when* an alert fires, hardly *whether*. Only
positives are reported and the evaluation names no rule, so it clears, holds and resolves
nothing. Latency: a spike that needs ``d`` seconds of its own minute to pass the fast path fires
less than ``d + 15 * ceil(d / 15)`` s after its onset, whatever second of the minute it starts at
(seconds too few to pass before a minute ends count for nothing in the next one): within 30 s
for ``d <= 15``, within 60 s for ``d <= 30``. With the 131049 defaults (10 errors, 5 % of the
projected minute) a 45 % spike at 3 or more sends a second needs ``d`` of about 7 s. A spike
that needs minutes of evidence is judged on complete minutes as before.

Why a binomial test: errors are rare events on a known number of sends; z-scores and MAD break on
minutes of zeros. With ``p0 = 2%``: 2 of 10 gives p = 1.6e-2, 3 of 10 gives 8.6e-4, 8 of 50 gives
6.5e-6, 12 of 200 gives 7.9e-4. ``alpha`` defaults to 1e-4: about 1e-3 per scope spread over the
eight classes tested (Bonferroni), since hundreds of scopes are tested every minute.

Defaults per class (window 5 min, baseline 24 h, alpha 1e-4, min_rise 1.5, 2 to fire, 5 to
resolve, prior 200 sends):

==========================  =========  ===========  ===========
class                       min_count  ratio_floor  prior_ratio
==========================  =========  ===========  ===========
per_user_marketing_limit    10         5%           1%
us_marketing_pause          10         5%           1%
opt_out                     10         2%           0.5%
pair_rate_limit             10         5%           0.5%
throughput                  20         5%           0.5%
spam_quality                5          1%           0.1%
account_enforcement         5          1%           0.1%
template                    5          5%           0.5%
==========================  =========  ===========  ===========

Cost: observing is O(1); the baseline is summed from hourly totals, so an evaluation reads about
150 small dicts per scope. Memory: one entry per scope and minute with traffic, for 24 h.

Saving and restoring (a restart must not forget the baseline): the state is cut into
:class:`HourRecord` values, one hour of one scope each (at most 60 minutes, so every record stays
small however many scopes there are). :meth:`SpikeDetector.take_changes` returns the hours changed
since its last call and the hours forgotten, for the caller to write and delete;
:meth:`SpikeDetector.load` puts a saved hour back. Additions may carry the *position* of their
input (any increasing pair, e.g. a signal's offset and the index of the delta in it): each hour
remembers the last position it absorbed and skips an addition at or before it, so inputs replayed
after a restart are added once, however a crash split the previous save.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Container, Iterable, Mapping

import msgspec

from streams.core.alerts import (
    Evaluation,
    Evidence,
    Family,
    Finding,
    Scope,
    ScopeKind,
    Severity,
    Verdict,
    alert_key,
)
from streams.core.catalog import ErrorClass
from streams.core.keys import Dimension

RULE = "spike"

_C = ErrorClass


class SpikeThresholds(msgspec.Struct, frozen=True):
    """The thresholds of one error class; see the module docstring for their meaning."""

    min_count: int = 10
    ratio_floor: float = 0.05
    alpha: float = 1e-4
    min_rise: float = 1.5
    prior_ratio: float = 0.01
    prior_attempts: float = 200.0
    for_evaluations: int = 2
    resolve_evaluations: int = 3
    #: still elevated (HOLD, keeps a firing alert firing) while the window's share is at least
    #: ``min_rise`` times the baseline and that is significant at this level; clear otherwise
    hold_alpha: float = 0.01
    severity: Severity = Severity.WARNING
    #: fast path: the last complete minute alone (or the minute in progress, projected to a
    #: whole minute), judged with the same floors, at this alpha, fires at once (a spike this
    #: clear needs no second minute: alert within a minute of onset)
    fast_alpha: float = 1e-9


DEFAULT_THRESHOLDS: dict[ErrorClass, SpikeThresholds] = {
    _C.PER_USER_MARKETING_LIMIT: SpikeThresholds(),
    _C.OPT_OUT: SpikeThresholds(ratio_floor=0.02, prior_ratio=0.005),
    _C.PAIR_RATE_LIMIT: SpikeThresholds(prior_ratio=0.005),
    _C.THROUGHPUT: SpikeThresholds(min_count=20, prior_ratio=0.005),
    _C.SPAM_QUALITY: SpikeThresholds(
        min_count=5, ratio_floor=0.01, prior_ratio=0.001, severity=Severity.CRITICAL
    ),
    _C.ACCOUNT_ENFORCEMENT: SpikeThresholds(
        min_count=5, ratio_floor=0.01, prior_ratio=0.001, severity=Severity.CRITICAL
    ),
    _C.TEMPLATE: SpikeThresholds(min_count=5, prior_ratio=0.005),
}

CLASS_TITLES: dict[ErrorClass, str] = {
    _C.PER_USER_MARKETING_LIMIT: "Per-user marketing limit (131049)",
    _C.US_MARKETING_PAUSE: "US marketing pause (131049 to US numbers)",
    _C.OPT_OUT: "Opt-outs (131050)",
    _C.PAIR_RATE_LIMIT: "Pair rate limit (131056)",
    _C.THROUGHPUT: "Throughput limit (130429)",
    _C.SPAM_QUALITY: "Spam rate limit (131048)",
    _C.ACCOUNT_ENFORCEMENT: "Account enforcement errors",
    _C.TEMPLATE: "Template errors (132xxx)",
}


#: Classes counted per scope and minute but never judged as spikes: the US marketing pause is a
#: policy in force, not an anomaly (streams.core.standing reports it).
TALLIED_ONLY = frozenset({_C.US_MARKETING_PAUSE})


class DetectorConfig(msgspec.Struct, frozen=True):
    """Windows (minutes) and the thresholds of every monitored class."""

    window_minutes: int = 5
    baseline_minutes: int = 24 * 60
    #: seconds of event time between checks of the minute in progress (0: complete minutes only)
    partial_every: int = 15
    thresholds: dict[ErrorClass, SpikeThresholds] = msgspec.field(
        default_factory=lambda: dict(DEFAULT_THRESHOLDS)
    )
    tallied_only: frozenset[ErrorClass] = TALLIED_ONLY


def spike_title(error_class: ErrorClass) -> str:
    return f"{CLASS_TITLES.get(error_class, error_class.value)} spike"


# --- statistics ---------------------------------------------------------------------------


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Lentz's evaluation of the incomplete beta continued fraction (Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((a - 1.0 + m2) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + 1.0 + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the chance of at least ``k`` errors in ``n`` sends."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return min(1.0, max(0.0, regularized_beta(k, n - k + 1, p)))


def judge(
    errors: int,
    attempts: int,
    baseline_errors: int,
    baseline_attempts: int,
    thresholds: SpikeThresholds,
    window_seconds: int = 0,
) -> tuple[Verdict | None, Evidence]:
    """The verdict for one scope and class (``None`` = clear) and the evidence behind it:
    positive (see the module docstring), else HOLD while the window's share is still
    distinguishable from the baseline (at least ``min_rise`` times it, ``P(X >= k) <=
    hold_alpha``), else clear."""
    t = thresholds
    attempts = max(attempts, errors)  # a late send count must not give a ratio above 1
    ratio = errors / attempts if attempts else 0.0
    p0 = (baseline_errors + t.prior_ratio * t.prior_attempts) / (
        baseline_attempts + t.prior_attempts
    )
    p_value: float | None = None
    verdict: Verdict | None = None
    risen = errors > 0 and ratio >= t.min_rise * p0
    if risen and errors >= t.min_count and ratio >= t.ratio_floor:
        p_value = binomial_sf(errors, attempts, p0)
        if p_value <= t.alpha:
            verdict = Verdict.POSITIVE
    if verdict is None and risen:
        # still distinguishable from the scope's own baseline: not clear yet
        if p_value is None:
            p_value = binomial_sf(errors, attempts, p0)
        if p_value <= t.hold_alpha:
            verdict = Verdict.HOLD
    evidence = Evidence(
        count=errors,
        attempts=attempts,
        ratio=ratio,
        baseline_ratio=p0,
        baseline_attempts=baseline_attempts,
        p_value=p_value,
        window_seconds=window_seconds,
    )
    return verdict, evidence


# --- per-scope minute series ------------------------------------------------------------

#: The position of an addition: (input offset, index in the input); increasing per input stream.
Position = tuple[int, int]


class MinuteTally(msgspec.Struct, array_like=True, gc=False):
    """Sends and monitored errors (by class) of one minute of one scope."""

    attempts: int = 0
    errors: dict[ErrorClass, int] = {}


class HourRecord(msgspec.Struct, array_like=True, gc=False):
    """One hour of one scope's minute tallies, as saved; ``applied`` is the position of the last
    addition absorbed (``None``: additions without a position only)."""

    minutes: dict[int, MinuteTally] = {}
    applied: Position | None = None


class _Tally:
    __slots__ = ("attempts", "errors")

    def __init__(self) -> None:
        self.attempts = 0
        self.errors: dict[ErrorClass, int] = {}

    def add(self, attempts: int, errors: Mapping[ErrorClass, int]) -> None:
        self.attempts += attempts
        for cls, n in errors.items():
            self.errors[cls] = self.errors.get(cls, 0) + n

    def absorb(self, other: _Tally | None) -> None:
        if other is not None:
            self.add(other.attempts, other.errors)


class _Series:
    """Minute tallies of one scope, with hourly totals kept in step for the baseline sums."""

    __slots__ = ("applied", "hours", "minutes")

    def __init__(self) -> None:
        self.minutes: dict[int, _Tally] = {}
        self.hours: dict[int, _Tally] = {}
        self.applied: dict[int, Position] = {}  # hour -> last position absorbed

    def add(self, minute: int, attempts: int, errors: Mapping[ErrorClass, int]) -> None:
        self.minutes.setdefault(minute, _Tally()).add(attempts, errors)
        self.hours.setdefault(minute // 60, _Tally()).add(attempts, errors)

    def total(self, lo: int, hi: int) -> _Tally:
        """Sum of minutes ``[lo, hi)``: whole hours from the hourly totals, edges by minute."""
        out, minutes = _Tally(), self.minutes
        first_hour, end_hour = -(-lo // 60), hi // 60
        if first_hour >= end_hour:
            for m in range(lo, hi):
                out.absorb(minutes.get(m))
            return out
        for m in range(lo, first_hour * 60):
            out.absorb(minutes.get(m))
        for h in range(first_hour, end_hour):
            out.absorb(self.hours.get(h))
        for m in range(end_hour * 60, hi):
            out.absorb(minutes.get(m))
        return out

    def prune(self, oldest_minute: int) -> list[int]:
        """Forget whole hours that end before ``oldest_minute``; returns them."""
        gone = [h for h in self.hours if (h + 1) * 60 <= oldest_minute]
        for h in gone:
            del self.hours[h]
            self.applied.pop(h, None)
            for m in range(h * 60, h * 60 + 60):
                self.minutes.pop(m, None)
        return gone

    def record(self, hour: int) -> HourRecord | None:
        if hour not in self.hours:
            return None
        minutes = {}
        for m in range(hour * 60, hour * 60 + 60):
            tally = self.minutes.get(m)
            if tally is not None:
                minutes[m] = MinuteTally(tally.attempts, dict(tally.errors))
        return HourRecord(minutes, self.applied.get(hour))

    def load(self, hour: int, record: HourRecord) -> None:
        """Replace ``hour`` with a saved record."""
        self.hours.pop(hour, None)
        self.applied.pop(hour, None)
        for m in range(hour * 60, hour * 60 + 60):
            self.minutes.pop(m, None)
        for minute, tally in record.minutes.items():
            if minute // 60 != hour:
                raise ValueError(f"minute {minute} is not in hour {hour}")
            self.add(minute, tally.attempts, tally.errors)
        if record.applied is not None:
            self.applied[hour] = record.applied


_DIMENSION_KINDS: dict[str, ScopeKind] = {
    Dimension.TEMPLATE: ScopeKind.TEMPLATE,
    Dimension.SENDER: ScopeKind.SENDER,
    Dimension.COUNTRY: ScopeKind.COUNTRY,
    Dimension.CAMPAIGN: ScopeKind.CAMPAIGN,
}


def scope_of_bucket(dim: str, key: str) -> Scope:
    """The scope of a minute bucket of dimension ``dim`` (a :class:`Dimension`)."""
    return Scope(_DIMENSION_KINDS[dim], key)


def errors_of_bucket(counts: Mapping[str, int]) -> tuple[int, dict[str, int]]:
    """Sends and failures by class of a minute bucket's outcome counts."""
    errors = {k[7:]: v for k, v in counts.items() if k.startswith("failed.")}
    return counts.get("attempted", 0), errors


class SpikeDetector:
    """Per-scope, per-class spike detection over minute counts (see the module docstring)."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        tracked = [*self.config.thresholds, *self.config.tallied_only]
        #: error class values counted -> the class
        self.classes = {c.value: c for c in tracked}
        self._fast = {
            c: msgspec.structs.replace(t, alpha=t.fast_alpha)
            for c, t in self.config.thresholds.items()
        }
        self._series: dict[Scope, _Series] = {}
        self._dirty: set[tuple[Scope, int]] = set()  # (scope, hour) changed since take_changes
        self._dropped: set[tuple[Scope, int]] = set()  # (scope, hour) forgotten since then

    def _monitored(self, errors: Mapping[str, int]) -> dict[ErrorClass, int]:
        out: dict[ErrorClass, int] = {}
        for name, n in errors.items():
            cls = self.classes.get(str(name))
            if cls is not None and n:
                out[cls] = out.get(cls, 0) + n
        return out

    def _add(
        self,
        scope: Scope,
        minute: int,
        attempts: int,
        errors: dict[ErrorClass, int],
        position: Position | None = None,
    ) -> None:
        if scope.kind is ScopeKind.ACCOUNT:
            raise ValueError("the account scope is derived from the sender scopes")
        if not attempts and not any(errors.values()):
            return
        hour = minute // 60
        targets = (scope, Scope.for_account()) if scope.kind is ScopeKind.SENDER else (scope,)
        for target in targets:
            series = self._series.get(target)
            if series is None:
                series = self._series[target] = _Series()
            if position is not None:
                last = series.applied.get(hour)
                if last is not None and position <= last:
                    continue  # a replayed input: this hour has it already
                series.applied[hour] = position
            series.add(minute, attempts, errors)
            self._dirty.add((target, hour))

    def add(
        self,
        scope: Scope,
        minute: int,
        attempts: int,
        errors: Mapping[str, int],
        position: Position | None = None,
    ) -> None:
        """Add sends and errors (keyed by error class value) to one minute of ``scope``; with a
        ``position``, once (see the module docstring)."""
        self._add(scope, minute, attempts, self._monitored(errors), position)

    def observe(self, scope: Scope, minute: int, attempts: int, errors: Mapping[str, int]) -> None:
        """Set one minute of ``scope`` to these totals (idempotent; replaces earlier totals)."""
        delta = self._monitored(errors)
        series = self._series.get(scope)
        old = series.minutes.get(minute) if series is not None else None
        if old is not None:
            attempts -= old.attempts
            for cls, n in old.errors.items():
                delta[cls] = delta.get(cls, 0) - n
        self._add(scope, minute, attempts, delta)

    def observe_bucket(self, dim: str, key: str, minute: int, counts: Mapping[str, int]) -> None:
        """:meth:`observe` with a minute bucket's outcome counts, summed over its partitions."""
        attempts, errors = errors_of_bucket(counts)
        self.observe(scope_of_bucket(dim, key), minute, attempts, errors)

    def evaluate(self, now: int, watch: Container[str] = frozenset()) -> Evaluation:
        """Judge every scope and class on the complete minutes before ``now`` (event time).
        Alerts keyed in ``watch`` (the open ones) that are clear are listed as CLEAR with their
        evidence (what a resolve message shows)."""
        cfg = self.config
        end = now // 60
        start = end - cfg.window_minutes
        oldest = start - cfg.baseline_minutes
        findings: list[Finding] = []
        for scope in sorted(self._series, key=str):
            series = self._series[scope]
            self._dropped.update((scope, hour) for hour in series.prune(oldest))
            if not series.minutes:
                del self._series[scope]
                continue
            window = series.total(start, end)
            watched = [c for c in cfg.thresholds if _key(c, scope) in watch]
            if not watched and not any(window.errors.get(c) for c in cfg.thresholds):
                continue
            baseline = series.total(oldest, start)
            last = series.total(end - 1, end)
            findings.extend(self._judge_scope(scope, window, baseline, last, watched))
        return Evaluation(at=now, rules=frozenset({RULE}), findings=tuple(findings))

    def judge_again(self, scope: Scope, first: int, last: int) -> list[Finding]:
        """The findings ``scope`` would have had at the complete-minute evaluations of minutes
        ``first..last`` (inclusive) with the counts kept now: for counts that arrived after
        their minutes were judged. Returns the first finding of each class that would have
        made an alert fire there (a fast positive, or the rule's consecutive positives), its
        ``since`` the time it would have fired."""
        series = self._series.get(scope)
        if series is None:
            return []
        cfg = self.config
        streak: dict[ErrorClass, int] = {}
        fired: dict[ErrorClass, Finding] = {}
        previous = first - 1
        for minute in _windows_with_minutes(series.minutes, cfg.window_minutes, first, last):
            if minute != previous + 1:
                streak.clear()  # the minutes passed over had empty windows: no positive
            previous = minute
            start = minute - cfg.window_minutes
            oldest = start - cfg.baseline_minutes
            window = series.total(start, minute)
            if not any(window.errors.get(c) for c in cfg.thresholds):
                streak.clear()
                continue
            baseline = series.total(oldest, start)
            last_minute = series.total(minute - 1, minute)
            positive = set()
            for f in self._judge_scope(scope, window, baseline, last_minute):
                cls = f.error_class
                if f.verdict is not Verdict.POSITIVE or cls is None or cls in fired:
                    continue
                positive.add(cls)
                streak[cls] = streak.get(cls, 0) + 1
                if streak[cls] >= f.for_evaluations:
                    fired[cls] = msgspec.structs.replace(f, since=minute * 60, for_evaluations=1)
            for cls in [c for c in streak if c not in positive]:
                del streak[cls]
        return sorted(fired.values(), key=lambda f: f.key)

    def explained_by(self, finding: Finding, removed: int) -> bool:
        """Whether the positive spike ``finding`` is one no longer once ``removed`` of its
        window's sends are taken out as failures of its class: premature resends (sent less than
        24 h after the recipient's 131049, so expected to fail again) are a resend storm's
        doing, not a spike of the scope's own traffic."""
        cls, e = finding.error_class, finding.evidence
        if removed <= 0 or cls is None or cls not in self.config.thresholds:
            return False
        fast = e.window_seconds <= 60  # the last minute's or the partial minute's test
        t = (self._fast if fast else self.config.thresholds)[cls]
        errors = e.count - min(removed, e.count)
        attempts = max(e.attempts - removed, errors)
        p0 = e.baseline_ratio or 0.0
        if errors < t.min_count or errors / attempts < max(t.ratio_floor, t.min_rise * p0):
            return True
        return binomial_sf(errors, attempts, p0) > t.alpha

    @property
    def idle(self) -> bool:
        """No minutes kept: an evaluation finds nothing and changes nothing."""
        return not self._series

    def scopes(self) -> list[Scope]:
        """Every scope with minutes kept."""
        return sorted(self._series, key=str)

    def window(self, scope: Scope, lo: int, hi: int) -> MinuteTally:
        """Sends and errors of ``scope`` over minutes ``[lo, hi)``."""
        series = self._series.get(scope)
        tally = series.total(lo, hi) if series is not None else _Tally()
        return MinuteTally(tally.attempts, dict(tally.errors))

    def first_minute(self, scope: Scope, error_class: ErrorClass, lo: int, hi: int) -> int | None:
        """The first minute in ``[lo, hi)`` with an error of ``error_class`` in ``scope``."""
        series = self._series.get(scope)
        if series is None:
            return None
        minutes = [
            m for m, t in series.minutes.items() if lo <= m < hi and t.errors.get(error_class)
        ]
        return min(minutes, default=None)

    def evaluate_partial(self, now: int, at: int | None = None) -> Evaluation:
        """Judge the minute in progress at ``now`` (event time; ``now % 60`` seconds of it have
        passed) alone, on the fast path, as if the rest of the minute brought sends at the same
        rate and not one more error (see the module docstring). Only positives are listed and
        the evaluation names no rule, so it clears nothing: it can only make an alert fire
        sooner. ``at`` is the event time to report (default ``now``)."""
        cfg = self.config
        minute, elapsed = divmod(now, 60)
        findings: list[Finding] = []
        if elapsed:
            start = minute + 1 - cfg.window_minutes  # the window of this minute's evaluation
            oldest = start - cfg.baseline_minutes
            for scope in sorted(self._series, key=str):
                series = self._series[scope]
                tally = series.minutes.get(minute)
                if tally is None or not any(n > 0 for n in tally.errors.values()):
                    continue
                baseline = series.total(oldest, start)
                findings.extend(self._judge_partial(scope, tally, baseline, elapsed))
        return Evaluation(at=now if at is None else at, rules=frozenset(), findings=tuple(findings))

    # -- saving and restoring ------------------------------------------------------------------

    def take_changes(
        self,
    ) -> tuple[dict[tuple[Scope, int], HourRecord], set[tuple[Scope, int]]]:
        """The (scope, hour) records changed since the last call, and those forgotten."""
        changed: dict[tuple[Scope, int], HourRecord] = {}
        for scope, hour in self._dirty:
            record = self.record(scope, hour)
            if record is not None:
                changed[(scope, hour)] = record
            else:
                self._dropped.add((scope, hour))
        dropped = self._dropped - changed.keys()
        self._dirty, self._dropped = set(), set()
        return changed, dropped

    def touch_all(self) -> None:
        """Count every hour kept as changed (the next :meth:`take_changes` returns them all)."""
        for scope, series in self._series.items():
            self._dirty.update((scope, hour) for hour in series.hours)

    def record(self, scope: Scope, hour: int) -> HourRecord | None:
        """One hour of ``scope`` as saved (``None`` when nothing of it is kept)."""
        series = self._series.get(scope)
        return series.record(hour) if series is not None else None

    def load(self, scope: Scope, hour: int, record: HourRecord) -> None:
        """Put a saved hour back (replaces what the detector has of that hour)."""
        series = self._series.get(scope)
        if series is None:
            series = self._series[scope] = _Series()
        series.load(hour, record)

    def kept(self) -> dict[Scope, list[int]]:
        """The hours kept per scope."""
        return {scope: sorted(series.hours) for scope, series in self._series.items()}

    def totals(self, scope: Scope) -> MinuteTally:
        """Sends and errors of ``scope`` over every minute kept."""
        out = _Tally()
        series = self._series.get(scope)
        for tally in series.hours.values() if series is not None else ():
            out.absorb(tally)
        return MinuteTally(out.attempts, dict(out.errors))

    def _judge_scope(
        self,
        scope: Scope,
        window: _Tally,
        baseline: _Tally,
        last: _Tally,
        watched: Collection[ErrorClass] = (),
    ) -> Iterable[Finding]:
        seconds = self.config.window_minutes * 60
        for cls, t in self.config.thresholds.items():
            k = window.errors.get(cls, 0)
            if not k and cls not in watched:
                continue
            b_errors, b_attempts = baseline.errors.get(cls, 0), baseline.attempts
            verdict, evidence = judge(k, window.attempts, b_errors, b_attempts, t, seconds)
            for_evaluations = t.for_evaluations
            if verdict is Verdict.POSITIVE and _at_most(evidence.p_value, t.fast_alpha):
                for_evaluations = 1
            elif (k1 := last.errors.get(cls, 0)) >= t.min_count:
                # the last complete minute alone: clear in its own minute however diluted in
                # the window (also when the window is positive, but not beyond fast_alpha)
                fast, fast_evidence = judge(
                    k1, last.attempts, b_errors, b_attempts, self._fast[cls], 60
                )
                if fast is Verdict.POSITIVE:
                    verdict, evidence, for_evaluations = fast, fast_evidence, 1
            if verdict is None:
                if cls in watched:
                    if evidence.p_value is None:  # how ordinary the window is, for the resolve
                        p = binomial_sf(k, evidence.attempts, evidence.baseline_ratio or 0.0)
                        evidence = msgspec.structs.replace(evidence, p_value=p)
                    yield self._finding(scope, cls, t, Verdict.CLEAR, evidence, for_evaluations)
                continue
            yield self._finding(scope, cls, t, verdict, evidence, for_evaluations)

    def _judge_partial(
        self, scope: Scope, tally: _Tally, baseline: _Tally, elapsed: int
    ) -> Iterable[Finding]:
        for cls, t in self.config.thresholds.items():
            k = tally.errors.get(cls, 0)
            if k < t.min_count:
                continue
            attempts = max(tally.attempts, k)
            projected = -(-attempts * 60 // elapsed)  # the whole minute at the same send rate
            b_errors, b_attempts = baseline.errors.get(cls, 0), baseline.attempts
            verdict, evidence = judge(k, projected, b_errors, b_attempts, self._fast[cls], 60)
            if verdict is not Verdict.POSITIVE:
                continue
            # the counts so far; the p-value is the projected (larger) one
            evidence = msgspec.structs.replace(
                evidence, attempts=attempts, ratio=k / attempts, window_seconds=elapsed
            )
            yield self._finding(scope, cls, t, verdict, evidence, 1)

    @staticmethod
    def _finding(
        scope: Scope,
        cls: ErrorClass,
        t: SpikeThresholds,
        verdict: Verdict,
        evidence: Evidence,
        for_evaluations: int,
    ) -> Finding:
        return Finding(
            rule=RULE,
            scope=scope,
            group=f"{RULE}:{cls.value}",
            verdict=verdict,
            evidence=evidence,
            title=spike_title(cls),
            error_class=cls,
            severity=t.severity,
            for_evaluations=for_evaluations,
            resolve_evaluations=t.resolve_evaluations,
            family=Family.SPIKE,
        )


def _key(cls: ErrorClass, scope: Scope) -> str:
    """The alert key of the spike rule for ``cls`` on ``scope`` (what :class:`Finding` makes)."""
    return alert_key(f"{RULE}:{cls.value}", scope)


def _at_most(p_value: float | None, alpha: float) -> bool:
    return p_value is not None and p_value <= alpha


def _windows_with_minutes(
    kept: Mapping[int, object], width: int, first: int, last: int
) -> list[int]:
    """The minutes ``m`` in ``first..last`` whose window ``[m - width, m)`` holds a kept minute,
    in order: the others judge an empty window. A late count years back is judged over the
    few minutes after it, not minute by minute up to now."""
    out: set[int] = set()
    for k in kept:
        lo, hi = max(first, k + 1), min(last, k + width)
        out.update(range(lo, hi + 1))
    return sorted(out)
