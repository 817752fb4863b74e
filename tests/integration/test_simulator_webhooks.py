"""Webhook delivery: signed exact bytes, retries, and Meta's misbehaviour switches, against a receiver here.

The receiver is a small aiohttp app written in this test: it verifies ``X-Hub-Signature-256`` with hmac over
the raw bytes itself and answers with the statuses the test queues (503 first, then 200).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from callhook.ice import restrict_host_addresses
from simulator.config import CallTiming, DeliveryConfig, DeliverySwitches, SimulatorConfig
from simulator.journal import Changes
from simulator.sim import Simulator

SECRET = "the-app-secret"


@pytest.fixture(autouse=True, scope="module")
def _loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])


@dataclass
class Received:
    at: float
    body: bytes
    headers: dict[str, str]
    status: int

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.body)
        return body

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        """(key, item) for every calls/statuses/messages item in the body."""
        return [
            (key, item)
            for entry in self.json()["entry"]
            for change in entry["changes"]
            for key in ("calls", "statuses", "messages")
            for item in change["value"].get(key, [])
        ]


@dataclass
class Receiver:
    """An ingress stand-in: checks signatures, answers queued statuses, records everything."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    changes: Changes = field(default_factory=Changes)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Hub-Signature-256", ""), expected):
            status = 401
        else:
            status = self.statuses.pop(0) if self.statuses else 200
        self.received.append(Received(time.time(), body, dict(request.headers), status))
        self.changes.notify()
        return web.Response(status=status)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:  # noqa: ASYNC109 - bounded
        return await self.changes.wait_for(
            lambda: self.received if len(self.received) >= count else None, timeout
        )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/webhook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhook"
    yield receiver
    await runner.cleanup()


def _config(**overrides: Any) -> SimulatorConfig:
    base = SimulatorConfig(
        app_secret=SECRET,
        access_token="t",
        graph_port=0,
        timing=CallTiming(answer_window_seconds=30.0),
        delivery=DeliveryConfig(retry_initial_seconds=0.02, retry_max_seconds=0.1, max_attempts=4),
    )
    return dataclasses.replace(base, **overrides)


async def test_webhooks_are_signed_over_the_exact_bytes_and_retried_on_503(receiver: Receiver) -> None:
    receiver.statuses = [503, 503]
    async with Simulator(_config(), ingress_url=receiver.url) as sim:
        call = await sim.place_call("15551230001", name="Zoë Ångström")
        received = await receiver.wait_for(3)
        assert [r.status for r in received] == [503, 503, 200]
        assert len({r.body for r in received}) == 1  # a retry is the same bytes
        first = received[0]
        assert first.headers["Content-Type"] == "application/json"
        assert first.headers["X-Hub-Signature"].startswith("sha1=")
        assert first.body.isascii()
        assert b"Zo\\u00eb \\u00c5ngstr\\u00f6m" in first.body
        assert b"UDP\\/TLS\\/RTP\\/SAVPF" in first.body
        value = first.json()["entry"][0]["changes"][0]["value"]
        assert value["calls"][0]["session"]["sdp"] == call.offer_sdp
        assert value["contacts"] == [{"profile": {"name": "Zoë Ångström"}, "wa_id": "15551230001"}]

        delivery = await sim.journal.wait_for_delivery("connect", call_id=call.call_id)
        assert delivery.body == first.body  # the journal keeps the byte-exact first body
        assert [(a.number, a.http_status) for a in delivery.attempts] == [(1, 503), (2, 503), (3, 200)]
        assert sim.journal.connect_sent_at(call.call_id) == delivery.attempts[0].sent_at
        assert delivery.attempts[0].sent_at <= received[0].at


async def test_a_receiver_that_is_down_gets_retries_then_the_delivery_gives_up(receiver: Receiver) -> None:
    receiver.statuses = [500] * 10
    async with Simulator(_config(), ingress_url=receiver.url) as sim:
        call = await sim.place_call("15551230001")
        await receiver.wait_for(4)

        def gave_up() -> bool:
            return any(d.gave_up for d in sim.journal.deliveries_of("connect", call.call_id))

        await sim.journal.changes.wait_for(gave_up, 10)
        assert len(receiver.received) == 4
    async with Simulator(_config(), ingress_url="http://127.0.0.1:9/nothing-listens") as sim:
        call = await sim.place_call("15551230001")
        await sim.journal.changes.wait_for(
            lambda: sim.journal.deliveries and sim.journal.deliveries[0].gave_up, 10
        )
        errors = [a.error for a in sim.journal.deliveries[0].attempts]
        assert len(errors) == 4
        assert all(error and "Connect" in error for error in errors)
        assert sim.statistics().webhook_failures == 1


async def test_a_wrong_secret_is_refused_by_a_verifying_receiver(receiver: Receiver) -> None:
    async with Simulator(_config(app_secret="not-the-secret"), ingress_url=receiver.url) as sim:
        await sim.place_call("15551230001")
        received = await receiver.wait_for(1)
        assert received[0].status == 401


async def test_duplicates_send_the_same_bytes_again(receiver: Receiver) -> None:
    switches = DeliverySwitches(duplicate_fraction=1.0)
    async with Simulator(_config(switches=switches), ingress_url=receiver.url) as sim:
        call = await sim.place_call("15551230001")
        received = await receiver.wait_for(2)
        assert received[0].body == received[1].body
        deliveries = sim.journal.deliveries_of("connect", call.call_id)
        assert [d.duplicate_of for d in deliveries] == [None, deliveries[0].id]


async def test_reorder_lets_the_terminate_overtake_the_connect(receiver: Receiver) -> None:
    switches = DeliverySwitches(reorder_fraction=1.0, reorder_seconds=0.3)
    async with Simulator(_config(switches=switches), ingress_url=receiver.url) as sim:
        call = await sim.place_call("15551230001")
        await call.hangup()  # the caller gives up at once
        received = await receiver.wait_for(2)
        events = [item["event"] for r in received for _, item in r.items()]
        assert events == ["terminate", "connect"]
        assert call.end_reason == "caller_cancelled"


async def test_batches_carry_several_updates_in_one_post(receiver: Receiver) -> None:
    switches = DeliverySwitches(batch_size=3, batch_window_seconds=5.0)
    async with Simulator(_config(switches=switches), ingress_url=receiver.url) as sim:
        calls = [await sim.place_call(f"1555123000{i}") for i in range(3)]
        received = await receiver.wait_for(1)
        ids = [item["id"] for _, item in received[0].items()]
        assert ids == [c.call_id for c in calls]
        body = received[0].json()
        assert len(body["entry"]) == 1
        assert len(body["entry"][0]["changes"]) == 1
        assert len(body["entry"][0]["changes"][0]["value"]["contacts"]) == 3
        delivery = sim.journal.deliveries[0]
        assert delivery.kinds == ("connect", "connect", "connect")


async def test_stale_connects_carry_an_old_timestamp_and_delay_holds_everything(receiver: Receiver) -> None:
    switches = DeliverySwitches(stale_fraction=1.0, stale_seconds=900.0, delay_seconds=0.2)
    async with Simulator(_config(switches=switches), ingress_url=receiver.url) as sim:
        placed_at = time.time()
        await sim.place_call("15551230001")
        received = await receiver.wait_for(1)
        ((_, item),) = received[0].items()
        assert int(item["timestamp"]) <= placed_at - 899
        assert received[0].at - placed_at >= 0.2


async def test_switches_can_be_changed_while_running(receiver: Receiver) -> None:
    async with Simulator(_config(), ingress_url=receiver.url) as sim:
        await sim.place_call("15551230001")
        await receiver.wait_for(1)
        sim.webhooks.switches = DeliverySwitches(duplicate_fraction=1.0)
        await sim.place_call("15551230002")
        received = await receiver.wait_for(3)
        assert received[1].body == received[2].body
        assert received[0].body != received[1].body


async def test_close_leaves_no_task_running(receiver: Receiver) -> None:
    before = asyncio.all_tasks()
    receiver.statuses = [503] * 3
    sim = Simulator(_config(), ingress_url=receiver.url)
    async with sim:
        await sim.place_call("15551230001")
        await receiver.wait_for(1)  # a retry is pending when we close
    await sim.close()  # idempotent
    left = [t for t in asyncio.all_tasks() - before if "RequestHandler" not in repr(t)]  # the receiver's own
    assert left == []
