"""The life of one call as a pure state machine: events in, commands out, no I/O.

Theory of operation
-------------------
A call's session (``worker/session.py``) owns the I/O: the aiortc peer connection, the Graph API requests, the
app. It never decides anything. It feeds every fact it learns into :func:`step` as an *event* (an SDP was
made, a Graph request succeeded or failed, media connected, the app returned, Meta said the call ended) and
executes the *commands* it gets back, in order. The outcome of each command comes back as a later event.

Transitions are data: :data:`TRANSITIONS` maps ``(state, event type)`` to a small function. A pair that is not
in the table is an illegal transition and raises :class:`IllegalTransition`, except for the events listed in
:data:`IGNORED`, which may legitimately arrive late (a watchdog firing while we are already hanging up).

Incoming (user-initiated)::

    OFFERED ─Offered→ ANSWERING ─LocalSdpReady→ PRE_ACCEPTING ─GraphDone→ AWAITING_MEDIA
        ─MediaConnected→ ACCEPTING ─GraphDone→ ACTIVE ─AppFinished|MediaLost|HangupRequested→ TERMINATING
        ─GraphDone|GraphFailed→ ENDED
    any failure before ACCEPTING completes → REJECTING → ENDED  (Meta must hear "reject")
    RemoteTerminated anywhere → ENDED (Meta already knows; nothing to send)

Outgoing (business-initiated)::

    DIALING ─LocalSdpReady→ CONNECTING ─GraphDone(call_id)→ RINGING ─AnswerReceived→ AWAITING_MEDIA
        ─MediaConnected→ ACTIVE → TERMINATING → ENDED
    CONNECTING ─GraphFailed→ ENDED (no call exists, nothing to end; ``connect`` is never retried here)
    RINGING ─CalleeStatus(rejected)→ ENDED (a terminate webhook follows; Meta ended it)

A hang-up asked for while a Graph request is in flight is remembered (``hangup_reason``) and acted on when the
request's outcome is known: before ``accept`` succeeded the call is rejected, after it, terminated.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

Direction = Literal["incoming", "outgoing"]


class CallState(enum.Enum):
    OFFERED = "offered"
    ANSWERING = "answering"
    PRE_ACCEPTING = "pre_accepting"
    DIALING = "dialing"
    CONNECTING = "connecting"
    RINGING = "ringing"
    AWAITING_MEDIA = "awaiting_media"
    ACCEPTING = "accepting"
    ACTIVE = "active"
    REJECTING = "rejecting"
    TERMINATING = "terminating"
    ENDED = "ended"


class Outcome(enum.Enum):
    COMPLETED = "completed"  # answered, then ended by either side
    REJECTED = "rejected"  # we rejected an incoming call (failure before accept, drain, stale)
    ABANDONED = "abandoned"  # the caller hung up (or Meta ended it) before we accepted
    DECLINED = "declined"  # the callee rejected our outgoing call
    UNANSWERED = "unanswered"  # our outgoing call ended without being answered
    FAILED = "failed"  # could not be placed or media never came up
    CANCELLED = "cancelled"  # our outgoing call was hung up before Meta gave it an id


class IllegalTransition(Exception):
    """An event arrived that the call's current state does not allow (a bug, never bad input)."""


# ---------------------------------------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class Offered:
    """An incoming call's offer was claimed by this worker."""

    offer_sdp: str


@dataclass(frozen=True, slots=True)
class Dialed:
    """An outgoing call was taken by this worker."""


@dataclass(frozen=True, slots=True)
class LocalSdpReady:
    sdp: str


@dataclass(frozen=True, slots=True)
class LocalSdpFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class GraphDone:
    action: str
    call_id: str | None = None  # set by ``connect``


@dataclass(frozen=True, slots=True)
class GraphFailed:
    action: str
    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True)
class MediaConnected:
    pass


@dataclass(frozen=True, slots=True)
class MediaFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class AnswerReceived:
    """The callee's SDP answer (the ``connect`` webhook of an outgoing call)."""

    sdp: str


@dataclass(frozen=True, slots=True)
class CalleeStatus:
    status: str  # ringing | accepted | rejected (lower case)


@dataclass(frozen=True, slots=True)
class AppFinished:
    error: str | None = None


@dataclass(frozen=True, slots=True)
class MediaLost:
    reason: str


@dataclass(frozen=True, slots=True)
class RemoteTerminated:
    status: str
    error_code: int | None = None


@dataclass(frozen=True, slots=True)
class HangupRequested:
    reason: str


Event = (
    Offered
    | Dialed
    | LocalSdpReady
    | LocalSdpFailed
    | GraphDone
    | GraphFailed
    | MediaConnected
    | MediaFailed
    | AnswerReceived
    | CalleeStatus
    | AppFinished
    | MediaLost
    | RemoteTerminated
    | HangupRequested
)


# -------------------------------------------------------------------------------------------------- commands
@dataclass(frozen=True, slots=True)
class CreateAnswer:
    offer_sdp: str


@dataclass(frozen=True, slots=True)
class CreateOffer:
    pass


@dataclass(frozen=True, slots=True)
class ApplyAnswer:
    sdp: str


@dataclass(frozen=True, slots=True)
class GraphRequest:
    action: Literal["pre_accept", "accept", "reject", "terminate", "connect"]
    sdp: str | None = None


@dataclass(frozen=True, slots=True)
class WaitMedia:
    pass


@dataclass(frozen=True, slots=True)
class StartApp:
    """Media may flow now (accept returned 200): start sending audio and run the call's app."""


@dataclass(frozen=True, slots=True)
class StopApp:
    pass


@dataclass(frozen=True, slots=True)
class CloseMedia:
    pass


@dataclass(frozen=True, slots=True)
class Notify:
    """A lifecycle event for integrators: dialed, ringing, answered, ended."""

    event: Literal["dialed", "ringing", "answered", "ended"]


@dataclass(frozen=True, slots=True)
class Finish:
    """The call is over: record its outcome and release it."""

    outcome: Outcome
    reason: str


Command = (
    CreateAnswer
    | CreateOffer
    | ApplyAnswer
    | GraphRequest
    | WaitMedia
    | StartApp
    | StopApp
    | CloseMedia
    | Notify
    | Finish
)


# ------------------------------------------------------------------------------------------------ the call
@dataclass(frozen=True, slots=True)
class Call:
    direction: Direction
    state: CallState
    local_sdp: str | None = None
    answered: bool = False  # accept succeeded (incoming) or media connected after the callee accepted
    app_running: bool = False
    hangup_reason: str | None = None  # a hang-up that waits for an in-flight request's outcome
    outcome: Outcome | None = None
    end_reason: str | None = None


def incoming() -> Call:
    return Call(direction="incoming", state=CallState.OFFERED)


def outgoing() -> Call:
    return Call(direction="outgoing", state=CallState.DIALING)


Transition = Callable[[Call, Event], tuple[Call, list[Command]]]


def step(call: Call, event: Event) -> tuple[Call, list[Command]]:
    """Apply one event; return the new call and the commands to run, in order."""
    transition = TRANSITIONS.get((call.state, type(event)))
    if transition is None:
        if (call.state, type(event)) in IGNORED or call.state is CallState.ENDED:
            return call, []
        raise IllegalTransition(f"{type(event).__name__} in state {call.state.value}")
    return transition(call, event)


# ------------------------------------------------------------------------------------------- transitions
def _to(call: Call, state: CallState, **changes: object) -> Call:
    return replace(call, state=state, **changes)  # type: ignore[arg-type]


def _teardown(call: Call) -> list[Command]:
    commands: list[Command] = [StopApp()] if call.app_running else []
    return [*commands, CloseMedia()]


def _end(call: Call, outcome: Outcome, reason: str) -> tuple[Call, list[Command]]:
    ended = _to(call, CallState.ENDED, outcome=outcome, end_reason=reason, app_running=False)
    torn_down = call.state in (CallState.REJECTING, CallState.TERMINATING)
    return ended, [*([] if torn_down else _teardown(call)), Notify("ended"), Finish(outcome, reason)]


def _reject(call: Call, reason: str) -> tuple[Call, list[Command]]:
    rejecting = _to(call, CallState.REJECTING, end_reason=reason)
    return rejecting, [CloseMedia(), GraphRequest("reject")]


def _terminate(call: Call, reason: str) -> tuple[Call, list[Command]]:
    terminating = _to(call, CallState.TERMINATING, end_reason=reason, app_running=False)
    return terminating, [*_teardown(call), GraphRequest("terminate")]


def _hang_up(call: Call, reason: str) -> tuple[Call, list[Command]]:
    """End the call from our side by whichever request Meta expects in this state."""
    if call.answered or call.direction == "outgoing":
        return _terminate(call, reason)
    return _reject(call, reason)


def _expect(event: GraphDone | GraphFailed, action: str) -> None:
    if event.action != action:
        raise IllegalTransition(f"result of {event.action} while waiting for {action}")


# incoming
def _offered(call: Call, event: Event) -> tuple[Call, list[Command]]:
    assert isinstance(event, Offered)
    return _to(call, CallState.ANSWERING), [Notify("ringing"), CreateAnswer(event.offer_sdp)]


def _answer_ready(call: Call, event: Event) -> tuple[Call, list[Command]]:
    assert isinstance(event, LocalSdpReady)
    if call.hangup_reason is not None:
        return _reject(call, call.hangup_reason)
    pre_accepting = _to(call, CallState.PRE_ACCEPTING, local_sdp=event.sdp)
    return pre_accepting, [GraphRequest("pre_accept", event.sdp)]


def _sdp_failed(call: Call, event: Event) -> tuple[Call, list[Command]]:
    assert isinstance(event, LocalSdpFailed)
    if call.direction == "outgoing":
        return _end(call, Outcome.FAILED, event.reason)
    return _reject(call, event.reason)


def _pre_accepted(call: Call, event: Event) -> tuple[Call, list[Command]]:
    assert isinstance(event, GraphDone)
    _expect(event, "pre_accept")
    if call.hangup_reason is not None:
        return _reject(call, call.hangup_reason)
    return _to(call, CallState.AWAITING_MEDIA), [WaitMedia()]


def _failed_before_accept(call: Call, event: Event) -> tuple[Call, list[Command]]:
    assert isinstance(event, GraphFailed | MediaFailed)
    if isinstance(event, GraphFailed):
        _expect(event, "pre_accept" if call.state is CallState.PRE_ACCEPTING else "accept")
    return _reject(call, event.reason)


def _media_connected(call: Call, event: Event) -> tuple[Call, list[Command]]:
    if call.direction == "outgoing":
        active = _to(call, CallState.ACTIVE, answered=True, app_running=True)
        return active, [StartApp(), Notify("answered")]
    return _to(call, CallState.ACCEPTING), [GraphRequest("accept", call.local_sdp)]


def _accepted(call: Call, event: Event) -> tuple[Call, list[Command]]:
    assert isinstance(event, GraphDone)
    _expect(event, "accept")
    if call.hangup_reason is not None:
        return _terminate(_to(call, call.state, answered=True), call.hangup_reason)
    active = _to(call, CallState.ACTIVE, answered=True, app_running=True)
    return active, [StartApp(), Notify("answered")]


# outgoing
def _dialed(call: Call, event: Event) -> tuple[Call, list[Command]]:
    return call, [CreateOffer()]


def _offer_ready(call: Call, event: Event) -> tuple[Call, list[Command]]:
    assert isinstance(event, LocalSdpReady)
    if call.hangup_reason is not None:
        return _end(call, Outcome.CANCELLED, call.hangup_reason)
    connecting = _to(call, CallState.CONNECTING, local_sdp=event.sdp)
    return connecting, [GraphRequest("connect", event.sdp)]


def _connected(call: Call, event: Event) -> tuple[Call, list[Command]]:
    assert isinstance(event, GraphDone)
    _expect(event, "connect")
    if call.hangup_reason is not None:
        return _terminate(call, call.hangup_reason)
    return _to(call, CallState.RINGING), [Notify("dialed")]


def _connect_failed(call: Call, event: Event) -> tuple[Call, list[Command]]:
    assert isinstance(event, GraphFailed)
    _expect(event, "connect")
    return _end(call, Outcome.FAILED, event.reason)


def _callee_status(call: Call, event: Event) -> tuple[Call, list[Command]]:
    assert isinstance(event, CalleeStatus)
    if event.status == "ringing":
        return call, [Notify("ringing")]
    if event.status == "rejected":
        return _end(call, Outcome.DECLINED, "callee rejected")
    return call, []  # accepted: the answer SDP (connect webhook) is what moves the call on


def _answer_received(call: Call, event: Event) -> tuple[Call, list[Command]]:
    assert isinstance(event, AnswerReceived)
    return _to(call, CallState.AWAITING_MEDIA), [ApplyAnswer(event.sdp), WaitMedia()]


def _outgoing_media_failed(call: Call, event: Event) -> tuple[Call, list[Command]]:
    assert isinstance(event, MediaFailed)
    terminating, commands = _terminate(call, event.reason)
    return replace(terminating, outcome=Outcome.FAILED), commands


# either direction
def _app_finished(call: Call, event: Event) -> tuple[Call, list[Command]]:
    assert isinstance(event, AppFinished)
    reason = "app hung up" if event.error is None else f"app failed: {event.error}"
    return _terminate(replace(call, app_running=False), reason)


def _media_lost(call: Call, event: Event) -> tuple[Call, list[Command]]:
    assert isinstance(event, MediaLost)
    return _terminate(call, event.reason)


def _hangup_requested(call: Call, event: Event) -> tuple[Call, list[Command]]:
    assert isinstance(event, HangupRequested)
    if call.state in _REQUEST_IN_FLIGHT:
        return replace(call, hangup_reason=call.hangup_reason or event.reason), []
    return _hang_up(call, event.reason)


def _remote_terminated(call: Call, event: Event) -> tuple[Call, list[Command]]:
    assert isinstance(event, RemoteTerminated)
    reason = f"remote {event.status}" + (f" (code {event.error_code})" if event.error_code else "")
    if call.outcome is not None:  # we were already ending it with a known outcome
        return _end(call, call.outcome, call.end_reason or reason)
    if call.state is CallState.REJECTING:
        return _end(call, Outcome.REJECTED, call.end_reason or reason)
    if call.answered:
        return _end(call, Outcome.COMPLETED, reason)
    if call.direction == "outgoing":
        return _end(call, Outcome.UNANSWERED, reason)
    return _end(call, Outcome.ABANDONED, reason)


def _request_settled(call: Call, event: Event) -> tuple[Call, list[Command]]:
    """The reject or terminate we sent came back; success or not, the call is over for us."""
    assert isinstance(event, GraphDone | GraphFailed)
    _expect(event, "reject" if call.state is CallState.REJECTING else "terminate")
    reason = call.end_reason or "ended"
    if call.outcome is not None:
        return _end(call, call.outcome, reason)
    if call.state is CallState.REJECTING:
        return _end(call, Outcome.REJECTED, reason)
    return _end(call, Outcome.COMPLETED if call.answered else Outcome.UNANSWERED, reason)


S = CallState
# A hang-up waits in these states: a request whose outcome decides between reject and terminate is in flight.
_REQUEST_IN_FLIGHT = frozenset({S.ANSWERING, S.PRE_ACCEPTING, S.ACCEPTING, S.DIALING, S.CONNECTING})
_LIVE = frozenset(set(S) - {S.ENDED})

TRANSITIONS: dict[tuple[CallState, type], Transition] = {
    (S.OFFERED, Offered): _offered,
    (S.ANSWERING, LocalSdpReady): _answer_ready,
    (S.ANSWERING, LocalSdpFailed): _sdp_failed,
    (S.PRE_ACCEPTING, GraphDone): _pre_accepted,
    (S.PRE_ACCEPTING, GraphFailed): _failed_before_accept,
    (S.AWAITING_MEDIA, MediaConnected): _media_connected,
    (S.ACCEPTING, GraphDone): _accepted,
    (S.ACCEPTING, GraphFailed): _failed_before_accept,
    (S.DIALING, Dialed): _dialed,
    (S.DIALING, LocalSdpReady): _offer_ready,
    (S.DIALING, LocalSdpFailed): _sdp_failed,
    (S.CONNECTING, GraphDone): _connected,
    (S.CONNECTING, GraphFailed): _connect_failed,
    (S.RINGING, CalleeStatus): _callee_status,
    (S.RINGING, AnswerReceived): _answer_received,
    (S.ACTIVE, AppFinished): _app_finished,
    (S.ACTIVE, MediaLost): _media_lost,
    (S.REJECTING, GraphDone): _request_settled,
    (S.REJECTING, GraphFailed): _request_settled,
    (S.TERMINATING, GraphDone): _request_settled,
    (S.TERMINATING, GraphFailed): _request_settled,
}
# Media failing while we wait for it: incoming calls are rejected, outgoing ones (already accepted by the
# callee) terminated.
TRANSITIONS[(S.AWAITING_MEDIA, MediaFailed)] = lambda call, event: (
    _outgoing_media_failed(call, event)
    if call.direction == "outgoing"
    else _failed_before_accept(call, event)
)


def _media_lost_early(call: Call, event: Event) -> tuple[Call, list[Command]]:
    """The media ended before the call was active (the phone gave up, ICE failed): while waiting for it, as
    if it had failed; with a request in flight, the call ends once that request settled (as a hang-up
    would); else at once."""
    assert isinstance(event, MediaLost)
    if call.state is CallState.AWAITING_MEDIA:
        failed = MediaFailed(event.reason)
        if call.direction == "outgoing":
            return _outgoing_media_failed(call, failed)
        return _failed_before_accept(call, failed)
    if call.state in _REQUEST_IN_FLIGHT:
        return replace(call, hangup_reason=call.hangup_reason or event.reason), []
    return _hang_up(call, event.reason)


for _state in _LIVE - {S.ACTIVE, S.REJECTING, S.TERMINATING}:
    TRANSITIONS[(_state, MediaLost)] = _media_lost_early
for _state in _LIVE:
    TRANSITIONS[(_state, RemoteTerminated)] = _remote_terminated
    if _state not in (S.REJECTING, S.TERMINATING):
        TRANSITIONS[(_state, HangupRequested)] = _hangup_requested

# Late arrivals that carry no news in these states (e.g. the app returning because we stopped it).
IGNORED: frozenset[tuple[CallState, type]] = frozenset(
    {
        (s, e)
        for s in (S.REJECTING, S.TERMINATING)
        for e in (AppFinished, MediaLost, MediaFailed, MediaConnected, HangupRequested)
    }
    | {(s, CalleeStatus) for s in (S.CONNECTING, S.AWAITING_MEDIA, S.ACTIVE, S.TERMINATING)}
    | {(s, AnswerReceived) for s in (S.AWAITING_MEDIA, S.ACTIVE, S.TERMINATING)}
)
