"""Meta's calling error codes: a name and what to do about each one. Pure.

Every code of Meta's 2026 calling reference (138000-138023 and the 13xxxx codes around calling) has a
low-cardinality ``name`` (a metric label, an ``error_name`` in lifecycle events) and an ``action``:

- ``retry``: transient at Meta or in the network; the same call can be tried again later (throttle first
  for the rate limits);
- ``stop``: this user cannot be called now (no permission, a per-user limit, uncallable): do not retry
  until something changes (a permission granted, the limit's window passed: 138012 says when);
- ``alert``: the business's setup or standing is wrong (calling disabled, restricted, billing, SIP,
  media not reaching Meta's relay): no call will work until a human fixes it;
- ``fix``: the request itself was wrong (a bug on our side).

The codes that arrive in terminate webhooks (138019-138023) are mapped like the others. Codes 138008,
138010, 138011 and 138016 are in no source (the reference says "not found"); any code not listed here is
``unknown`` with action ``alert``, so a new code is seen, not swallowed. Which action the HTTP client takes
*within* a request's deadline is worker/graph.py's business; this table is the advice beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class Action(StrEnum):
    RETRY = "retry"
    STOP = "stop"
    ALERT = "alert"
    FIX = "fix"


@dataclass(frozen=True, slots=True)
class MetaCode:
    code: int | None
    name: str
    action: Action
    meaning: str


_R, _S, _A, _F = Action.RETRY, Action.STOP, Action.ALERT, Action.FIX

CODES: Final[dict[int, MetaCode]] = {
    code: MetaCode(code, name, action, meaning)
    for code, name, action, meaning in (
        (100, "invalid_parameter", _F, "invalid parameter (SDP validation included)"),
        (613, "permission_api_rate_limit", _R, "call permission status API limit hit: poll less"),
        (131009, "voice_call_unsupported", _F, "interactive voice_call not supported for the sender"),
        (131026, "recipient_app_outdated", _S, "permission request sent to an old app version"),
        (131030, "recipient_not_allowed", _F, "recipient not on the test number's allowed list"),
        (131044, "no_payment_method", _A, "no valid payment method on the account"),
        (131055, "number_uses_sip", _A, "Graph calling action on a SIP-enabled number"),
        (138000, "calling_not_enabled", _A, "calling is not enabled on the number"),
        (138001, "not_callable", _S, "receiver cannot be called (no WhatsApp, old client, terms)"),
        (138002, "concurrent_call_limit", _R, "1,000 concurrent calls on the number"),
        (138003, "duplicate_call", _R, "a call with this user is already ongoing"),
        (138004, "connection_error", _R, "connection error at Meta"),
        (138005, "call_rate_limit", _R, "call rate limit of the number"),
        (138006, "no_permission", _S, "no approved call permission from the user"),
        (138007, "connect_timeout", _R, "SDP offer/answer not applied in time"),
        (138009, "permission_request_limit", _S, "permission request limit for this user"),
        (138012, "callee_limit", _S, "connected business-initiated calls per user per 24 h reached"),
        (138013, "calling_unavailable", _A, "business-initiated calling not available in this country"),
        (138014, "low_quality_disabled", _A, "calling temporarily disabled for low quality"),
        (138015, "cannot_enable_calling", _A, "calling cannot be enabled: messaging limit under 2000"),
        (138017, "permanent_permission_exists", _S, "a permanent permission exists: do not ask again"),
        (138018, "prerequisites_missing", _A, "technical prerequisites: SIP, or an app subscribed to calls"),
        (138019, "call_setup_failed", _R, "call setup failed on the client"),
        (138020, "relay_connection_failed", _R, "relay connection failed"),
        (138021, "media_receive_timeout", _A, "Meta's relay received no media from us"),
        (138022, "media_transmit_timeout", _R, "media transmit timeout"),
        (138023, "no_media_after_accept", _R, "accepted, but no media signals"),
    )
}
# Codes Meta puts in terminate webhooks rather than in request errors.
TERMINATE_CODES: Final = frozenset({138019, 138020, 138021, 138022, 138023})


def describe(code: int | None) -> MetaCode:
    """The name and action of a code; ``unknown``/``alert`` for one Meta has not documented."""
    if code is None:
        return MetaCode(None, "none", Action.FIX, "no code")
    return CODES.get(code) or MetaCode(code, "unknown", Action.ALERT, f"undocumented code {code}")
