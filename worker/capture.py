"""Meta's call recording and transcription opt-in: what a call asks for, checked before Meta sees it. Pure.

Meta records or transcribes a call only when the business opts in *per call*, with a ``recording`` and/or a
``transcription`` object (``status``, ``purpose``, ``announcement_language``) on ``accept`` (incoming) or
``connect`` (outgoing), never on ``pre_accept`` (Meta's reference lists no such field there). Both parties
then hear a consent announcement spoken by Meta ("The audio of this call will be recorded for the following
purpose: ..."), before any capture starts; either may hang up during it.

Rules checked here (Meta refuses the whole accept/connect otherwise, with a generic code 100):
``purpose`` 1-250 characters and ``announcement_language`` one of :data:`ANNOUNCEMENT_LANGUAGES` when the
status is ENABLED. When both objects are sent, Meta plays one combined announcement built from the
*recording* object's purpose and language: :meth:`Capture.body_fields` writes the same values into both, so
what the transcription object says can never differ from what is heard.

Where the choice comes from, last one wins: the worker's configuration (``CALLHOOK_RECORDING``, ...), then a
dial's own ``recording``/``transcription`` (outgoing), or the app's prepare step (incoming: an app may decide
from the caller, by giving its prepared object a ``capture`` attribute).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

MAX_PURPOSE_CHARS = 250
# Announcement locales (recording page, 2026). Transcription accepts the same codes; it speaks English for
# ``nl`` and ``es_ES`` until Meta localizes them.
ANNOUNCEMENT_LANGUAGES = frozenset(
    {"en", "en_US", "en_AU", "en_CA", "en_GB", "en_IN", "en_NZ", "nl", "fr", "de", "hi", "it", "kn", "pt",
     "es", "es_ES", "te", "vi"}
)  # fmt: skip
# How long Meta's announcement may take: the fixed phrase (~3 s) plus a 250-character purpose read aloud
# (~15 words/5 s per 75 characters). Not documented by Meta: our estimate, used by docs and the bridge.
ANNOUNCEMENT_BASE_SECONDS = 4.0
ANNOUNCEMENT_SECONDS_PER_CHAR = 0.07

Status = Literal["ENABLED", "DISABLED"]


class CaptureError(ValueError):
    """A recording/transcription choice Meta would refuse; the message lists every problem."""


@dataclass(frozen=True, slots=True)
class Consent:
    """One of Meta's opt-in objects."""

    status: Status = "DISABLED"
    purpose: str = ""
    announcement_language: str = ""

    @property
    def enabled(self) -> bool:
        return self.status == "ENABLED"

    def problems(self, name: str) -> list[str]:
        if self.status not in ("ENABLED", "DISABLED"):
            return [f"{name}.status must be ENABLED or DISABLED, not {self.status!r}"]
        if not self.enabled:
            return []
        found = []
        if not 1 <= len(self.purpose.strip()) <= MAX_PURPOSE_CHARS or len(self.purpose) > MAX_PURPOSE_CHARS:
            found.append(f"{name}.purpose must be 1-{MAX_PURPOSE_CHARS} characters (it is read aloud)")
        if self.announcement_language not in ANNOUNCEMENT_LANGUAGES:
            found.append(
                f"{name}.announcement_language {self.announcement_language!r} is not supported "
                f"(one of {', '.join(sorted(ANNOUNCEMENT_LANGUAGES))})"
            )
        return found

    def wire(self) -> dict[str, str]:
        if not self.enabled:
            return {"status": "DISABLED"}
        return {
            "status": "ENABLED",
            "purpose": self.purpose,
            "announcement_language": self.announcement_language,
        }


@dataclass(frozen=True, slots=True)
class Capture:
    """A call's opt-in: ``record`` and ``transcribe`` (None: the object is left out of the request)."""

    record: Consent | None = None
    transcribe: Consent | None = None

    @property
    def recording(self) -> bool:
        return self.record is not None and self.record.enabled

    @property
    def transcription(self) -> bool:
        return self.transcribe is not None and self.transcribe.enabled

    @property
    def announced(self) -> bool:
        return self.recording or self.transcription

    @property
    def spoken(self) -> Consent | None:
        """The object Meta's announcement is built from (recording's when both are on)."""
        if self.recording:
            return self.record
        return self.transcribe if self.transcription else None

    def announcement_max_seconds(self) -> float:
        """Our upper estimate of the announcement's length (0 when nothing is announced)."""
        spoken = self.spoken
        if spoken is None:
            return 0.0
        return round(ANNOUNCEMENT_BASE_SECONDS + ANNOUNCEMENT_SECONDS_PER_CHAR * len(spoken.purpose), 1)

    def problems(self) -> list[str]:
        found = []
        if self.record is not None:
            found += self.record.problems("recording")
        if self.transcribe is not None:
            found += self.transcribe.problems("transcription")
        return found

    def validated(self) -> Capture:
        problems = self.problems()
        if problems:
            raise CaptureError("; ".join(problems))
        return self

    def body_fields(self) -> dict[str, Any]:
        """The ``recording``/``transcription`` members of an accept or connect body (maybe none)."""
        fields: dict[str, Any] = {}
        if self.record is not None:
            fields["recording"] = self.record.wire()
        if self.transcribe is not None:
            transcribe = self.transcribe
            if self.recording and transcribe.enabled:
                assert self.record is not None  # one announcement: the recording's words in both objects
                transcribe = Consent("ENABLED", self.record.purpose, self.record.announcement_language)
            fields["transcription"] = transcribe.wire()
        return fields

    def overridden(self, record: Consent | None, transcribe: Consent | None) -> Capture:
        """This default with a dial's own objects (each one given replaces the default's)."""
        return Capture(
            record=record if record is not None else self.record,
            transcribe=transcribe if transcribe is not None else self.transcribe,
        )


NO_CAPTURE = Capture()


def consent(status: str, purpose: str | None, language: str | None, default: Consent | None) -> Consent:
    """A dial's object: status given; purpose and language fall back to the configured ones."""
    upper = status.upper()
    return Consent(
        status=upper if upper in ("ENABLED", "DISABLED") else status,  # type: ignore[arg-type]
        purpose=purpose if purpose is not None else (default.purpose if default else ""),
        announcement_language=language
        if language is not None
        else (default.announcement_language if default else ""),
    )
