"""Webhook bodies shaped like Meta's (reference/whatsapp-calling.md), published the way the ingress does.

Small on purpose: enough shapes for routing tests (connect, terminate, call status, permission reply, a text
message). The simulator owns the full, signed delivery.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aio_pika

from ingress import contract

WABA_ID = "102290129340398"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550783881"
CALLER = "13175551234"

OFFER_SDP = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=setup:actpass\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
)


def body(*changes: dict[str, Any], waba_id: str = WABA_ID) -> bytes:
    """One webhook: an envelope with one entry holding ``changes``."""
    envelope = {"object": "whatsapp_business_account", "entry": [{"id": waba_id, "changes": list(changes)}]}
    return json.dumps(envelope).encode()


def _metadata() -> dict[str, str]:
    return {"display_phone_number": DISPLAY_NUMBER, "phone_number_id": PHONE_NUMBER_ID}


def calls_change(
    calls: list[dict[str, Any]] | None = None, statuses: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    value: dict[str, Any] = {"messaging_product": "whatsapp", "metadata": _metadata()}
    if calls:
        value["contacts"] = [{"profile": {"name": "Test Caller"}, "wa_id": CALLER}]
        value["calls"] = calls
    if statuses:
        value["statuses"] = statuses
    return {"field": "calls", "value": value}


def connect_item(call_id: str, *, timestamp: int | None = None, outgoing: bool = False) -> dict[str, Any]:
    return {
        "id": call_id,
        "from": DISPLAY_NUMBER if outgoing else CALLER,
        "to": CALLER if outgoing else DISPLAY_NUMBER,
        "event": "connect",
        "direction": "BUSINESS_INITIATED" if outgoing else "USER_INITIATED",
        "timestamp": str(int(time.time()) if timestamp is None else timestamp),
        "session": {"sdp_type": "answer" if outgoing else "offer", "sdp": OFFER_SDP},
    }


def terminate_item(call_id: str, *, status: str = "COMPLETED") -> dict[str, Any]:
    now = int(time.time())
    return {
        "id": call_id,
        "from": CALLER,
        "to": DISPLAY_NUMBER,
        "event": "terminate",
        "direction": "USER_INITIATED",
        "timestamp": str(now),
        "status": status,
        "start_time": str(now - 5),
        "end_time": str(now),
        "duration": 5,
    }


def status_item(call_id: str, status: str = "RINGING") -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "call",
        "status": status,
        "timestamp": str(int(time.time())),
        "recipient_id": CALLER,
    }


def connect(call_id: str, *, timestamp: int | None = None, outgoing: bool = False) -> bytes:
    return body(calls_change([connect_item(call_id, timestamp=timestamp, outgoing=outgoing)]))


def terminate(call_id: str) -> bytes:
    return body(calls_change([terminate_item(call_id)]))


def status(call_id: str, status: str = "RINGING") -> bytes:
    return body(calls_change(statuses=[status_item(call_id, status)]))


def text_message(text: str = "hello") -> bytes:
    message = {
        "from": CALLER,
        "id": "wamid.T1",
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": text},
    }
    value = {"messaging_product": "whatsapp", "metadata": _metadata(), "messages": [message]}
    return body({"field": "messages", "value": value})


def permission_reply(response: str = "accept") -> bytes:
    message = {
        "from": CALLER,
        "id": "wamid.P1",
        "timestamp": str(int(time.time())),
        "type": "interactive",
        "interactive": {
            "type": "call_permission_reply",
            "call_permission_reply": {
                "response": response,
                "is_permanent": False,
                "response_source": "user_action",
            },
        },
    }
    value = {"messaging_product": "whatsapp", "metadata": _metadata(), "messages": [message]}
    return body({"field": "messages", "value": value})


def account_update() -> bytes:
    return body(
        {"field": "account_update", "value": {"phone_number": DISPLAY_NUMBER, "event": "VERIFIED_ACCOUNT"}}
    )


async def publish(
    channel: aio_pika.abc.AbstractChannel, data: bytes, *, received_at: float | None = None
) -> None:
    """Publish a webhook to ``callhook.webhooks`` the way the ingress does (persistent, confirmed)."""
    message = aio_pika.Message(
        data,
        content_type=contract.WEBHOOK_CONTENT_TYPE,
        message_id=contract.message_id(data),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        # a string, as the ingress sends it (pamqp would encode a float with 32 bits)
        headers={contract.HEADER_RECEIVED_AT: f"{time.time() if received_at is None else received_at:.6f}"},
    )
    await channel.default_exchange.publish(message, contract.WEBHOOKS_QUEUE, timeout=10)
