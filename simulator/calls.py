"""One call as Meta's side sees it: states, the transition table, and the Graph API's rules. Pure.

Theory of operation. A call is *incoming* (the user called: ``USER_INITIATED``) or *outgoing* (the business
called through ``connect``: ``BUSINESS_INITIATED``). Both start ``ringing``. Events come from three places:
the business's Graph API requests (``pre_accept``, ``accept``, ``reject``, ``terminate``), the user's phone
(``phone_accept``, ``phone_reject``, ``phone_hangup``, ``media_timeout``) and Meta's own timers
(``answer_timeout``). :func:`step` looks ``(direction, state, event)`` up in :data:`TRANSITIONS` and
returns the next state with the commands the simulator must run (send a webhook, start or stop the phone's
audio); a missing entry is an illegal transition. :func:`check_graph_action` turns an illegal Graph request
into the :class:`MetaError` Meta would answer with, after checking the action's SDP rules.

Where Meta's documentation is silent the simulator chooses, and says so here:

* a repeated ``pre_accept``/``accept`` with the same SDP succeeds again (a client retrying after a lost
  response must not be punished); with a different SDP it is refused;
* ``terminate`` works on any live call; before anyone answered it cancels the call (terminate ``FAILED``),
  while ``reject`` is refused once the call is accepted;
* a refused action (wrong order, ended call, unknown call) is code 100 with the reason in ``details``;
* ``reject`` of an incoming call is reported as terminate ``FAILED``; the user hanging up before anyone
  answered as terminate ``COMPLETED`` without duration.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from simulator import sdp as sdp_rules
from simulator.errors import invalid_parameter


class Direction(StrEnum):
    INCOMING = "incoming"
    OUTGOING = "outgoing"


class CallState(StrEnum):
    RINGING = "ringing"
    PRE_ACCEPTED = "pre_accepted"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    REJECTED = "rejected"
    FAILED = "failed"


TERMINAL_STATES = frozenset({CallState.COMPLETED, CallState.REJECTED, CallState.FAILED})
LIVE_STATES = frozenset({CallState.RINGING, CallState.PRE_ACCEPTED, CallState.ACCEPTED})


class Event(StrEnum):
    PRE_ACCEPT = "pre_accept"
    ACCEPT = "accept"
    REJECT = "reject"
    TERMINATE = "terminate"
    PHONE_ACCEPT = "phone_accept"
    PHONE_REJECT = "phone_reject"
    PHONE_HANGUP = "phone_hangup"
    ANSWER_TIMEOUT = "answer_timeout"
    NO_MEDIA = "no_media"  # nothing heard within the start-of-call window after accept
    MEDIA_TIMEOUT = "media_timeout"  # silence mid-call
    SHUTDOWN = "shutdown"  # the simulator closes; no webhooks


GRAPH_EVENTS = frozenset({Event.PRE_ACCEPT, Event.ACCEPT, Event.REJECT, Event.TERMINATE})


# Commands: what the simulator must do after a transition.
@dataclass(frozen=True, slots=True)
class SendStatus:
    status: str  # RINGING | ACCEPTED | REJECTED


@dataclass(frozen=True, slots=True)
class SendAnswer:
    """The outgoing call's ``connect`` webhook with the phone's SDP answer, unless it went out already."""


@dataclass(frozen=True, slots=True)
class SendTerminate:
    status: str  # COMPLETED | FAILED
    error_code: int | None = None


@dataclass(frozen=True, slots=True)
class StartTalking:
    """The phone starts playing its test signal and its media timers."""


@dataclass(frozen=True, slots=True)
class EndCall:
    """Stop the phone (close the peer connection) and stop the call's timers."""

    reason: str


Command = SendStatus | SendAnswer | SendTerminate | StartTalking | EndCall

# Error codes Meta puts in terminate webhooks (reference: 138019-138023). Which of them Meta uses for which
# timer is not documented; these are the simulator's choice.
NO_MEDIA_ERROR = 138023
MEDIA_TIMEOUT_ERROR = 138021

_IN = Direction.INCOMING
_OUT = Direction.OUTGOING
_R, _P, _A = CallState.RINGING, CallState.PRE_ACCEPTED, CallState.ACCEPTED


def _ended(reason: str, status: str, error: int | None = None) -> tuple[Command, ...]:
    return (EndCall(reason), SendTerminate(status, error))


TRANSITIONS: dict[tuple[Direction, CallState, Event], tuple[CallState, tuple[Command, ...]]] = {
    # incoming: the business answers through the Graph API
    (_IN, _R, Event.PRE_ACCEPT): (_P, ()),
    (_IN, _P, Event.PRE_ACCEPT): (_P, ()),
    (_IN, _P, Event.ACCEPT): (_A, (StartTalking(),)),
    (_IN, _A, Event.ACCEPT): (_A, ()),
    (_IN, _R, Event.REJECT): (CallState.REJECTED, _ended("business_reject", "FAILED")),
    (_IN, _P, Event.REJECT): (CallState.REJECTED, _ended("business_reject", "FAILED")),
    (_IN, _A, Event.TERMINATE): (CallState.COMPLETED, _ended("business_hangup", "COMPLETED")),
    (_IN, _R, Event.TERMINATE): (CallState.FAILED, _ended("business_cancelled", "FAILED")),
    (_IN, _P, Event.TERMINATE): (CallState.FAILED, _ended("business_cancelled", "FAILED")),
    (_IN, _R, Event.PHONE_HANGUP): (CallState.COMPLETED, _ended("caller_cancelled", "COMPLETED")),
    (_IN, _P, Event.PHONE_HANGUP): (CallState.COMPLETED, _ended("caller_cancelled", "COMPLETED")),
    (_IN, _R, Event.ANSWER_TIMEOUT): (CallState.FAILED, _ended("unanswered", "FAILED")),
    (_IN, _P, Event.ANSWER_TIMEOUT): (CallState.FAILED, _ended("unanswered", "FAILED")),
    # outgoing: the phone answers
    (_OUT, _R, Event.PHONE_ACCEPT): (_A, (SendAnswer(), SendStatus("ACCEPTED"), StartTalking())),
    (_OUT, _R, Event.PHONE_REJECT): (
        CallState.REJECTED,
        (SendStatus("REJECTED"), *_ended("callee_rejected", "FAILED")),
    ),
    (_OUT, _R, Event.ANSWER_TIMEOUT): (CallState.FAILED, _ended("unanswered", "FAILED")),
    (_OUT, _R, Event.TERMINATE): (CallState.FAILED, _ended("business_cancelled", "FAILED")),
    (_OUT, _A, Event.TERMINATE): (CallState.COMPLETED, _ended("business_hangup", "COMPLETED")),
    (_OUT, _R, Event.PHONE_HANGUP): (CallState.FAILED, _ended("callee_rejected", "FAILED")),
}
# Both directions, once connected.
for _direction in Direction:
    TRANSITIONS[(_direction, _A, Event.PHONE_HANGUP)] = (
        CallState.COMPLETED,
        _ended("phone_hangup", "COMPLETED"),
    )
    TRANSITIONS[(_direction, _A, Event.NO_MEDIA)] = (
        CallState.FAILED,
        _ended("no_media", "FAILED", NO_MEDIA_ERROR),
    )
    TRANSITIONS[(_direction, _A, Event.MEDIA_TIMEOUT)] = (
        CallState.FAILED,
        _ended("media_timeout", "FAILED", MEDIA_TIMEOUT_ERROR),
    )
    for _state in LIVE_STATES:
        TRANSITIONS[(_direction, _state, Event.SHUTDOWN)] = (CallState.FAILED, (EndCall("simulator_closed"),))


class IllegalTransition(Exception):
    def __init__(self, direction: Direction, state: CallState, event: Event) -> None:
        self.direction = direction
        self.state = state
        self.event = event
        super().__init__(f"{event} is not possible for an {direction} call that is {state}")


@dataclass(frozen=True, slots=True)
class Transition:
    state: CallState
    commands: tuple[Command, ...]


def step(direction: Direction, state: CallState, event: Event) -> Transition:
    try:
        next_state, commands = TRANSITIONS[(direction, state, event)]
    except KeyError:
        raise IllegalTransition(direction, state, event) from None
    return Transition(next_state, commands)


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What the Graph API rules need to know about a call."""

    call_id: str
    direction: Direction
    state: CallState
    answer_sdp: str | None  # the SDP of the first pre_accept


def check_graph_action(call: CallFacts, action: Event, session: object) -> Transition:
    """Meta's rules for a calls action on an existing call; the transition to apply, or :class:`MetaError`."""
    if action in (Event.PRE_ACCEPT, Event.ACCEPT):
        sdp = session_sdp(session, "answer")
        if call.answer_sdp is not None and sdp != call.answer_sdp:
            raise invalid_parameter(f"{action} must carry the same SDP as the first pre_accept of the call")
    try:
        return step(call.direction, call.state, action)
    except IllegalTransition:
        raise invalid_parameter(_refusal(call, action)) from None


def session_sdp(session: object, sdp_type: sdp_rules.Role) -> str:
    """The SDP of a request's ``session``, checked by Meta's rules for ``sdp_type``, or :class:`MetaError`."""
    if not isinstance(session, dict):
        raise invalid_parameter(f"session is required: {{sdp_type: '{sdp_type}', sdp}}")
    if session.get("sdp_type") != sdp_type:
        raise invalid_parameter(f"session.sdp_type must be '{sdp_type}'")
    sdp = session.get("sdp")
    sdp_rules.validate(sdp, role=sdp_type)
    assert isinstance(sdp, str)  # validate() refused anything else
    return sdp


def _refusal(call: CallFacts, action: Event) -> str:
    if call.state in TERMINAL_STATES:
        return f"call {call.call_id} has already ended ({call.state})"
    if call.direction is Direction.OUTGOING and action in (Event.PRE_ACCEPT, Event.ACCEPT, Event.REJECT):
        return f"{action} applies to user-initiated calls; {call.call_id} was placed by the business"
    if action is Event.ACCEPT:
        return f"call {call.call_id} must be pre-accepted before accept"
    if action is Event.REJECT:
        return f"call {call.call_id} is already accepted: use terminate"
    return f"{action} is not possible while call {call.call_id} is {call.state}"
