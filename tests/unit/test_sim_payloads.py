"""Webhook bodies built by the simulator have Meta's shape, bytes and signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

from simulator import payloads
from worker.decode import decode_webhook
from worker.events import CallConnect, CallStatus, CallTerminate, Passthrough, PermissionReply, Skipped

# Meta's documented examples, kept in the repository by the decoder's golden corpus.
CORPUS = Path(__file__).resolve().parents[1] / "corpus"
NUMBER = payloads.BusinessNumber("106540352242922", "15550783881")
USER = payloads.Contact("13175551399", "Jane Doe")


def _reference(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((CORPUS / f"{name}.json").read_text())
    return body


def _shape(value: Any) -> Any:
    """Keys (recursively, order-free) and value types: the structure two bodies must share."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return type(value).__name__


def _value(body: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = body["entry"][0]["changes"][0]["value"]
    return value


def test_incoming_connect_is_metas_documented_example_exactly() -> None:
    update = payloads.call_connect(
        waba_id="102290129340398",
        number=NUMBER,
        call_id="wacid.ABGGFjFVU2AfAgo6V-Hc5eCgK5Gh",
        user=USER,
        direction=payloads.USER_INITIATED,
        timestamp=1671644824,
        sdp_type="offer",
        sdp="<<RFC 8866 SDP>>",
    )
    body = payloads.envelope([update])
    assert body == _reference("meta_user_initiated_connect")
    assert list(_value(body)) == ["messaging_product", "metadata", "contacts", "calls"]


def test_terminate_and_status_have_metas_shape() -> None:
    terminate = payloads.call_terminate(
        waba_id="1",
        number=NUMBER,
        call_id="wacid.ABGGFjFVU2AfAgo6V-Hc5eCgK5Gh",
        user=payloads.Contact("16315553601"),
        direction=payloads.BUSINESS_INITIATED,
        timestamp=1671644824,
        status="FAILED",
        start_time=1671644824,
        end_time=1671644944,
        biz_opaque_callback_data="random_string",
        error=(138021, "Media receive timeout", "no audio"),
    )
    ours = payloads.envelope([terminate])
    reference = _reference("meta_terminate_with_error")
    del _value(ours)["contacts"]  # Meta's example leaves the optional contacts out
    assert _shape(ours) == _shape(reference)
    item = _value(ours)["calls"][0]
    assert item["duration"] == 120
    assert item["from"] == NUMBER.display_phone_number
    assert item["to"] == "16315553601"

    status = payloads.call_status(
        waba_id="1",
        number=NUMBER,
        call_id="wacid.x",
        user=payloads.Contact("12185552828"),
        status="RINGING",
        timestamp=1749197000,
    )
    ours = payloads.envelope([status])
    del _value(ours)["contacts"]
    assert _shape(ours) == _shape(_reference("meta_business_initiated_status"))


def test_business_initiated_answer_has_metas_shape() -> None:
    update = payloads.call_connect(
        waba_id="1",
        number=NUMBER,
        call_id="wacid.x",
        user=payloads.Contact("16315553602"),
        direction=payloads.BUSINESS_INITIATED,
        timestamp=1,
        sdp_type="answer",
        sdp="v=0\r\n",
    )
    assert _shape(payloads.envelope([update])) == _shape(
        _reference("meta_business_initiated_connect_contact_only_wa_id")
    )


def test_terminate_without_pickup_has_no_duration() -> None:
    update = payloads.call_terminate(
        waba_id="1",
        number=NUMBER,
        call_id="wacid.x",
        user=USER,
        direction=payloads.USER_INITIATED,
        timestamp=5,
        status="FAILED",
    )
    item = update.item
    assert item["status"] == "FAILED"
    assert "duration" not in item
    assert "start_time" not in item
    assert "end_time" not in item
    assert item["from"] == USER.wa_id
    assert item["to"] == NUMBER.display_phone_number


def test_permission_reply_has_metas_shape() -> None:
    update = payloads.permission_reply(
        waba_id="1",
        number=NUMBER,
        user=payloads.Contact("14155550123", "Maria Ortega"),
        request_message_id="wamid.reqp1",
        timestamp=1752582182,
        response="accept",
        expiration_timestamp=1753186982,
    )
    ours = payloads.envelope([update])
    reference = _reference("permission_replies")
    ours_message = _value(ours)["messages"][0]
    reference_message = _value(reference)["messages"][0]
    assert ours["entry"][0]["changes"][0]["field"] == "messages"
    assert set(ours_message) == set(reference_message)
    reply = ours_message["interactive"]["call_permission_reply"]
    assert reply == {
        "response": "accept",
        "is_permanent": False,
        "expiration_timestamp": 1753186982,
        "response_source": "user_action",
    }
    assert ours_message["context"] == {"from": NUMBER.display_phone_number, "id": "wamid.reqp1"}


def test_batches_group_items_by_number_and_field_and_isolate_errors() -> None:
    other = payloads.BusinessNumber("2", "15550000002")
    failing = payloads.call_terminate(
        waba_id="W",
        number=NUMBER,
        call_id="wacid.b",
        user=USER,
        direction=payloads.USER_INITIATED,
        timestamp=2,
        status="FAILED",
        error=(138021, "Media receive timeout", "silence"),
    )
    updates = [
        payloads.call_connect(
            waba_id="W",
            number=NUMBER,
            call_id="wacid.a",
            user=USER,
            direction=payloads.USER_INITIATED,
            timestamp=1,
            sdp_type="offer",
            sdp="x",
        ),
        payloads.call_status(
            waba_id="W", number=NUMBER, call_id="wacid.c", user=USER, status="RINGING", timestamp=3
        ),
        failing,
        payloads.call_status(
            waba_id="W", number=other, call_id="wacid.d", user=USER, status="RINGING", timestamp=4
        ),
        payloads.call_status(
            waba_id="V", number=NUMBER, call_id="wacid.e", user=USER, status="RINGING", timestamp=5
        ),
    ]
    body = payloads.envelope(updates)
    assert [entry["id"] for entry in body["entry"]] == ["W", "V"]
    changes = body["entry"][0]["changes"]
    assert len(changes) == 3  # same number+field together; the errored terminate alone; the other number
    merged = changes[0]["value"]
    assert [item["id"] for item in merged["calls"]] == ["wacid.a"]
    assert [item["id"] for item in merged["statuses"]] == ["wacid.c"]
    assert merged["contacts"] == [{"profile": {"name": "Jane Doe"}, "wa_id": USER.wa_id}]
    assert changes[1]["value"]["errors"][0]["code"] == 138021
    assert "errors" not in merged
    assert changes[2]["value"]["metadata"]["phone_number_id"] == "2"
    items = sum(
        len(c["value"].get(k, [])) for e in body["entry"] for c in e["changes"] for k in ("calls", "statuses")
    )
    assert items == len(updates)


def test_encoding_is_metas_escaped_ascii_and_the_signature_covers_those_bytes() -> None:
    update = payloads.call_connect(
        waba_id="1",
        number=NUMBER,
        call_id="wacid.a",
        user=payloads.Contact("15551234567", "Zoë Ångström"),
        direction=payloads.USER_INITIATED,
        timestamp=1,
        sdp_type="offer",
        sdp="m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
    )
    body = payloads.encode(payloads.envelope([update]))
    assert body.isascii()
    assert b"Zo\\u00eb \\u00c5ngstr\\u00f6m" in body
    assert b"UDP\\/TLS\\/RTP\\/SAVPF" in body
    assert b"\\r\\n" in body
    assert b" " not in body.split(b'"sdp"')[0][:40]
    assert json.loads(body) == payloads.envelope([update])
    assert b"/" not in payloads.encode({"a": "b/c"}).replace(b"\\/", b"")
    assert b"b/c" in payloads.encode({"a": "b/c"}, escape_slashes=False)

    secret = "app-secret"
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert payloads.signature(body, secret) == f"sha256={expected}"
    reserialised = json.dumps(json.loads(body)).encode()
    assert payloads.signature(reserialised, secret) != payloads.signature(body, secret)


def test_ids_look_like_metas() -> None:
    call_ids = {payloads.new_call_id() for _ in range(50)}
    assert len(call_ids) == 50
    assert all(re.fullmatch(r"wacid\.[A-Za-z0-9_\-]+=*", call_id) for call_id in call_ids)
    assert all(call_id.startswith("wacid.HBgL") for call_id in call_ids)
    assert payloads.new_message_id().startswith("wamid.")


def test_the_workers_decoder_reads_every_kind_the_simulator_sends() -> None:
    """Contract with worker/decode.py: nothing the simulator sends is skipped or poison."""
    number = payloads.BusinessNumber("100", "15550001000")
    user = payloads.Contact("15551230001", "Zoë")
    common = {"waba_id": "W", "number": number, "user": user}
    updates = [
        payloads.call_connect(
            **common,
            call_id="wacid.a",
            direction=payloads.USER_INITIATED,
            timestamp=1,
            sdp_type="offer",
            sdp="v=0\r\n",
        ),
        payloads.call_connect(
            **common,
            call_id="wacid.b",
            direction=payloads.BUSINESS_INITIATED,
            timestamp=2,
            sdp_type="answer",
            sdp="v=0\r\n",
            biz_opaque_callback_data="t/1",
        ),
        payloads.call_status(**common, call_id="wacid.b", status="RINGING", timestamp=3),
        payloads.call_terminate(
            **common,
            call_id="wacid.a",
            direction=payloads.USER_INITIATED,
            timestamp=9,
            status="COMPLETED",
            start_time=4,
            end_time=9,
        ),
        payloads.call_terminate(
            **common,
            call_id="wacid.b",
            direction=payloads.BUSINESS_INITIATED,
            timestamp=9,
            status="FAILED",
            error=(138023, "No media", "no_media"),
        ),
        payloads.permission_reply(
            **common, request_message_id="wamid.r", timestamp=5, response="accept", expiration_timestamp=99
        ),
    ]
    one_by_one = [event for u in updates for event in decode_webhook(payloads.encode(payloads.envelope([u])))]
    batched = decode_webhook(payloads.encode(payloads.envelope(updates)))
    for events in (one_by_one, batched):
        assert not [e for e in events if isinstance(e, Skipped)]
        connects = [e for e in events if isinstance(e, CallConnect)]
        assert [(c.call_id, c.direction, c.sdp_type) for c in connects] == [
            ("wacid.a", "incoming", "offer"),
            ("wacid.b", "outgoing", "answer"),
        ]
        assert connects[0].caller == user.wa_id
        assert connects[0].contact_name == "Zoë"
        assert connects[1].biz_opaque_callback_data == "t/1"
        terminates = {e.call_id: e for e in events if isinstance(e, CallTerminate)}
        assert terminates["wacid.a"].status == "completed"
        assert terminates["wacid.a"].duration_seconds == 5
        assert terminates["wacid.b"].status == "failed"
        assert terminates["wacid.b"].error_code == 138023
        assert [e.status for e in events if isinstance(e, CallStatus)] == ["ringing"]
        replies = [e for e in events if isinstance(e, PermissionReply)]
        assert [(r.user, r.response, r.expiration_timestamp) for r in replies] == [(user.wa_id, "accept", 99)]
        assert [e.field for e in events if isinstance(e, Passthrough)] == ["messages"]
