"""The ingress against the real RabbitMQ (a private vhost): what Meta sees and what lands in the queue.

Broker outages are made with tests/support/tcpproxy.py between the ingress and the broker; the real broker is
never touched. The last test runs a real ``callhook ingress`` process and stops it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pamqp.frame
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiohttp import web
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader
from prometheus_client import CollectorRegistry
from yarl import URL

from ingress import contract
from ingress.app import PUBLISHER, create_app, make_runner, start_listeners
from ingress.broker import declare_topology
from ingress.config import IngressConfig
from ingress.publisher import BrokerUnavailable, Publisher, encode_content, publish_frame
from ingress.signature import sign
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.integration

SECRETS = ("app-secret-alpha", "app-secret-bravo", "app-secret-gamma")
TOKEN = "verify-token-1234"
LIMIT = 4096
WAIT = 10.0  # bound on every wait for the broker or the process
REPO = Path(__file__).resolve().parents[2]
BODY = (
    b'{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":'
    b'{"messaging_product":"whatsapp","calls":[{"id":"wacid.ABGGFjFVU2AfAgo6V-Hc5eCgK5Gh","event":"connect",'
    b'"from":"13175551399","contacts":[{"profile":{"name":"Ren\\u00e9e \\ud83d\\udcde"}}]}]},'
    b'"field":"calls"}]}]}\n'
)


def make_config(amqp_url: str, **overrides: Any) -> IngressConfig:
    config = IngressConfig(
        app_secrets=SECRETS,
        verify_token=TOKEN,
        amqp_url=amqp_url,
        host="127.0.0.1",
        port=0,
        max_body_bytes=LIMIT,
        publish_confirm_timeout_seconds=3.0,
        reconnect_initial_seconds=0.05,
        reconnect_max_seconds=0.3,
        shutdown_delay_seconds=0.0,
        shutdown_grace_seconds=5.0,
    )
    return replace(config, **overrides)


def via_proxy(amqp_url: str, proxy: TcpProxy) -> str:
    return str(URL(amqp_url).with_port(proxy.port))


@dataclass
class Running:
    app: web.Application
    base_url: str
    api_url: str = ""  # the API listener's URL (base_url when the API shares the webhook port)

    @property
    def publisher(self) -> Publisher:
        return self.app[PUBLISHER]

    async def wait_connected(self) -> None:
        async with asyncio.timeout(WAIT):
            await self.publisher.wait_connected()


@asynccontextmanager
async def running_ingress(config: IngressConfig) -> AsyncIterator[Running]:
    app = create_app(config, CollectorRegistry())
    runner = make_runner(app, config)
    await runner.setup()
    try:
        sites = await start_listeners(runner, config)
        urls = [f"http://127.0.0.1:{site.port}" for site in sites]
        yield Running(app, urls[0], urls[-1])
    finally:
        await runner.cleanup()


@pytest.fixture
async def ingress(amqp_url: str, channel: AbstractChannel) -> AsyncIterator[Running]:
    async with running_ingress(make_config(amqp_url)) as running:
        await running.wait_connected()
        yield running


async def take_all(channel: AbstractChannel) -> list[AbstractIncomingMessage]:
    queue = await channel.get_queue(contract.WEBHOOKS_QUEUE)
    messages = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        messages.append(message)
    return messages


async def post(
    http: aiohttp.ClientSession,
    ingress: Running,
    body: bytes,
    *,
    secret: str | None = SECRETS[0],
    headers: dict[str, str] | None = None,
) -> int:
    sent = {"Content-Type": "application/json"}
    if secret is not None:
        sent["X-Hub-Signature-256"] = sign(body, secret)
    sent.update(headers or {})
    async with http.post(ingress.base_url + "/webhook", data=body, headers=sent) as response:
        await response.read()
        return response.status


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as response:
        return response.status, await response.text()


async def metric(http: aiohttp.ClientSession, ingress: Running, line_prefix: str) -> float:
    _, text = await get(http, ingress.base_url + "/metrics")
    values = [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_prefix + " ")
    ]
    assert len(values) == 1, line_prefix
    return values[0]


# --- accepted webhooks -------------------------------------------------------------------------------------


async def test_signed_webhook_is_stored_byte_for_byte_with_the_contract(
    ingress: Running, http: aiohttp.ClientSession, channel: AbstractChannel
) -> None:
    before = time.time()
    assert await post(http, ingress, BODY, secret=SECRETS[1]) == 200
    after = time.time()

    [message] = await take_all(channel)
    assert message.body == BODY
    assert message.content_type == contract.WEBHOOK_CONTENT_TYPE
    assert message.message_id == contract.message_id(BODY)
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.timestamp is not None
    assert int(before) <= message.timestamp.timestamp() <= after
    received_at = message.headers[contract.HEADER_RECEIVED_AT]
    assert isinstance(received_at, str)  # pamqp would squeeze a float into 32 bits
    assert before <= float(received_at) <= after
    assert message.headers[contract.HEADER_APP_SECRET_ID] == contract.secret_id(SECRETS[1])


async def test_every_app_secret_is_accepted_and_named(
    ingress: Running, http: aiohttp.ClientSession, channel: AbstractChannel
) -> None:
    bodies = {secret: BODY.replace(b"connect", secret.encode()) for secret in SECRETS}
    for secret, body in bodies.items():
        assert await post(http, ingress, body, secret=secret) == 200
    stored = {m.body: m.headers[contract.HEADER_APP_SECRET_ID] for m in await take_all(channel)}
    assert stored == {body: contract.secret_id(secret) for secret, body in bodies.items()}


async def test_concurrent_publishes_are_all_confirmed_including_identical_bodies(
    ingress: Running, http: aiohttp.ClientSession, channel: AbstractChannel
) -> None:
    distinct = [BODY.replace(b"13175551399", str(n).encode()) for n in range(150)]
    identical = [BODY] * 20  # Meta retrying a delivery while the first copy is still unconfirmed
    statuses = await asyncio.gather(*(post(http, ingress, body) for body in distinct + identical))
    assert set(statuses) == {200}
    stored = sorted(m.body for m in await take_all(channel))
    assert stored == sorted(distinct + identical)


async def test_a_body_of_several_amqp_frames_is_stored_intact(
    amqp_url: str, http: aiohttp.ClientSession, channel: AbstractChannel
) -> None:
    big = bytes(range(256)) * 2_000  # 512 000 bytes: four body frames at RabbitMQ's frame_max of 128 KiB
    async with running_ingress(make_config(amqp_url, max_body_bytes=len(big))) as ingress:
        await ingress.wait_connected()
        assert await post(http, ingress, big) == 200
    [message] = await take_all(channel)
    assert message.body == big
    assert message.message_id == contract.message_id(big)


@pytest.mark.parametrize("size", [0, 1, 1500, 131_064, 131_065, 400_000])
def test_frames_encoded_by_hand_are_what_pamqp_reads(size: int) -> None:
    body = bytes(n % 251 for n in range(size))
    received_at = 1_795_292_601.557222
    pieces = encode_content(
        7,
        131_064,
        body,
        message_id=contract.message_id(body),
        received_at=received_at,
        secret_id="ab12cd34ef56",
    )
    data = publish_frame(7) + b"".join(pieces)
    frames = []
    while data:
        consumed, channel_number, frame = pamqp.frame.unmarshal(data)
        assert channel_number == 7
        frames.append(frame)
        data = data[consumed:]
    publish, header, *bodies = frames
    assert isinstance(publish, Basic.Publish)
    assert (publish.exchange, publish.routing_key, publish.mandatory) == ("", contract.WEBHOOKS_QUEUE, True)
    assert isinstance(header, ContentHeader)
    assert header.body_size == size
    expected = Basic.Properties(
        content_type=contract.WEBHOOK_CONTENT_TYPE,
        delivery_mode=2,
        message_id=contract.message_id(body),
        timestamp=datetime.fromtimestamp(int(received_at), UTC),
        headers={
            contract.HEADER_RECEIVED_AT: "1795292601.557222",
            contract.HEADER_APP_SECRET_ID: "ab12cd34ef56",
        },
    )
    assert header.properties == expected
    chunks = [b.value for b in bodies if isinstance(b, ContentBody)]
    assert len(chunks) == len(bodies)
    assert all(len(chunk) <= 131_064 for chunk in chunks)
    assert b"".join(chunks) == body
    assert len(bodies) == -(-size // 131_064)


# --- refused webhooks --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"X-Hub-Signature-256": ""}, "missing"),
        ({"X-Hub-Signature-256": sign(BODY, SECRETS[0])[7:]}, "malformed"),
        ({"X-Hub-Signature-256": "sha1=" + "ab" * 20}, "malformed"),
        ({"X-Hub-Signature-256": sign(BODY, SECRETS[0])[:-1] + "z"}, "malformed"),
        ({"X-Hub-Signature-256": sign(BODY, "not-our-secret")}, "mismatch"),
        ({"X-Hub-Signature-256": sign(BODY + b" ", SECRETS[0])}, "mismatch"),
    ],
)
async def test_bad_signature_is_401_and_nothing_is_stored(
    ingress: Running,
    http: aiohttp.ClientSession,
    channel: AbstractChannel,
    headers: dict[str, str],
    reason: str,
) -> None:
    assert await post(http, ingress, BODY, secret=None, headers=headers) == 401
    assert await take_all(channel) == []
    failures = f'callhook_ingress_signature_failures_total{{reason="{reason}"}}'
    assert await metric(http, ingress, failures) == 1
    outcome = 'callhook_ingress_requests_total{outcome="bad_signature",route="webhook"}'
    assert await metric(http, ingress, outcome) == 1


async def test_body_over_the_limit_is_413_with_content_length(
    ingress: Running, http: aiohttp.ClientSession, channel: AbstractChannel
) -> None:
    at_limit = b"x" * LIMIT
    assert await post(http, ingress, at_limit + b"x") == 413
    assert await post(http, ingress, at_limit) == 200
    assert [m.body for m in await take_all(channel)] == [at_limit]
    assert (
        await metric(http, ingress, 'callhook_ingress_requests_total{outcome="too_large",route="webhook"}')
        == 1
    )


async def test_declared_size_is_refused_before_the_body_is_sent(ingress: Running) -> None:
    port = URL(ingress.base_url).port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Hub-Signature-256: " + sign(b"", SECRETS[0]).encode() + b"\r\n"
            b"Content-Length: 1000000000\r\n\r\n"  # and not one byte of it
        )
        await writer.drain()
        async with asyncio.timeout(WAIT):
            status_line = await reader.readline()
            rest = await reader.read()  # the ingress closes the connection instead of waiting for a GB
        assert status_line.startswith(b"HTTP/1.1 413")
        assert b"Connection: close" in rest
    finally:
        writer.close()


async def test_chunked_body_is_read_with_a_bound(
    ingress: Running, http: aiohttp.ClientSession, channel: AbstractChannel
) -> None:
    async def chunks(total: int, size: int = 1000) -> AsyncIterator[bytes]:
        for start in range(0, total, size):
            yield b"y" * min(size, total - start)

    big = b"y" * (LIMIT * 4)
    headers = {"X-Hub-Signature-256": sign(big, SECRETS[0])}
    async with http.post(ingress.base_url + "/webhook", data=chunks(len(big)), headers=headers) as response:
        assert response.status == 413
        assert response.request_info.headers.get("Transfer-Encoding") == "chunked"

    small = b"y" * (LIMIT - 10)
    headers = {"X-Hub-Signature-256": sign(small, SECRETS[2])}
    async with http.post(ingress.base_url + "/webhook", data=chunks(len(small)), headers=headers) as response:
        assert response.status == 200
    assert [m.body for m in await take_all(channel)] == [small]


async def test_other_methods_are_405(ingress: Running, http: aiohttp.ClientSession) -> None:
    async with http.put(ingress.base_url + "/webhook", data=BODY) as response:
        assert response.status == 405


# --- the subscription handshake ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status", "text"),
    [
        (
            {"hub.mode": "subscribe", "hub.verify_token": TOKEN, "hub.challenge": "11582014"},
            200,
            "11582014",
        ),
        ({"hub.mode": "subscribe", "hub.verify_token": TOKEN + "x", "hub.challenge": "1"}, 403, None),
        ({"hub.mode": "subscribe", "hub.verify_token": TOKEN[:-1], "hub.challenge": "1"}, 403, None),
        ({"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"}, 403, None),
        ({"hub.mode": "subscribe", "hub.challenge": "1"}, 403, None),
        ({"hub.mode": "unsubscribe", "hub.verify_token": TOKEN, "hub.challenge": "1"}, 403, None),
        ({"hub.verify_token": TOKEN, "hub.challenge": "1"}, 403, None),
        ({"hub.mode": "subscribe", "hub.verify_token": TOKEN}, 400, None),
    ],
)
async def test_verification_handshake(
    ingress: Running, http: aiohttp.ClientSession, query: dict[str, str], status: int, text: str | None
) -> None:
    async with http.get(ingress.base_url + "/webhook", params=query) as response:
        assert response.status == status
        if text is not None:
            assert await response.text() == text
            assert response.content_type == "text/plain"


# --- health, readiness, metrics ----------------------------------------------------------------------------


async def test_health_readiness_and_metric_names(ingress: Running, http: aiohttp.ClientSession) -> None:
    assert await get(http, ingress.base_url + "/healthz") == (200, "ok")
    assert (await get(http, ingress.base_url + "/readyz"))[0] == 200
    assert await post(http, ingress, BODY) == 200
    status, text = await get(http, ingress.base_url + "/metrics")
    assert status == 200
    # The Helm chart's alerts and dashboard use exactly these names.
    for name, kind in [
        ("callhook_ingress_requests_total", "counter"),
        ("callhook_ingress_request_duration_seconds", "histogram"),
        ("callhook_ingress_publish_confirm_duration_seconds", "histogram"),
        ("callhook_ingress_signature_failures_total", "counter"),
        ("callhook_ingress_body_bytes", "histogram"),
        ("callhook_ingress_broker_connected", "gauge"),
        ("callhook_ingress_inflight_requests", "gauge"),
    ]:
        assert f"# TYPE {name} {kind}" in text
    assert await metric(http, ingress, "callhook_ingress_broker_connected") == 1
    assert await metric(http, ingress, "callhook_ingress_inflight_requests") == 0
    assert await metric(http, ingress, 'callhook_ingress_requests_total{outcome="ok",route="webhook"}') == 1
    assert await metric(http, ingress, "callhook_ingress_publish_confirm_duration_seconds_count") == 1
    assert await metric(http, ingress, "callhook_ingress_body_bytes_sum") == len(BODY)


# --- the broker failing ------------------------------------------------------------------------------------


async def test_broker_outage_gives_503_and_recovers_without_restart(
    amqp_url: str, http: aiohttp.ClientSession, channel: AbstractChannel
) -> None:
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        await proxy.cut()  # unreachable from the start
        async with running_ingress(make_config(via_proxy(amqp_url, proxy))) as ingress:
            assert (await get(http, ingress.base_url + "/readyz"))[0] == 503
            assert await post(http, ingress, b'{"n":1}') == 503
            assert await metric(http, ingress, "callhook_ingress_broker_connected") == 0
            assert (await get(http, ingress.base_url + "/healthz"))[0] == 200

            proxy.restore()
            await ingress.wait_connected()
            assert (await get(http, ingress.base_url + "/readyz"))[0] == 200
            assert await post(http, ingress, b'{"n":2}') == 200

            await proxy.cut()  # lost while running
            async with asyncio.timeout(WAIT):
                await ingress.publisher.wait_disconnected()
            assert await get(http, ingress.base_url + "/readyz") == (503, "broker not connected")
            assert await post(http, ingress, b'{"n":3}') == 503
            assert await metric(http, ingress, "callhook_ingress_broker_connected") == 0

            proxy.restore()
            await ingress.wait_connected()
            assert await post(http, ingress, b'{"n":4}') == 200
            assert await metric(http, ingress, "callhook_ingress_broker_connected") == 1
            assert ingress.publisher.statistics().connects == 2
    assert [m.body for m in await take_all(channel)] == [b'{"n":2}', b'{"n":4}']


async def test_connection_lost_while_waiting_for_the_confirm_is_503(
    amqp_url: str, http: aiohttp.ClientSession, channel: AbstractChannel
) -> None:
    async with (
        TcpProxy("127.0.0.1", 5672) as proxy,
        running_ingress(make_config(via_proxy(amqp_url, proxy))) as ingress,
    ):
        await ingress.wait_connected()
        proxy.set_delay(3600)  # hold the publish and its confirm
        sent = proxy.bytes_from_clients
        pending = asyncio.create_task(post(http, ingress, BODY))
        async with asyncio.timeout(WAIT):
            await proxy.wait_bytes_from_clients(sent + len(BODY))  # the publish reached the "broker"
        assert ingress.publisher.statistics().inflight == 1
        await proxy.cut()
        async with asyncio.timeout(WAIT):
            assert await pending == 503
        proxy.set_delay(0)
        proxy.restore()
        await ingress.wait_connected()
        assert await post(http, ingress, BODY) == 200


async def test_confirm_timeout_is_503(
    amqp_url: str, http: aiohttp.ClientSession, channel: AbstractChannel
) -> None:
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        config = make_config(via_proxy(amqp_url, proxy), publish_confirm_timeout_seconds=0.3)
        async with running_ingress(config) as ingress:
            await ingress.wait_connected()
            proxy.set_delay(3600)
            assert await post(http, ingress, BODY) == 503
            # The held publish goes through late: a duplicate of Meta's retry, not a loss.
            proxy.set_delay(0)
            assert await post(http, ingress, BODY.replace(b"connect", b"terminate")) == 200
            assert ingress.publisher.connected


async def test_publisher_close_is_prompt_and_idempotent_in_every_state(amqp_url: str) -> None:
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        url = via_proxy(amqp_url, proxy)
        await proxy.cut()
        never_connected = Publisher(url, reconnect_initial_seconds=0.01, reconnect_max_seconds=0.02)
        async with asyncio.timeout(WAIT):
            async with never_connected:
                pass  # closed while its first attempts fail
            await never_connected.close()
        proxy.restore()
        connected = Publisher(url)
        async with asyncio.timeout(WAIT):
            async with connected:
                await connected.wait_connected()
            assert not connected.connected
            await connected.close()
            with pytest.raises(BrokerUnavailable):
                await connected.publish(BODY, received_at=time.time(), secret_id="x")


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)


@pytest.fixture
def capped_queue(amqp_url: str) -> Iterator[None]:
    """callhook.webhooks limited to one message by policy: the broker nacks the next (reject-publish)."""
    vhost = URL(amqp_url).path.lstrip("/")
    _rabbitmqctl(
        "set_policy", "-p", vhost, "--apply-to", "queues", "cap", r"^callhook\.webhooks$", '{"max-length":1}'
    )
    try:
        yield
    finally:
        _rabbitmqctl("clear_policy", "-p", vhost, "cap")


async def test_nack_is_503(
    ingress: Running, http: aiohttp.ClientSession, channel: AbstractChannel, capped_queue: None
) -> None:
    # Quorum queues apply the limit a little loosely (and a policy takes a moment): not exactly one 200.
    statuses = [await post(http, ingress, BODY.replace(b"connect", str(n).encode())) for n in range(6)]
    assert statuses[0] == 200
    assert 503 in statuses
    assert set(statuses) == {200, 503}
    assert len(await take_all(channel)) == statuses.count(200)
    assert ingress.publisher.connected  # a nack is not a connection problem


async def test_unroutable_is_503(
    ingress: Running, http: aiohttp.ClientSession, channel: AbstractChannel
) -> None:
    await channel.queue_delete(contract.WEBHOOKS_QUEUE)
    try:
        assert await post(http, ingress, BODY) == 503  # returned: nobody would ever read it
        assert ingress.publisher.connected
    finally:
        await declare_topology(channel)
    assert await post(http, ingress, BODY) == 200
    assert [m.body for m in await take_all(channel)] == [BODY]


# --- a real process and SIGTERM ----------------------------------------------------------------------------


class ProcessLog:
    """The JSON lines a process writes to stderr, with a bounded wait for a given message."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.raw: list[str] = []
        self.entries: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode()
            async with self._changed:
                self.raw.append(text)
                self.entries.append(json.loads(text))  # every line must be JSON
                self._changed.notify_all()

    async def wait_for(self, msg: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.entries if e["msg"] == msg), None)

        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(lambda: found() is not None or self._task.done())
        entry = found()
        assert entry is not None, f"{msg!r} never logged: {self.raw}"
        return entry

    async def finish(self) -> None:
        await self._task


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ingress_command() -> list[str]:
    # `callhook ingress` through the project's dispatcher once every component's CLI exists; until then the
    # ingress's own entry point, which registers the same subcommand.
    dispatcher_ready = all(importlib.util.find_spec(m) is not None for m in ("worker.cli", "simulator.cli"))
    return [sys.executable, "-m", "callhook" if dispatcher_ready else "ingress.cli", "ingress"]


async def test_sigterm_fails_readiness_then_drains_in_flight_then_exits(
    amqp_url: str, http: aiohttp.ClientSession, channel: AbstractChannel
) -> None:
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        env = {
            **os.environ,
            "CALLHOOK_APP_SECRETS": ",".join(SECRETS),
            "CALLHOOK_VERIFY_TOKEN": TOKEN,
            "CALLHOOK_AMQP_URL": via_proxy(amqp_url, proxy),
            "CALLHOOK_INGRESS_HOST": "127.0.0.1",
            "CALLHOOK_INGRESS_PORT": str(port),
            "CALLHOOK_LOG_FORMAT": "json",
            "CALLHOOK_SHUTDOWN_DELAY_SECONDS": "3",
            "CALLHOOK_SHUTDOWN_GRACE_SECONDS": "20",
            "CALLHOOK_PUBLISH_CONFIRM_TIMEOUT_SECONDS": "20",
        }
        process = await asyncio.create_subprocess_exec(
            *_ingress_command(), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert process.stderr is not None
        log = ProcessLog(process.stderr)
        try:
            await log.wait_for("listening")
            await log.wait_for("broker connected")
            assert (await get(http, base_url + "/readyz"))[0] == 200

            proxy.set_delay(3600)  # hold the confirm so the request is in flight when SIGTERM arrives
            body = BODY.replace(b"connect", b"sigterm")
            sent = proxy.bytes_from_clients
            in_flight = asyncio.create_task(
                post_to(http, base_url, body, {"X-Hub-Signature-256": sign(body, SECRETS[0])})
            )
            async with asyncio.timeout(WAIT):
                await proxy.wait_bytes_from_clients(sent + len(body))  # published, awaiting the confirm
            assert "callhook_ingress_inflight_requests 1.0" in (await get(http, base_url + "/metrics"))[1]

            process.send_signal(signal.SIGTERM)
            await log.wait_for("shutting down")
            # Readiness fails first while the listener is still open ...
            async with aiohttp.ClientSession() as fresh:  # a new connection: the old ones are being closed
                assert await get(fresh, base_url + "/readyz") == (503, "shutting down")
            # ... then the listener closes, with the webhook still waiting for its confirm ...
            await log.wait_for("listener closed, finishing in-flight requests")
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
            assert not in_flight.done()
            # ... which, once the broker answers, is confirmed and answered before the broker is closed.
            proxy.set_delay(0)
            async with asyncio.timeout(WAIT):
                assert await in_flight == 200
                assert await process.wait() == 0
            await log.finish()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert [m.body for m in await take_all(channel)] == [body]
    messages = [entry["msg"] for entry in log.entries]
    assert messages[-1] == "stopped"
    whole_log = "".join(log.raw)
    for secret in (*SECRETS, TOKEN, "guest:guest", sign(body, SECRETS[0])[7:], "sigterm"):
        assert secret not in whole_log


async def post_to(http: aiohttp.ClientSession, base_url: str, body: bytes, headers: dict[str, str]) -> int:
    async with http.post(base_url + "/webhook", data=body, headers=headers) as response:
        return response.status
