"""Issue 17 against a real ingress and the real RabbitMQ: one test (or more) per finding, named in each
docstring. Slow clients are real sockets; nothing here asserts timing, only what is answered and stored."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from ingress import contract, idempotency
from ingress.publisher import PublishTimeout
from ingress.signature import sign
from tests.integration.test_ingress import BODY, SECRETS, make_config, running_ingress, take_all
from worker.dials import DialIntake
from worker.events import dial_decoder
from worker.metrics import WorkerMetrics

pytestmark = pytest.mark.integration

API_TOKEN = "integrator-token-0123456789"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
PNID = "100000000000002"
WAIT = 10.0


def api_config(amqp_url: str, **overrides: Any) -> Any:
    return make_config(amqp_url, api_tokens=(API_TOKEN,), phone_number_id=PNID, **overrides)


async def drain(channel: AbstractChannel, name: str) -> list[AbstractIncomingMessage]:
    queue = await channel.get_queue(name)
    messages = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        messages.append(message)
    return messages


async def dial(http: aiohttp.ClientSession, url: str, body: Any, **headers: str) -> tuple[int, Any]:
    async with http.post(f"{url}/v1/calls", json=body, headers={**AUTH, **headers}) as response:
        return response.status, await response.json(content_type=None)


async def valid_dial_is_queued(http: aiohttp.ClientSession, url: str, channel: AbstractChannel) -> None:
    status, answer = await dial(http, url, {"to": "15551234567"})
    assert status == 202, answer
    queued = [dial_decoder.decode(m.body).request_id for m in await drain(channel, contract.DIALS_QUEUE)]
    assert queued == [answer["request_id"]]


# --- finding 1: apps --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "app",
    ["ws://10.0.0.1:8080/agent", "wss://evil.example/x", "os:system", "play:/etc/passwd", "record:/tmp"],
)
async def test_a_dial_cannot_name_an_app_spec(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession, app: str
) -> None:
    """Finding 1: ``app`` was passed unchecked to the worker's loader (any URL, module, file or directory)."""
    config = api_config(amqp_url, app_names=frozenset({"echo", "agent"}))
    async with running_ingress(config) as ingress:
        await ingress.wait_connected()
        status, answer = await dial(http, ingress.base_url, {"to": "15551234567", "app": app})
        assert status == 400
        assert "CALLHOOK_APPS" in answer["error"]
        assert app not in answer["error"]
        status, _ = await dial(http, ingress.base_url, {"to": "15551234567", "app": "agent"})
        assert status == 202
    [queued] = await drain(channel, contract.DIALS_QUEUE)
    assert dial_decoder.decode(queued.body).app == "agent"


# --- finding 2: bytes, not characters; a broken publish leaves a known state -------------------------------


async def test_a_multibyte_call_id_is_a_400_and_the_api_keeps_working(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession
) -> None:
    """Finding 2: 200 x é (400 bytes) gave a 500, shifted the command channel's confirm numbers, and every
    later dial waited 5 s for a 503 while /readyz stayed ready."""
    async with running_ingress(api_config(amqp_url, publish_confirm_timeout_seconds=3.0)) as ingress:
        await ingress.wait_connected()
        async with http.post(f"{ingress.base_url}/v1/calls/{quote('é' * 200)}/hangup", headers=AUTH) as r:
            assert r.status == 400
        for _ in range(3):
            await valid_dial_is_queued(http, ingress.base_url, channel)
        async with http.get(f"{ingress.base_url}/readyz") as r:
            assert r.status == 200


async def test_an_unexpected_publish_failure_replaces_the_command_channel(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession
) -> None:
    """Finding 2: after a publish failed half-way (an encoder error after aiormq counted it), the channel's
    state was unknown; now it is replaced, readiness is false until it is back, then dials work again."""
    seen: list[bool] = []
    async with running_ingress(api_config(amqp_url)) as ingress:
        await ingress.wait_connected()
        publisher = ingress.publisher
        back = asyncio.Event()

        def follow(connected: bool) -> None:
            seen.append(connected)
            if connected:
                back.set()

        publisher._on_connection_change = follow
        with pytest.raises(Exception, match="reset"):
            await publisher.publish_command(
                b"{}",
                exchange="",
                routing_key=contract.DIALS_QUEUE,
                message_id="x",
                headers={"bad": object()},  # type: ignore[dict-item]
            )
        async with asyncio.timeout(WAIT):
            await back.wait()
        assert seen[:2] == [False, True]  # readiness followed the channel down and back up
        for _ in range(3):
            await valid_dial_is_queued(http, ingress.base_url, channel)


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=600)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
        max_leaves=12,
    )


def _dial_like() -> st.SearchStrategy[Any]:
    fields = st.sampled_from(
        ["to", "recipient", "app", "biz_opaque_callback_data", "phone_number_id", "permission"]
    )
    texts = st.one_of(
        st.text(max_size=80),
        st.text(min_size=500, max_size=2000),
        st.from_regex(r"\+?[0-9]{6,20}", fullmatch=True),
        st.sampled_from(["15551234567\n", "١٥٥٥١٢٣٤٥٦٧", "US.13491208655302741918", "echo", "é" * 300]),
    )
    return st.dictionaries(fields, st.one_of(texts, _json_values()), max_size=6)


REQUESTS = st.one_of(
    st.tuples(st.just("json"), st.one_of(_dial_like(), _json_values())),
    st.tuples(st.just("raw"), st.binary(max_size=3000)),
    st.tuples(st.just("big"), st.integers(min_value=60_000, max_value=70_000)),
    st.tuples(st.just("hangup"), st.text(max_size=300)),
)
KEYS = st.one_of(
    st.none(), st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
)


@pytest.fixture
async def shared_ingress(amqp_url: str, channel: AbstractChannel) -> AsyncIterator[str]:
    async with running_ingress(api_config(amqp_url)) as ingress:
        await ingress.wait_connected()
        yield ingress.base_url


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=REQUESTS, key=KEYS)
async def test_arbitrary_api_input_never_breaks_the_api(
    shared_ingress: str, channel: AbstractChannel, http: aiohttp.ClientSession, request: Any, key: str | None
) -> None:
    """Finding 2 (property): whatever JSON, unicode, size or key a caller sends, the answer is a 4xx or a
    202, never a 5xx, and afterwards a valid dial still gets 202 and is on the queue."""
    kind, payload = request
    headers = dict(AUTH)
    if key is not None:
        headers[idempotency.IDEMPOTENCY_HEADER] = key
    if kind == "hangup":
        url, data = f"{shared_ingress}/v1/calls/{quote(payload, safe='') or 'x'}/hangup", None
    else:
        url = f"{shared_ingress}/v1/calls"
        data = {
            "json": lambda: json.dumps(payload).encode(),
            "raw": lambda: payload,
            "big": lambda: b'{"to":"' + b"1" * payload + b'"}',
        }[kind]()
    async with http.post(url, data=data, headers=headers) as response:
        status = response.status
        await response.read()
    assert status in (202, 400, 404, 405, 413, 422), status
    await drain(channel, contract.DIALS_QUEUE)
    await valid_dial_is_queued(http, shared_ingress, channel)


# --- finding 3: slow clients ------------------------------------------------------------------------------


def signed_webhook(tag: bytes) -> tuple[bytes, dict[str, str]]:
    body = BODY.replace(b"connect", tag)
    return body, {"X-Hub-Signature-256": sign(body, SECRETS[0]), "Content-Type": "application/json"}


async def open_slow(port: int, first: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)
    await writer.drain()
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(WAIT):
        return await reader.read()  # b"" or an answer, then EOF: the server closed the connection


async def test_unfinished_headers_and_bodies_are_closed_by_their_deadlines(
    amqp_url: str, channel: AbstractChannel
) -> None:
    """Finding 3: 20 connections with unfinished headers were still open after 135 s (no header or body
    deadline in aiohttp). Raw sockets: the server itself closes them."""
    config = make_config(
        amqp_url, header_timeout_seconds=0.3, body_timeout_seconds=0.3, idle_timeout_seconds=0.5
    )
    async with running_ingress(config) as ingress:
        await ingress.wait_connected()
        port = int(ingress.base_url.rsplit(":", 1)[1])
        silent = await open_slow(port, b"")
        partial_headers = await open_slow(port, b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Hub-Sig")
        partial_body = await open_slow(
            port,
            b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nX-Hub-Signature-256: "
            + sign(b"x" * 100, SECRETS[0]).encode()
            + b"\r\n\r\n0123456789",
        )
        assert await closed_by_server(silent[0]) == b""
        assert await closed_by_server(partial_headers[0]) == b""
        assert (await closed_by_server(partial_body[0])).startswith(b"HTTP/1.1 408")
        for _, writer in (silent, partial_headers, partial_body):
            writer.close()
        async with aiohttp.ClientSession() as http, http.get(ingress.base_url + "/metrics") as r:
            text = await r.text()
        assert (
            'callhook_ingress_connections_closed_total{listener="webhook",reason="header_timeout"} 2.0'
            in text
        )
        assert 'callhook_ingress_requests_total{outcome="timeout",route="webhook"} 1.0' in text
    assert await take_all(channel) == []


async def test_slow_clients_neither_count_as_in_flight_nor_starve_a_real_webhook(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 3: a request counted as in flight before its body was read, so slow bodies filled
    ``max_inflight_requests`` and every real webhook got 503. Now readers have their own cap (the oldest is
    evicted past it) and the in-flight cap counts publishes only."""
    config = make_config(
        amqp_url,
        max_inflight_requests=5,
        max_reading_connections=20,
        header_timeout_seconds=60,
        body_timeout_seconds=60,
    )
    async with running_ingress(config) as ingress:
        await ingress.wait_connected()
        port = int(ingress.base_url.rsplit(":", 1)[1])
        slow = [
            await open_slow(
                port,
                b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nX-Hub-Signature-256: "
                + sign(b"y" * 1000, SECRETS[0]).encode()
                + b"\r\n\r\nyyyy",
            )
            for _ in range(10)
        ]
        slow += [await open_slow(port, b"POST /webhook HTTP/1.1\r\nHost") for _ in range(40)]  # over the cap
        body, headers = signed_webhook(b"during-flood")
        async with http.post(ingress.base_url + "/webhook", data=body, headers=headers) as r:
            assert r.status == 200
        evicted = 0
        for reader, writer in slow:
            if reader.at_eof() or await _eof_soon(reader):
                evicted += 1
            writer.close()
        assert evicted >= 30  # 50 slow + 1 real > 20: the oldest went first
    assert [m.body for m in await take_all(channel)] == [body]
    # An evicted body read ends its handler quietly (outcome client_gone), not as a server error.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def _eof_soon(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(0.2):
            return await reader.read() == b""
    except TimeoutError:
        return False


# --- finding 4: idempotency -------------------------------------------------------------------------------


class _Room:
    """Ownership stand-in for the dial intake: always room, counts nothing."""

    room = 10
    draining = False

    def reserve(self) -> object:
        return object()

    def watch_room(self, _: object) -> None:
        pass


async def started_dials(amqp_url: str, channel: AbstractChannel) -> list[str]:
    """Feed every queued dial to a real worker DialIntake (its marker channel on the real broker): the
    request ids of the dials it would start a call for."""
    started: list[str] = []
    intake = DialIntake(
        None,
        _Room(),
        lambda request, _r, _a: started.append(request.request_id),
        WorkerMetrics(CollectorRegistry()),
    )  # type: ignore[arg-type]
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        intake._markers = await connection.channel(publisher_confirms=True)
        consumer = await connection.channel()
        queue = await consumer.get_queue(contract.DIALS_QUEUE)
        while (message := await queue.get(fail=False)) is not None:
            await intake._on_message(message)
            if not message.processed:
                await message.ack()
    return started


async def test_one_key_one_call_and_a_different_body_is_a_422(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession
) -> None:
    """Finding 4: two identical POSTs with the same Idempotency-Key placed two calls."""
    key = str(uuid.uuid4())
    async with (
        running_ingress(api_config(amqp_url)) as ingress,
        running_ingress(api_config(amqp_url)) as other,
    ):
        await ingress.wait_connected()
        await other.wait_connected()
        body = {"to": "15551234567", "biz_opaque_callback_data": "order-9"}
        answers = await asyncio.gather(
            *(
                dial(http, replica.base_url, body, **{"Idempotency-Key": key})
                for replica in (ingress, other, ingress)
            )
        )
        assert {status for status, _ in answers} == {202}
        assert len({answer["request_id"] for _, answer in answers}) == 1
        status, answer = await dial(
            http, other.base_url, {**body, "to": "15557654321"}, **{"Idempotency-Key": key}
        )
        assert status == 422
        assert "different request" in answer["error"]
    assert await started_dials(amqp_url, channel) == [answers[0][1]["request_id"]]


async def test_a_timed_out_dial_retried_with_its_key_places_one_call(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession
) -> None:
    """Finding 4: a publish timeout answered "retry later" though the dial may have been stored; a retry
    then placed a second call. Here the first dial *is* stored but its answer is a timeout (503)."""
    key = str(uuid.uuid4())
    async with running_ingress(api_config(amqp_url)) as ingress:
        await ingress.wait_connected()
        publisher = ingress.publisher
        real = publisher.publish_command

        async def stored_but_late(*args: Any, **kwargs: Any) -> None:
            await real(*args, **kwargs)
            raise PublishTimeout("the confirm came after the deadline")

        publisher.publish_command = stored_but_late  # type: ignore[method-assign]
        body = {"to": "15551234567"}
        status, _ = await dial(http, ingress.base_url, body, **{"Idempotency-Key": key})
        assert status == 503
        publisher.publish_command = real  # type: ignore[method-assign]
        status, answer = await dial(http, ingress.base_url, body, **{"Idempotency-Key": key})
        assert status == 202
    assert await _depth(channel, contract.DIALS_QUEUE) == 2  # the retry published the dial again ...
    assert await started_dials(amqp_url, channel) == [answer["request_id"]]  # ... and one call is started


async def _depth(channel: AbstractChannel, name: str) -> int:
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aio_pika.exceptions.ChannelClosed:
        await channel.reopen()
        return 0
    return int(queue.declaration_result.message_count or 0)


# --- finding 5: compressed bodies -------------------------------------------------------------------------


@pytest.mark.parametrize("signed_over", ["compressed", "decompressed"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_any_content_encoding_is_a_415_and_nothing_is_stored(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession, signed_over: str, encoding: str
) -> None:
    """Finding 5: aiohttp inflated gzip/deflate before the signature check, so the HMAC was computed over,
    and the queue got, other bytes than those received."""
    async with running_ingress(make_config(amqp_url)) as ingress:
        await ingress.wait_connected()
        plain = BODY
        compressed = gzip.compress(plain)
        signed = compressed if signed_over == "compressed" else plain
        headers = {"X-Hub-Signature-256": sign(signed, SECRETS[0]), "Content-Encoding": encoding}
        async with http.post(ingress.base_url + "/webhook", data=compressed, headers=headers) as r:
            assert r.status == 415
        async with http.post(
            ingress.base_url + "/webhook",
            data=plain,
            headers={"X-Hub-Signature-256": sign(plain, SECRETS[0])},
        ) as r:
            assert r.status == 200
    assert [m.body for m in await take_all(channel)] == [plain]


# --- finding 6: the API on its own port ---------------------------------------------------------------------


async def test_the_api_and_metrics_can_have_a_listener_of_their_own(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession
) -> None:
    """Finding 6: /v1 and /metrics shared the webhook port, so no port, Service or NetworkPolicy could keep
    them apart."""
    async with running_ingress(api_config(amqp_url, api_port=0)) as ingress:
        await ingress.wait_connected()
        assert ingress.api_url != ingress.base_url
        status, _ = await dial(http, ingress.base_url, {"to": "15551234567"})
        assert status == 404
        async with http.get(ingress.base_url + "/metrics") as r:
            assert r.status == 404
        body, headers = signed_webhook(b"on-webhook-port")
        async with http.post(ingress.api_url + "/webhook", data=body, headers=headers) as r:
            assert r.status == 404
        async with http.post(ingress.base_url + "/webhook", data=body, headers=headers) as r:
            assert r.status == 200
        await valid_dial_is_queued(http, ingress.api_url, channel)
        async with http.get(ingress.api_url + "/metrics") as r:
            assert r.status == 200
            assert "callhook_ingress_reading_connections" in await r.text()
        for url in (ingress.base_url, ingress.api_url):
            async with http.get(url + "/readyz") as r:
                assert r.status == 200
    assert [m.body for m in await take_all(channel)] == [body]


# --- finding 7: failed logins ---------------------------------------------------------------------------


async def test_failed_logins_are_throttled(
    amqp_url: str, channel: AbstractChannel, http: aiohttp.ClientSession
) -> None:
    """Finding 7: failed API logins were not throttled."""
    async with running_ingress(api_config(amqp_url, api_login_failures=3)) as ingress:
        await ingress.wait_connected()
        wrong = {"Authorization": "Bearer not-the-token-at-all-xx"}
        statuses = []
        for _ in range(5):
            async with http.post(
                f"{ingress.base_url}/v1/calls", json={"to": "15551234567"}, headers=wrong
            ) as r:
                statuses.append(r.status)
        assert statuses == [401, 401, 401, 429, 429]
        async with http.post(f"{ingress.base_url}/v1/calls", json={"to": "15551234567"}, headers=AUTH) as r:
            assert r.status == 429  # even a right token from a throttled address waits
            assert int(r.headers["Retry-After"]) > 0
    assert await drain(channel, contract.DIALS_QUEUE) == []


async def test_the_drills_api_abuse_finds_nothing_wrong(amqp_url: str, channel: AbstractChannel) -> None:
    """The drill's abuse stream (bench/drill_load.py) against a real ingress: every kind of abuse happened and
    was answered as it must be (the drill's ``api_abuse`` invariant is these violations)."""
    from bench.drill_load import ABUSE_BAD_INPUTS, api_abuse_stream

    config = api_config(amqp_url, header_timeout_seconds=0.5)
    async with running_ingress(config) as ingress:
        await ingress.wait_connected()
        result = await api_abuse_stream(
            lambda: ingress.base_url, API_TOKEN, "t", 10.0, 2.0, header_timeout_seconds=0.5
        )
    assert result.violations == []
    assert {kind for kind, _ in ABUSE_BAD_INPUTS} <= set(result.answers)
    assert set(result.answers["key_reused"]) == {422}
    assert result.keyed_dials == 2
    assert result.slow_clients == 2 * 20
