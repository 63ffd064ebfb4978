"""Retry plans: one per retryable failure, at the documented time, cancelled by a later send
of the same template, due when event time passes them (timers kept in the table, so they
survive a restart), and none for failures that must not be retried."""

from __future__ import annotations

import json
from collections import defaultdict

import msgspec
import pytest
from history_support import (
    DAY,
    HOUR,
    SETTLE,
    Pipeline,
    expected_plans,
    inputs_in_order,
    partition_clock,
    plan_jitter,
)

from streams.core.facts import (
    NO_POSITION,
    FactBatch,
    RecipientFact,
    RecipientFactKind,
    encode_batch,
    source_id,
)
from streams.core.keys import PLAN_PREFIX
from streams.core.retries import RetryPolicy, is_retryable, jitter, make_plan
from streams.simulate_history import HistorySpec, generate_history
from streams.stages import MESSAGES, partition_for
from streams.stages.recipients import RecipientStage
from streams.state import DictKeyValue

K = RecipientFactKind
T = 1_767_225_600
R = "5511987654321"


@pytest.mark.parametrize(
    ("code", "limit", "lo", "hi", "retry"),
    [
        (131049, True, DAY, DAY + HOUR, "not_before"),  # after the cool-down, spread over 1 h
        (1026, True, DAY, DAY + HOUR, "not_before"),  # On-Prem per-user limit
        (130429, False, 60, 120, "slow_down"),  # throughput of the sending number
        (131056, False, 60, 120, "backoff"),  # pair rate limit
        (131000, False, 60, 120, "backoff"),  # transient
        (80007, False, 60, 120, "slow_down"),  # API rate limit
    ],
)
def test_plan_time_per_code(code: int, limit: bool, lo: int, hi: int, retry: str) -> None:
    dues = set()
    for i in range(200):
        plan = make_plan(f"wamid.{code}.{i}", R, code, T, limit=limit)
        assert plan is not None and plan.retry == retry
        assert T + lo <= plan.due < T + hi
        assert plan == make_plan(f"wamid.{code}.{i}", R, code, T, limit=limit)  # deterministic
        dues.add(plan.due // 60 if limit else plan.due)
    assert len(dues) >= 30  # a campaign's retries spread out, not all in one minute


@pytest.mark.parametrize(
    "code",
    [
        131050,  # opt-out
        498,  # On-Prem opt-out
        131026,  # undeliverable (the catalog says "after 24 h"; a plan would resend blindly)
        131047,  # customer-service window: send a template instead
        132001,  # template does not exist
        131042,  # billing
        130472,  # experiment holdout
        131048,  # spam rate limit: no blind retry
        999_999,  # unknown
    ],
)
def test_no_plan_for_failures_that_must_not_be_retried(code: int) -> None:
    assert not is_retryable(code)
    assert make_plan("wamid.X", R, code, T, limit=False) is None


def test_jitter_is_a_hash_of_the_wamid() -> None:
    assert jitter("wamid.A", 3600) == jitter("wamid.A", 3600) != jitter("wamid.B", 3600)
    assert jitter("wamid.A", 3600) == plan_jitter("wamid.A", 3600)  # the README's formula
    assert jitter("wamid.A", 0) == 0


#: Facts come from one stage-2 partition's statuses (the timers' clock), in feed order.
SOURCE = source_id(MESSAGES, 0)


def _fact(kind: RecipientFactKind, ts: int, wamid: str, **kw: object) -> RecipientFact:
    return RecipientFact(R, kind, ts, NO_POSITION, wamid=wamid, sender="1065", **kw)  # type: ignore[arg-type]


class Run:
    """One recipients stage over a dict store, one input record per call, flushed each time."""

    def __init__(self, kv: DictKeyValue | None = None, offset: int = 0) -> None:
        self.kv = kv if kv is not None else DictKeyValue()
        self.stage = RecipientStage(self.kv)
        self.offset = offset
        self.records: dict[str, list[str]] = defaultdict(list)  # wamid -> statuses published
        self.last: dict[str, dict[str, object]] = {}

    def feed(self, *facts: RecipientFact) -> None:
        placed = [
            msgspec.structs.replace(f, position=(SOURCE, self.offset, i))
            if f.position == NO_POSITION
            else f
            for i, f in enumerate(facts)
        ]
        self.stage.handle_batch(0, self.offset, encode_batch(FactBatch(recipients=placed)))
        self.offset += 1
        self.stage.flush(0)
        for wamid, raw in self.stage.drain_retries():
            record = json.loads(raw)
            self.records[wamid].append(record["status"])
            self.last[wamid] = record

    def tick(self, ts: int, n: int) -> None:
        """Any fact that moves the partition's event time to ``ts``."""
        self.feed(RecipientFact(f"other{n}", K.MARKETING_DELIVERED, ts, NO_POSITION))


def test_a_131049_plan_comes_due_once_after_its_time_and_the_settle_time() -> None:
    run = Run()
    run.feed(_fact(K.LIMIT_FAILURE, T, "wamid.A", template="spring_sale", code=131049))
    due = run.last["wamid.A"]["due"]
    assert isinstance(due, int) and run.records["wamid.A"] == ["planned"]
    run.tick(due + SETTLE - 1, 1)
    assert run.records["wamid.A"] == ["planned"]
    run.tick(due + SETTLE + 60, 2)  # the timer index has minutes: within a minute after
    assert run.records["wamid.A"] == ["planned", "due"]
    run.tick(due + DAY, 3)
    assert run.records["wamid.A"] == ["planned", "due"]
    assert run.stage.read(0, R).plans == []


@pytest.mark.parametrize("resend_first", [False, True])
def test_a_later_send_of_the_same_template_cancels_the_plan(resend_first: bool) -> None:
    run = Run()
    failure = _fact(K.RETRYABLE_FAILURE, T, "wamid.A", template="spring_sale", code=130429)
    resend = _fact(K.MARKETING_ATTEMPT, T + 30, "wamid.B", template="spring_sale")
    for fact in (resend, failure) if resend_first else (failure, resend):
        run.feed(fact)
    run.tick(T + DAY, 2)
    assert run.records["wamid.A"] == (["cancelled"] if resend_first else ["planned", "cancelled"])
    assert run.last["wamid.A"]["cancelled_at"] == T + 30


def test_other_templates_and_the_message_itself_do_not_cancel() -> None:
    run = Run()
    run.feed(_fact(K.MARKETING_ATTEMPT, T - 5, "wamid.A", template="spring_sale"))
    run.feed(_fact(K.RETRYABLE_FAILURE, T, "wamid.A", template="spring_sale", code=131056))
    run.feed(_fact(K.MARKETING_ATTEMPT, T + 10, "wamid.B", template="other"))
    run.feed(_fact(K.MARKETING_ATTEMPT, T + 20, "wamid.A", template="spring_sale"))
    run.tick(T + HOUR, 4)
    assert run.records["wamid.A"] == ["planned", "due"]


def test_timers_survive_a_restart() -> None:
    first = Run()
    first.feed(_fact(K.LIMIT_FAILURE, T, "wamid.A", template="t", code=131049))
    due = first.last["wamid.A"]["due"]
    assert isinstance(due, int)
    again = Run(first.kv, first.offset)  # a new worker on the restored table
    again.tick(due + SETTLE + 60, 1)
    assert again.records["wamid.A"] == ["due"]


def test_a_revoked_partition_publishes_nothing_of_its_unflushed_work() -> None:
    run = Run()
    raw = encode_batch(
        FactBatch(recipients=[_fact(K.LIMIT_FAILURE, T, "wamid.A", template="t", code=131049)])
    )
    run.stage.handle_batch(0, 0, raw)
    run.stage.revoke(0)
    assert run.stage.drain_retries() == [] and run.stage.drain_signals() is None
    run.stage.handle_batch(0, 0, raw)  # the next owner (here: again) handles it from the table
    run.stage.flush(0)
    assert [w for w, _ in run.stage.drain_retries()] == ["wamid.A"]


def test_closed_plans_are_deleted_after_their_keep_time() -> None:
    run = Run()
    run.feed(_fact(K.RETRYABLE_FAILURE, T, "wamid.A", template="t", code=130429))
    run.tick(T + HOUR, 1)
    assert any(k.startswith(PLAN_PREFIX) for k in run.kv.data[0])
    run.tick(T + RetryPolicy().keep_s + HOUR, 2)
    assert not any(k.startswith(PLAN_PREFIX) for k in run.kv.data[0])


def test_a_replayed_failure_makes_no_second_plan() -> None:
    run = Run()
    fact = _fact(K.LIMIT_FAILURE, T, "wamid.A", template="t", code=131049)
    placed = msgspec.structs.replace(fact, position=(SOURCE, 0, 0))
    run.feed(placed)
    run.feed(placed)  # the same input again (a crash before the commit)
    assert run.records["wamid.A"] == ["planned"]


@pytest.fixture(scope="module")
def history():
    return generate_history(HistorySpec(recipients=240), seed=8)


@pytest.mark.parametrize("order", ["send_log_last", "send_log_first"])
def test_every_retryable_failure_of_a_history_gets_one_plan(history, order: str) -> None:
    pipeline = Pipeline()
    pipeline.feed(inputs_in_order(history, order), chunk=41)
    expected = expected_plans(history)
    statuses: dict[str, list[str]] = defaultdict(list)
    last: dict[str, dict[str, object]] = {}
    for record in pipeline.retries:
        wamid = str(record["wamid"])
        statuses[wamid].append(str(record["status"]))
        last[wamid] = record
    assert set(statuses) == set(expected)  # and none for the other failures
    clock = partition_clock(history, pipeline.n)
    seen = defaultdict(int)
    for wamid, plan in expected.items():
        record = last[wamid]
        assert (record["due"], record["failed_at"], record["error_code"]) == (
            plan.due,
            plan.failed_at,
            plan.code,
        )
        history_statuses = statuses[wamid]
        # a plan made before the send log told its template (never a wrong one)
        known = order == "send_log_first"
        assert record["template"] in ((plan.template,) if known else (plan.template, None))
        assert not ("due" in history_statuses and "cancelled" in history_statuses)
        now = clock[partition_for(plan.recipient, pipeline.n)]
        came = "due" if plan.due + SETTLE + 60 <= now else "planned"
        if plan.cancelled and (plan.cancelled_by_opaque or known):
            assert history_statuses[-1] == "cancelled", wamid
        elif plan.cancelled:  # cancelled if its resend's template came before it was due
            assert history_statuses[-1] in ("cancelled", came), wamid
        elif plan.due + SETTLE > now or came == "due":  # (within a minute after: either)
            assert history_statuses == (["planned", "due"] if came == "due" else ["planned"])
        seen[history_statuses[-1]] += 1
    assert seen["due"] >= 20 and seen["cancelled"] >= 20 and seen["planned"] >= 10
