"""Commands integrators send the workers: place a call (``callhook.dials``), end one (``callhook.calls``).

The ingress's HTTP API (``POST /v1/calls``, ``POST /v1/calls/{id}/hangup``) and ``callhook dial`` both build
them here, so there is one definition of each message. The worker decodes them with msgspec
(``worker.events.DialRequest`` and ``HangupRequest``); a test checks the two agree.

Every field is checked by character class and by **bytes** (AMQP short strings, Graph URL paths and Meta's
limits count bytes): ASCII digits only where a number goes into a URL path, no control characters anywhere,
patterns matched whole (``fullmatch``: ``$`` would accept a trailing newline). Pure: no I/O.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

Permission = Literal["skip", "check", "request"]
PERMISSION_MODES: tuple[Permission, ...] = ("skip", "check", "request")
# Meta's ``to``: a phone number in international format, ASCII digits with an optional leading '+'.
PHONE = re.compile(r"\+?[0-9]{6,20}")
# A WhatsApp business-scoped user id (BSUID), for users known by a username: ``US.13491208655302741918``, or a
# parent id ``US.ENT.11815799212886844830``. Country code, optional ``ENT``, ASCII digits (matched whole).
USER_ID = re.compile(r"[A-Z]{2}(?:\.ENT)?\.[0-9]{1,40}")
GRAPH_ID = re.compile(r"[0-9]{1,32}")  # goes into a Graph URL path: ASCII digits only
# Meta's call ids are ``wacid.`` + base64; anything outside this set never came from Meta.
CALL_ID = re.compile(r"[A-Za-z0-9._:=+/-]{1,200}")
MAX_CALL_ID_BYTES = 200
MAX_CALLBACK_DATA = 512  # Meta's limit for biz_opaque_callback_data (checked in UTF-8 bytes)
MAX_REQUEST_ID_BYTES = 120
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
    return USER_ID.fullmatch(text) is not None


class CommandError(ValueError):
    """A command that cannot be sent as given; the message says what to fix."""


def has_control_characters(text: str) -> bool:
    """True for C0/C1 controls, DEL, and lone surrogates (which cannot be encoded at all)."""
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


def utf8_length(text: str) -> int | None:
    """The UTF-8 size of ``text``, or None if it cannot be encoded (a lone surrogate from JSON)."""
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        return None


QUEUE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # a hand-off queue (docs/handoff.md)


def _short_text(value: object, max_bytes: int) -> bool:
    if not isinstance(value, str):
        return False
    size = utf8_length(value)
    return size is not None and size <= max_bytes and not has_control_characters(value)


def is_recipient(text: str) -> bool:
    return PHONE.fullmatch(text) is not None or is_user_id(text)


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

    def validated(self, allowed_apps: Collection[str] | None = None) -> Dial:
        """The same dial with a request id, or :class:`CommandError` listing every problem.

        ``allowed_apps``: the names an operator configured (``CALLHOOK_APPS``); None accepts any name of the
        right shape (``callhook dial`` run by the operator).
        """
        problems = []
        to, recipient = self.to, self.recipient
        if to and not recipient and is_user_id(to):  # a user id given as 'to' is addressed as Meta wants
            to, recipient = "", to
        if not to and not recipient:
            problems.append("'to' (a phone number) or 'recipient' (a WhatsApp user id) is required")
        if to and PHONE.fullmatch(to) is None:
            problems.append(
                "'to' must be a phone number (ASCII digits in international format, e.g. 15551234567) "
                "or a WhatsApp user id (e.g. US.13491208655302741918)"
            )
        if recipient and not is_user_id(recipient):
            problems.append("'recipient' must be a WhatsApp user id (BSUID), e.g. US.13491208655302741918")
        for name in ("recording", "transcription"):
            consent: Consent | None = getattr(self, name)
            if consent is not None:
                problems += consent.problems(name)
        if not GRAPH_ID.fullmatch(self.phone_number_id):
            problems.append("'phone_number_id' must be the business number's Graph API id (ASCII digits)")
        callback_data = self.biz_opaque_callback_data
        if callback_data is not None:
            size = utf8_length(callback_data)
            if size is None or size > MAX_CALLBACK_DATA:
                problems.append(
                    f"'biz_opaque_callback_data' is limited to {MAX_CALLBACK_DATA} bytes of UTF-8"
                )
            elif has_control_characters(callback_data):
                problems.append("'biz_opaque_callback_data' must not contain control characters")
        if self.app is not None:
            if allowed_apps is not None and self.app not in allowed_apps:
                problems.append("'app' must name one of the apps this deployment offers (CALLHOOK_APPS)")
            elif allowed_apps is None and not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", self.app):
                problems.append("'app' must be an app name, e.g. echo")
        if self.permission not in PERMISSION_MODES:
            problems.append(f"'permission' must be one of {', '.join(PERMISSION_MODES)}")
        request_id = self.request_id or f"dial-{uuid.uuid4().hex}"
        if not re.fullmatch(r"[A-Za-z0-9._:-]{1,%d}" % MAX_REQUEST_ID_BYTES, request_id):  # noqa: UP031
            problems.append("the request id must be short ASCII")
        if problems:
            raise CommandError("; ".join(problems))
        return Dial(
            to=to.removeprefix("+"),
            phone_number_id=self.phone_number_id,
            app=self.app,
            biz_opaque_callback_data=self.biz_opaque_callback_data,
            permission=self.permission,
            request_id=request_id,
            recipient=recipient,
            recording=self.recording,
            transcription=self.transcription,
        )

    def encode(self, requested_at: float | None = None) -> bytes:
        body: dict[str, object] = {
            "request_id": self.request_id,
            "to": self.to,
            "phone_number_id": self.phone_number_id,
            "permission": self.permission,
            "requested_at": round(time.time() if requested_at is None else requested_at, 6),
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


def check_call_id(call_id: str) -> None:
    """Raise :class:`CommandError` unless ``call_id`` looks like one of Meta's (ASCII, at most 200 bytes)."""
    if not CALL_ID.fullmatch(call_id) or len(call_id.encode()) > MAX_CALL_ID_BYTES:
        raise CommandError(
            f"a call id is required: at most {MAX_CALL_ID_BYTES} bytes of [A-Za-z0-9._:=+/-] "
            "(as in call.* events)"
        )


def hangup(call_id: str, request_id: str = "") -> bytes:
    """A ``HangupRequest`` for ``callhook.calls`` (routing key = the call id): the owner ends the call."""
    check_call_id(call_id)
    body = {
        "type": "hangup",
        "call_id": call_id,
        "request_id": request_id or f"hangup-{uuid.uuid4().hex}",
        "timestamp": int(time.time()),
    }
    return json.dumps(body).encode()


def transfer(call_id: str, body: dict[str, object], request_id: str) -> bytes:
    """A ``TransferRequestEvent`` for ``callhook.calls`` (routing key = the call id): the owner's app stops
    and the caller waits in ``body["queue"]`` for a person (docs/handoff.md). Checked like every API input:
    the call id as in :func:`check_call_id`, the queue a short ASCII name, text by bytes, no controls."""
    check_call_id(call_id)
    queue, reason, context = body.get("queue"), body.get("reason", ""), body.get("context", {})
    if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
        raise CommandError("queue: a queue name is required ([a-z0-9_-], at most 64 characters)")
    if not _short_text(reason, 500):
        raise CommandError("reason: a string of at most 500 bytes without control characters")
    if not isinstance(context, dict) or len(context) > 20:
        raise CommandError("context: an object of at most 20 string values")
    if not all(_short_text(k, 100) and _short_text(v, 500) for k, v in context.items()):
        raise CommandError(
            "context: keys and values are strings (at most 100 / 500 bytes, no control characters)"
        )
    message = {
        "type": "transfer",
        "call_id": call_id,
        "queue": queue,
        "reason": reason,
        "context": context,
        "request_id": request_id,
        "timestamp": int(time.time()),
    }
    return json.dumps(message).encode()
