"""What a call's app sees: ``async def app(call: Call) -> None``.

An app gets the call's facts (:class:`CallInfo`), the caller's audio as an async iterator of 20 ms frames of
16-bit mono PCM, a way to send PCM back, the caller's keypad (:meth:`Call.dtmf`, :meth:`Call.collect_digits`)
and :meth:`Call.hangup`. It runs after ``accept`` succeeded, in its own task; when it returns the call is hung
up, and when the call ends for any other reason the frames and digits iterators end (and the app's task may
be cancelled). Audio queued with :meth:`Call.send` is played in order, paced in real time; silence is sent
while nothing is queued.

:class:`MediaCall` is the implementation the worker's session uses: a :class:`CallInfo`, the call's media
(anything shaped like :class:`AudioPort`, i.e. ``worker.media.MediaSession``), the session's hang-up and the
call's keypad (:class:`DigitSource`, i.e. ``worker.media.keypad.Keypad``). This module stays light (no
aiortc) so apps and their tests can import it alone.

Keypad digits (RFC 4733 telephone events, decoded by ``worker.media.dtmf``) are not audio: a key press is
never in :meth:`Call.frames`. They are buffered from the moment the call's media exists until read, so a key
pressed while a menu plays is there when the app asks; each digit is read once, by whichever of
:meth:`Call.dtmf` and :meth:`Call.collect_digits` takes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from worker.errors import CallhookError
from worker.events import CallConnect
from worker.handoff.wire import TransferRequest
from worker.media.dtmf import Digit

__all__ = [
    "App",
    "AudioPort",
    "Call",
    "CallEnded",
    "CallInfo",
    "Digit",
    "DigitSource",
    "Direction",
    "MediaCall",
    "collect_digits",
]

Direction = Literal["incoming", "outgoing"]


class CallEnded(CallhookError):
    """The call is over: raised by :meth:`Call.send` once nobody can hear it any more."""


@dataclass(frozen=True, slots=True)
class CallInfo:
    """Who is on the call. Numbers are as Meta wrote them (wa ids, digits without "+").

    Since 2026 a WhatsApp user may have a username and no phone number visible to the business: then
    ``user_number`` is "" and ``user_id`` (the business-scoped user id, BSUID) says who it is. Never assume a
    number: :attr:`user_ref` (and :attr:`caller_id`) is whichever of the two exists."""

    call_id: str
    phone_number_id: str  # the business number's Graph API id
    direction: Direction
    user_number: str  # the WhatsApp user: the caller of an incoming call, the callee of an outgoing one
    user_name: str | None = None  # the user's profile name, when Meta sent it
    business_number: str = ""  # the business's display number, when known
    biz_opaque_callback_data: str | None = None
    user_id: str | None = None  # the user's BSUID, when Meta sent it
    username: str | None = None  # the user's WhatsApp username, when Meta sent it
    parent_user_id: str | None = None
    # Meta's recording/transcription of this call (worker/capture.py), None: neither
    capture: CaptureView | None = None

    @property
    def user_ref(self) -> str:
        """The user's phone number, else their user id: what ``to``/``recipient`` needs to reach them."""
        return self.user_number or self.user_id or ""

    @property
    def caller_user_id(self) -> str | None:
        return self.user_id if self.direction == "incoming" else None

    @property
    def caller_username(self) -> str | None:
        return self.username if self.direction == "incoming" else None

    @property
    def caller_id(self) -> str:
        """The caller's phone number, else their user id (incoming), the business number (outgoing)."""
        return self.user_ref if self.direction == "incoming" else self.business_number

    @property
    def announced(self) -> bool:
        """Meta plays a consent announcement to both parties first (a few seconds, docs/platform-2026.md)."""
        return self.capture is not None and self.capture.announced

    @property
    def caller(self) -> str:
        return self.user_number if self.direction == "incoming" else self.business_number

    @property
    def callee(self) -> str:
        return self.business_number if self.direction == "incoming" else self.user_number

    @classmethod
    def from_connect(cls, event: CallConnect) -> CallInfo:
        incoming = event.direction == "incoming"
        return cls(
            call_id=event.call_id,
            phone_number_id=event.phone_number_id,
            direction=event.direction,
            user_number=event.caller if incoming else event.callee,
            user_name=event.contact_name,
            business_number=(event.callee if incoming else event.caller) or event.display_phone_number,
            biz_opaque_callback_data=event.biz_opaque_callback_data,
            user_id=(event.caller_user_id if incoming else event.callee_user_id) or event.contact_user_id,
            username=event.contact_username,
            parent_user_id=event.caller_parent_user_id if incoming else event.callee_parent_user_id,
        )


class CaptureView(Protocol):
    """What an app may read of the call's recording/transcription opt-in (``worker.capture.Capture``)."""

    @property
    def announced(self) -> bool: ...

    @property
    def recording(self) -> bool: ...

    @property
    def transcription(self) -> bool: ...

    def announcement_max_seconds(self) -> float: ...


class Call(Protocol):
    """The call as an app uses it."""

    @property
    def info(self) -> CallInfo: ...

    def frames(self, sample_rate: int = 16000) -> AsyncIterator[bytes]:
        """The caller's audio, 20 ms per item, mono 16-bit PCM at ``sample_rate``; ends with the call."""
        ...

    async def send(self, pcm: bytes, sample_rate: int = 16000) -> None:
        """Queue mono 16-bit PCM; waits while ~2 s are queued. Raises CallEnded once the call is over."""
        ...

    def clear(self) -> None:
        """Drop everything queued and not yet played (the caller interrupted)."""
        ...

    async def wait_played(self) -> None:
        """Return once everything queued has been played (or the call ended)."""
        ...

    def dtmf(self) -> AsyncIterator[Digit]:
        """The key presses (``0-9 * # A-D``, ``"flash"``), once each, in order; ends with the call."""
        ...

    async def collect_digits(
        self,
        max: int | None = 6,
        end: str | None = "#",
        timeout: float | None = 5.0,  # noqa: ASYNC109  # inter-digit: asyncio.timeout cannot say it
    ) -> str:
        """Read key presses into a string; see :func:`collect_digits`."""
        ...

    async def hangup(self) -> None:
        """End the call. Idempotent; the app may keep running until it returns or is cancelled."""
        ...

    async def transfer(
        self, queue: str, *, reason: str = "", context: Mapping[str, str] | None = None
    ) -> None:
        """Hand the call to a person waiting in ``queue``; the app returns after it (docs/handoff.md)."""
        ...


App = Callable[[Call], Awaitable[None]]


class DigitSource(Protocol):
    """The call's keypad as :class:`MediaCall` reads it (``worker.media.keypad.Keypad``)."""

    async def next_digit(self) -> Digit | None:
        """The oldest unread digit, waiting for one; None once the call is over and every digit was read."""
        ...


async def collect_digits(
    next_digit: Callable[[], Awaitable[Digit | None]],
    max: int | None = 6,
    end: str | None = "#",
    timeout: float | None = 5.0,  # noqa: ASYNC109  # inter-digit: asyncio.timeout cannot say it
) -> str:
    """Key presses read into a string, as an IVR asks for a number or a PIN.

    Stops at the first of:

    * ``end`` pressed (one key, e.g. ``"#"``): the terminator is **not** part of the result, so ``"1234#"``
      gives ``"1234"`` and a lone ``"#"`` gives ``""`` (the caller skipped). ``None``: no terminator.
    * ``max`` digits collected (the terminator does not count). ``None``: no limit.
    * ``timeout`` seconds without a key press: an **inter-digit** timeout, the time the caller gets for the
      first key and again after each key, as on a telephone (a caller typing a long number slowly is not cut
      off while still typing). ``None``: wait for ever. What was collected so far is returned, possibly
      ``""``: the app tells "nothing" from "something" by the string.
    * the call ended: what was collected so far.

    A ``"flash"`` is not a digit: it is skipped. Keys pressed before this call (type-ahead: during a menu, or
    after an earlier ``collect_digits`` stopped) are read first; keys after the stop stay for the next read.
    """
    if max is not None and max < 1:
        raise ValueError("max must be at least 1 (or None)")
    if end is not None and len(end) != 1:
        raise ValueError(f"end must be one key, like '#', not {end!r}")
    collected: list[str] = []
    while max is None or len(collected) < max:
        try:
            async with asyncio.timeout(timeout):
                digit = await next_digit()
        except TimeoutError:
            break
        if digit is None:
            break
        if digit.digit == end:
            break
        if digit.digit != "flash":
            collected.append(digit.digit)
    return "".join(collected)


class AudioPort(Protocol):
    """The part of ``worker.media.MediaSession`` a call's app needs."""

    def frames(self, sample_rate: int = 16000) -> AsyncIterator[bytes]: ...

    async def send(self, pcm: bytes, sample_rate: int = 16000) -> None: ...

    def clear(self) -> None: ...

    async def wait_played(self) -> None: ...

    @property
    def ended_reason(self) -> object | None: ...


class MediaCall:
    """A :class:`Call` over a call's media; ``hangup`` is the session's (asks the call to end)."""

    def __init__(
        self,
        info: CallInfo,
        media: AudioPort,
        hangup: Callable[[], Awaitable[None]],
        keypad: DigitSource | None = None,
        transfer: Callable[[TransferRequest], None] | None = None,
    ) -> None:
        self._info = info
        self._media = media
        self._hangup = hangup
        self._keypad = keypad  # None: the call has no keypad (no digits ever come)
        self._hung_up = False
        self._transfer = transfer  # None: this worker cannot hand calls to people
        self._digits_read: list[str] = []

    @property
    def info(self) -> CallInfo:
        return self._info

    def frames(self, sample_rate: int = 16000) -> AsyncIterator[bytes]:
        return self._media.frames(sample_rate)

    async def send(self, pcm: bytes, sample_rate: int = 16000) -> None:
        if self._hung_up or self._media.ended_reason is not None:
            raise CallEnded(f"call {self._info.call_id} has ended")
        await self._media.send(pcm, sample_rate)

    def clear(self) -> None:
        self._media.clear()

    async def wait_played(self) -> None:
        await self._media.wait_played()

    async def dtmf(self) -> AsyncIterator[Digit]:
        while (digit := await self._next_digit()) is not None:
            yield digit

    async def collect_digits(
        self,
        max: int | None = 6,
        end: str | None = "#",
        timeout: float | None = 5.0,  # noqa: ASYNC109  # see collect_digits
    ) -> str:
        # What the bot collected is the value, not the keys: a terminator ("1234#" -> "1234") is not a digit.
        value = await collect_digits(self._read_digit, max, end, timeout)
        self._digits_read.append(value)
        return value

    async def _read_digit(self) -> Digit | None:
        return None if self._keypad is None else await self._keypad.next_digit()

    async def _next_digit(self) -> Digit | None:
        digit = await self._read_digit()
        if digit is not None and digit.digit != "flash":
            self._digits_read.append(digit.digit)
        return digit

    async def transfer(
        self, queue: str, *, reason: str = "", context: Mapping[str, str] | None = None
    ) -> None:
        """Hand the call to a person: the caller waits in ``queue`` (hearing hold audio) for an agent.

        The app's part of the call is over: return from the app after this (later sends raise
        :class:`CallEnded`, a hang-up is ignored). ``reason`` and ``context`` are shown to the agent, with
        the keys the app read. docs/handoff.md."""
        if self._transfer is None:
            raise CallhookError("transfer is not available: the worker has no handoff (docs/handoff.md)")
        if not queue:
            raise ValueError("transfer needs a queue name")
        if self._hung_up:
            raise CallEnded(f"call {self._info.call_id} has ended")
        self._hung_up = True  # the app may not speak or hang up any more
        self._media.clear()
        self._transfer(
            TransferRequest(
                queue=queue,
                reason=reason,
                context=dict(context or {}),
                digits="".join(self._digits_read),
            )
        )

    async def hangup(self) -> None:
        if self._hung_up:
            return
        self._hung_up = True
        await self._hangup()

    def __repr__(self) -> str:
        return f"MediaCall(call_id={self._info.call_id!r}, direction={self._info.direction!r})"
