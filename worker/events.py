"""Normalized events: what the router makes of Meta's webhooks, and what a call's owner consumes.

Pure (msgspec only). The router publishes each per-call event to ``callhook.calls`` (routing key = call id) as
JSON with a ``type`` tag; the owner decodes it with :data:`call_event_decoder`. Values Meta may extend
(``status``) are normalized to lower case and kept as ``str``, so a new value is counted, never poison.
Times are unix seconds; ``0`` means the webhook did not say.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Direction = Literal["incoming", "outgoing"]


class CallConnect(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="connect"):
    """``connect``: an incoming call's offer, or the answer to a call the business placed."""

    call_id: str
    phone_number_id: str
    direction: Direction
    caller: str  # Meta's ``from`` if it is a phone number, else "" (username-only user: caller_user_id)
    callee: str  # Meta's ``to`` (same rule)
    timestamp: int
    sdp_type: str  # "offer" (incoming) or "answer" (outgoing)
    sdp: str
    display_phone_number: str = ""
    waba_id: str = ""
    contact_name: str | None = None
    contact_wa_id: str | None = None
    biz_opaque_callback_data: str | None = None
    deeplink_payload: str | None = None
    cta_payload: str | None = None
    # 2026 usernames: business-scoped user ids (BSUIDs) and the contact's username, whichever Meta sent
    caller_user_id: str | None = None
    caller_parent_user_id: str | None = None
    callee_user_id: str | None = None
    callee_parent_user_id: str | None = None
    contact_user_id: str | None = None
    contact_username: str | None = None


class CallTerminate(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="terminate"):
    """``terminate``: the call ended on Meta's side (either party hung up, or it failed)."""

    call_id: str
    phone_number_id: str
    timestamp: int
    status: str  # "completed" | "failed" | whatever Meta adds, lower case
    direction: Direction | None = None
    start_time: int | None = None
    end_time: int | None = None
    duration_seconds: int | None = None
    biz_opaque_callback_data: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    waba_id: str = ""
    caller: str = ""
    callee: str = ""
    caller_user_id: str | None = None
    callee_user_id: str | None = None


class CallStatus(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="status"):
    """``statuses[]`` of a business-initiated call: ringing, accepted, rejected (lower case)."""

    call_id: str
    phone_number_id: str
    timestamp: int
    status: str
    recipient_id: str | None = None
    biz_opaque_callback_data: str | None = None
    waba_id: str = ""
    recipient_user_id: str | None = None
    recipient_parent_user_id: str | None = None


class HangupRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="hangup"):
    """Not from Meta: an integrator asked (HTTP API) that a live call be ended by its owner."""

    call_id: str
    request_id: str = ""
    timestamp: int = 0


class TransferRequestEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="transfer"):
    """Not from Meta: an integrator (HTTP API) asked that the call's app hand the caller to a person."""

    call_id: str
    queue: str
    reason: str = ""
    context: dict[str, str] = {}
    request_id: str = ""
    timestamp: int = 0


CallEvent = CallConnect | CallTerminate | CallStatus | HangupRequest | TransferRequestEvent


class CaptureRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Meta's ``recording`` / ``transcription`` opt-in, as a dial may override it (worker/capture.py)."""

    status: str  # "ENABLED" | "DISABLED"
    purpose: str | None = None
    announcement_language: str | None = None


class DialRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Place a call (``callhook.dials``), from the ingress API or ``callhook dial`` (ingress/commands.py).

    ``to`` is the user's phone number, ``recipient`` their business-scoped user id (BSUID): at least one."""

    request_id: str
    to: str = ""
    phone_number_id: str
    permission: Literal["skip", "check", "request"] = "skip"
    app: str | None = None
    biz_opaque_callback_data: str | None = None
    requested_at: float = 0.0
    recipient: str | None = None
    recording: CaptureRequest | None = None
    transcription: CaptureRequest | None = None


class CallNotice(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A known call event nobody has to act on (``call_created``, recording/transcription available).

    Published to ``callhook.events`` as ``call.<event>`` for integrators, with Meta's item unchanged.
    """

    call_id: str
    event: str
    phone_number_id: str
    timestamp: int
    item: msgspec.Raw


class CallMediaReady(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="media_ready"):
    """``call_recording_available`` (kind ``recording``) or ``call_transcription_available`` (``transcript``):
    Meta's recording or transcript of an ended call, a media id and a URL valid for 5 minutes."""

    call_id: str
    phone_number_id: str
    kind: Literal["recording", "transcript"]
    media_id: str
    timestamp: int
    sha256: str | None = None  # base64
    mime_type: str | None = None
    url: str | None = None
    caller: str = ""
    caller_user_id: str | None = None
    caller_parent_user_id: str | None = None
    callee: str = ""
    waba_id: str = ""


class PermissionReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A user's answer to a call permission request (an interactive ``messages`` reply)."""

    phone_number_id: str
    user: str  # the user's wa id (``from`` of the message), "" for a username-only user (see user_id)
    response: str  # "accept" | "reject" (lower case)
    timestamp: int
    is_permanent: bool = False
    expiration_timestamp: int | None = None
    response_source: str | None = None
    message_id: str = ""
    user_id: str | None = None
    parent_user_id: str | None = None
    context_id: str | None = None  # the request's wamid, or the wacid of the call that granted it


class AccountAlert(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An ``account_update`` that restricts (``restriction``) or warns about (``violation``) the account, e.g.
    ``RESTRICTED_BUSINESS_INITIATED_CALLING`` for 7 days after poor call feedback. Counted
    (``callhook_account_restrictions_total``), alerted on, and published as ``account.<kind>``."""

    kind: Literal["restriction", "violation"]
    type: str  # Meta's restriction_type / violation_type, upper case as sent
    waba_id: str = ""
    expiration: int | None = None

    @property
    def calling(self) -> bool:
        return "CALLING" in self.type or "CALL_BUTTON" in self.type


class Passthrough(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A change that is not about calls (messages, account updates, ...): passed on under its ``field``."""

    field: str
    value: msgspec.Raw
    waba_id: str = ""


class Skipped(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An item decoding chose to skip (unknown call event, item without an id): counted, never fatal."""

    field: str
    kind: str  # e.g. "unknown_call_event:<event>", "call_without_id"
    call_id: str | None = None


Event = (
    CallConnect
    | CallTerminate
    | CallStatus
    | CallNotice
    | CallMediaReady
    | PermissionReply
    | AccountAlert
    | Passthrough
    | Skipped
)

call_event_encoder = msgspec.json.Encoder()
call_event_decoder: msgspec.json.Decoder[CallEvent] = msgspec.json.Decoder(CallEvent)
dial_decoder: msgspec.json.Decoder[DialRequest] = msgspec.json.Decoder(DialRequest)
media_ready_decoder: msgspec.json.Decoder[CallMediaReady] = msgspec.json.Decoder(CallMediaReady)
