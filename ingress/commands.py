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

    def validated(self) -> Dial:
        """The same dial with a request id, or :class:`CommandError` listing every problem."""
        problems = []
        if not _PHONE.match(self.to):
            problems.append("'to' must be a phone number: digits in international format, e.g. 15551234567")
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
        )

    def encode(self) -> bytes:
        body = {
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


def transfer(call_id: str, body: dict[str, object], request_id: str) -> bytes:
    """A ``TransferRequestEvent`` for ``callhook.calls`` (routing key = the call id): the owner's app stops
    and the caller waits in ``body["queue"]`` for a person (docs/handoff.md)."""
    if not call_id or len(call_id) > 200:
        raise CommandError("a call id is required (at most 200 characters)")
    queue, reason, context = body.get("queue"), body.get("reason", ""), body.get("context", {})
    if not isinstance(queue, str) or not 0 < len(queue) <= 100:
        raise CommandError("queue: a queue name is required (at most 100 characters)")
    if not isinstance(reason, str) or len(reason) > 500:
        raise CommandError("reason: a string of at most 500 characters")
    if not isinstance(context, dict) or len(context) > 20:
        raise CommandError("context: an object of at most 20 string values")
    pairs = context.items()
    if not all(isinstance(k, str) and isinstance(v, str) and len(k) + len(v) <= 500 for k, v in pairs):
        raise CommandError("context: keys and values are strings (at most 500 characters each pair)")
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
