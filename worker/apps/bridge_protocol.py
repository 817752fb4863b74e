"""What the bridge and an agent say to each other, independent of the wire protocol (pure: no I/O, no loop).

Each wire protocol (:mod:`worker.apps.bridge_twilio`, :mod:`worker.apps.bridge_pcm`) is an
:class:`AgentStream`: the state of one call's stream, turning the call's facts and audio into messages for
the agent and the agent's messages into :data:`AgentEvent` values. The bridge (:mod:`worker.apps.bridge`) does
the I/O and never looks inside a message.

Messages to the agent are ``bytes``; control messages are always WebSocket *text* frames (UTF-8 JSON), audio
is text or binary as the protocol says (:attr:`AgentStream.audio_is_text`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from worker.apps.api import Digit


@dataclass(frozen=True, slots=True)
class AgentAudio:
    """Audio to play to the caller: mono 16-bit PCM at the stream's :attr:`AgentStream.sample_rate`."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class AgentMark:
    """Report ``name`` back once the audio the agent sent before it has been played."""

    name: str


@dataclass(frozen=True, slots=True)
class AgentClear:
    """Drop the agent's audio not yet played (barge-in); pending marks are reported back at once."""


@dataclass(frozen=True, slots=True)
class AgentIgnored:
    """A message the bridge does not act on (unknown event, malformed); ``reason`` is for logs and counts."""

    reason: str


@dataclass(frozen=True, slots=True)
class AgentTransfer:
    """Hand the caller to a person waiting in ``queue`` (worker/handoff): the agent's stream ends."""

    queue: str
    reason: str = ""
    context: dict[str, str] = field(default_factory=dict)


AgentEvent = AgentAudio | AgentMark | AgentClear | AgentIgnored | AgentTransfer


class StopReason:
    CALL_ENDED = "call_ended"  # the caller hung up, or the call was ended on the business side
    NOT_ANSWERED = "not_answered"  # prepared for a call that was then rejected or abandoned before accept
    TRANSFERRED = "transferred"  # the agent handed the caller to a person (pcm ``transfer``)


class AgentStream(Protocol):
    """One call's stream in one wire protocol."""

    @property
    def sample_rate(self) -> int:
        """The rate of the audio on the wire, both ways."""
        ...

    @property
    def audio_is_text(self) -> bool:
        """Whether :meth:`audio` messages go in text frames (else binary)."""
        ...

    def opening(self) -> list[bytes]:
        """The messages that open the stream, before any audio."""
        ...

    def audio(self, pcm: bytes) -> bytes:
        """One 20 ms frame of the caller's audio (mono 16-bit PCM at :attr:`sample_rate`)."""
        ...

    def mark(self, name: str, *, cleared: bool) -> bytes:
        """The agent's mark ``name`` played (or dropped by a clear when ``cleared``)."""
        ...

    def dtmf(self, digit: Digit) -> bytes | None:
        """The caller pressed a key (a text message); None when the protocol has no message for it."""
        ...

    def stop(self, reason: str) -> bytes:
        """The last message: the stream ends (one of :class:`StopReason`)."""
        ...

    def decode_text(self, text: str | bytes) -> AgentEvent: ...

    def decode_binary(self, data: bytes) -> AgentEvent: ...
