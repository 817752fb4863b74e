"""The simulator's exceptions and Meta's Graph API error envelope.

Exception tree::

    SimulatorError                    anything the simulator refuses or cannot do
     ├── MetaError                    a Graph API refusal as Meta words it (code, HTTP status, details);
     │                                raised by the pure rules, turned into the JSON envelope by graph_api.py
     ├── CallEndedError               a wait on a call's state found the call ended in another state
     └── ScenarioError                a scenario cannot run as configured

Meta classifies by ``error.code``, not by HTTP status: 138000 and 138006 arrive as 401 without being token
problems, throttling arrives as 429 with code 4 or 130429. The catalog below keeps the status Meta uses next
to each code, so a fault switch that names only a code produces the whole, realistic response.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from typing import Any

GRAPH_ERROR_TYPE = "OAuthException"


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    http_status: int
    title: str
    transient: bool = False


CATALOG: dict[int, ErrorSpec] = {
    1: ErrorSpec(500, "An unknown error occurred", transient=True),
    2: ErrorSpec(503, "Service temporarily unavailable", transient=True),
    4: ErrorSpec(429, "Application request limit reached", transient=True),
    100: ErrorSpec(400, "Invalid parameter"),
    190: ErrorSpec(401, "Invalid OAuth access token - Cannot parse access token"),
    613: ErrorSpec(429, "Calls to this api have exceeded the rate limit.", transient=True),
    80007: ErrorSpec(429, "Rate limit issues", transient=True),
    130429: ErrorSpec(429, "Rate limit hit", transient=True),
    131055: ErrorSpec(400, "Calling API is not available for a phone number that uses SIP"),
    138000: ErrorSpec(401, "Calling is not enabled for this phone number"),
    138001: ErrorSpec(400, "Receiver is unable to receive calls"),
    138002: ErrorSpec(400, "Concurrent calls limit reached"),
    138003: ErrorSpec(400, "A call with this user is already ongoing"),
    138004: ErrorSpec(500, "Connection error", transient=True),
    138005: ErrorSpec(400, "Call initiation rate limit reached"),
    138006: ErrorSpec(401, "No approved call permission from the recipient"),
    138007: ErrorSpec(400, "Connect timeout: the SDP offer/answer was not applied in time"),
    138009: ErrorSpec(400, "Call permission request limit reached"),
    138012: ErrorSpec(400, "Business initiated calls limit reached for this user"),
    138013: ErrorSpec(400, "Business initiated calling is unavailable for this phone number"),
    138014: ErrorSpec(400, "Calling is temporarily disabled for this phone number"),
    138017: ErrorSpec(400, "Permanent call permission already granted"),
}
# Codes whose message Meta prints without the "(#code)" prefix.
_UNPREFIXED = frozenset({1, 2, 190})


class SimulatorError(Exception):
    """Base of everything the simulator raises on purpose."""


class MetaError(SimulatorError):
    """A Graph API refusal: becomes Meta's ``{"error": {...}}`` envelope with Meta's HTTP status."""

    def __init__(
        self,
        code: int,
        details: str | None = None,
        *,
        subcode: int | None = None,
        http_status: int | None = None,
        title: str | None = None,
        error_type: str = GRAPH_ERROR_TYPE,
    ) -> None:
        spec = CATALOG.get(code, ErrorSpec(400, "Unknown error"))
        self.code = code
        self.details = details
        self.subcode = subcode
        self.http_status = http_status if http_status is not None else spec.http_status
        self.title = title if title is not None else spec.title
        # Meta prefixes catalogued messages with "(#code)"; a message given in full is kept as is.
        prefixed = title is None and code not in _UNPREFIXED
        self.message = f"(#{code}) {self.title}" if prefixed else self.title
        self.transient = spec.transient
        self.error_type = error_type
        super().__init__(f"({code}) {self.title}" + (f": {details}" if details else ""))

    def envelope(self, fbtrace_id: str | None = None) -> dict[str, Any]:
        """Meta's error body: message, type, code, error_subcode?, error_data?{details}, fbtrace_id."""
        error: dict[str, Any] = {"message": self.message, "type": self.error_type, "code": self.code}
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        if self.transient:
            error["is_transient"] = True
        if self.details:
            error["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        error["fbtrace_id"] = fbtrace_id or new_fbtrace_id()
        return {"error": error}


class CallEndedError(SimulatorError):
    """The call ended (``state``, ``reason``) while something waited for another state."""

    def __init__(self, call_id: str, state: str, reason: str | None) -> None:
        self.call_id = call_id
        self.state = state
        self.reason = reason
        super().__init__(f"call {call_id} ended as {state} ({reason or 'no reason'})")


class ScenarioError(SimulatorError):
    """A scenario cannot run as configured."""


_TRACE_ALPHABET = string.ascii_letters + string.digits + "-_"


def new_fbtrace_id() -> str:
    return "A" + "".join(secrets.choice(_TRACE_ALPHABET) for _ in range(22))


def invalid_parameter(details: str) -> MetaError:
    """Code 100, the answer Meta gives to every malformed or out-of-order request."""
    return MetaError(100, details)


def unknown_object(object_id: str) -> MetaError:
    """What the Graph API answers for a path whose object (phone number id) does not exist."""
    return MetaError(
        100,
        subcode=33,
        title=f"Unsupported post request. Object with ID '{object_id}' does not exist, cannot be loaded due "
        "to missing permissions, or does not support this operation",
        error_type="GraphMethodException",
    )
