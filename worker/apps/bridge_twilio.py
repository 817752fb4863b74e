"""Twilio Media Streams (bidirectional ``<Connect><Stream>``) as the bridge speaks it: a pure message codec.

To the agent: ``connected``, ``start`` (the call's facts), ``media`` (the caller, base64 µ-law 8 kHz, one
20 ms chunk per message, track ``inbound``), ``dtmf`` (a key the caller pressed, track ``inbound_track``, as
Twilio writes it), ``mark`` (the agent's marks, once played or cleared) and ``stop``. From the agent:
``media`` (base64 µ-law 8 kHz to play), ``mark`` and ``clear``; everything else is ignored, as Twilio does.

Field mapping (docs/bridge.md has the full table): ``callSid`` is the WhatsApp call id, ``accountSid`` the
business number's ``phone_number_id``, ``streamSid`` a fresh ``MZ`` + 32 hex digits per call. The call's
facts go in ``customParameters`` (string values only, absent ones left out).
"""

from __future__ import annotations

import base64
import binascii
import uuid

import msgspec

from worker.apps.api import CallInfo, Digit
from worker.apps.bridge_protocol import AgentAudio, AgentClear, AgentEvent, AgentIgnored, AgentMark
from worker.audio_codecs import MULAW_SAMPLE_RATE, mulaw_to_pcm, pcm_to_mulaw

FRAME_MS = 20


# ----------------------------------------------------------------------------------- to the agent
class _Connected(msgspec.Struct, kw_only=True, tag_field="event", tag="connected"):
    protocol: str = "Call"
    version: str = "1.0.0"


class _MediaFormat(msgspec.Struct, kw_only=True, rename="camel"):
    encoding: str = "audio/x-mulaw"
    sample_rate: int = MULAW_SAMPLE_RATE
    channels: int = 1


class _StartBody(msgspec.Struct, kw_only=True, rename="camel"):
    account_sid: str
    stream_sid: str
    call_sid: str
    tracks: list[str]
    custom_parameters: dict[str, str]
    media_format: _MediaFormat


class _Start(msgspec.Struct, kw_only=True, rename="camel", tag_field="event", tag="start"):
    sequence_number: str
    start: _StartBody
    stream_sid: str


class _MediaBody(msgspec.Struct, kw_only=True):
    track: str
    chunk: str
    timestamp: str
    payload: str


class _Media(msgspec.Struct, kw_only=True, rename="camel", tag_field="event", tag="media"):
    sequence_number: str
    media: _MediaBody
    stream_sid: str


class _MarkBody(msgspec.Struct, kw_only=True):
    name: str


class _Mark(msgspec.Struct, kw_only=True, rename="camel", tag_field="event", tag="mark"):
    sequence_number: str
    stream_sid: str
    mark: _MarkBody


class _DtmfBody(msgspec.Struct, kw_only=True):
    track: str
    digit: str


class _Dtmf(msgspec.Struct, kw_only=True, rename="camel", tag_field="event", tag="dtmf"):
    stream_sid: str
    sequence_number: str
    dtmf: _DtmfBody


# A phone keypad's keys, all Twilio reports (and Pipecat's KeypadEntry knows): A-D and flash are not sent.
TWILIO_DIGITS = frozenset("0123456789*#")


class _StopBody(msgspec.Struct, kw_only=True, rename="camel"):
    account_sid: str
    call_sid: str


class _Stop(msgspec.Struct, kw_only=True, rename="camel", tag_field="event", tag="stop"):
    sequence_number: str
    stop: _StopBody
    stream_sid: str


# --------------------------------------------------------------------------------- from the agent
class _AgentMedia(msgspec.Struct):
    payload: str = ""


class _AgentMark(msgspec.Struct):
    name: str = ""


class _AgentMessage(msgspec.Struct):
    event: str = ""  # kept a str: an event this bridge does not know is ignored, not an error
    media: _AgentMedia | None = None
    mark: _AgentMark | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_AgentMessage)


def custom_parameters(info: CallInfo) -> dict[str, str]:
    """The call's facts as Twilio ``customParameters`` (``from_number``/``to_number`` as Pipecat reads).

    A username-only caller has no number: ``from_number`` is then absent and ``caller_id`` (the number, else
    the user id) always says who called. When Meta records or transcribes the call, ``meta_announcement``
    says so (``recording``, ``transcription`` or both, comma-separated) and ``announcement_max_seconds`` how
    long Meta's consent announcement may play over the call's first seconds (the agent should let it finish
    before speaking)."""
    capture = info.capture
    announced = [name for name in ("recording", "transcription") if capture and getattr(capture, name)]
    values = {
        "call_id": info.call_id,
        "phone_number_id": info.phone_number_id,
        "direction": info.direction,
        "from_number": info.caller,
        "to_number": info.callee,
        "user_number": info.user_number,
        "user_name": info.user_name,
        "business_number": info.business_number,
        "biz_opaque_callback_data": info.biz_opaque_callback_data,
        "caller_id": info.caller_id,
        "caller_user_id": info.caller_user_id,
        "caller_username": info.caller_username,
        "user_id": info.user_id,
        "username": info.username,
        "meta_announcement": ",".join(announced),
        "announcement_max_seconds": str(capture.announcement_max_seconds()) if announced and capture else "",
    }
    return {key: value for key, value in values.items() if value}


class TwilioStream:
    """One call's Twilio Media Stream (see the module docstring)."""

    sample_rate = MULAW_SAMPLE_RATE
    audio_is_text = True

    def __init__(self, info: CallInfo, stream_sid: str | None = None) -> None:
        self.info = info
        self.stream_sid = stream_sid or "MZ" + uuid.uuid4().hex
        self._sequence = 0
        self._chunks = 0

    def _next_sequence(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    def opening(self) -> list[bytes]:
        start = _StartBody(
            account_sid=self.info.phone_number_id,
            stream_sid=self.stream_sid,
            call_sid=self.info.call_id,
            tracks=["inbound"],
            custom_parameters=custom_parameters(self.info),
            media_format=_MediaFormat(),
        )
        message = _Start(sequence_number=self._next_sequence(), start=start, stream_sid=self.stream_sid)
        return [_encoder.encode(_Connected()), _encoder.encode(message)]

    def audio(self, pcm: bytes) -> bytes:
        # timestamp: the chunk's start in media time (ms since the stream's first chunk), like Twilio's.
        timestamp = self._chunks * FRAME_MS
        self._chunks += 1
        body = _MediaBody(
            track="inbound",
            chunk=str(self._chunks),
            timestamp=str(timestamp),
            payload=base64.b64encode(pcm_to_mulaw(pcm)).decode("ascii"),
        )
        return _encoder.encode(
            _Media(sequence_number=self._next_sequence(), media=body, stream_sid=self.stream_sid)
        )

    def mark(self, name: str, *, cleared: bool) -> bytes:
        # Twilio answers a cleared mark with the same message as a played one.
        return _encoder.encode(
            _Mark(
                sequence_number=self._next_sequence(), stream_sid=self.stream_sid, mark=_MarkBody(name=name)
            )
        )

    def dtmf(self, digit: Digit) -> bytes | None:
        if digit.digit not in TWILIO_DIGITS:
            return None
        body = _DtmfBody(track="inbound_track", digit=digit.digit)
        return _encoder.encode(
            _Dtmf(stream_sid=self.stream_sid, sequence_number=self._next_sequence(), dtmf=body)
        )

    def stop(self, reason: str) -> bytes:
        body = _StopBody(account_sid=self.info.phone_number_id, call_sid=self.info.call_id)
        return _encoder.encode(
            _Stop(sequence_number=self._next_sequence(), stop=body, stream_sid=self.stream_sid)
        )

    def decode_text(self, text: str | bytes) -> AgentEvent:
        try:
            message = _decoder.decode(text)
        except msgspec.DecodeError:
            return AgentIgnored("not a JSON object of the expected shape")
        if message.event == "media":
            return self._media(message.media)
        if message.event == "mark":
            if message.mark is None or not message.mark.name:
                return AgentIgnored("mark without a name")
            return AgentMark(message.mark.name)
        if message.event == "clear":
            return AgentClear()
        return AgentIgnored(f"event {message.event[:40]!r} is not handled")

    def decode_binary(self, data: bytes) -> AgentEvent:
        return AgentIgnored("binary frame (Twilio Media Streams messages are text)")

    @staticmethod
    def _media(media: _AgentMedia | None) -> AgentEvent:
        if media is None or not media.payload:
            return AgentIgnored("media without a payload")
        try:
            codes = base64.b64decode(media.payload, validate=True)
        except (binascii.Error, ValueError):
            return AgentIgnored("media payload is not base64")
        return AgentAudio(mulaw_to_pcm(codes))
