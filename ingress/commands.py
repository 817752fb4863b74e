"""Commands integrators send the workers: place a call (``callhook.dials``), end one (``callhook.calls``).

The ingress's HTTP API (``POST /v1/calls``, ``POST /v1/calls/{id}/hangup``) and ``callhook dial`` both build
them here, so there is one definition of each message. The worker decodes them with msgspec
(``worker.events.DialRequest`` and ``HangupRequest``); a test checks the two agree.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Literal

Permission = Literal["skip", "check", "request"]
PERMISSION_MODES: tuple[Permission, ...] = ("skip", "check", "request")
# Meta's ``to`` is a phone number in international format; we accept digits with an optional leading '+'.
_PHONE = re.compile(r"^\+?[0-9]{6,20}$")
MAX_CALLBACK_DATA = 512  # Meta's limit for biz_opaque_callback_data
# A business-scoped user id (BSUID, 2026): country code, a dot, then letters/digits/dots (e.g. US.1349...).
_USER_ID = re.compile(r"^[A-Z]{2}\.[A-Za-z0-9.]{1,120}$")
MAX_PURPOSE = 250
# Meta's announcement languages (kept in step with worker/capture.py, which the ingress does not import)
ANNOUNCEMENT_LANGUAGES = frozenset(
    {"en", "en_US", "en_AU", "en_CA", "en_GB", "en_IN", "en_NZ", "nl", "fr", "de", "hi", "it", "kn", "pt",
     "es", "es_ES", "te", "vi"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Consent:
    """A dial's ``recording``/``transcription`` opt-in; purpose and language default to the worker's."""

    status: str
    purpose: str | None = None
    announcement_language: str | None = None

    def problems(self, name: str) -> list[str]:
        found = []
        if self.status not in ("ENABLED", "DISABLED"):
            found.append(f"'{name}.status' must be ENABLED or DISABLED")
        purpose = self.purpose
        if purpose is not None and not (purpose.strip() and len(purpose) <= MAX_PURPOSE):
            found.append(f"'{name}.purpose' must be 1-{MAX_PURPOSE} characters")
        language = self.announcement_language
        if language is not None and language not in ANNOUNCEMENT_LANGUAGES:
            known = ", ".join(sorted(ANNOUNCEMENT_LANGUAGES))
            found.append(f"'{name}.announcement_language' must be one of {known}")
        return found

    def body(self) -> dict[str, str]:
        body = {"status": self.status}
        if self.purpose is not None:
            body["purpose"] = self.purpose
        if self.announcement_language is not None:
            body["announcement_language"] = self.announcement_language
        return body


def consent_from_json(name: str, value: object) -> tuple[Consent | None, list[str]]:
    """A ``recording``/``transcription`` member of ``POST /v1/calls``, strictly: an object with a string
    ``status`` and optional string ``purpose``/``announcement_language``, nothing else."""
    if not isinstance(value, dict):
        return None, [f"'{name}' must be an object: {{status, purpose?, announcement_language?}}"]
    unknown = sorted(set(value) - {"status", "purpose", "announcement_language"})
    problems = [f"'{name}.{key}' is not a known field" for key in unknown]
    problems += [
        f"'{name}.{key}' must be a string"
        for key in ("status", "purpose", "announcement_language")
        if key in value and not isinstance(value[key], str)
    ]
    if "status" not in value:
        problems.append(f"'{name}.status' is required (ENABLED or DISABLED)")
    if problems:
        return None, problems
    consent = Consent(value["status"], value.get("purpose"), value.get("announcement_language"))
    return consent, consent.problems(name)


def is_user_id(text: str) -> bool:
    """A business-scoped user id (BSUID) rather than a phone number."""
    return bool(_USER_ID.match(text))


class CommandError(ValueError):
    """A command that cannot be sent as given; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Dial:
    to: str
    phone_number_id: str
    app: str | None = None
    biz_opaque_callback_data: str | None = None
    permission: Permission = "skip"
    request_id: str = ""
    recipient: str = ""  # the user's business-scoped user id, for a user without a visible number
    recording: Consent | None = None
    transcription: Consent | None = None

    def validated(self) -> Dial:
        """The same dial with a request id, or :class:`CommandError` listing every problem."""
        problems = []
        if not self.to and not self.recipient:
            problems.append("'to' (a phone number) or 'recipient' (a user id) is required")
        if self.to and not _PHONE.match(self.to):
            problems.append("'to' must be a phone number: digits in international format, e.g. 15551234567")
        if self.recipient and not _USER_ID.match(self.recipient):
            problems.append("'recipient' must be a WhatsApp user id (BSUID), e.g. US.13491208655302741918")
        for name in ("recording", "transcription"):
            consent: Consent | None = getattr(self, name)
            if consent is not None:
                problems += consent.problems(name)
        if not self.phone_number_id.isdigit():
            problems.append("'phone_number_id' must be the business number's Graph API id (digits)")
        callback_data = self.biz_opaque_callback_data
        if callback_data is not None and len(callback_data) > MAX_CALLBACK_DATA:
            problems.append(f"'biz_opaque_callback_data' is limited to {MAX_CALLBACK_DATA} characters")
        if self.app is not None and not self.app.strip():
            problems.append("'app' must not be empty when given")
        if self.permission not in PERMISSION_MODES:
            problems.append(f"'permission' must be one of {', '.join(PERMISSION_MODES)}")
        if problems:
            raise CommandError("; ".join(problems))
        request_id = self.request_id or f"dial-{uuid.uuid4().hex}"
        return Dial(
            to=self.to.removeprefix("+"),
            phone_number_id=self.phone_number_id,
            app=self.app,
            biz_opaque_callback_data=self.biz_opaque_callback_data,
            permission=self.permission,
            request_id=request_id,
            recipient=self.recipient,
            recording=self.recording,
            transcription=self.transcription,
        )

    def encode(self) -> bytes:
        body: dict[str, object] = {
            "request_id": self.request_id,
            "to": self.to,
            "phone_number_id": self.phone_number_id,
            "permission": self.permission,
            "requested_at": round(time.time(), 6),
        }
        if self.app is not None:
            body["app"] = self.app
        if self.biz_opaque_callback_data is not None:
            body["biz_opaque_callback_data"] = self.biz_opaque_callback_data
        if self.recipient:
            body["recipient"] = self.recipient
        for name in ("recording", "transcription"):
            consent: Consent | None = getattr(self, name)
            if consent is not None:
                body[name] = consent.body()
        return json.dumps(body).encode()


def hangup(call_id: str, request_id: str = "") -> bytes:
    """A ``HangupRequest`` for ``callhook.calls`` (routing key = the call id): the owner ends the call."""
    if not call_id or len(call_id) > 200:
        raise CommandError("a call id is required (at most 200 characters)")
    body = {
        "type": "hangup",
        "call_id": call_id,
        "request_id": request_id or f"hangup-{uuid.uuid4().hex}",
        "timestamp": int(time.time()),
    }
    return json.dumps(body).encode()
