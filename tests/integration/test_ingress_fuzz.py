"""Arbitrary bodies, signatures and headers thrown at a real ingress over HTTP, the real broker behind it.

Invariants: the status is always the one the pure signature check and the size limit predict (so only 200,
401, 413, or 503 with the broker away); a message is stored exactly when the answer is 200, byte for byte;
nothing unsigned is ever stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractChannel
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from yarl import URL

from ingress import contract
from ingress.app import LINGERING_SECONDS, PUBLISHER, create_app
from ingress.config import IngressConfig
from ingress.signature import SignatureError, SignatureVerifier, parse_signature, sign
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.integration

SECRETS = ("fuzz-secret-one", "fuzz-secret-two")
LIMIT = 2048
VERIFIER = SignatureVerifier(SECRETS)
EXAMPLES = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@dataclass(frozen=True)
class Attempt:
    body: bytes
    signature: str | None
    headers: dict[str, str]
    chunks: tuple[int, ...] | None  # chunked transfer with these cut points, or None for Content-Length


def _mutate(header: str, index: int, char: str) -> str:
    index %= len(header)
    return header[:index] + char + header[index + 1 :]


@st.composite
def attempts(draw: st.DrawFn) -> Attempt:
    body = draw(
        st.one_of(
            st.binary(max_size=LIMIT + 400),
            st.binary(min_size=LIMIT - 2, max_size=LIMIT + 2),
            st.sampled_from([b"", b"{}", b'{"object":"whatsapp_business_account","entry":[]}']),
        )
    )
    secret = draw(st.sampled_from(SECRETS))
    signature = draw(
        st.one_of(
            st.none(),
            st.just(sign(body, secret)),
            st.just(sign(body, secret)),  # twice: a good share of examples should get through
            st.just(sign(body, "an-attacker-secret")),
            st.just(sign(body + b"\x00", secret)),
            st.builds(_mutate, st.just(sign(body, secret)), st.integers(0, 70), st.sampled_from("0af9gG =é")),
            st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=80),
            st.text("0123456789abcdef", min_size=60, max_size=70).map(lambda h: "sha256=" + h),
        )
    )
    names = st.from_regex(r"X-[A-Za-z0-9-]{1,16}", fullmatch=True).filter(
        lambda name: name.lower() != "x-hub-signature-256"
    )
    headers = draw(
        st.dictionaries(
            names, st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40), max_size=4
        )
    )
    headers["Content-Type"] = draw(
        st.sampled_from(["application/json", "text/plain", "application/octet-stream", "x/y; charset=latin1"])
    )
    chunks = draw(st.none() | st.lists(st.integers(0, len(body)), max_size=4).map(lambda c: tuple(sorted(c))))
    return Attempt(body, signature, headers, chunks)


def expected_status(attempt: Attempt, *, broker_up: bool) -> int:
    """What the ingress must answer, from the pure check, in the ingress's order of checks."""
    if attempt.chunks is None and len(attempt.body) > LIMIT:
        return 413
    received = None if attempt.signature is None else attempt.signature.strip(" \t")  # HTTP trims these
    try:
        digest = parse_signature(received)
        if len(attempt.body) > LIMIT:
            return 413
        VERIFIER.match(attempt.body, digest)
    except SignatureError:
        return 401
    return 200 if broker_up else 503


async def _pieces(body: bytes, cuts: Sequence[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in (*cuts, len(body)):
        yield body[start:cut]
        start = cut


async def send(http: aiohttp.ClientSession, base_url: str, attempt: Attempt) -> int:
    headers = dict(attempt.headers)
    if attempt.signature is not None:
        headers["X-Hub-Signature-256"] = attempt.signature
    data = attempt.body if attempt.chunks is None else _pieces(attempt.body, attempt.chunks)
    async with http.post(base_url + "/webhook", data=data, headers=headers) as response:
        await response.read()
        return response.status


def make_config(amqp_url: str) -> IngressConfig:
    config = IngressConfig(app_secrets=SECRETS, verify_token="fuzz-token", amqp_url=amqp_url)
    return replace(config, max_body_bytes=LIMIT, reconnect_initial_seconds=0.05, reconnect_max_seconds=0.2)


async def serve(config: IngressConfig) -> tuple[web.AppRunner, web.Application, str]:
    app = create_app(config, CollectorRegistry())
    runner = web.AppRunner(app, access_log=None, lingering_time=LINGERING_SECONDS)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, app, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def ingress_url(amqp_url: str, channel: AbstractChannel) -> AsyncIterator[str]:
    runner, app, base_url = await serve(make_config(amqp_url))
    try:
        async with asyncio.timeout(10):
            await app[PUBLISHER].wait_connected()
        yield base_url
    finally:
        await runner.cleanup()


@pytest.fixture
async def unreachable_broker_url(amqp_url: str, channel: AbstractChannel) -> AsyncIterator[str]:
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        await proxy.cut()
        runner, _, base_url = await serve(make_config(str(URL(amqp_url).with_port(proxy.port))))
        try:
            yield base_url
        finally:
            await runner.cleanup()


async def take_all(channel: AbstractChannel) -> list[aio_pika.abc.AbstractIncomingMessage]:
    queue = await channel.get_queue(contract.WEBHOOKS_QUEUE)
    messages = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        messages.append(message)
    return messages


@EXAMPLES
@given(attempt=attempts())
async def test_only_signed_bodies_within_the_limit_are_stored(
    ingress_url: str, http: aiohttp.ClientSession, channel: AbstractChannel, attempt: Attempt
) -> None:
    status = await send(http, ingress_url, attempt)
    event(f"status {status}")
    assert status == expected_status(attempt, broker_up=True)
    stored = await take_all(channel)
    if status == 200:
        [message] = stored
        assert message.body == attempt.body
        secret_id = message.headers[contract.HEADER_APP_SECRET_ID]
        assert VERIFIER.verify(message.body, attempt.signature) == secret_id
    else:
        assert stored == []


@EXAMPLES
@given(attempt=attempts())
async def test_without_a_broker_nothing_is_accepted(
    unreachable_broker_url: str, http: aiohttp.ClientSession, channel: AbstractChannel, attempt: Attempt
) -> None:
    status = await send(http, unreachable_broker_url, attempt)
    assert status == expected_status(attempt, broker_up=False)
    assert status in (401, 413, 503)
    assert await take_all(channel) == []
