"""Meta's 2026 calling platform, simulated: opt-in rules, announcement, recordings, transcripts, media.

* :func:`capture_of` applies Meta's opt-in rules to a calls request: ``recording``/``transcription`` are
  accepted on ``accept`` and ``connect`` only (``pre_accept`` refuses them, like Meta: code 100), with
  ``status`` ENABLED/DISABLED, a purpose of 1-250 characters and a supported announcement language.
* :class:`Announcement` is Meta's consent announcement as a tone (two alternating pitches) mixed into both
  legs of the call for ``seconds`` after the accept: the phone plays it to the business and hears it itself
  (the hook in :mod:`simulator.phone` is one overlay callable; the rest lives here).
* :func:`ogg_opus_recording` makes the call's recording: a real Ogg/Opus file (PyAV, libopus), stereo at
  16 kHz, channel 0 what the business sent (as the phone heard it), channel 1 what the user said (the phone's
  test signal, with the announcement).
* :func:`transcript_document` makes a transcript in Meta's documented shape.
* :class:`MediaStore` keeps media by id and hands out URLs that expire (Meta: 5 minutes), served by the Graph
  API at ``GET /media/<token>``; ``GET /<version>/<MEDIA_ID>`` gives a fresh URL.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from simulator.errors import MetaError, invalid_parameter
from simulator.signal import TestSignal

MAX_PURPOSE_CHARS = 250
ANNOUNCEMENT_LANGUAGES = frozenset(
    {"en", "en_US", "en_AU", "en_CA", "en_GB", "en_IN", "en_NZ", "nl", "fr", "de", "hi", "it", "kn", "pt",
     "es", "es_ES", "te", "vi"}
)  # fmt: skip
CAPTURE_KEYS = ("recording", "transcription")
RECORDING_RATE = 16_000
ANNOUNCEMENT_HZ = (660.0, 880.0)
ANNOUNCEMENT_LEVEL = 0.25


@dataclass(frozen=True, slots=True)
class CaptureChoice:
    """What a call opted into (the objects as Meta read them)."""

    recording: bool = False
    transcription: bool = False
    purpose: str = ""
    language: str = ""

    @property
    def announced(self) -> bool:
        return self.recording or self.transcription


def capture_of(action: str, body: dict[str, Any]) -> CaptureChoice | None:
    """Meta's rules for the opt-in objects of a calls request; None when the request has none."""
    present = [key for key in CAPTURE_KEYS if key in body]
    if not present:
        return None
    if action not in ("accept", "connect"):
        raise invalid_parameter(f"{', '.join(present)} is not a parameter of {action}: use accept or connect")
    enabled: dict[str, dict[str, Any]] = {}
    for key in present:
        value = body[key]
        if not isinstance(value, dict) or value.get("status") not in ("ENABLED", "DISABLED"):
            raise invalid_parameter(f"{key}.status must be ENABLED or DISABLED")
        if value["status"] == "DISABLED":
            continue
        purpose = value.get("purpose")
        if not isinstance(purpose, str) or not purpose.strip():
            raise invalid_parameter(f"{key}.purpose is required when {key} is ENABLED")
        if len(purpose) > MAX_PURPOSE_CHARS:
            raise invalid_parameter(f"{key}.purpose must be at most {MAX_PURPOSE_CHARS} characters")
        if value.get("announcement_language") not in ANNOUNCEMENT_LANGUAGES:
            raise invalid_parameter(f"{key}.announcement_language is not supported")
        enabled[key] = value
    # One announcement: the recording's words when both are on (the transcription's are ignored).
    spoken = enabled.get("recording") or enabled.get("transcription") or {}
    return CaptureChoice(
        recording="recording" in enabled,
        transcription="transcription" in enabled,
        purpose=str(spoken.get("purpose", "")),
        language=str(spoken.get("announcement_language", "")),
    )


@dataclass(frozen=True, slots=True)
class Announcement:
    """Meta's consent announcement, as a tone, from sample 0 of the call's audio for ``seconds``."""

    seconds: float

    def render(self, start: int, count: int, rate: int) -> npt.NDArray[np.float32]:
        index = np.arange(start, start + count, dtype=np.int64)
        pitch = np.where((index // (rate // 4)) % 2 == 0, ANNOUNCEMENT_HZ[0], ANNOUNCEMENT_HZ[1])
        tone = ANNOUNCEMENT_LEVEL * np.sin(2 * np.pi * pitch * index / rate)
        tone[index >= int(self.seconds * rate)] = 0.0
        return tone.astype(np.float32)


def ogg_opus_recording(
    heard: npt.NDArray[np.float32], signal_seed: int, announcement: Announcement | None
) -> bytes:
    """Stereo Ogg/Opus at 16 kHz: channel 0 the business (``heard`` by the phone, 16 kHz floats), channel 1
    the user (the phone's test signal plus Meta's announcement), as long as what was heard."""
    count = max(len(heard), RECORDING_RATE // 2)
    business = np.zeros(count, dtype=np.float32)
    business[: len(heard)] = heard
    user = TestSignal(signal_seed).render(0, count, RECORDING_RATE)
    if announcement is not None:
        user = user + announcement.render(0, count, RECORDING_RATE)
    stereo = np.clip(np.stack([business, user], axis=1), -1.0, 1.0)
    pcm = np.round(stereo * 32767).astype(np.int16)
    out = io.BytesIO()
    with av.open(out, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=RECORDING_RATE, layout="stereo")
        frame_samples = RECORDING_RATE // 50
        for first in range(0, count, frame_samples):
            chunk = pcm[first : first + frame_samples]
            if len(chunk) < frame_samples:
                chunk = np.vstack([chunk, np.zeros((frame_samples - len(chunk), 2), dtype=np.int16)])
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="stereo")
            frame.sample_rate = RECORDING_RATE
            frame.pts = first
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def transcript_document(duration_seconds: float, language: str = "en") -> bytes:
    """A transcript in Meta's shape: the two speakers taking turns, one second each."""
    segments: list[dict[str, Any]] = []
    start, speaker = 0.0, 0
    while start < duration_seconds:
        end = min(duration_seconds, start + 1.0)
        who = ("Business", "Customer")[speaker]
        text = f"{who} speaking from {start:.1f} to {end:.1f} seconds"
        segments.append(
            {"id": len(segments) + 1, "speaker": who, "channel": speaker, "start": round(start, 2),
             "end": round(end, 2), "text": text, "confidence": 0.9,
             "words": [{"word": w, "start": round(start, 2), "end": round(end, 2), "confidence": 0.9,
                        "lang": language} for w in text.split()[:2]]}
        )  # fmt: skip
        start, speaker = end, 1 - speaker
    document = {
        "metadata": {
            "processed_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "audio": {
                "duration": round(duration_seconds, 2),
                "sample_rate": 16000,
                "channels": 2,
                "audio_format": "stereo",
            },
        },
        "transcript": {
            "text": " ".join(f"[{s['speaker']}] {s['text']}" for s in segments),
            "language": language,
            "duration": round(duration_seconds, 2),
            "confidence": 0.9 if segments else 0.0,
            "segments": segments,
        },
    }
    return json.dumps(document).encode()


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


@dataclass(slots=True)
class StoredMedia:
    media_id: str
    data: bytes
    mime_type: str
    sha256: str
    created_at: float


@dataclass(slots=True)
class MediaStore:
    """Media by id, and download tokens that expire ``url_lifetime_seconds`` after they were handed out."""

    url_lifetime_seconds: float = 300.0
    # the webhook's own URL (None: as above); 0 makes it expire before anyone can use it
    webhook_url_lifetime_seconds: float | None = None
    clock: Callable[[], float] = time.time
    media: dict[str, StoredMedia] = field(default_factory=dict)
    _tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    downloads: list[tuple[str, bool]] = field(default_factory=list)  # (media id, served) per download

    def put(self, data: bytes, mime_type: str) -> StoredMedia:
        media_id = str(10**15 + secrets.randbelow(9 * 10**15))
        stored = StoredMedia(media_id, data, mime_type, sha256_b64(data), self.clock())
        self.media[media_id] = stored
        return stored

    def token(self, media_id: str, lifetime_seconds: float | None = None) -> str:
        token = secrets.token_urlsafe(18)
        lifetime = self.url_lifetime_seconds if lifetime_seconds is None else lifetime_seconds
        self._tokens[token] = (media_id, self.clock() + lifetime)
        return token

    def expire_all(self) -> None:
        """Every URL handed out so far stops working (as if 5 minutes had passed)."""
        self._tokens = {token: (media_id, 0.0) for token, (media_id, _) in self._tokens.items()}

    def info(self, media_id: str, url_of: Callable[[str], str]) -> dict[str, Any]:
        """``GET /<MEDIA_ID>``: a fresh URL and the file's facts."""
        stored = self.media.get(media_id)
        if stored is None:
            raise MetaError(100, f"Unsupported get request. Object with ID '{media_id}' does not exist")
        return {
            "messaging_product": "whatsapp",
            "url": url_of(self.token(media_id)),
            "mime_type": stored.mime_type,
            "sha256": stored.sha256,
            "file_size": len(stored.data),
            "id": media_id,
        }

    def fetch(self, token: str) -> StoredMedia | None:
        """The media behind a download token, or None when it is unknown or expired."""
        entry = self._tokens.get(token)
        if entry is None:
            self.downloads.append(("", False))
            return None
        media_id, expires_at = entry
        served = expires_at > self.clock() and media_id in self.media
        self.downloads.append((media_id, served))
        return self.media[media_id] if served else None


@dataclass(frozen=True, slots=True)
class PlatformSettings:
    """How the simulated platform behaves; replace ``Simulator.platform`` to change it live."""

    announcement_seconds: float = 3.0  # Meta's consent announcement after accept (both legs)
    media_delay_seconds: float = 0.3  # terminate -> the recording/transcript webhooks
    media_copies: int = 1  # each media webhook delivered this many times (Meta may repeat it)
    transcript_first: bool = False  # the transcript's webhook before the recording's
    url_lifetime_seconds: float = 300.0
    # the webhook's own URL (None: as above); 0 makes it expire before anyone can use it
    webhook_url_lifetime_seconds: float | None = None
