"""``callhook dial``: ask the workers to place a call, and optionally follow it to its end.

Publishes the same dial command as ``POST /v1/calls`` (ingress/commands.py) straight to ``callhook.dials``
with publisher confirms; with ``--wait`` it binds a private queue to ``callhook.events`` first, so no
lifecycle event of the call can be missed, and prints them as JSON lines until ``call.ended``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass

import aio_pika

from callhook.env import EnvReader
from ingress import contract
from ingress.broker import declare_topology
from ingress.commands import Consent, Dial, Permission, is_user_id


@dataclass(frozen=True, slots=True)
class DialOptions:
    to: str
    phone_number_id: str
    app: str | None
    callback_data: str | None
    permission: Permission
    wait_seconds: float | None  # None: do not wait for the call's events
    recording: Consent | None = None
    transcription: Consent | None = None


def options_from(to: str, from_id: str | None, app: str | None, callback_data: str | None,
                 permission: str, wait_seconds: float | None) -> tuple[DialOptions, str]:  # fmt: skip
    r = EnvReader(os.environ)
    amqp_url = r.url("CALLHOOK_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/", schemes=("amqp", "amqps"))
    phone_number_id = from_id or r.required_str("CALLHOOK_PHONE_NUMBER_ID")
    r.finish()
    options = DialOptions(to, phone_number_id, app, callback_data, permission, wait_seconds)  # type: ignore[arg-type]
    return options, amqp_url


async def dial(options: DialOptions, amqp_url: str) -> int:
    by_id = is_user_id(options.to)
    command = Dial(
        to="" if by_id else options.to,
        recipient=options.to if by_id else "",
        recording=options.recording,
        transcription=options.transcription,
        phone_number_id=options.phone_number_id,
        app=options.app,
        biz_opaque_callback_data=options.callback_data,
        permission=options.permission,
    ).validated()
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel)
        events = None
        if options.wait_seconds is not None:
            events = await channel.declare_queue(exclusive=True, auto_delete=True)
            await events.bind(contract.EVENTS_EXCHANGE, routing_key="call.*")
        message = aio_pika.Message(
            command.encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=command.request_id,
            headers={contract.HEADER_REQUEST_ID: command.request_id},
        )
        await channel.default_exchange.publish(message, contract.DIALS_QUEUE, mandatory=True, timeout=10)
        print(
            json.dumps(
                {"request_id": command.request_id, "to": command.to or command.recipient, "status": "queued"}
            ),
            flush=True,
        )
        if events is None or options.wait_seconds is None:
            return 0
        return await _follow(events, command.request_id, options.wait_seconds)


async def _follow(queue: aio_pika.abc.AbstractQueue, request_id: str, wait_seconds: float) -> int:
    try:
        async with asyncio.timeout(wait_seconds), queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                event = json.loads(message.body)
                if event.get("request_id") != request_id:
                    continue
                print(json.dumps(event), flush=True)
                if event.get("event") == "ended":
                    return 0 if event.get("outcome") == "completed" else 1
    except TimeoutError:
        print(f"no end of the call within {wait_seconds} s", file=sys.stderr)
    return 1
