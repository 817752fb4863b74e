"""Agents sign in to the console through an OpenID Connect provider (tests/support/oidc_provider.py).

The console (console/app.py, in this process, on the real RabbitMQ) next to a small identity provider on
127.0.0.1; the code flow with PKCE is walked with an HTTP client as the page walks it in the browser.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from yarl import URL

from console.app import CONSOLE, make_app
from console.config import load
from tests.support.oidc_provider import CLIENT_ID, TestIdentityProvider, pkce_pair

pytestmark = pytest.mark.integration

USERS = {
    "dana": {"groups": ["callhook-support"]},
    "erin": {"groups": ["callhook-sales", "staff"]},
    "lead": {"groups": ["callhook-leads"]},
    "nobody": {"groups": ["staff"]},  # no group that grants a queue
}
QUEUE_MAP = "callhook-support=support;callhook-sales=sales;callhook-leads=*"


@dataclass
class Stack:
    idp: TestIdentityProvider
    console: str
    http: aiohttp.ClientSession
    app: web.Application


@pytest_asyncio.fixture
async def stack(amqp_url: str) -> AsyncIterator[Stack]:
    idp = TestIdentityProvider(users=USERS)
    async with idp, aiohttp.ClientSession() as http:
        runner, console = await _console(amqp_url, idp.issuer)
        idp.redirect_uris = (console + "/",)
        idp.allowed_origins = (console,)
        try:
            yield Stack(idp, console, http, runner.app)
        finally:
            await runner.cleanup()


async def _console(amqp_url: str, issuer: str) -> tuple[web.AppRunner, str]:
    config = load(
        {
            "CALLHOOK_AMQP_URL": amqp_url,
            "CALLHOOK_CONSOLE_AGENTS": "alice:alice-static-token:support",
            "CALLHOOK_CONSOLE_OIDC_ISSUER": issuer,
            "CALLHOOK_CONSOLE_OIDC_CLIENT_ID": CLIENT_ID,
            "CALLHOOK_CONSOLE_OIDC_QUEUE_MAP": QUEUE_MAP,
        }
    )
    runner = web.AppRunner(make_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def code_flow(stack: Stack, user: str, *, verifier: str | None = None) -> str:
    """The page's part: authorize (log in as ``user``), back with the code, exchange it; the ID token."""
    config = await (await stack.http.get(stack.console + "/api/config")).json()
    oidc = config["oidc"]
    right_verifier, challenge = pkce_pair()
    query = {
        "response_type": "code",
        "client_id": oidc["client_id"],
        "redirect_uri": stack.console + "/",
        "scope": oidc["scopes"],
        "state": "s-123",
        "nonce": "n-456",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    form = await stack.http.get(oidc["authorization_endpoint"], params=query)
    assert form.status == 200
    back = await stack.http.post(
        oidc["authorization_endpoint"], data={**query, "username": user}, allow_redirects=False
    )
    assert back.status == 302
    location = URL(back.headers["Location"])
    assert str(location.with_query(None)) == stack.console + "/"
    assert location.query["state"] == "s-123"
    exchange = await stack.http.post(
        oidc["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": location.query["code"],
            "redirect_uri": stack.console + "/",
            "client_id": oidc["client_id"],
            "code_verifier": verifier or right_verifier,
        },
        headers={"Origin": stack.console},
    )
    if exchange.status != 200:
        return ""
    assert exchange.headers["Access-Control-Allow-Origin"] == stack.console
    return str((await exchange.json())["id_token"])


async def session(stack: Stack, token: str) -> tuple[int, dict[str, object]]:
    response = await stack.http.post(stack.console + "/api/session", json={"token": token})
    return response.status, await response.json()


async def test_agents_sign_in_through_the_provider_and_get_their_groups_queues(stack: Stack) -> None:
    config = await (await stack.http.get(stack.console + "/api/config")).json()
    assert config["static_tokens"] is True
    assert config["oidc"]["token_endpoint"] == stack.idp.issuer + "/token"
    token = await code_flow(stack, "dana")
    status, body = await session(stack, token)
    assert (status, body["agent"], body["queues"]) == (200, "dana", ["support"])
    assert isinstance(body["expires_at"], float)
    async with stack.http.ws_connect(stack.console + "/ws") as ws:
        await ws.send_json({"type": "hello", "token": token})
        welcome = await ws.receive_json()
        assert (welcome["type"], welcome["agent"], welcome["queues"]) == ("welcome", "dana", ["support"])
    assert (await session(stack, await code_flow(stack, "erin")))[1]["queues"] == ["sales"]
    assert (await session(stack, await code_flow(stack, "lead")))[1]["queues"] == "*"
    # static tokens keep working beside the provider
    assert (await session(stack, "alice-static-token"))[1] == {
        "agent": "alice",
        "queues": ["support"],
        "expires_at": None,
    }


async def test_the_provider_checks_pkce(stack: Stack) -> None:
    assert await code_flow(stack, "dana", verifier="x" * 43) == ""
    assert stack.idp.token_refusals == ["PKCE verifier does not match"]


async def test_refusals_say_why_without_leaking_and_tokens_are_not_logged(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    now = int(time.time())
    cases = {
        stack.idp.mint("dana", iat=now - 900, exp=now - 300): (401, "token expired"),
        stack.idp.mint("dana", aud="someone-else"): (401, "token not meant for this console"),
        stack.idp.mint("dana", iss="https://idp.example.com"): (401, "token from another issuer"),
        stack.idp.mint("nobody"): (403, "no queues for this agent"),
        "not-a-token": (401, "unknown token"),
    }
    for token, (status, reason) in cases.items():
        assert await session(stack, token) == (status, {"error": reason})
        async with stack.http.ws_connect(stack.console + "/ws") as ws:
            await ws.send_json({"type": "hello", "token": token})
            closed = await ws.receive()
            assert (closed.type, ws.close_code, closed.extra) == (aiohttp.WSMsgType.CLOSE, 4003, reason)
    everything_logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    for token in cases:
        assert token not in everything_logged


async def test_an_expiring_id_token_closes_the_idle_socket(stack: Stack) -> None:
    token = stack.idp.mint("dana", exp=int(time.time()) + 2)
    async with stack.http.ws_connect(stack.console + "/ws") as ws:
        await ws.send_json({"type": "hello", "token": token})
        assert (await ws.receive_json())["type"] == "welcome"
        messages = []
        async for message in ws:
            messages.append(message.json()["type"])
        assert "expired" in messages
        assert ws.close_code == 4401


async def not_board(ws: aiohttp.ClientWebSocketResponse) -> dict[str, object]:
    """The next message that is not a board update."""
    while True:
        message: dict[str, object] = await ws.receive_json()
        if message["type"] != "board":
            return message


async def test_an_expired_token_never_cuts_a_call_in_progress(stack: Stack) -> None:
    """Expiry during a call: no further takes, and the socket closes only when the call has ended."""
    console = stack.app[CONSOLE]
    async with stack.http.ws_connect(stack.console + "/ws") as ws:
        await ws.send_json({"type": "hello", "token": await code_flow(stack, "dana")})
        assert (await ws.receive_json())["type"] == "welcome"
        (socket,) = console.sockets
        socket.calls.add("call-in-progress")  # as a take answered by the call's owner leaves it
        console.on_call[("call-in-progress", "dana")] = socket
        console.expire(socket)  # what the timer at the token's exp does
        assert (await not_board(ws))["type"] == "expired"
        await ws.send_json({"type": "take", "call_id": "another-call", "sdp": "v=0"})
        refused = await not_board(ws)
        assert (refused["type"], refused["reason"]) == ("refused", "expired")
        assert not ws.closed
        console._forget("call-in-progress", "dana")  # the call ends (the owner's "ended")
        closed = await ws.receive()
        assert (closed.type, ws.close_code) == (aiohttp.WSMsgType.CLOSE, 4401)


async def test_an_issuer_whose_discovery_names_another_issuer_is_refused(stack: Stack, amqp_url: str) -> None:
    runner, console = await _console(amqp_url, stack.idp.issuer + "/")  # discovery says: without the slash
    try:
        config = await (await stack.http.get(console + "/api/config")).json()
        assert config["oidc"] is None
        assert config["oidc_error"] == "the identity provider is misconfigured"
        response = await stack.http.post(console + "/api/session", json={"token": stack.idp.mint("dana")})
        assert response.status == 503
    finally:
        await runner.cleanup()


async def test_the_page_is_not_framed_and_sends_no_referrer(stack: Stack) -> None:
    response = await stack.http.get(stack.console + "/?code=abc&state=def")
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
