"""The ``pcm`` protocol: linear 16-bit PCM at 16 or 24 kHz in binary frames, JSON control in text frames.

For agents that want better than telephone audio. Specified in docs/bridge.md; in short:

* bridge → agent: ``{"type": "start", ...}`` first (the call's facts and the audio format), then one binary
  frame of caller audio per 20 ms, ``{"type": "dtmf", "digit": "5", "duration_ms": 120}`` when the caller
  presses a key, ``{"type": "mark", "name": ..., "cleared": false|true}`` as the agent's marks are played (or
  dropped by a clear), ``{"type": "stop", "reason": ...}`` last.
* agent → bridge: binary frames of audio to play (a byte stream: frames of any length, even odd ones, are
  joined), ``{"type": "mark", "name": ...}``, ``{"type": "clear"}`` and ``{"type": "transfer", "queue": ...,
  "reason": ..., "context": {...}}`` (the caller waits for a person; the stream stops). Anything else is
  ignored.
"""

from __future__ import annotations

import uuid

import msgspec

from worker.apps.api import CallInfo, Digit
from worker.apps.bridge_protocol import (
    AgentAudio,
    AgentClear,
    AgentEvent,
    AgentIgnored,
    AgentMark,
    AgentTransfer,
)

PROTOCOL = "callhook-pcm"
VERSION = 1
FRAME_MS = 20


class _CallFacts(msgspec.Struct, kw_only=True, omit_defaults=True):
    call_id: str
    phone_number_id: str
    direction: str
    caller: str
    callee: str
    user_number: str
    business_number: str
    user_name: str | None = None
    biz_opaque_callback_data: str | None = None


class _AudioFormat(msgspec.Struct, kw_only=True):
    encoding: str = "pcm_s16le"
    sample_rate: int
    channels: int = 1
    frame_ms: int = FRAME_MS


class _Start(msgspec.Struct, kw_only=True, tag_field="type", tag="start"):
    protocol: str = PROTOCOL
    version: int = VERSION
    stream_id: str
    call: _CallFacts
    audio: _AudioFormat


class _Mark(msgspec.Struct, kw_only=True, tag_field="type", tag="mark"):
    name: str
    cleared: bool


class _Dtmf(msgspec.Struct, kw_only=True, tag_field="type", tag="dtmf"):
    digit: str  # 0-9 * # A-D, or "flash"
    duration_ms: int


class _Stop(msgspec.Struct, kw_only=True, tag_field="type", tag="stop"):
    reason: str


class _AgentMessage(msgspec.Struct):
    type: str = ""  # an unknown type is ignored, not an error
    name: str = ""
    queue: str = ""  # transfer
    reason: str = ""
    context: dict[str, str] = {}


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_AgentMessage)


class PcmStream:
    """One call's ``pcm`` stream (see the module docstring)."""

    audio_is_text = False

    def __init__(self, info: CallInfo, sample_rate: int, stream_id: str | None = None) -> None:
        if sample_rate not in (16000, 24000):
            raise ValueError(f"the pcm protocol runs at 16000 or 24000 Hz, not {sample_rate}")
        self.info = info
        self.sample_rate = sample_rate
        self.stream_id = stream_id or uuid.uuid4().hex
        self._odd_byte = b""  # half a sample left over from the agent's last binary frame

    def opening(self) -> list[bytes]:
        info = self.info
        facts = _CallFacts(
            call_id=info.call_id,
            phone_number_id=info.phone_number_id,
            direction=info.direction,
            caller=info.caller,
            callee=info.callee,
            user_number=info.user_number,
            business_number=info.business_number,
            user_name=info.user_name,
            biz_opaque_callback_data=info.biz_opaque_callback_data,
        )
        start = _Start(stream_id=self.stream_id, call=facts, audio=_AudioFormat(sample_rate=self.sample_rate))
        return [_encoder.encode(start)]

    def audio(self, pcm: bytes) -> bytes:
        return pcm

    def mark(self, name: str, *, cleared: bool) -> bytes:
        return _encoder.encode(_Mark(name=name, cleared=cleared))

    def dtmf(self, digit: Digit) -> bytes | None:
        return _encoder.encode(_Dtmf(digit=digit.digit, duration_ms=round(digit.duration_seconds * 1000)))

    def stop(self, reason: str) -> bytes:
        return _encoder.encode(_Stop(reason=reason))

    def decode_text(self, text: str | bytes) -> AgentEvent:
        try:
            message = _decoder.decode(text)
        except msgspec.DecodeError:
            return AgentIgnored("not a JSON object of the expected shape")
        if message.type == "mark":
            return AgentMark(message.name) if message.name else AgentIgnored("mark without a name")
        if message.type == "clear":
            self._odd_byte = b""
            return AgentClear()
        if message.type == "transfer":
            if not message.queue:
                return AgentIgnored("transfer without a queue")
            return AgentTransfer(message.queue, message.reason, dict(message.context))
        return AgentIgnored(f"type {message.type[:40]!r} is not handled")

    def decode_binary(self, data: bytes) -> AgentEvent:
        if self._odd_byte:
            data = self._odd_byte + data
            self._odd_byte = b""
        if len(data) % 2:
            data, self._odd_byte = data[:-1], data[-1:]
        if not data:
            return AgentIgnored("less than one sample")
        return AgentAudio(data)
