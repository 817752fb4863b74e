"""Meta's webhook bytes -> normalized events (``worker/events.py``), in one pure function.

:func:`decode_webhook` either returns a list of events or raises :class:`~worker.errors.PoisonWebhook`; it
never raises anything else, whatever the bytes (``tests/unit/test_decode_fuzz.py`` holds it to that).

Output, in document order, for every entry x change x item:

- ``field == "calls"``: ``calls[]`` -> :class:`CallConnect` / :class:`CallTerminate` /
  :class:`CallMediaReady` (``call_recording_available``, ``call_transcription_available``) /
  :class:`CallNotice` (``call_created``; Meta's item unchanged), then ``statuses[]`` -> :class:`CallStatus`.
  Calls changes are consumed here, never passed through.
- any other field: one :class:`Passthrough` per change, whose ``value`` is the exact bytes Meta sent. An
  ``account_update`` change also yields one :class:`AccountAlert` per restriction or violation it names.
  A ``messages`` change also yields, after its Passthrough, one :class:`PermissionReply` per
  ``call_permission_reply`` and one :class:`CallStatus` per ``statuses[]`` item of ``type == "call"``.
  Message statuses and every other message stay in the Passthrough only.

Poison or skip (the rule)
-------------------------
A webhook is *poison* (dead-lettered whole, with the reason) when it is not the envelope this module reads:

- not JSON (including invalid UTF-8, lone UTF-16 surrogates, nesting too deep), top level not an object;
- ``object`` missing or not ``"whatsapp_business_account"``: callhook subscribes only WhatsApp Business
  Account fields, so another object (``page``, ``instagram``) is a misrouted subscription that a human should
  find in the dead-letter queue, not a count of dropped items;
- ``entry`` missing or not a list; an entry, change, ``changes``, ``field`` or ``value`` missing or of the
  wrong type (an entry's ``changes`` may be missing or null: it has nothing to say);
- the ``value`` of a ``calls`` change is not an object, its ``calls`` / ``statuses`` / ``contacts`` /
  ``errors`` are not lists, or ``metadata.phone_number_id`` is missing: no call of it could be answered, and a
  change shaped like that means Meta's format changed, which must be seen, not silently skipped.

Below that level everything is per item, and one item never blocks the others of a batch (a POST carries up
to 1,000 updates): an item that cannot be used becomes a :class:`Skipped` with a low-cardinality ``kind`` (a
metric label) and, when readable, the call id. Kinds:

- ``malformed_call_item``, ``malformed_call_status``, ``malformed_contact``, ``malformed_call_error``,
  ``malformed_permission_reply``: a field of the wrong JSON type (e.g. ``"id": 5``, ``"session": "x"``), or
  a time that is not a non-negative integer (as a number or a numeric string, see ``wire.Seconds``);
- ``call_without_id``, ``call_without_event``, ``unknown_call_event:<event>``, ``unknown_status_type:<type>``;
- ``sdp_too_large``: an SDP over :data:`MAX_SDP_CHARS` (64 KiB; Meta's are a few KB);
- ``connect_without_sdp``, ``connect_without_sdp_type``, ``unknown_sdp_type``, ``connect_direction_mismatch``
  (``direction`` contradicts ``sdp_type``: we could not tell whether to answer or to apply the SDP);
- ``recording_without_media``, ``transcript_without_media`` (a media-ready event without a media id);
- ``call_status_without_status``, ``permission_reply_without_user``, ``permission_reply_without_response``,
  ``no_phone_number_id`` (call content in a ``messages`` change without ``metadata``);
- ``malformed_messages_value``: a ``messages`` value that does not decode and whose bytes mention a call
  (``_CALL_MARKERS``); its Passthrough is still emitted, since judging messages is not callhook's business,
  and an undecodable messages value or item that does not mention a call is not counted at all.

Event and type names inside kinds are kept only when short and ``[a-z0-9_]``, else ``other``.

Normalization: ``event``, ``status``, ``sdp_type`` and ``response`` are lower-cased. ``direction``
``USER_INITIATED`` -> ``incoming``, ``BUSINESS_INITIATED`` -> ``outgoing`` in any case; when missing or
unknown it is inferred from ``sdp_type`` (offer -> incoming, answer -> outgoing), and ``sdp_type`` from
``direction`` when only the legacy SDP is present. ``session.sdp`` is preferred over the legacy
``connection.webrtc.sdp``. A ``terminate`` status given as a list takes its first element; missing ->
``unknown``. Times become ints; a missing ``timestamp`` is ``0``. A call's contact is the one whose
``wa_id`` (or ``user_id``) is the call's ``from`` (or ``from_user_id``), else its ``to``, else the only
contact if the change has only one call (in a
batch, one contact cannot be told to belong to a call it does not match). ``value.errors[0]`` (``message``,
else ``title``, then ``: details``) goes to the change's terminate only when the change has exactly one
terminate and no unreadable item that might be another: a wrongly attributed failure is worse than none.

Routes (how, not what: both give the same output, ``tests/unit/test_decode_routes.py`` decodes corpus and
generated bodies both ways):

- one pass: a body that ends the way Meta's calling webhooks end (compact JSON, ``value`` before ``field``:
  ``"field":"calls"}]}]}``, an ``endswith``: < 0.1 us) is decoded whole as :class:`wire.CallsEnvelope`, every
  change typed as a calls change. If that decode fails, or a change's ``field`` is not ``calls``, or an item
  is a notice (which forwards Meta's item bytes), the result is dropped and the body takes the other route,
  which then decides everything (poison, skipped items, passthrough bytes). So this route returns only what
  the other would, for about 30% less parsing (connect 2.3 vs 3.5 us, batch of 50 calls 45 vs 66 us). A
  webhook whose last change is a calls change but another is not pays for a dropped pass; checking every
  ``field`` first would mean searching the whole body (``bytes.count``: 24 us on the batch of 50, half of its
  parsing);
- two layers, for everything else: the envelope with each change's ``value`` kept as :class:`msgspec.Raw` (a
  skip scan that checks JSON syntax and allocates nothing: a passthrough gets Meta's exact bytes for free),
  then each ``calls`` value decoded typed, each ``messages`` value into the few fields a permission reply or
  call status needs (faster than searching its bytes for call markers first). When the typed decode of a calls
  value fails, the slow path decodes item by item to find the items to skip (a quarter slower on batches, so
  only then).

Performance (``bench/decode.py --stages --alternatives``, CPU time; figures in ``docs/benchmarks.md``, section
"Decoding"). The normalization works per change once (:class:`_Change`: positional, the contact map only when
a change has more than one call or contact, the error text of the single terminate), looks Meta's own
spellings up directly (``USER_INITIATED``, ``offer``, ``connect``) and lower-cases only other spellings,
converts ids with ``str()`` instead of a Python helper, and calls one function per item; that cut it by a
third (~45 -> 31 us on the batch of 50). Measured and not taken: keeping each SDP as Raw until the router
re-encodes it (saves 0.6 us of parsing per connect, 8 us per batch of 50, about 10% of this function, but
needs a second connect event type with a Raw SDP for the router, and invalid UTF-8 in an SDP would then reach
the owner instead of being caught here; the router spends ~10 us building each event's AMQP message before any
I/O); decoding to dicts, then converting (slower, and a passthrough is no longer byte-exact); struct fields in
Meta's key order, plain ``int``/``str`` instead of unions, a dispatch dict for events (each within 3%, noise);
the garbage collector (no effect: wire structs are ``gc=False`` and msgspec leaves events of plain fields
untracked). What is left is mostly parsing: msgspec reading the bytes at all (the ``validate_only`` floor) is
40% of it on a batch, materializing 1.5 KB SDP strings another 20%.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, TypeVar

import msgspec

from worker import wire
from worker.errors import PoisonWebhook
from worker.events import (
    AccountAlert,
    CallConnect,
    CallMediaReady,
    CallNotice,
    CallStatus,
    CallTerminate,
    Direction,
    Event,
    Passthrough,
    PermissionReply,
    Skipped,
)

__all__ = ["NOTICE_EVENTS", "WABA_OBJECT", "decode_webhook"]

WABA_OBJECT: Final = "whatsapp_business_account"
NOTICE_EVENTS: Final = frozenset({"call_created"})
MEDIA_EVENTS: Final = {"call_recording_available": "recording", "call_transcription_available": "transcript"}

# Keyed by Meta's spelling and by lower case: one dict hit for what Meta sends, .lower() only for odd cases.
_DIRECTIONS: Final[dict[str | None, Direction]] = {
    "USER_INITIATED": "incoming",
    "user_initiated": "incoming",
    "BUSINESS_INITIATED": "outgoing",
    "business_initiated": "outgoing",
}
_SDP_DIRECTIONS: Final[dict[str, Direction]] = {"offer": "incoming", "answer": "outgoing"}
# Bytes that a messages value carrying call content contains (Meta escapes only non-ASCII characters; JSON
# allows escaping any, so a value with an escape counts as a maybe).
_CALL_MARKERS: Final = (b"call_permission_reply", b'"call"', b"\\u")
# How Meta's calling webhooks end (compact JSON, ``field`` after ``value``): the hint for the one-pass route.
_CALLS_TAIL: Final = b'"field":"calls"}]}]}'

# What msgspec raises on bad input: ValidationError and DecodeError, UnicodeDecodeError for invalid UTF-8 in a
# string it decodes, RecursionError past its depth limit.
_DECODE_ERRORS: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)

# Reused decoders; strict=False lets msgspec read Meta's string timestamps as ints (wire.Seconds).
_calls_envelope: Final = msgspec.json.Decoder(wire.CallsEnvelope, strict=False)
_envelope: Final = msgspec.json.Decoder(wire.Envelope)
_calls: Final = msgspec.json.Decoder(wire.CallsValue, strict=False)
_calls_items: Final = msgspec.json.Decoder(wire.CallsValueItems, strict=False)
_messages: Final = msgspec.json.Decoder(wire.MessagesValue, strict=False)
_messages_items: Final = msgspec.json.Decoder(wire.MessagesValueItems, strict=False)
_call_item: Final = msgspec.json.Decoder(wire.CallItem, strict=False)
_status_item: Final = msgspec.json.Decoder(wire.StatusItem, strict=False)
_contact: Final = msgspec.json.Decoder(wire.Contact, strict=False)
_call_error: Final = msgspec.json.Decoder(wire.CallError, strict=False)
_message_item: Final = msgspec.json.Decoder(wire.MessageItem, strict=False)

_T = TypeVar("_T")
MAX_SDP_CHARS: Final = 65_536


def decode_webhook(body: bytes) -> list[Event]:
    """All events of one webhook body, in document order; raises :class:`PoisonWebhook` and nothing else."""
    if body.endswith(_CALLS_TAIL):
        events = _calls_only(body)
        if events is not None:
            return events
    envelope = _decode_envelope(body)
    events = []
    for entry_index, entry in enumerate(envelope.entry):
        waba_id = str(entry.id)
        for change_index, change in enumerate(entry.changes or ()):
            if change.field == "calls":
                _calls_change(change.value, waba_id, (entry_index, change_index), events)
                continue
            events.append(Passthrough(field=change.field, value=change.value, waba_id=waba_id))
            if change.field == "messages":
                _messages_change(change.value, waba_id, events)
            elif change.field == "account_update":
                _account_update(change.value, waba_id, events)
    return events


def _calls_only(body: bytes) -> list[Event] | None:
    """The one-pass route: the events of a webhook made only of calls changes that all decode typed, else
    None (the two-layer route then decides everything: poison, skipped items, passthrough bytes)."""
    try:
        envelope = _calls_envelope.decode(body)
    except _DECODE_ERRORS:
        return None
    if envelope.object_type != WABA_OBJECT:
        return None
    events: list[Event] = []
    for entry in envelope.entry:
        waba_id = str(entry.id)
        for change in entry.changes or ():
            if change.field != "calls" or not _calls_value(change.value, waba_id, None, events):
                return None
    return events


def _may_concern_calls(raw: msgspec.Raw) -> bool:
    """Whether an undecodable messages value might hold call content (only then is it worth a Skipped)."""
    data = bytes(raw)  # Raw has no search method
    return any(marker in data for marker in _CALL_MARKERS)


def _decode_envelope(body: bytes) -> wire.Envelope:
    try:
        envelope = _envelope.decode(body)
    except _DECODE_ERRORS as exc:
        raise PoisonWebhook(_describe(exc)) from exc
    if envelope.object_type != WABA_OBJECT:
        raise PoisonWebhook(f"object is '{_printable(envelope.object_type)}', not {WABA_OBJECT}")
    return envelope


def _describe(exc: BaseException) -> str:
    """A short, ASCII reason for a dead-letter header."""
    if isinstance(exc, msgspec.ValidationError):
        return f"invalid envelope: {_printable(str(exc), 200)}"
    if isinstance(exc, UnicodeDecodeError):
        return "not JSON: invalid UTF-8"
    if isinstance(exc, RecursionError):
        return "not JSON: nested too deeply"
    return f"not JSON: {_printable(str(exc), 200)}"


def _printable(text: str, limit: int = 40) -> str:
    """``text`` escaped to printable ASCII (safe in an AMQP header and a log line), cut to ``limit``."""
    escaped = ascii(text)[1:-1]
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


class _Change(msgspec.Struct, frozen=True, gc=False):
    """What the items of one change share, worked out once per change (a Struct with positional fields:
    builds several times faster than a frozen dataclass)."""

    waba_id: str
    phone_number_id: str
    display_phone_number: str
    contacts: dict[str, wire.Contact]  # by wa_id
    only_contact: wire.Contact | None  # one contact for one call: theirs whatever its wa_id
    error_code: int | None  # value.errors[0], for the change's single terminate
    error_message: str | None
    all_contacts: list[wire.Contact] | None = None  # for a call by user id (scanned only then: rare)


# --- field = "calls" ------------------------------------------------------------------------------------


def _calls_change(raw: msgspec.Raw, waba_id: str, where: tuple[int, int], out: list[Event]) -> None:
    try:
        value = _calls.decode(raw)
    except _DECODE_ERRORS:
        _calls_change_slow(raw, waba_id, where, out)
        return
    if not _calls_value(value, waba_id, None, out):
        # a notice forwards Meta's item: decode the items again as Raw (cannot fail: laxer than `value`)
        _calls_value(value, waba_id, _calls_items.decode(raw).calls, out)


def _calls_value(
    value: wire.CallsValue, waba_id: str, raw_calls: list[msgspec.Raw] | None, out: list[Event]
) -> bool:
    """Append the events of a typed calls value; False (and nothing appended) if a notice needs
    ``raw_calls``, Meta's items as bytes, and they were not given."""
    calls = value.calls or ()
    change = _calls_context(value.metadata, waba_id, value.contacts, value.errors, calls)
    start = len(out)
    if not _call_events(calls, raw_calls, change, out):
        del out[start:]
        return False
    for status in value.statuses or ():  # a loop: cheaper than extend() for the usual one or two
        out.append(_call_status(status, change, "calls"))  # noqa: PERF401
    return True


def _calls_change_slow(raw: msgspec.Raw, waba_id: str, where: tuple[int, int], out: list[Event]) -> None:
    """The typed decode failed: find out whether the change (poison) or some items (skipped) are at fault."""
    try:
        value = _calls_items.decode(raw)
    except _DECODE_ERRORS as exc:
        entry_index, change_index = where
        raise PoisonWebhook(f"entry[{entry_index}].changes[{change_index}].value: {_describe(exc)}") from exc
    contacts = _items(value.contacts, _contact, "malformed_contact", out)
    errors = _items(value.errors, _call_error, "malformed_call_error", out)
    raw_calls = value.calls or []
    calls = [_try_decode(_call_item, raw_item) for raw_item in raw_calls]
    # A malformed item may have been a terminate: errors are then not attributed (None keeps count honest).
    change = _calls_context(value.metadata, waba_id, contacts, errors, calls)
    _call_events(calls, raw_calls, change, out)
    for raw_status in value.statuses or ():
        status = _try_decode(_status_item, raw_status)
        if status is None:
            out.append(Skipped(field="calls", kind="malformed_call_status", call_id=_probe_id(raw_status)))
        else:
            out.append(_call_status(status, change, "calls"))


def _calls_context(
    metadata: wire.Metadata,
    waba_id: str,
    contacts: list[wire.Contact] | None,
    errors: list[wire.CallError] | None,
    calls: Sequence[wire.CallItem | None],
) -> _Change:
    error = None
    if errors and None not in calls and sum(1 for c in calls if _is_terminate(c)) == 1:
        error = errors[0]
    by_wa_id: dict[str, wire.Contact] = {}
    only_contact = None
    if contacts:
        if len(contacts) == 1 and len(calls) == 1:
            only_contact = contacts[0]  # the call's contact whatever it matches: no need for the map
        else:
            # reversed: the first contact listed for a wa_id wins, as a scan would find it
            by_wa_id = {str(c.wa_id): c for c in reversed(contacts) if c.wa_id is not None}
    return _Change(
        waba_id,
        str(metadata.phone_number_id),
        str(metadata.display_phone_number),
        by_wa_id,
        only_contact,
        error.code if error is not None else None,
        _error_message(error) if error is not None else None,
        contacts if contacts and only_contact is None else None,
    )


def _is_terminate(item: wire.CallItem | None) -> bool:
    return item is not None and item.event is not None and item.event.lower() == "terminate"


def _call_events(
    calls: Sequence[wire.CallItem | None],
    raw_calls: list[msgspec.Raw] | None,
    change: _Change,
    out: list[Event],
) -> bool:
    """Append one event per item (None: an item that did not decode); False if a notice needs
    ``raw_calls``."""
    for index, item in enumerate(calls):
        if item is None:
            call_id = _probe_id(raw_calls[index]) if raw_calls is not None else None
            out.append(Skipped(field="calls", kind="malformed_call_item", call_id=call_id))
            continue
        call_id = item.id
        if not call_id:
            out.append(Skipped(field="calls", kind="call_without_id"))
            continue
        event = item.event
        if event != "connect" and event != "terminate":  # what Meta sends, in Meta's case
            event = event.lower() if event else ""
        if event == "connect":
            out.append(_connect(call_id, item, change))
        elif event == "terminate":
            out.append(_terminate(call_id, item, change))
        elif event in MEDIA_EVENTS:
            out.append(_media_ready(call_id, event, item, change))
        elif event in NOTICE_EVENTS:
            if raw_calls is None:
                return False
            out.append(
                CallNotice(
                    call_id=call_id,
                    event=event,
                    phone_number_id=change.phone_number_id,
                    timestamp=item.timestamp or 0,
                    item=raw_calls[index],
                )
            )
        else:
            kind = f"unknown_call_event:{_label(event)}" if event else "call_without_event"
            out.append(Skipped(field="calls", kind=kind, call_id=call_id))
    return True


def _connect(call_id: str, item: wire.CallItem, change: _Change) -> CallConnect | Skipped:
    session = item.session
    sdp: str | None
    if session is not None and session.sdp:
        sdp, sdp_type = session.sdp, session.sdp_type
    else:
        legacy = item.connection.webrtc if item.connection is not None else None
        sdp = legacy.sdp if legacy is not None else None
        if not sdp:
            return Skipped(field="calls", kind="connect_without_sdp", call_id=call_id)
        sdp_type = session.sdp_type if session is not None else None
    direction = _DIRECTIONS.get(item.direction) or _direction(item.direction)
    if len(sdp) > MAX_SDP_CHARS:  # a real offer is a few KB; a huge one would cost the media stack dearly
        return Skipped(field="calls", kind="sdp_too_large", call_id=call_id)
    if not sdp_type:
        if direction is None:
            return Skipped(field="calls", kind="connect_without_sdp_type", call_id=call_id)
        sdp_type = "offer" if direction == "incoming" else "answer"
    implied = _SDP_DIRECTIONS.get(sdp_type)
    if implied is None:
        sdp_type = sdp_type.lower()
        implied = _SDP_DIRECTIONS.get(sdp_type)
        if implied is None:
            return Skipped(field="calls", kind="unknown_sdp_type", call_id=call_id)
    if direction is not None and direction != implied:
        return Skipped(field="calls", kind="connect_direction_mismatch", call_id=call_id)
    # inline fast path (a phone number and no user id): a function call per party costs ~0.3 us, 30 us a batch
    caller, caller_user_id = item.from_, item.from_user_id
    if caller_user_id is not None or type(caller) is not str or not caller.isdigit():
        caller, caller_user_id = _party(caller, caller_user_id)
    callee, callee_user_id = item.to, item.to_user_id
    if callee_user_id is not None or type(callee) is not str or not callee.isdigit():
        callee, callee_user_id = _party(callee, callee_user_id)
    contacts = change.contacts
    contact = change.only_contact
    if contact is None:
        if caller_user_id is None and callee_user_id is None:
            contact = (contacts.get(caller) or contacts.get(callee)) if contacts else None
        else:
            contact = _contact_of(change, caller, caller_user_id, callee, callee_user_id)
    contact_name = contact_wa_id = contact_user_id = contact_username = None
    if contact is not None:
        if contact.profile is not None:
            contact_name = contact.profile.name
        contact_wa_id = (contact.wa_id if isinstance(contact.wa_id, str) else _text(contact.wa_id)) or None
        contact_user_id, contact_username = contact.user_id, contact.username
    event = CallConnect(
        call_id=call_id,
        phone_number_id=change.phone_number_id,
        direction=implied,
        caller=caller,
        callee=callee,
        timestamp=item.timestamp or 0,
        sdp_type=sdp_type,
        sdp=sdp,
        display_phone_number=change.display_phone_number,
        waba_id=change.waba_id,
        contact_name=contact_name,
        contact_wa_id=contact_wa_id,
        biz_opaque_callback_data=item.biz_opaque_callback_data,
        deeplink_payload=item.deeplink_payload,
        cta_payload=item.cta_payload,
    )
    if (
        caller_user_id is None
        and callee_user_id is None
        and contact_user_id is None
        and contact_username is None
    ):
        return event  # no user ids: the usual case, without the slow path of more than 15 keywords
    return msgspec.structs.replace(
        event,
        caller_user_id=caller_user_id,
        caller_parent_user_id=item.from_parent_user_id,
        callee_user_id=callee_user_id,
        callee_parent_user_id=item.to_parent_user_id,
        contact_user_id=contact_user_id,
        contact_username=contact_username,
    )


def _contact_of(
    change: _Change, caller: str, caller_user_id: str | None, callee: str, callee_user_id: str | None
) -> wire.Contact | None:
    """The contact of a call that names a user id: by wa_id, else by user_id (the first one listed)."""
    for number, user_id in ((caller, caller_user_id), (callee, callee_user_id)):
        if number and number in change.contacts:
            return change.contacts[number]
        if user_id:
            found = next((c for c in change.all_contacts or () if c.user_id == user_id), None)
            if found is not None:
                return found
    return None


def _media_ready(call_id: str, event: str, item: wire.CallItem, change: _Change) -> CallMediaReady | Skipped:
    kind = MEDIA_EVENTS[event]
    holder = item.call_recording if kind == "recording" else item.call_transcript
    media = None
    if holder is not None:
        media = holder.audio if kind == "recording" else holder.document
        media = media or holder.audio or holder.document  # the other key, should Meta rename one
    if media is None:  # an early, unverified shape: ``recording``/``transcription`` holding the media itself
        media = item.recording if kind == "recording" else item.transcription
    if media is None or not media.id:
        return Skipped(field="calls", kind=f"{kind}_without_media", call_id=call_id)
    caller, caller_user_id = _party(item.from_, item.from_user_id)
    callee, _ = _party(item.to, item.to_user_id)
    return CallMediaReady(
        call_id=call_id,
        phone_number_id=change.phone_number_id,
        kind="recording" if kind == "recording" else "transcript",
        media_id=media.id,
        timestamp=item.timestamp or 0,
        sha256=media.sha256,
        mime_type=media.mime_type,
        url=media.url,
        caller=caller,
        caller_user_id=caller_user_id,
        caller_parent_user_id=item.from_parent_user_id,
        callee=callee,
        waba_id=change.waba_id,
    )


def _party(value: int | str | None, user_id: str | None) -> tuple[str, str | None]:
    """``(phone number or "", user id or None)`` of a ``from``/``to`` and its ``*_user_id``.

    Meta's pages read two ways: a username-only user has no ``from`` and a ``from_user_id`` (the 2026
    reference), or the BSUID stands in ``from`` itself (seen in early samples). A ``from`` that is not a phone
    number (digits, an optional "+") is taken as the user id, so both readings give the same event."""
    if value is None:
        return "", user_id or None
    text = value if isinstance(value, str) else str(value)
    if not text or text.isdigit() or (text[0] == "+" and text[1:].isdigit()) or ":" in text:
        return text, user_id or None  # a number, or an address such as a SIP URI (call_created)
    return "", user_id or text


def _terminate(call_id: str, item: wire.CallItem, change: _Change) -> CallTerminate:
    status = item.status
    if isinstance(status, list):
        status = status[0] if status else None
    # inline fast path (a phone number and no user id): a function call per party costs ~0.3 us, 30 us a batch
    caller, caller_user_id = item.from_, item.from_user_id
    if caller_user_id is not None or type(caller) is not str or not caller.isdigit():
        caller, caller_user_id = _party(caller, caller_user_id)
    callee, callee_user_id = item.to, item.to_user_id
    if callee_user_id is not None or type(callee) is not str or not callee.isdigit():
        callee, callee_user_id = _party(callee, callee_user_id)
    # Keyword arguments stay under 16: msgspec (CPython's vectorcall) takes a path about 3x slower beyond
    # that, so the user ids (absent for most calls) are added only when there are some.
    event = CallTerminate(
        call_id=call_id,
        phone_number_id=change.phone_number_id,
        timestamp=item.timestamp or 0,
        status=status.lower() if status else "unknown",
        direction=_DIRECTIONS.get(item.direction) or _direction(item.direction),
        start_time=item.start_time,
        end_time=item.end_time,
        duration_seconds=item.duration,
        biz_opaque_callback_data=item.biz_opaque_callback_data,
        error_code=change.error_code,
        error_message=change.error_message,
        waba_id=change.waba_id,
        caller=caller,
        callee=callee,
    )
    if caller_user_id is None and callee_user_id is None:
        return event
    return msgspec.structs.replace(event, caller_user_id=caller_user_id, callee_user_id=callee_user_id)


def _call_status(item: wire.StatusItem, change: _Change, field: str) -> Event:
    kind = item.type
    if kind and kind != "call" and kind.lower() != "call":
        return Skipped(field=field, kind=f"unknown_status_type:{_label(kind.lower())}", call_id=item.id)
    if not item.id:
        return Skipped(field=field, kind="call_without_id")
    if not item.status:
        return Skipped(field=field, kind="call_status_without_status", call_id=item.id)
    number, user_id = _party(item.recipient_id, item.recipient_user_id)
    return CallStatus(
        call_id=item.id,
        phone_number_id=change.phone_number_id,
        timestamp=item.timestamp or 0,
        status=item.status.lower(),
        recipient_id=number or None,
        biz_opaque_callback_data=item.biz_opaque_callback_data,
        waba_id=change.waba_id,
        recipient_user_id=user_id,
        recipient_parent_user_id=item.recipient_parent_user_id,
    )


# --- field = "messages" ---------------------------------------------------------------------------------


_account_updates: Final = msgspec.json.Decoder(wire.AccountUpdateValue, strict=False)


def _account_update(raw: msgspec.Raw, waba_id: str, out: list[Event]) -> None:
    """After an account_update's Passthrough: one AccountAlert per restriction or violation it names."""
    try:
        value = _account_updates.decode(raw)
    except _DECODE_ERRORS:
        return  # not callhook's to judge: the Passthrough carries it
    event = (value.event or "").upper()
    if event == "ACCOUNT_RESTRICTION":
        infos = list(value.restriction_info or ())
        if value.restriction_type:
            infos.append(
                wire.RestrictionInfo(restriction_type=value.restriction_type, expiration=value.expiration)
            )
        out.extend(
            AccountAlert(
                kind="restriction", type=info.restriction_type, waba_id=waba_id, expiration=info.expiration
            )
            for info in infos
            if info.restriction_type
        )
    elif event == "ACCOUNT_VIOLATION":
        kind = value.violation_info.violation_type if value.violation_info is not None else None
        kind = kind or value.violation_type
        if kind:
            out.append(AccountAlert(kind="violation", type=kind, waba_id=waba_id))


def _messages_change(raw: msgspec.Raw, waba_id: str, out: list[Event]) -> None:
    try:
        value = _messages.decode(raw)
        messages: list[wire.MessageItem] = value.messages or []
        statuses: list[wire.StatusItem] = value.statuses or []
        metadata = value.metadata
    except _DECODE_ERRORS:
        try:
            items = _messages_items.decode(raw)
        except _DECODE_ERRORS:
            if _may_concern_calls(raw):
                out.append(Skipped(field="messages", kind="malformed_messages_value"))
            return
        messages = _ours(
            items.messages, _message_item, b"call_permission_reply", "malformed_permission_reply", out
        )
        statuses = _ours(items.statuses, _status_item, b'"call"', "malformed_call_status", out)
        metadata = items.metadata
    change = None
    if metadata is not None:
        change = _Change(
            waba_id, str(metadata.phone_number_id), str(metadata.display_phone_number), {}, None, None, None
        )
    for message in messages:
        interactive = message.interactive
        if interactive is not None and (interactive.type or "").lower() == "call_permission_reply":
            out.append(_permission_reply(message, interactive, change))
    out.extend(
        _call_status(status, change, "messages") if change else _no_number(status.id)
        for status in statuses
        if (status.type or "").lower() == "call"
    )


def _permission_reply(
    message: wire.MessageItem, interactive: wire.Interactive, change: _Change | None
) -> PermissionReply | Skipped:
    reply = interactive.call_permission_reply
    if reply is None or not reply.response:
        return Skipped(field="messages", kind="permission_reply_without_response")
    user, user_id = _party(message.from_, message.from_user_id)
    if not user and not user_id:
        return Skipped(field="messages", kind="permission_reply_without_user")
    if change is None:
        return _no_number(None)
    return PermissionReply(
        phone_number_id=change.phone_number_id,
        user=user,
        response=reply.response.lower(),
        timestamp=message.timestamp or 0,
        is_permanent=bool(reply.is_permanent),
        expiration_timestamp=reply.expiration_timestamp,
        response_source=reply.response_source,
        message_id=message.id or "",
        user_id=user_id,
        parent_user_id=message.from_parent_user_id,
        context_id=message.context.id if message.context is not None else None,
    )


def _no_number(call_id: str | None) -> Skipped:
    return Skipped(field="messages", kind="no_phone_number_id", call_id=call_id)


# --- helpers --------------------------------------------------------------------------------------------


def _try_decode(decoder: msgspec.json.Decoder[_T], raw: msgspec.Raw) -> _T | None:
    try:
        return decoder.decode(raw)
    except _DECODE_ERRORS:
        return None


def _items(
    raws: list[msgspec.Raw] | None, decoder: msgspec.json.Decoder[_T], kind: str, out: list[Event]
) -> list[_T]:
    """Decode each item, skipping (and reporting) the ones that do not decode."""
    decoded = []
    for raw in raws or ():
        item = _try_decode(decoder, raw)
        if item is None:
            out.append(Skipped(field="calls", kind=kind))
        else:
            decoded.append(item)
    return decoded


def _ours(
    raws: list[msgspec.Raw] | None,
    decoder: msgspec.json.Decoder[_T],
    marker: bytes,
    kind: str,
    out: list[Event],
) -> list[_T]:
    """Like :func:`_items` for a messages change: an item that does not decode is reported only if it looks
    like call content; any other message is not callhook's to judge."""
    decoded = []
    for raw in raws or ():
        item = _try_decode(decoder, raw)
        if item is not None:
            decoded.append(item)
        elif marker in bytes(raw):
            out.append(Skipped(field="messages", kind=kind, call_id=_probe_id(raw)))
    return decoded


class _IdProbe(msgspec.Struct, frozen=True, gc=False):
    id: str | None = None


_id_probe: Final = msgspec.json.Decoder(_IdProbe)


def _probe_id(raw: msgspec.Raw) -> str | None:
    """The ``id`` of an item that did not decode, if that much is readable (for logs)."""
    probe = _try_decode(_id_probe, raw)
    return probe.id if probe is not None else None


def _text(value: int | str | None) -> str:
    return "" if value is None else str(value)


def _direction(value: str | None) -> Direction | None:
    return _DIRECTIONS.get(value.lower()) if value else None


def _error_message(error: wire.CallError) -> str | None:
    text = error.message or error.title
    details = error.error_data.details if error.error_data is not None else None
    if text and details:
        return f"{text}: {details}"
    return text or details


def _label(value: str) -> str:
    """``value`` if it is safe as a metric label value (short, ``[a-z0-9_]``), else ``other``."""
    if len(value) <= 40 and value.isascii() and value.replace("_", "").isalnum():
        return value.lower()
    return "other"
