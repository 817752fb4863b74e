"""The call state machine, driven without a loop: whole state histories and the commands they produce."""

from __future__ import annotations

import pytest

from worker import call as c
from worker.call import CallState as S
from worker.call import Outcome

OFFER = "v=0\r\n...offer"
ANSWER = "v=0\r\n...answer"


def drive(start: c.Call, *events: c.Event) -> tuple[c.Call, list[S], list[c.Command]]:
    call, states, commands = start, [start.state], []
    for event in events:
        call, out = c.step(call, event)
        states.append(call.state)
        commands.extend(out)
    return call, states, commands


def graph_actions(commands: list[c.Command]) -> list[str]:
    return [cmd.action for cmd in commands if isinstance(cmd, c.GraphRequest)]


HAPPY_INCOMING = (
    c.Offered(OFFER),
    c.LocalSdpReady(ANSWER),
    c.GraphDone("pre_accept"),
    c.MediaConnected(),
    c.GraphDone("accept"),
)


def test_incoming_call_answered_then_app_hangs_up() -> None:
    call, states, commands = drive(c.incoming(), *HAPPY_INCOMING, c.AppFinished(), c.GraphDone("terminate"))
    assert states == [
        S.OFFERED,
        S.ANSWERING,
        S.PRE_ACCEPTING,
        S.AWAITING_MEDIA,
        S.ACCEPTING,
        S.ACTIVE,
        S.TERMINATING,
        S.ENDED,
    ]
    assert commands == [
        c.Notify("ringing"),
        c.CreateAnswer(OFFER),
        c.GraphRequest("pre_accept", ANSWER),
        c.WaitMedia(),
        c.GraphRequest("accept", ANSWER),  # the same SDP as pre_accept: Meta requires it
        c.StartApp(),
        c.Notify("answered"),
        c.CloseMedia(),  # the app already returned: nothing to stop
        c.GraphRequest("terminate"),
        c.Notify("ended"),
        c.Finish(Outcome.COMPLETED, "app hung up"),
    ]
    assert call.outcome is Outcome.COMPLETED


def test_audio_starts_only_after_accept_succeeded() -> None:
    _, _, commands = drive(c.incoming(), *HAPPY_INCOMING)
    accept_at = commands.index(c.GraphRequest("accept", ANSWER))
    assert commands.index(c.StartApp()) > accept_at


def test_caller_hangs_up_during_call_stops_app_and_sends_nothing() -> None:
    call, states, commands = drive(c.incoming(), *HAPPY_INCOMING, c.RemoteTerminated("completed"))
    assert states[-1] is S.ENDED
    assert call.outcome is Outcome.COMPLETED
    tail = commands[commands.index(c.Notify("answered")) + 1 :]
    assert tail == [
        c.StopApp(),
        c.CloseMedia(),
        c.Notify("ended"),
        c.Finish(Outcome.COMPLETED, "remote completed"),
    ]


@pytest.mark.parametrize(
    ("failure_point", "event"),
    [
        (1, c.LocalSdpFailed("bad offer")),
        (2, c.GraphFailed("pre_accept", "graph 100", code=100)),
        (3, c.MediaFailed("ice timeout")),
        (4, c.GraphFailed("accept", "graph 138007", code=138007)),
    ],
)
def test_any_failure_before_accept_rejects(failure_point: int, event: c.Event) -> None:
    call, states, commands = drive(
        c.incoming(), *HAPPY_INCOMING[:failure_point], event, c.GraphDone("reject")
    )
    assert states[-2:] == [S.REJECTING, S.ENDED]
    assert graph_actions(commands)[-1] == "reject"
    assert "terminate" not in graph_actions(commands)
    assert c.StartApp() not in commands
    assert call.outcome is Outcome.REJECTED


def test_reject_that_fails_still_ends_the_call() -> None:
    call, states, _ = drive(
        c.incoming(), c.Offered(OFFER), c.LocalSdpFailed("x"), c.GraphFailed("reject", "timeout")
    )
    assert states[-1] is S.ENDED
    assert call.outcome is Outcome.REJECTED


def test_caller_hangs_up_while_ringing_is_abandoned_without_reject() -> None:
    call, _, commands = drive(
        c.incoming(), c.Offered(OFFER), c.LocalSdpReady(ANSWER), c.RemoteTerminated("failed")
    )
    assert call.outcome is Outcome.ABANDONED
    assert graph_actions(commands) == ["pre_accept"]


def test_hangup_while_accept_in_flight_waits_then_terminates() -> None:
    call, states, commands = drive(
        c.incoming(),
        *HAPPY_INCOMING[:4],
        c.HangupRequested("drain"),
        c.GraphDone("accept"),
        c.GraphDone("terminate"),
    )
    assert states[4:] == [S.ACCEPTING, S.ACCEPTING, S.TERMINATING, S.ENDED]
    assert graph_actions(commands) == ["pre_accept", "accept", "terminate"]
    assert c.StartApp() not in commands
    assert call.outcome is Outcome.COMPLETED
    assert call.end_reason == "drain"


def test_hangup_while_pre_accept_in_flight_rejects_after_it() -> None:
    _, states, commands = drive(
        c.incoming(), *HAPPY_INCOMING[:2], c.HangupRequested("drain"), c.GraphDone("pre_accept")
    )
    assert states[-1] is S.REJECTING
    assert graph_actions(commands) == ["pre_accept", "reject"]


def test_hangup_while_waiting_for_media_rejects_and_late_media_is_ignored() -> None:
    call, states, commands = drive(
        c.incoming(),
        *HAPPY_INCOMING[:3],
        c.HangupRequested("drain"),
        c.MediaConnected(),
        c.GraphDone("reject"),
    )
    assert states[-3:] == [S.REJECTING, S.REJECTING, S.ENDED]
    assert graph_actions(commands) == ["pre_accept", "reject"]
    assert call.outcome is Outcome.REJECTED


LOST = c.MediaLost("media ended: failed")


@pytest.mark.parametrize(
    ("events", "ending"),
    [
        ((c.Offered(OFFER), LOST, c.LocalSdpReady(ANSWER)), "reject"),  # the answer being made
        ((*HAPPY_INCOMING[:2], LOST, c.GraphDone("pre_accept")), "reject"),  # pre_accept in flight
        ((*HAPPY_INCOMING[:3], LOST), "reject"),  # pre-accepted, waiting for media
        ((*HAPPY_INCOMING[:4], LOST, c.GraphDone("accept")), "terminate"),  # accept in flight
    ],
)
def test_media_ending_before_the_call_is_active_ends_it_without_a_crash(
    events: tuple[c.Event, ...], ending: str
) -> None:
    """The phone gives up (or ICE fails) before the call is active: the call ends as a hang-up would, once
    the request in flight settled (a drill found MediaLost in awaiting_media crashing the session)."""
    call, _, commands = drive(c.incoming(), *events)
    assert graph_actions(commands)[-1] == ending
    call, _ = c.step(call, c.GraphDone(ending))
    assert call.state is S.ENDED
    assert c.StartApp() not in commands


def test_watchdog_ends_a_silent_call_with_terminate() -> None:
    call, _, commands = drive(
        c.incoming(),
        *HAPPY_INCOMING,
        c.MediaLost("no inbound audio for 10 s"),
        c.AppFinished(),
        c.GraphDone("terminate"),
    )
    assert graph_actions(commands)[-1] == "terminate"
    assert call.end_reason == "no inbound audio for 10 s"


def test_graph_result_for_another_action_is_illegal() -> None:
    call, _ = c.step(c.incoming(), c.Offered(OFFER))
    call, _ = c.step(call, c.LocalSdpReady(ANSWER))
    with pytest.raises(c.IllegalTransition):
        c.step(call, c.GraphDone("accept"))


def test_illegal_transition_raises() -> None:
    with pytest.raises(c.IllegalTransition):
        c.step(c.incoming(), c.MediaConnected())


def test_ended_call_absorbs_everything() -> None:
    call, _, _ = drive(c.incoming(), c.Offered(OFFER), c.RemoteTerminated("failed"))
    for event in (c.GraphDone("pre_accept"), c.MediaConnected(), c.AppFinished(), c.HangupRequested("x")):
        assert c.step(call, event) == (call, [])


# ------------------------------------------------------------------------------------------------ outgoing
HAPPY_OUTGOING = (
    c.Dialed(),
    c.LocalSdpReady(OFFER),
    c.GraphDone("connect", call_id="wacid.1"),
    c.CalleeStatus("ringing"),
    c.CalleeStatus("accepted"),
    c.AnswerReceived(ANSWER),
    c.MediaConnected(),
)


def test_outgoing_call_answered_and_caller_side_ends_it() -> None:
    call, states, commands = drive(c.outgoing(), *HAPPY_OUTGOING, c.RemoteTerminated("completed"))
    assert states == [
        S.DIALING,
        S.DIALING,
        S.CONNECTING,
        S.RINGING,
        S.RINGING,
        S.RINGING,
        S.AWAITING_MEDIA,
        S.ACTIVE,
        S.ENDED,
    ]
    assert [cmd.event for cmd in commands if isinstance(cmd, c.Notify)] == [
        "dialed",
        "ringing",
        "answered",
        "ended",
    ]
    assert graph_actions(commands) == ["connect"]
    assert c.ApplyAnswer(ANSWER) in commands
    assert call.outcome is Outcome.COMPLETED


def test_outgoing_answer_before_connect_response_is_not_lost() -> None:
    # The session buffers mailbox events until the connect response names the call (ownership claims it
    # only then), so the machine sees them in order; a status arriving in CONNECTING carries no news.
    assert (S.CONNECTING, c.CalleeStatus) in c.IGNORED


def test_outgoing_rejected_by_callee() -> None:
    call, _, commands = drive(c.outgoing(), *HAPPY_OUTGOING[:4], c.CalleeStatus("rejected"))
    assert call.outcome is Outcome.DECLINED
    assert graph_actions(commands) == ["connect"]


def test_outgoing_unanswered() -> None:
    call, _, _ = drive(c.outgoing(), *HAPPY_OUTGOING[:4], c.RemoteTerminated("failed"))
    assert call.outcome is Outcome.UNANSWERED


def test_outgoing_connect_refused_sends_nothing_more() -> None:
    call, _, commands = drive(
        c.outgoing(),
        c.Dialed(),
        c.LocalSdpReady(OFFER),
        c.GraphFailed("connect", "no permission", code=138006),
    )
    assert call.outcome is Outcome.FAILED
    assert call.end_reason == "no permission"
    assert graph_actions(commands) == ["connect"]


def test_outgoing_media_failure_terminates_as_failed() -> None:
    call, _, commands = drive(
        c.outgoing(), *HAPPY_OUTGOING[:6], c.MediaFailed("dtls timeout"), c.GraphDone("terminate")
    )
    assert graph_actions(commands) == ["connect", "terminate"]
    assert call.outcome is Outcome.FAILED


def test_outgoing_hangup_during_connect_terminates_once_id_known() -> None:
    call, _, commands = drive(
        c.outgoing(),
        c.Dialed(),
        c.LocalSdpReady(OFFER),
        c.HangupRequested("api"),
        c.GraphDone("connect", call_id="wacid.2"),
        c.GraphDone("terminate"),
    )
    assert graph_actions(commands) == ["connect", "terminate"]
    assert call.state is S.ENDED


def test_outgoing_hangup_before_offer_cancels() -> None:
    call, _, commands = drive(c.outgoing(), c.Dialed(), c.HangupRequested("api"), c.LocalSdpReady(OFFER))
    assert call.outcome is Outcome.CANCELLED
    assert graph_actions(commands) == []


def test_every_ended_history_sends_or_receives_an_end() -> None:
    """Invariant: a call that ended after talking to Meta sent reject or terminate, or received terminate."""
    histories = [
        (c.incoming(), (*HAPPY_INCOMING, c.AppFinished(), c.GraphDone("terminate"))),
        (c.incoming(), (*HAPPY_INCOMING[:3], c.MediaFailed("x"), c.GraphFailed("reject", "y"))),
        (c.incoming(), (*HAPPY_INCOMING, c.RemoteTerminated("completed"))),
        (c.outgoing(), (*HAPPY_OUTGOING, c.HangupRequested("api"), c.GraphDone("terminate"))),
    ]
    for start, events in histories:
        call, _, commands = drive(start, *events)
        assert call.state is S.ENDED
        sent = set(graph_actions(commands)) & {"reject", "terminate"}
        received = any(isinstance(e, c.RemoteTerminated) for e in events)
        assert sent or received
