"""decode_webhook against the golden corpus, pywa's fixtures and the rules of worker/decode.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from tests.corpus import golden
from worker.decode import decode_webhook
from worker.errors import PoisonWebhook
from worker.events import (
    AccountAlert,
    CallConnect,
    CallMediaReady,
    CallNotice,
    CallStatus,
    CallTerminate,
    Event,
    Passthrough,
    PermissionReply,
    Skipped,
    call_event_decoder,
    call_event_encoder,
)

CORPUS_BODIES = golden.corpus_bodies()
PYWA_CASES = dict(golden.pywa_cases())
REGENERATE = "uv run --frozen python -m tests.corpus.golden"


def _body(name: str) -> bytes:
    return (golden.CORPUS / f"{name}.json").read_bytes()


def _decode_json(body: dict[str, Any]) -> list[Event]:
    return decode_webhook(json.dumps(body).encode())


_E = TypeVar("_E")


def _single(name: str, kind: type[_E]) -> _E:
    """The one event a corpus body decodes to, checked to be a ``kind``."""
    [event] = decode_webhook(_body(name))
    assert isinstance(event, kind)
    return event


# --- golden corpus --------------------------------------------------------------------------------------


@pytest.mark.parametrize("body_path", CORPUS_BODIES, ids=lambda p: p.stem)
def test_corpus_case_matches_its_expected_output(body_path: Path) -> None:
    expected_path = golden.expected_path(body_path)
    assert expected_path.exists(), f"no {expected_path.name}: run `{REGENERATE}` and review it"
    expected = json.loads(expected_path.read_bytes())
    assert golden.render(body_path.read_bytes()) == expected


def test_corpus_has_no_orphan_expected_files() -> None:
    bodies = {p.name for p in CORPUS_BODIES}
    for expected in golden.CORPUS.glob(f"*{golden.EXPECTED_SUFFIX}"):
        assert expected.name.removesuffix(golden.EXPECTED_SUFFIX) + ".json" in bodies, expected.name


def test_corpus_covers_every_event_type_and_poison() -> None:
    seen: set[str] = set()
    for body_path in CORPUS_BODIES:
        rendered = golden.render(body_path.read_bytes())
        seen |= {"poison"} if "poison" in rendered else {e["$type"] for e in rendered["events"]}
    assert seen >= {
        "CallConnect",
        "CallTerminate",
        "CallStatus",
        "CallNotice",
        "PermissionReply",
        "Passthrough",
        "Skipped",
        "poison",
    }


# --- pywa fixtures (written by another project) -----------------------------------------------------------


def test_pywa_fixtures_are_all_there() -> None:
    # 7 files, 53 cases when this was written: a silently empty glob must not pass as "all good".
    assert len(PYWA_CASES) >= 53


@pytest.mark.parametrize("case_id", sorted(PYWA_CASES))
def test_pywa_case_matches_its_expected_output(case_id: str) -> None:
    expected_path = golden.pywa_expected_path(case_id)
    assert expected_path.exists(), f"no {expected_path.name}: run `{REGENERATE}` and review it"
    assert golden.render(PYWA_CASES[case_id]) == json.loads(expected_path.read_bytes())


def test_pywa_calls_cases_become_call_events_and_the_rest_passthrough() -> None:
    for case_id, body in PYWA_CASES.items():
        types = [type(e) for e in decode_webhook(body)]
        assert Skipped not in types, case_id
        if case_id.startswith(("account_update.", "message.", "message_status.")):
            assert types[0] is Passthrough, case_id
            # an account restriction or violation also becomes one AccountAlert per restriction it names
            assert set(types[1:]) <= {AccountAlert}, case_id
    assert [type(e) for e in decode_webhook(PYWA_CASES["call_connect.user_initiated"])] == [CallConnect]
    assert [type(e) for e in decode_webhook(PYWA_CASES["call_permission_update.accept"])] == [
        Passthrough,
        PermissionReply,
    ]


# --- invariants over every decodable body -------------------------------------------------------------------


def _all_bodies() -> list[bytes]:
    return [p.read_bytes() for p in CORPUS_BODIES] + list(PYWA_CASES.values())


def test_passthrough_and_notice_values_are_exact_slices_of_the_body() -> None:
    checked = 0
    for body in _all_bodies():
        try:
            events = decode_webhook(body)
        except PoisonWebhook:
            continue
        for event in events:
            raw = event.value if isinstance(event, Passthrough) else getattr(event, "item", None)
            if isinstance(raw, msgspec.Raw):
                assert bytes(raw) in body
                msgspec.json.decode(raw)  # and a complete JSON value
                checked += 1
    assert checked >= 60


def test_call_events_survive_the_owners_round_trip() -> None:
    """What the router publishes to a call's mailbox decodes back to the same event on the owner's side."""
    checked = 0
    for body in _all_bodies():
        try:
            events = decode_webhook(body)
        except PoisonWebhook:
            continue
        msgspec.json.encode(events)  # everything is publishable (no unencodable values)
        for event in events:
            if isinstance(event, CallConnect | CallTerminate | CallStatus):
                assert call_event_decoder.decode(call_event_encoder.encode(event)) == event
                checked += 1
    assert checked > 100


def test_decoding_is_deterministic() -> None:
    body = _body("batch_3_entries_4_changes_5_items")
    assert decode_webhook(body) == decode_webhook(body)


# --- the rules, stated directly ---------------------------------------------------------------------------


def test_batch_of_entries_changes_items_is_fanned_out_in_order() -> None:
    events = decode_webhook(_body("batch_3_entries_4_changes_5_items"))
    per_entry = [type(e).__name__ for e in events[:18]]
    assert per_entry == ["CallConnect"] * 5 + ["CallTerminate"] * 5 + ["CallStatus"] * 5 + [
        "Passthrough",
        "PermissionReply",
        "PermissionReply",
    ]
    assert len(events) == 3 * 18
    assert [e.call_id for e in events if isinstance(e, CallConnect)] == [
        f"wacid.e{e}c0i{k}" for e in range(3) for k in range(5)
    ]
    assert {e.waba_id for e in events if isinstance(e, CallConnect | CallTerminate | CallStatus)} == {
        "102290129340000",
        "102290129340001",
        "102290129340002",
    }


def test_one_malformed_item_does_not_block_999_good_ones() -> None:
    items: list[dict[str, Any]] = [
        {"id": f"wacid.{i}", "event": "terminate", "status": "COMPLETED", "timestamp": "1752583190"}
        for i in range(1000)
    ]
    items[500] = {"id": "wacid.500", "event": "terminate", "status": 404}  # wrong type: the slow path
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [
                    {"field": "calls", "value": {"metadata": {"phone_number_id": "7"}, "calls": items}}
                ],
            }
        ],
    }
    events = _decode_json(body)
    assert len(events) == 1000
    assert events[500] == Skipped(field="calls", kind="malformed_call_item", call_id="wacid.500")
    assert all(isinstance(e, CallTerminate) for i, e in enumerate(events) if i != 500)
    assert [getattr(e, "call_id", None) for e in events] == [f"wacid.{i}" for i in range(1000)]


def test_envelope_level_type_errors_are_poison_with_a_located_reason() -> None:
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": 3, "value": {}}]}],
    }
    with pytest.raises(PoisonWebhook, match=r"\$\.entry\[0\]\.changes\[0\]\.field"):
        _decode_json(body)
    calls_value_broken = {
        "object": "whatsapp_business_account",
        "entry": [
            {"id": "1", "changes": [{"field": "messages", "value": {}}]},
            {
                "id": "2",
                "changes": [{"field": "account_update", "value": {}}, {"field": "calls", "value": []}],
            },
        ],
    }
    with pytest.raises(PoisonWebhook, match=r"^entry\[1\]\.changes\[1\]\.value: "):
        _decode_json(calls_value_broken)


@pytest.mark.parametrize(
    "body",
    [b"", b"null", b"[]", b'"x"', b"{", b'{"object": "page", "entry": []}', b'{"entry": []}', b"\xff"],
)
def test_non_envelopes_are_poison(body: bytes) -> None:
    with pytest.raises(PoisonWebhook) as info:
        decode_webhook(body)
    assert info.value.reason.isascii()
    assert 0 < len(info.value.reason) <= 300


def test_poison_reason_does_not_echo_arbitrary_content() -> None:
    with pytest.raises(PoisonWebhook) as info:
        decode_webhook(json.dumps({"object": "é" * 500 + "\r\nX-Injected: 1", "entry": []}).encode())
    reason = info.value.reason
    assert reason.isascii()
    assert "\r" not in reason
    assert len(reason) < 200


def test_unicode_escapes_and_surrogate_pairs_decode_to_text() -> None:
    event = _single("unicode_escaped_contact_name", CallConnect)
    assert event.contact_name == "José \U0001f600 Müller 中文"
    assert event.deeplink_payload == "café=1"


def test_escaped_slashes_in_sdp_are_unescaped() -> None:
    assert b"\\/" in _body("connect_real_sdp")
    event = _single("connect_real_sdp", CallConnect)
    assert "a=rtpmap:111 opus/48000/2\r\n" in event.sdp
    assert event.sdp.endswith("\r\n")
    assert len(event.sdp) > 1400


def test_session_sdp_is_preferred_and_legacy_sdp_is_the_fallback() -> None:
    preferred = _single("connect_session_preferred_over_legacy", CallConnect)
    legacy = _single("connect_legacy_sdp_only", CallConnect)
    assert "o=session" in preferred.sdp
    assert "o=legacy" in legacy.sdp
    assert (legacy.direction, legacy.sdp_type) == ("outgoing", "answer")


def test_direction_is_inferred_from_sdp_type_when_missing() -> None:
    assert _single("connect_missing_direction_offer", CallConnect).direction == "incoming"
    assert _single("connect_missing_direction_answer", CallConnect).direction == "outgoing"


def test_terminate_status_in_any_shape_and_case_is_lower_case() -> None:
    names = (
        "terminate_status_lowercase",
        "terminate_status_mixed_case",
        "terminate_status_list_single",
        "meta_business_initiated_terminate_status_list",
        "terminate_completed",
    )
    statuses = [_single(name, CallTerminate).status for name in names]
    assert statuses == ["completed", "failed", "completed", "failed", "completed"]


def test_timestamps_as_strings_or_ints_become_ints_and_missing_is_zero() -> None:
    as_int = _single("connect_int_timestamp_and_numbers", CallConnect)
    assert (as_int.timestamp, as_int.phone_number_id, as_int.caller) == (
        1752583107,
        "106540352242922",
        "14155550123",
    )
    assert _single("connect_missing_timestamp", CallConnect).timestamp == 0
    terminate = _single("terminate_int_timestamps_no_duration", CallTerminate)
    assert (terminate.start_time, terminate.end_time, terminate.duration_seconds) == (
        1752583110,
        1752583111,
        None,
    )


def test_errors_attach_to_the_single_terminate_with_message_or_title() -> None:
    with_message = _single("meta_terminate_with_error", CallTerminate)
    with_title = _single("terminate_error_title_not_message", CallTerminate)
    assert (with_message.error_code, with_message.error_message) == (138021, "ERROR_TITLE: ERROR_DETAILS")
    assert (with_title.error_code, with_title.error_message) == (138022, "Media transmit timeout")
    unattributed = decode_webhook(_body("terminate_errors_not_attributable"))
    assert [(type(e), getattr(e, "error_code", "-")) for e in unattributed] == [(CallTerminate, None)] * 2


def test_messages_change_is_passed_through_and_yields_permission_replies() -> None:
    body = _body("permission_replies")
    events = decode_webhook(body)
    passthrough = events[0]
    assert isinstance(passthrough, Passthrough)
    assert passthrough.field == "messages"
    assert msgspec.json.decode(passthrough.value) == json.loads(body)["entry"][0]["changes"][0]["value"]
    replies = [e for e in events if isinstance(e, PermissionReply)]
    assert [(r.response, r.is_permanent, r.expiration_timestamp) for r in replies] == [
        ("accept", False, 1753186982),
        ("reject", True, None),
    ]


def test_message_statuses_stay_in_the_passthrough_but_call_statuses_do_not() -> None:
    _single("message_statuses_passthrough_only", Passthrough)
    passthrough, status = decode_webhook(_body("call_status_on_messages_field"))
    assert isinstance(passthrough, Passthrough)
    assert status == CallStatus(
        call_id="wacid.cm1",
        phone_number_id="106540352242922",
        timestamp=1752583000,
        status="ringing",
        recipient_id="14155550123",
        waba_id="102290129340398",
    )


def test_call_notices_carry_metas_item_unchanged() -> None:
    body = _body("call_notices")
    events = decode_webhook(body)
    items = json.loads(body)["entry"][0]["changes"][0]["value"]["calls"]
    assert [type(n) for n in events] == [CallNotice, CallMediaReady, CallMediaReady]
    assert [msgspec.json.decode(n.item) for n in events if isinstance(n, CallNotice)] == items[:1]
    # the early sample's shape (media directly under ``recording``/``transcription``) is read too
    assert [(e.kind, e.media_id) for e in events if isinstance(e, CallMediaReady)] == [
        ("recording", "1234567890"),
        ("transcript", "987"),
    ]


def test_unknown_events_and_unusable_items_are_skipped_not_fatal() -> None:
    events = decode_webhook(_body("skipped_items_among_good_ones"))
    kinds = [e.kind for e in events if isinstance(e, Skipped)]
    assert "unknown_call_event:call_upgraded" in kinds
    assert "unknown_call_event:other" in kinds  # "some event!" is not a safe metric label
    assert [e.call_id for e in events if isinstance(e, CallConnect)] == ["wacid.g1", "wacid.g2"]


def test_contact_goes_to_the_call_it_matches() -> None:
    events = decode_webhook(_body("connect_contacts_matched_by_wa_id"))
    assert [(getattr(e, "call_id", None), getattr(e, "contact_name", "-")) for e in events] == [
        ("wacid.c2", "Maria Ortega"),
        ("wacid.c3", "Someone Else"),  # outgoing: matched by ``to``
        ("wacid.c4", None),  # several contacts, none matches: none is guessed
    ]
    lone = _single("connect_single_contact_user_id_only", CallConnect)
    assert (lone.contact_name, lone.contact_wa_id) == ("Bsuid User", None)
