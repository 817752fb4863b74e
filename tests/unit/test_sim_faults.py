"""Fault switches: specs parse into rules, rules fire as often as they say."""

from __future__ import annotations

import random

import pytest

from simulator.faults import FaultKind, FaultPlan, FaultRule, parse_fault


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("pre_accept:503:next=2", FaultRule("pre_accept", FaultKind.SERVER_ERROR, count=2, http_status=503)),
        ("accept:5xx", FaultRule("accept", FaultKind.SERVER_ERROR, http_status=500)),
        ("connect:429", FaultRule("connect", FaultKind.THROTTLE, code=130429)),
        ("accept:429=4:fraction=0.1", FaultRule("accept", FaultKind.THROTTLE, code=4, fraction=0.1)),
        ("connect:error=138002", FaultRule("connect", FaultKind.ERROR, code=138002)),
        ("*:delay=0.5", FaultRule("*", FaultKind.DELAY, seconds=0.5)),
        ("terminate:timeout", FaultRule("terminate", FaultKind.TIMEOUT, seconds=30.0)),
        ("terminate:timeout=5:apply", FaultRule("terminate", FaultKind.TIMEOUT, seconds=5.0, apply=True)),
        (
            "accept:429:retry_after=2",
            FaultRule("accept", FaultKind.THROTTLE, code=130429, retry_after_seconds=2),
        ),
    ],
)
def test_specs_parse(spec: str, expected: FaultRule) -> None:
    assert parse_fault(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "accept",
        "dial:503",
        "accept:418",
        "accept:429=7",
        "accept:delay",
        "accept:503:next=0",
        "x:503:fraction=2",
        "accept:503:often",
        "accept:error",
        "accept:delay=1:retry_after=1",
        "accept:429:retry_after=-1",
    ],
)
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the mistake
        parse_fault(spec)


def test_next_n_fires_exactly_n_times_then_goes_away() -> None:
    plan = FaultPlan(random.Random(1))
    rule = plan.add(parse_fault("pre_accept:503:next=2"))
    assert plan.pick("accept") is None
    assert plan.pick("pre_accept") == rule
    assert plan.pick("pre_accept") == rule
    assert plan.pick("pre_accept") is None
    assert plan.rules == ()
    assert plan.fired == {"pre_accept:503": 2}


def test_a_fraction_fires_about_that_often_and_wildcards_match_everything() -> None:
    plan = FaultPlan(random.Random(42))
    plan.add(parse_fault("*:429:fraction=0.25"))
    fired = sum(plan.pick(action) is not None for action in ["connect", "accept", "messages"] * 400)
    assert 240 < fired < 360


def test_rules_are_tried_in_order_and_can_be_removed() -> None:
    plan = FaultPlan(random.Random(0))
    first = plan.add(parse_fault("accept:error=138007"))
    second = plan.add(parse_fault("*:5xx"))
    assert plan.pick("accept") == first
    plan.remove(first)
    assert plan.pick("accept") == second
    plan.clear()
    assert plan.pick("accept") is None
    assert first.describe() == "accept:error 138007"
