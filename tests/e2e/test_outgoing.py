"""Outgoing calls end to end: ``callhook dial`` → a worker → Meta (the simulator) → the user's phone.

Real processes (ingress, two workers), the real broker, real media. Each test follows the call through the
lifecycle events an integrator would consume on ``callhook.events``.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
import pytest_asyncio

from ingress import contract
from ingress.commands import Dial
from simulator.config import AnswerWebhook, CalleeAction, CalleeBehaviour, SimulatorConfig
from simulator.permissions import PermissionStatus
from simulator.sim import Simulator
from tests.support.system import ACCESS_TOKEN, APP_SECRET, System, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

PNID = SimulatorConfig().numbers[0].phone_number_id
API_TOKEN = "e2e-integrator-token"


class Lifecycle:
    """Every ``call.*`` event on ``callhook.events``, grouped by dial request id (and call id)."""

    def __init__(self) -> None:
        self.by_request: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._changed = asyncio.Condition()

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        event = json.loads(message.body)
        async with self._changed:
            self.by_request[event.get("request_id") or event["call_id"]].append(event)
            self._changed.notify_all()
        await message.ack()

    async def wait_event(self, key: str, name: str, timeout: float = 30.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: any(e["event"] == name for e in self.by_request[key]))
        return self.by_request[key]

    async def wait_ended(self, key: str, timeout: float = 30.0) -> list[dict[str, Any]]:  # noqa: ASYNC109
        return await self.wait_event(key, "ended", timeout)


class Env:
    def __init__(
        self, system: System, sim: Simulator, lifecycle: Lifecycle, channel: aio_pika.abc.AbstractChannel
    ):
        self.system, self.sim, self.lifecycle, self.channel = system, sim, lifecycle, channel

    async def dial(self, to: str, **kwargs: Any) -> str:
        command = Dial(to=to, phone_number_id=PNID, **kwargs).validated()
        message = aio_pika.Message(command.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await self.channel.default_exchange.publish(message, contract.DIALS_QUEUE, mandatory=True)
        return command.request_id


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    graph_port = free_port()
    system = System(
        amqp_url=amqp_url,
        graph_url=f"http://127.0.0.1:{graph_port}",
        log_dir=tmp_path_factory.mktemp("outgoing-logs"),
        workers=2,
        ingress_env={"CALLHOOK_API_TOKENS": API_TOKEN, "CALLHOOK_PHONE_NUMBER_ID": PNID},
    )
    config = SimulatorConfig(
        app_secret=APP_SECRET,
        access_token=ACCESS_TOKEN,
        ice_host_addresses=("127.0.0.1",),
        default_permission=PermissionStatus.TEMPORARY,
    )
    lifecycle = Lifecycle()
    async with system:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            queue = await channel.declare_queue(exclusive=True)
            await queue.bind(contract.EVENTS_EXCHANGE, routing_key="call.*")
            await queue.consume(lifecycle.on_message)
            async with Simulator(config, ingress_url=system.webhook_url, graph_port=graph_port) as sim:
                try:
                    yield Env(system, sim, lifecycle, channel)
                except BaseException:
                    _dump_logs(system.log_dir)
                    raise


def _dump_logs(log_dir: Path) -> None:
    for path in sorted(log_dir.glob("*.log")):
        print(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")


def names(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


async def test_answered_call_carries_audio_both_ways_and_tells_integrators(env: Env) -> None:
    request_id = await env.dial("15550100001", biz_opaque_callback_data="order-1")
    call = await env.sim.wait_for_call(user="15550100001", timeout=15)
    await call.wait_state("accepted", timeout=15)
    await call.wait_heard(2.0, timeout=15)  # the worker's echo app sends the phone's own signal back
    report = call.audio_report()
    assert report.matched, report
    await call.hangup()
    events = await env.lifecycle.wait_ended(request_id)
    assert names(events) == ["dialed", "ringing", "answered", "ended"]
    assert {e["call_id"] for e in events} == {call.call_id}
    assert all(e["biz_opaque_callback_data"] == "order-1" for e in events)
    assert events[-1]["outcome"] == "completed"
    # The callee's audio as the worker received it (a clean loopback): counted, nothing lost for good.
    media = events[-1]["media"]
    assert media["received"] >= 50, media
    assert media["expected"] >= media["received"], media
    assert media["lost"] == 0, media
    assert 1.0 <= media["mos"] <= 4.5, media
    connects = env.sim.journal.graph_requests("connect")
    assert [r for r in connects if r.call_id == call.call_id], "connect recorded with the call's id"


async def test_rejected_by_the_callee(env: Env) -> None:
    env.sim.set_callee("15550100002", CalleeBehaviour(action=CalleeAction.REJECT, ring_seconds=0.2))
    request_id = await env.dial("15550100002")
    events = await env.lifecycle.wait_ended(request_id)
    assert names(events)[0] == "dialed"  # RINGING and REJECTED are separate webhooks: either may come first
    assert "answered" not in names(events)
    assert events[-1]["outcome"] == "declined"


async def test_unanswered_call_ends_when_meta_gives_up(env: Env) -> None:
    env.sim.set_callee("15550100003", CalleeBehaviour(action=CalleeAction.NO_ANSWER))
    request_id = await env.dial("15550100003")
    call = await env.sim.wait_for_call(user="15550100003", timeout=15)
    await call.hangup()  # the user's phone stops ringing (Meta sends terminate FAILED)
    events = await env.lifecycle.wait_ended(request_id)
    assert "answered" not in names(events)
    assert events[-1]["outcome"] == "unanswered"


async def test_no_permission_is_a_clear_outcome_not_a_retry(env: Env) -> None:
    env.sim.set_permission("15550100004", PermissionStatus.NONE)
    request_id = await env.dial("15550100004")  # permission "skip": Meta refuses with 138006
    events = await env.lifecycle.wait_ended(request_id)
    assert names(events) == ["ended"]
    assert events[-1]["outcome"] == "failed"
    assert events[-1]["error_code"] == 138006
    assert events[-1]["reason"].startswith("no_permission")
    attempts = [r for r in env.sim.journal.graph_requests("connect") if r.to == "15550100004"]
    assert len(attempts) == 1, "a refused connect is never retried"


async def test_permission_check_and_request_before_dialing(env: Env) -> None:
    env.sim.set_permission("15550100005", PermissionStatus.NONE)
    checked = await env.dial("15550100005", permission="check")
    requested = await env.dial("15550100005", permission="request")
    check_events = await env.lifecycle.wait_ended(checked)
    request_events = await env.lifecycle.wait_ended(requested)
    assert check_events[-1]["outcome"] == "no_permission"
    assert request_events[-1]["outcome"] == "permission_requested"
    assert not [r for r in env.sim.journal.graph_requests("connect") if r.to == "15550100005"]
    messages = env.sim.journal.graph_requests("messages")
    assert [m for m in messages if m.to == "15550100005"], "a permission request was sent"


async def test_answer_webhook_before_connect_response_is_applied(env: Env) -> None:
    env.sim.set_callee(
        "15550100006",
        CalleeBehaviour(
            action=CalleeAction.ANSWER, ring_seconds=0.0, answer_webhook=AnswerWebhook.BEFORE_RESPONSE
        ),
    )
    request_id = await env.dial("15550100006")
    call = await env.sim.wait_for_call(user="15550100006", timeout=15)
    await call.wait_state("accepted", timeout=15)
    await call.wait_heard(1.0, timeout=15)
    assert call.audio_report().matched
    await call.hangup()
    events = await env.lifecycle.wait_ended(request_id)
    assert "answered" in names(events)
    assert events[-1]["outcome"] == "completed"


async def test_dial_and_hangup_through_the_http_api_reach_the_owning_worker(env: Env) -> None:
    assert env.system.ingress is not None
    api = f"{env.system.ingress.url}/v1/calls"
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(api, json={"to": "15550100007", "app": "echo"}, headers=auth) as response:
            assert response.status == 202
            request_id = (await response.json())["request_id"]
        call = await env.sim.wait_for_call(user="15550100007", timeout=15)
        await env.lifecycle.wait_event(request_id, "answered")
        quoted = urllib.parse.quote(call.call_id, safe="")
        async with http.post(f"{api}/{quoted}/hangup", headers=auth) as response:
            assert response.status == 202
    events = await env.lifecycle.wait_ended(request_id)
    assert events[-1]["outcome"] == "completed"
    assert "hangup requested" in events[-1]["reason"]
    terminate = await env.sim.journal.wait_for_request("terminate", call_id=call.call_id, timeout=10)
    assert terminate.ok
    await call.wait_ended(timeout=10)
