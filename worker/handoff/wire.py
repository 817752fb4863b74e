"""What travels between the owners of waiting calls and the agent consoles (pure: msgspec only).

Exchanges (declared by whoever uses them first, idempotent):

* ``callhook.handoff.board`` (fanout): the owners' announcements, :data:`BoardMessage`. Every console (and
  every worker, for positions) binds an exclusive queue and rebuilds its view from them.
* ``callhook.handoff`` (topic): commands for an owner, :data:`Command`; routing key ``call.<call id>`` (bound
  by the call's owner while the call is transferred) or ``query`` (every worker with waiting calls). Replies
  (:data:`Reply`) go to the command's ``reply_to`` queue through the default exchange.
"""

from __future__ import annotations

import msgspec

BOARD_EXCHANGE = "callhook.handoff.board"
COMMAND_EXCHANGE = "callhook.handoff"
QUERY_KEY = "query"


def call_key(call_id: str) -> str:
    return f"call.{call_id}"


class Waiting(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A call waiting for an agent, as its owner describes it."""

    call_id: str
    queue: str
    worker: str  # the owner's id (the console sends its commands to the call, not to the worker)
    enqueued_at: float  # unix seconds: the order of the queue
    user: str  # the caller's number
    user_name: str | None = None
    reason: str = ""  # why the app transferred
    context: dict[str, str] = {}  # what the app passed along
    digits: str = ""  # the keys the app read before the transfer
    deadline: float = 0.0  # unix seconds at which the fallback runs; 0: no maximum wait


# --------------------------------------------------------------------------------------- board messages
class Queued(msgspec.Struct, frozen=True, kw_only=True, tag="queued"):
    entry: Waiting
    ttl_seconds: float


class Taken(msgspec.Struct, frozen=True, kw_only=True, tag="taken"):
    call_id: str
    queue: str
    agent: str


class Left(msgspec.Struct, frozen=True, kw_only=True, tag="left"):
    call_id: str
    queue: str
    why: str  # abandoned | timeout | ended


class Presence(msgspec.Struct, frozen=True, kw_only=True, tag="presence"):
    """A worker's whole list of waiting calls, repeated every heartbeat: the entries' lease."""

    worker: str
    entries: list[Waiting]
    ttl_seconds: float


BoardMessage = Queued | Taken | Left | Presence


# ------------------------------------------------------------------------------------------- commands
class Take(msgspec.Struct, frozen=True, kw_only=True, tag="take"):
    """An agent takes the call and offers its browser's media; the owner answers or refuses."""

    call_id: str
    agent: str
    offer_sdp: str


class Hangup(msgspec.Struct, frozen=True, kw_only=True, tag="hangup"):
    call_id: str
    agent: str


class Hold(msgspec.Struct, frozen=True, kw_only=True, tag="hold"):
    call_id: str
    agent: str
    on: bool


class Query(msgspec.Struct, frozen=True, kw_only=True, tag="query"):
    """Every worker answers with a :class:`Presence` on the board (a console that just started)."""


Command = Take | Hangup | Hold | Query


# -------------------------------------------------------------------------------------------- replies
class Answer(msgspec.Struct, frozen=True, kw_only=True, tag="answer"):
    call_id: str
    sdp: str
    agent: str = ""  # whose command this answers (a console routes replies by call and agent)


class Refused(msgspec.Struct, frozen=True, kw_only=True, tag="refused"):
    call_id: str
    reason: str  # taken | gone | not_allowed | bad_offer
    agent: str = ""  # whose command this answers (a console routes replies by call and agent)


class Ended(msgspec.Struct, frozen=True, kw_only=True, tag="ended"):
    call_id: str
    reason: str
    agent: str = ""  # whose command this answers (a console routes replies by call and agent)


class Quality(msgspec.Struct, frozen=True, kw_only=True, tag="quality"):
    """The call's live quality, both legs, every few seconds while an agent is on it."""

    call_id: str
    caller: dict[str, float | int | None]
    agent_leg: dict[str, float | int | None]
    on_hold: bool = False
    agent: str = ""
    relay_mode: str = ""  # "forwarded" (Opus as it is) or "transcoded" (PCM): worker/handoff/relay.py


Reply = Answer | Refused | Ended | Quality

encoder = msgspec.json.Encoder()
board_decoder: msgspec.json.Decoder[BoardMessage] = msgspec.json.Decoder(BoardMessage)
command_decoder: msgspec.json.Decoder[Command] = msgspec.json.Decoder(Command)
reply_decoder: msgspec.json.Decoder[Reply] = msgspec.json.Decoder(Reply)


class TransferRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What an app asks for with ``call.transfer(queue, reason=..., context=...)``."""

    queue: str
    reason: str = ""
    context: dict[str, str] = {}
    digits: str = ""  # the keys the app read (filled in by the call)
