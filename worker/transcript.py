"""Meta's call transcript document (``call_transcription_available``) as typed segments. Pure (msgspec).

The document, as Meta's 2026 reference shows it::

    {"metadata": {"processed_at": "...Z", "audio": {"duration", "sample_rate", "channels", "audio_format"}},
     "transcript": {"text": "[Business] ... [Customer] ...", "language": "en", "duration", "confidence",
                    "segments": [{"id", "speaker": "Business"|"Customer", "channel": 0|1, "start", "end",
                                  "text", "confidence", "words": [{"word", "start", "end", ...}]}]}}

Only what integrators need is kept: who spoke (``speaker``, and ``channel``: 0 business, 1 user), when
(seconds from the start of the call audio) and what. A speaker Meta names differently tomorrow stays a
``str``; a transcript of an unsupported language arrives with no segments, which is not an error. Times that
are missing read as 0; a segment whose end precedes its start is kept as Meta wrote it (integrators see the
truth), but :func:`decode_transcript` refuses a document that is not this shape at all.
"""

from __future__ import annotations

from typing import Final

import msgspec


class TranscriptError(ValueError):
    """The bytes are not a transcript document."""


class Segment(msgspec.Struct, frozen=True, kw_only=True):
    speaker: str = ""  # "Business" | "Customer"
    start: float = 0.0
    end: float = 0.0
    text: str = ""
    channel: int | None = None  # 0: the business, 1: the WhatsApp user
    confidence: float | None = None


class _Audio(msgspec.Struct, frozen=True, kw_only=True):
    duration: float | None = None
    sample_rate: int | None = None
    channels: int | None = None


class _Metadata(msgspec.Struct, frozen=True, kw_only=True):
    processed_at: str | None = None
    audio: _Audio | None = None


class _Body(msgspec.Struct, frozen=True, kw_only=True):
    text: str = ""
    language: str | None = None
    duration: float | None = None
    confidence: float | None = None
    segments: list[Segment] = []


class _Document(msgspec.Struct, frozen=True, kw_only=True):
    transcript: _Body
    metadata: _Metadata | None = None


class Transcript(msgspec.Struct, frozen=True, kw_only=True):
    """What callhook publishes in ``call.transcript.ready`` (``transcript``)."""

    language: str | None
    duration_seconds: float | None
    confidence: float | None
    text: str
    segments: list[Segment]
    processed_at: str | None = None

    def by_speaker(self, speaker: str) -> list[Segment]:
        return [s for s in self.segments if s.speaker.lower() == speaker.lower()]


_decoder: Final = msgspec.json.Decoder(_Document)


def decode_transcript(data: bytes) -> Transcript:
    try:
        document = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise TranscriptError(f"not a transcript document: {exc}") from exc
    body = document.transcript
    metadata = document.metadata
    duration = body.duration
    if duration is None and metadata is not None and metadata.audio is not None:
        duration = metadata.audio.duration
    return Transcript(
        language=body.language,
        duration_seconds=duration,
        confidence=body.confidence,
        text=body.text,
        segments=sorted(body.segments, key=lambda s: (s.start, s.end)),
        processed_at=metadata.processed_at if metadata is not None else None,
    )
