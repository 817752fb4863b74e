"""Meta's side of a call: the transition table and the Graph API's order rules."""

from __future__ import annotations

import pytest

from simulator import calls
from simulator.calls import CallFacts, CallState, Direction, Event, check_graph_action, step
from simulator.errors import MetaError
from tests.unit.test_sim_sdp import AIORTC_ANSWER

ANSWER = calls.sdp_rules.business_answer(AIORTC_ANSWER)
SESSION = {"sdp_type": "answer", "sdp": ANSWER}
IN, OUT = Direction.INCOMING, Direction.OUTGOING


def _facts(direction: Direction, state: CallState, answer: str | None = None) -> CallFacts:
    return CallFacts("wacid.t", direction, state, answer)


def _refused(facts: CallFacts, action: Event, session: object = SESSION) -> str:
    with pytest.raises(MetaError) as caught:
        check_graph_action(facts, action, session)
    assert caught.value.code == 100
    assert caught.value.http_status == 400
    assert caught.value.details is not None
    return caught.value.details


def test_an_incoming_call_is_answered_in_order() -> None:
    pre = check_graph_action(_facts(IN, CallState.RINGING), Event.PRE_ACCEPT, SESSION)
    assert pre == calls.Transition(CallState.PRE_ACCEPTED, ())
    accept = check_graph_action(_facts(IN, CallState.PRE_ACCEPTED, ANSWER), Event.ACCEPT, SESSION)
    assert accept.state is CallState.ACCEPTED
    assert accept.commands == (calls.StartTalking(),)
    end = check_graph_action(_facts(IN, CallState.ACCEPTED, ANSWER), Event.TERMINATE, None)
    assert end.state is CallState.COMPLETED
    assert end.commands == (calls.EndCall("business_hangup"), calls.SendTerminate("COMPLETED"))


def test_graph_refusals_name_the_rule() -> None:
    assert "pre-accepted before accept" in _refused(_facts(IN, CallState.RINGING), Event.ACCEPT)
    assert "use terminate" in _refused(_facts(IN, CallState.ACCEPTED, ANSWER), Event.REJECT, None)
    assert "already ended" in _refused(_facts(IN, CallState.COMPLETED, ANSWER), Event.TERMINATE, None)
    assert "already ended" in _refused(_facts(OUT, CallState.FAILED), Event.TERMINATE, None)
    assert "placed by the business" in _refused(_facts(OUT, CallState.RINGING), Event.PRE_ACCEPT)
    assert "placed by the business" in _refused(_facts(OUT, CallState.ACCEPTED), Event.REJECT, None)
    other = {"sdp_type": "answer", "sdp": ANSWER.replace("a=mid:0", "a=mid:1")}
    assert "same SDP" in _refused(_facts(IN, CallState.PRE_ACCEPTED, ANSWER), Event.ACCEPT, other)
    assert "sdp_type must be 'answer'" in _refused(
        _facts(IN, CallState.RINGING), Event.PRE_ACCEPT, {"sdp_type": "offer", "sdp": ANSWER}
    )
    assert "session is required" in _refused(_facts(IN, CallState.RINGING), Event.PRE_ACCEPT, None)
    assert "SHA256" in _refused(
        _facts(IN, CallState.RINGING), Event.PRE_ACCEPT, {"sdp_type": "answer", "sdp": AIORTC_ANSWER}
    )


def test_retries_with_the_same_sdp_are_harmless() -> None:
    again = check_graph_action(_facts(IN, CallState.PRE_ACCEPTED, ANSWER), Event.PRE_ACCEPT, SESSION)
    assert again == calls.Transition(CallState.PRE_ACCEPTED, ())
    accepted_again = check_graph_action(_facts(IN, CallState.ACCEPTED, ANSWER), Event.ACCEPT, SESSION)
    assert accepted_again == calls.Transition(CallState.ACCEPTED, ())


def test_reject_and_unanswered_and_cancel_report_failed() -> None:
    for state in (CallState.RINGING, CallState.PRE_ACCEPTED):
        rejected = step(IN, state, Event.REJECT)
        assert rejected.state is CallState.REJECTED
        assert calls.SendTerminate("FAILED") in rejected.commands
        assert step(IN, state, Event.ANSWER_TIMEOUT).commands == (
            calls.EndCall("unanswered"),
            calls.SendTerminate("FAILED"),
        )
        assert step(IN, state, Event.PHONE_HANGUP).commands[0] == calls.EndCall("caller_cancelled")


def test_the_callee_phone_drives_an_outgoing_call() -> None:
    accepted = step(OUT, CallState.RINGING, Event.PHONE_ACCEPT)
    assert accepted.state is CallState.ACCEPTED
    assert accepted.commands == (calls.SendAnswer(), calls.SendStatus("ACCEPTED"), calls.StartTalking())
    rejected = step(OUT, CallState.RINGING, Event.PHONE_REJECT)
    assert rejected.state is CallState.REJECTED
    assert rejected.commands == (
        calls.SendStatus("REJECTED"),
        calls.EndCall("callee_rejected"),
        calls.SendTerminate("FAILED"),
    )
    assert step(OUT, CallState.RINGING, Event.TERMINATE).commands[0] == calls.EndCall("business_cancelled")


@pytest.mark.parametrize("direction", list(Direction))
def test_media_timers_end_connected_calls_with_an_error_code(direction: Direction) -> None:
    no_media = step(direction, CallState.ACCEPTED, Event.NO_MEDIA)
    assert no_media.state is CallState.FAILED
    assert calls.SendTerminate("FAILED", calls.NO_MEDIA_ERROR) in no_media.commands
    silence = step(direction, CallState.ACCEPTED, Event.MEDIA_TIMEOUT)
    assert calls.SendTerminate("FAILED", calls.MEDIA_TIMEOUT_ERROR) in silence.commands
    hangup = step(direction, CallState.ACCEPTED, Event.PHONE_HANGUP)
    assert hangup.commands == (calls.EndCall("phone_hangup"), calls.SendTerminate("COMPLETED"))


def test_ended_calls_accept_no_event_and_shutdown_sends_nothing() -> None:
    for state in calls.TERMINAL_STATES:
        for direction in Direction:
            for event in Event:
                with pytest.raises(calls.IllegalTransition):
                    step(direction, state, event)
    for state in calls.LIVE_STATES:
        assert step(IN, state, Event.SHUTDOWN).commands == (calls.EndCall("simulator_closed"),)


def test_every_transition_lands_in_a_known_state_and_ends_with_a_reason() -> None:
    for (_, _, _), (state, commands) in calls.TRANSITIONS.items():
        assert state in CallState
        if state in calls.TERMINAL_STATES:
            assert any(isinstance(c, calls.EndCall) for c in commands)
        else:
            assert not any(isinstance(c, calls.EndCall | calls.SendTerminate) for c in commands)
