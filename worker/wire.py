"""Meta's webhook bodies as msgspec wire types: the envelope and every calling shape callhook reads.

Pure (msgspec only). Only the fields callhook uses are modelled; msgspec skips the rest without allocating, so
a field Meta adds tomorrow costs nothing and breaks nothing. Every field that Meta may omit has a default, and
JSON ``null`` is accepted wherever a field is optional (it reads as "absent"). Every type is frozen,
keyword-only and ``gc=False`` (plain trees: no reference cycles, so the collector need not track them).

A webhook whose changes are all ``calls`` changes (Meta's usual calling webhook) is decoded in one pass as
:class:`CallsEnvelope`. Any other is decoded in two layers (see ``worker/decode.py`` for why and when):

1. :class:`Envelope` down to each change, whose ``value`` stays :class:`msgspec.Raw` (a zero-copy slice of the
   body). Non-call changes are passed on as exactly these bytes.
2. The ``value`` of a ``calls`` change as :class:`CallsValue`; of a ``messages`` change as
   :class:`MessagesValue` (only the few fields of permission replies and call statuses). The ``*Items``
   variants keep each item as Raw, for the slow path that skips one malformed item instead of failing the
   whole change, and for ``CallNotice``, which forwards Meta's item unchanged.

Leniency, where Meta's pages disagree with each other or with real payloads:
- ids, phone numbers and timestamps are documented as "Integer" in tables and sent as strings in examples:
  both are accepted (``IntOrStr`` for ids, normalized to ``str`` in ``decode.py``; :data:`Seconds` for times,
  read as ints by decoders with ``strict=False``, which every decoder of these types must use).
- ``terminate.status`` is a string in real payloads and a list in one doc sample: both are accepted.
- ``direction`` and ``contacts`` may be missing.
Values Meta may extend (``event``, ``status``, ``direction``, ``sdp_type``) stay ``str`` here and are
interpreted in ``decode.py``, so a new value is skipped and counted, never a decoding error.

``entry[].time`` is not modelled: nothing reads it (call events carry their own ``timestamp``), and an unused
field could only add a way to fail.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

# Meta documents ids and numbers as "Integer" and sends them as strings: take either (normalized to str).
IntOrStr = int | str
# Unix seconds or a duration. Meta sends strings of digits where its tables say "Integer": the decoders of
# these types run with ``strict=False``, which reads "1752583107" (and 1752583107) as an int, in C. Negative
# or out-of-range values fail validation, which makes the item malformed.
Seconds = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


# --- envelope -------------------------------------------------------------------------------------------


class Change(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    field: str
    value: msgspec.Raw  # decoded again per field, or passed on as these exact bytes


class Entry(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    id: IntOrStr = ""  # the WhatsApp Business Account id
    changes: list[Change] | None = None


class Envelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    object_type: str = msgspec.field(name="object")
    entry: list[Entry]


# --- shared value parts ---------------------------------------------------------------------------------


class Metadata(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The business phone number a change is about."""

    phone_number_id: IntOrStr
    display_phone_number: IntOrStr = ""


class Profile(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    name: str | None = None


class Contact(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """``contacts[]``: since 2026 a user with a WhatsApp username may come with ``user_id`` (BSUID) and
    ``username`` and without ``wa_id`` (no phone number at all)."""

    wa_id: IntOrStr | None = None
    profile: Profile | None = None
    user_id: str | None = None
    parent_user_id: str | None = None
    username: str | None = None


# --- field = "calls" ------------------------------------------------------------------------------------


class Session(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    sdp_type: str | None = None
    sdp: str | None = None


class WebRtc(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    sdp: str | None = None


class Connection(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Legacy duplicate of the answer SDP on business-initiated ``connect`` (``connection.webrtc.sdp``)."""

    webrtc: WebRtc | None = None


class MediaRef(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """``call_recording.audio`` / ``call_transcript.document``: a media id and a short-lived URL."""

    id: str | None = None
    sha256: str | None = None
    mime_type: str | None = None
    url: str | None = None


class MediaHolder(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    type: str | None = None
    audio: MediaRef | None = None
    document: MediaRef | None = None


class CallItem(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One ``value.calls[]`` item: every event shares this shape, each uses some of the fields."""

    id: str | None = None
    event: str | None = None
    from_: IntOrStr | None = msgspec.field(name="from", default=None)
    to: IntOrStr | None = None
    timestamp: Seconds | None = None
    direction: str | None = None
    # connect
    session: Session | None = None
    connection: Connection | None = None
    deeplink_payload: str | None = None
    cta_payload: str | None = None
    # terminate
    status: str | list[str] | None = None
    start_time: Seconds | None = None
    end_time: Seconds | None = None
    duration: Seconds | None = None
    biz_opaque_callback_data: str | None = None
    # 2026: business-scoped user ids (BSUIDs); ``from``/``to`` may be missing for a username-only user
    from_user_id: str | None = None
    from_parent_user_id: str | None = None
    to_user_id: str | None = None
    to_parent_user_id: str | None = None
    # call_recording_available / call_transcription_available
    call_recording: MediaHolder | None = None
    call_transcript: MediaHolder | None = None
    recording: MediaRef | None = None  # early samples: the media object directly under these names
    transcription: MediaRef | None = None


class StatusItem(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One ``value.statuses[]`` item (``type == "call"``: a business-initiated call ringing, accepted ...)."""

    id: str | None = None
    type: str | None = None
    status: str | None = None
    timestamp: Seconds | None = None
    recipient_id: IntOrStr | None = None
    biz_opaque_callback_data: str | None = None
    recipient_user_id: str | None = None
    recipient_parent_user_id: str | None = None


class ErrorData(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    details: str | None = None


class CallError(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One ``value.errors[]`` item of a ``terminate`` (a failed call)."""

    code: int | None = None
    message: str | None = None
    title: str | None = None  # some pages name the human-readable text ``title``
    error_data: ErrorData | None = None


class CallsValue(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    metadata: Metadata
    contacts: list[Contact] | None = None
    calls: list[CallItem] | None = None
    statuses: list[StatusItem] | None = None
    errors: list[CallError] | None = None


class CallsValueItems(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """:class:`CallsValue` with every item left undecoded: the per-item slow path."""

    metadata: Metadata
    contacts: list[msgspec.Raw] | None = None
    calls: list[msgspec.Raw] | None = None
    statuses: list[msgspec.Raw] | None = None
    errors: list[msgspec.Raw] | None = None


# --- one pass: a webhook whose changes are all calls changes -------------------------------------------


class CallsChange(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    field: str  # checked in decode.py: any other field sends the webhook down the two-layer route
    value: CallsValue


class CallsEntry(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    id: IntOrStr = ""
    changes: list[CallsChange] | None = None


class CallsEnvelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """:class:`Envelope` with every change typed as a calls change: the whole webhook in one pass."""

    object_type: str = msgspec.field(name="object")
    entry: list[CallsEntry]


# --- field = "messages" (the parts about calls) ---------------------------------------------------------


class PermissionReplyBody(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    response: str | None = None
    is_permanent: bool | None = None
    expiration_timestamp: Seconds | None = None
    response_source: str | None = None


class Interactive(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    type: str | None = None
    call_permission_reply: PermissionReplyBody | None = None


class MessageContext(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    id: str | None = None  # the request's wamid, or the call's wacid when a callback granted permission


class MessageItem(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One ``value.messages[]`` item, reduced to what a call permission reply needs."""

    id: str | None = None
    from_: IntOrStr | None = msgspec.field(name="from", default=None)
    timestamp: Seconds | None = None
    interactive: Interactive | None = None
    from_user_id: str | None = None
    from_parent_user_id: str | None = None
    context: MessageContext | None = None


class MessagesValue(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    metadata: Metadata | None = None
    contacts: list[Contact] | None = None
    messages: list[MessageItem] | None = None
    statuses: list[StatusItem] | None = None


class MessagesValueItems(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    metadata: Metadata | None = None
    messages: list[msgspec.Raw] | None = None
    statuses: list[msgspec.Raw] | None = None


# --- field = "account_update" (the parts about calling restrictions) ----------------------------------


class RestrictionInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    restriction_type: str | None = None
    expiration: Seconds | None = None


class ViolationInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    violation_type: str | None = None


class AccountUpdateValue(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """``ACCOUNT_RESTRICTION`` (``restriction_info[]``, or one ``restriction_type`` as the 2026 calling page
    words it) and ``ACCOUNT_VIOLATION`` (``violation_info.violation_type``); everything else is ignored."""

    event: str | None = None
    restriction_info: list[RestrictionInfo] | None = None
    restriction_type: str | None = None
    expiration: Seconds | None = None
    violation_info: ViolationInfo | None = None
    violation_type: str | None = None
