"""``POST /v1/calls`` with Meta's 2026 fields: a user id instead of a number, the recording/transcription
opt-in; every problem refused with 400 before anything is queued."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aio_pika.abc import AbstractChannel

from ingress import contract
from tests.integration.test_ingress import make_config, running_ingress
from tests.integration.test_ingress_api import API_TOKEN, AUTH, PNID, depth, get_one
from worker.events import CaptureRequest, dial_decoder

pytestmark = pytest.mark.integration


async def test_a_dial_by_user_id_with_its_opt_in_is_queued(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession
) -> None:
    config = make_config(amqp_url, api_tokens=(API_TOKEN,), phone_number_id=PNID)
    body = {
        "recipient": "US.13491208655302741918",
        "recording": {"status": "ENABLED", "purpose": "order follow-up", "announcement_language": "pt"},
        "transcription": {"status": "DISABLED"},
    }
    async with running_ingress(config) as ingress:
        await ingress.wait_connected()
        async with http.post(f"{ingress.base_url}/v1/calls", json=body, headers=AUTH) as response:
            assert response.status == 202, await response.text()
    dial = dial_decoder.decode(await get_one(await channel.get_queue(contract.DIALS_QUEUE)))
    assert (dial.to, dial.recipient) == ("", "US.13491208655302741918")
    assert dial.recording == CaptureRequest(
        status="ENABLED", purpose="order follow-up", announcement_language="pt"
    )
    assert dial.transcription == CaptureRequest(status="DISABLED")


BAD: list[tuple[dict[str, Any], list[str]]] = [
    ({"recipient": "someone"}, ["'recipient' must be a WhatsApp user id"]),
    ({"recipient": 7}, ["'recipient' must be a string"]),
    (
        {"to": "15551234567", "recording": {"status": "ON", "purpose": "", "announcement_language": "xx"}},
        ["'recording.status' must be ENABLED or DISABLED", "'recording.purpose' must be 1-250",
         "'recording.announcement_language' must be one of"],
    ),
    ({"to": "15551234567", "transcription": "yes"}, ["'transcription' must be an object"]),
    ({"to": "15551234567", "recording": {"purpose": "p", "colour": 1}},
     ["'recording.colour' is not a known field", "'recording.status' is required"]),
]  # fmt: skip


@pytest.mark.parametrize(("body", "messages"), BAD)
async def test_every_problem_is_refused_and_nothing_queued(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession, body: Any, messages: list[str]
) -> None:
    config = make_config(amqp_url, api_tokens=(API_TOKEN,), phone_number_id=PNID)
    async with running_ingress(config) as ingress:
        await ingress.wait_connected()
        async with http.post(f"{ingress.base_url}/v1/calls", json=body, headers=AUTH) as response:
            assert response.status == 400
            error = (await response.json())["error"]
    assert [m for m in messages if m not in error] == [], error
    assert await depth(channel, contract.DIALS_QUEUE) == 0
