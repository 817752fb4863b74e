"""Webhook bodies exactly as Meta shapes them (see shared/reference/whatsapp-calling.md). Pure.

An :class:`Update` is one item Meta would report (a call event, a call status, a message) together with the
change it belongs to. :func:`envelope` puts one or many updates into one body
(``entry[] x changes[] x items``), grouping items of the same business number and field into one change as
Meta does when it batches, and :func:`encode` serialises it the way Meta does: compact, ASCII-only
(``\\u00e4``), slashes escaped (``\\/``). :func:`signature` is the ``X-Hub-Signature-256`` value over those
exact bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

OBJECT = "whatsapp_business_account"
USER_INITIATED = "USER_INITIATED"
BUSINESS_INITIATED = "BUSINESS_INITIATED"
_ITEM_KEYS = ("calls", "statuses", "messages")


@dataclass(frozen=True, slots=True)
class BusinessNumber:
    phone_number_id: str
    display_phone_number: str


@dataclass(frozen=True, slots=True)
class Contact:
    """A WhatsApp user. Since 2026 a user with a username may be known by ``user_id`` (BSUID) only: then
    ``wa_id`` is "" and no phone number appears in any webhook about them."""

    wa_id: str
    name: str | None = None
    user_id: str | None = None
    username: str | None = None

    @property
    def ref(self) -> str:
        """How the business addresses them: the phone number, else the user id."""
        return self.wa_id or self.user_id or ""


@dataclass(frozen=True, slots=True)
class Update:
    """One webhook item and where it goes: ``entry[id=waba_id].changes[field].value[items_key][]``."""

    kind: str  # "connect" | "terminate" | "status" | "message": what the journal calls it
    waba_id: str
    number: BusinessNumber
    field: str  # "calls" | "messages"
    items_key: str  # "calls" | "statuses" | "messages"
    item: dict[str, Any]
    call_id: str | None = None
    contact: Contact | None = None
    errors: tuple[dict[str, Any], ...] = ()


def new_call_id() -> str:
    """``wacid.`` + URL-safe base64, like Meta's (``wacid.HBgLMTIx...``, sometimes padded)."""
    return "wacid." + base64.urlsafe_b64encode(b"\x1c\x18\x0b" + os.urandom(25)).decode("ascii")


def new_message_id() -> str:
    return "wamid." + base64.b64encode(b"\x15\x02\x00\x11\x18\x12" + os.urandom(18)).decode("ascii")


def call_connect(
    *,
    waba_id: str,
    number: BusinessNumber,
    call_id: str,
    user: Contact,
    direction: str,
    timestamp: int,
    sdp_type: str,
    sdp: str,
    biz_opaque_callback_data: str | None = None,
) -> Update:
    """``connect``: the user's offer (USER_INITIATED) or the user's answer (BUSINESS_INITIATED)."""
    item = _call_item(call_id, "connect", direction, number, user, timestamp)
    item["session"] = {"sdp_type": sdp_type, "sdp": sdp}
    if biz_opaque_callback_data is not None:
        item["biz_opaque_callback_data"] = biz_opaque_callback_data
    return Update("connect", waba_id, number, "calls", "calls", item, call_id, user)


def call_terminate(
    *,
    waba_id: str,
    number: BusinessNumber,
    call_id: str,
    user: Contact,
    direction: str,
    timestamp: int,
    status: str,
    start_time: int | None = None,
    end_time: int | None = None,
    biz_opaque_callback_data: str | None = None,
    error: tuple[int, str, str] | None = None,
) -> Update:
    """``terminate``; ``start_time``/``end_time``/``duration`` only when the call was picked up."""
    item = _call_item(call_id, "terminate", direction, number, user, timestamp)
    item["status"] = status
    if start_time is not None and end_time is not None:
        item["start_time"] = str(start_time)
        item["end_time"] = str(end_time)
        item["duration"] = max(0, end_time - start_time)
    if biz_opaque_callback_data is not None:
        item["biz_opaque_callback_data"] = biz_opaque_callback_data
    errors: tuple[dict[str, Any], ...] = ()
    if error is not None:
        code, title, details = error
        errors = (
            {
                "code": code,
                "message": title,
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
                "error_data": {"details": details},
            },
        )
    return Update("terminate", waba_id, number, "calls", "calls", item, call_id, user, errors)


def call_status(
    *,
    waba_id: str,
    number: BusinessNumber,
    call_id: str,
    user: Contact,
    status: str,
    timestamp: int,
    biz_opaque_callback_data: str | None = None,
) -> Update:
    """``statuses[]`` of a business-initiated call: RINGING, ACCEPTED or REJECTED."""
    item: dict[str, Any] = {"id": call_id, "type": "call", "status": status, "timestamp": str(timestamp)}
    if user.wa_id:
        item["recipient_id"] = user.wa_id
    if user.user_id:
        item["recipient_user_id"] = user.user_id
    if biz_opaque_callback_data is not None:
        item["biz_opaque_callback_data"] = biz_opaque_callback_data
    return Update(f"status:{status}", waba_id, number, "calls", "statuses", item, call_id, user)


def permission_reply(
    *,
    waba_id: str,
    number: BusinessNumber,
    user: Contact,
    request_message_id: str,
    timestamp: int,
    response: str,
    is_permanent: bool = False,
    expiration_timestamp: int | None = None,
) -> Update:
    """The user's answer to an interactive ``call_permission_request`` (``field: messages``)."""
    reply: dict[str, Any] = {"response": response}
    if response == "accept":
        reply["is_permanent"] = is_permanent
        if expiration_timestamp is not None:
            reply["expiration_timestamp"] = expiration_timestamp
    reply["response_source"] = "user_action"
    item: dict[str, Any] = {
        "context": {"from": number.display_phone_number, "id": request_message_id},
        **_user_fields("from", user),
        "id": new_message_id(),
        "timestamp": str(timestamp),
        "type": "interactive",
        "interactive": {"type": "call_permission_reply", "call_permission_reply": reply},
    }
    return Update("message", waba_id, number, "messages", "messages", item, None, user)


def _call_item(
    call_id: str, event: str, direction: str, number: BusinessNumber, user: Contact, timestamp: int
) -> dict[str, Any]:
    """What every ``calls[]`` item carries; ``from`` is whoever placed the call. A username-only user has
    no ``from``/``to``, only ``from_user_id``/``to_user_id`` (2026)."""
    business = (
        {"to": number.display_phone_number}
        if direction == USER_INITIATED
        else {"from": number.display_phone_number}
    )
    side = "from" if direction == USER_INITIATED else "to"
    item: dict[str, Any] = {"id": call_id, **_user_fields(side, user), **business}
    item.update({"event": event, "timestamp": str(timestamp), "direction": direction})
    return item


def _user_fields(side: str, user: Contact) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if user.wa_id:
        fields[side] = user.wa_id
    if user.user_id:
        fields[f"{side}_user_id"] = user.user_id
    return fields


def call_media_available(
    *,
    waba_id: str,
    number: BusinessNumber,
    call_id: str,
    user: Contact,
    direction: str,
    kind: str,
    media_id: str,
    sha256: str,
    mime_type: str,
    url: str,
    timestamp: int,
) -> Update:
    """``call_recording_available`` (kind ``recording``) / ``call_transcription_available``."""
    item = _call_item(call_id, "", direction, number, user, timestamp)
    media = {"id": media_id, "sha256": sha256, "mime_type": mime_type, "url": url}
    if kind == "recording":
        item["event"] = "call_recording_available"
        item["call_recording"] = {"type": "audio", "audio": media}
    else:
        item["event"] = "call_transcription_available"
        item["call_transcript"] = {"type": "document", "document": media}
    item.pop("direction", None)
    return Update(item["event"], waba_id, number, "calls", "calls", item, call_id, user)


def envelope(updates: Sequence[Update]) -> dict[str, Any]:
    """One webhook body holding ``updates``: one entry per WABA, one change per (number, field) run.

    Items carrying ``errors`` get a change of their own, because ``errors`` sits on the change's value and
    would otherwise be read as belonging to the other items.
    """
    entries: dict[str, list[dict[str, Any]]] = {}
    open_changes: dict[tuple[str, str, str], dict[str, Any]] = {}
    for update in updates:
        changes = entries.setdefault(update.waba_id, [])
        key = (update.waba_id, update.number.phone_number_id, update.field)
        value = None if update.errors or not update.items_key else open_changes.get(key)
        if value is None:
            value = _new_value(update)
            changes.append({"value": value, "field": update.field})
            if not update.errors:
                open_changes[key] = value
        _add_item(value, update)
    return {
        "object": OBJECT,
        "entry": [{"id": waba_id, "changes": changes} for waba_id, changes in entries.items()],
    }


def _new_value(update: Update) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": update.number.display_phone_number,
            "phone_number_id": update.number.phone_number_id,
        },
    }
    if update.errors:
        value["errors"] = list(update.errors)
    return value


def _add_item(value: dict[str, Any], update: Update) -> None:
    if not update.items_key:  # a change whose value is the item itself (account_update)
        value.clear()
        value.update(update.item)
        return
    if update.contact is not None:
        contacts: list[dict[str, Any]] = value.setdefault("contacts", [])
        contact = _contact_json(update.contact)
        if contact not in contacts:
            contacts.append(contact)
    value.setdefault(update.items_key, []).append(update.item)
    # Keep Meta's key order: metadata, contacts, items, errors.
    for key in (*_ITEM_KEYS, "errors"):
        if key in value:
            value[key] = value.pop(key)


def _contact_json(contact: Contact) -> dict[str, Any]:
    json_contact: dict[str, Any] = {}
    if contact.name is not None:
        json_contact["profile"] = {"name": contact.name}
    if contact.wa_id:
        json_contact["wa_id"] = contact.wa_id
    if contact.user_id:
        json_contact["user_id"] = contact.user_id
    if contact.username:
        json_contact["username"] = contact.username
    return json_contact


def encode(body: dict[str, Any], *, escape_slashes: bool = True) -> bytes:
    """Meta's serialisation: compact, escaped unicode, and ``/`` written as ``\\/``."""
    text = json.dumps(body, ensure_ascii=True, separators=(",", ":"))
    if escape_slashes:
        text = text.replace("/", "\\/")
    return text.encode("ascii")


def signature(body: bytes, app_secret: str) -> str:
    """``X-Hub-Signature-256`` header value: ``sha256=`` + lowercase hex HMAC-SHA256 of the exact bytes."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def signature_sha1(body: bytes, app_secret: str) -> str:
    """The legacy ``X-Hub-Signature`` header Meta still sends alongside."""
    return "sha1=" + hmac.new(app_secret.encode(), body, hashlib.sha1).hexdigest()


def kinds(updates: Iterable[Update]) -> tuple[str, ...]:
    return tuple(update.kind for update in updates)


def account_restriction(
    *, waba_id: str, number: BusinessNumber, restriction_type: str, expiration: int
) -> Update:
    """``account_update`` ``ACCOUNT_RESTRICTION`` (e.g. RESTRICTED_BUSINESS_INITIATED_CALLING for 7 days)."""
    item = {
        "phone_number": number.display_phone_number,
        "event": "ACCOUNT_RESTRICTION",
        "restriction_info": [{"restriction_type": restriction_type, "expiration": expiration}],
    }
    return Update("account_update", waba_id, number, "account_update", "", item)
