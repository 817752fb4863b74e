"""``callhook console``: the agents' web console.

Routes: ``GET /`` (the page, static files under ``/static/``), ``GET /api/config`` (how agents may sign in:
static tokens, and the identity provider's endpoints for the page's code flow), ``POST /api/session`` (check
a token, static or an OIDC ID token: ``{"token"}`` -> ``{"agent", "queues", "expires_at"}``, or 401/403/503
``{"error"}``), ``GET /ws`` (the agent's live connection), ``GET /healthz``, ``GET /metrics``.

The console keeps nothing that matters: the board is rebuilt from the workers' announcements, each call's
state is its owner's, and an agent's call is tied to the WebSocket that took it. Any number of consoles can
run; an agent whose console restarts signs in again (and the call they were on ends with its WebRTC leg).

WebSocket messages, JSON. From the browser: ``{"type": "hello", "token"}`` first, then
``{"type": "take", "call_id", "sdp"}`` (the browser's complete offer), ``{"type": "hangup", "call_id"}``,
``{"type": "hold", "call_id", "on"}``. To the browser: ``welcome`` (agent, queues, ice_servers, expires_at),
``board`` (the calls waiting in the agent's queues, oldest first), ``answer`` (sdp), ``refused`` (reason),
``ended`` (reason), ``quality`` (both legs), ``expired`` (the ID token's ``exp`` passed).

A refused hello closes the socket with 4003 (the reason as the close message), 4503 when the identity
provider cannot be reached. When an ID token expires the agent is told (``expired``), may take no further
call, and the socket closes with 4401 at once, or when the call in progress ends: an expiring token never cuts
a caller off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from console.broker import ConsoleBroker
from console.config import Agent, ConsoleConfig
from console.metrics import ConsoleMetrics
from console.oidc import AuthError, OidcVerifier, http_fetcher, looks_like_jwt
from worker.handoff import wire

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


class AgentSocket:
    def __init__(self, agent: Agent, ws: web.WebSocketResponse) -> None:
        self.agent = agent
        self.ws = ws
        self.calls: set[str] = set()
        self.last_board: list[dict[str, Any]] | None = None
        self.expired = False

    async def send(self, message: dict[str, Any]) -> None:
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError):
                await self.ws.send_json(message)


class Console:
    """The console's state of the moment: who is connected and which socket is on which call."""

    def __init__(self, config: ConsoleConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self.registry = registry
        self.metrics = ConsoleMetrics(registry)
        self.sockets: set[AgentSocket] = set()
        self.on_call: dict[tuple[str, str], AgentSocket] = {}  # (call id, agent) -> the socket taking it
        self.broker = ConsoleBroker(
            config.amqp_url,
            on_board=self._board_changed,
            on_reply=self._reply,
            timeout_seconds=config.request_timeout_seconds,
        )
        self._pushing: asyncio.Task[None] | None = None
        self._push_again = False
        self._queues_seen: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.oidc: OidcVerifier | None = None  # set when the app starts (it needs an HTTP client)

    # ------------------------------------------------------------------------------------ sign-in
    async def authenticate(self, token: str) -> Agent:
        """The agent a static token or an ID token stands for; :class:`AuthError` says why not."""
        agent = self.config.agent_by_token(token)
        if agent is not None:
            return agent
        if self.oidc is not None and looks_like_jwt(token):
            return await self.oidc.authenticate(token)
        raise AuthError("unknown token")

    def expire(self, socket: AgentSocket) -> None:
        """The agent's ID token expired: no more takes; the socket closes once no call is in progress."""
        socket.expired = True

        async def tell() -> None:
            await socket.send({"type": "expired"})
            self._close_if_expired(socket)

        self._background(tell())

    def _close_if_expired(self, socket: AgentSocket) -> None:
        if socket.expired and not socket.calls and not socket.ws.closed:
            self._background(_close(socket.ws, 4401, "sign-in expired"))

    # ------------------------------------------------------------------------------------- the board
    def board_for(self, agent: Agent) -> list[dict[str, Any]]:
        queues = agent.queues
        return [msgspec.to_builtins(e) for e in self.broker.board.waiting(queues)]

    def _board_changed(self) -> None:
        counts: dict[str, int] = {}
        for entry in self.broker.board.waiting():
            counts[entry.queue] = counts.get(entry.queue, 0) + 1
        for queue in self._queues_seen | set(counts):
            self.metrics.waiting.labels(queue=queue).set(counts.get(queue, 0))
        self._queues_seen |= set(counts)
        if self._pushing is None or self._pushing.done():
            self._pushing = asyncio.get_running_loop().create_task(self._push_boards())
        else:
            self._push_again = True

    async def _push_boards(self) -> None:
        while True:
            self._push_again = False
            for socket in list(self.sockets):
                await self.push_board(socket)
            if not self._push_again:
                return

    async def push_board(self, socket: AgentSocket) -> None:
        calls = self.board_for(socket.agent)
        if calls != socket.last_board:
            socket.last_board = calls
            await socket.send({"type": "board", "calls": calls})

    # ------------------------------------------------------------------------------------- replies
    def _reply(self, reply: wire.Reply) -> None:
        socket = self.on_call.get((reply.call_id, reply.agent))
        if socket is None:
            return
        message: dict[str, Any] = {"call_id": reply.call_id, **msgspec.to_builtins(reply)}
        match reply:
            case wire.Answer():
                message["type"] = "answer"
                self.metrics.takes.labels(outcome="answered").inc()
            case wire.Refused(reason=reason):
                message["type"] = "refused"
                self.metrics.takes.labels(outcome=reason).inc()
                self._forget(reply.call_id, reply.agent)
            case wire.Ended():
                message["type"] = "ended"
                self._forget(reply.call_id, reply.agent)
            case wire.Quality():
                message["type"] = "quality"
        self._background(socket.send(message))

    def _background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """A short send the caller cannot await (a broker callback); kept until done."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, call_id: str, agent: str) -> None:
        socket = self.on_call.pop((call_id, agent), None)
        if socket is not None:
            socket.calls.discard(call_id)
            self._close_if_expired(socket)

    # ------------------------------------------------------------------------------------ commands
    async def take(self, socket: AgentSocket, call_id: str, sdp: str) -> None:
        if socket.expired:
            await self._refuse(socket, call_id, "expired")
            return
        entry = next((e for e in self.broker.board.waiting() if e.call_id == call_id), None)
        if entry is None:  # taken by someone else meanwhile, or the call left the queue
            await self._refuse(socket, call_id, "taken" if call_id in self.broker.taken else "gone")
            return
        if not socket.agent.may_take(entry.queue):
            await self._refuse(socket, call_id, "not_allowed")
            return
        if (call_id, socket.agent.name) in self.on_call:
            await self._refuse(socket, call_id, "already_taking")  # the same agent in another tab
            return
        self.on_call[(call_id, socket.agent.name)] = socket
        socket.calls.add(call_id)
        sent = await self.broker.send(wire.Take(call_id=call_id, agent=socket.agent.name, offer_sdp=sdp))
        if not sent:
            self._forget(call_id, socket.agent.name)
            await self._refuse(socket, call_id, "gone")

    async def _refuse(self, socket: AgentSocket, call_id: str, reason: str) -> None:
        self.metrics.takes.labels(outcome=reason).inc()
        await socket.send({"type": "refused", "call_id": call_id, "reason": reason})

    async def hang_up(self, socket: AgentSocket, call_id: str) -> None:
        if call_id in socket.calls:
            await self.broker.send(wire.Hangup(call_id=call_id, agent=socket.agent.name))

    async def hold(self, socket: AgentSocket, call_id: str, on: bool) -> None:
        if call_id in socket.calls:
            await self.broker.send(wire.Hold(call_id=call_id, agent=socket.agent.name, on=on))


CONSOLE = web.AppKey("console", Console)


# ------------------------------------------------------------------------------------------ handlers
# The page: no framing (clickjacking), no inline scripts, and no Referer: the identity provider's redirect
# puts the one-time code into the page's URL, which must not leave the page.
PAGE_HEADERS = {
    # scripts only from the console's own files: an injected inline script cannot read the agent's token
    "Content-Security-Policy": (
        "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


async def client_config(request: web.Request) -> web.Response:
    """How the page may sign an agent in. The endpoints come from the issuer's discovery document."""
    console = request.app[CONSOLE]
    body: dict[str, Any] = {"static_tokens": bool(console.config.agents), "oidc": None}
    if console.oidc is not None:
        settings = console.oidc.settings
        try:
            found = await console.oidc.discovery()
        except AuthError as error:
            body["oidc_error"] = error.reason
        else:
            body["oidc"] = {
                "issuer": found.issuer,
                "client_id": settings.client_id,
                "scopes": settings.scopes,
                "authorization_endpoint": found.authorization_endpoint,
                "token_endpoint": found.token_endpoint,
            }
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def sign_in(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    try:
        body = await request.json()
        token = str(body["token"])
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": 'send {"token": ...}'}, status=400)
    try:
        agent = await console.authenticate(token)
    except AuthError as error:
        console.metrics.sign_ins.labels(outcome=_outcome(error)).inc()
        log.info("sign-in refused", extra={"reason": error.reason})
        return web.json_response({"error": error.reason}, status=error.status)
    console.metrics.sign_ins.labels(outcome="ok").inc()
    return web.json_response({"agent": agent.name, "queues": _queues(agent), "expires_at": agent.expires_at})


def _outcome(error: AuthError) -> str:
    if error.status == 503:
        return "unavailable"
    return "expired" if error.reason == "token expired" else "refused"


async def _close(ws: web.WebSocketResponse, code: int, message: str) -> None:
    with contextlib.suppress(ConnectionError):
        await ws.close(code=code, message=message.encode()[:120])


def _queues(agent: Agent) -> list[str] | str:
    return "*" if agent.queues is None else sorted(agent.queues)


async def agent_socket(request: web.Request) -> web.WebSocketResponse:
    console = request.app[CONSOLE]
    ws = web.WebSocketResponse(heartbeat=20.0)
    await ws.prepare(request)
    try:
        async with asyncio.timeout(10.0):
            hello = await ws.receive_json()
    except (TimeoutError, TypeError, ValueError):
        await ws.close(code=4001, message=b"hello expected")
        return ws
    try:
        agent = await console.authenticate(str(hello.get("token", "")) if isinstance(hello, dict) else "")
    except AuthError as error:
        await _close(ws, 4503 if error.status == 503 else 4003, error.reason)
        return ws
    socket = AgentSocket(agent, ws)
    console.sockets.add(socket)
    console.metrics.agents_online.inc()
    expiry = None
    if agent.expires_at is not None:
        delay = max(0.0, agent.expires_at - time.time())
        expiry = asyncio.get_running_loop().call_later(delay, console.expire, socket)
    log.info("agent signed in", extra={"agent": agent.name})
    try:
        await socket.send(
            {
                "type": "welcome",
                "agent": agent.name,
                "queues": _queues(agent),
                "ice_servers": list(console.config.ice_servers),
                "expires_at": agent.expires_at,
            }
        )
        await console.push_board(socket)
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                continue
            await _command(console, socket, message.data)
    finally:
        if expiry is not None:
            expiry.cancel()
        console.sockets.discard(socket)
        console.metrics.agents_online.dec()
        for call_id in list(socket.calls):  # the agent left the page: their calls end
            await console.hang_up(socket, call_id)
            console._forget(call_id, agent.name)
        log.info("agent signed out", extra={"agent": agent.name})
    return ws


async def _command(console: Console, socket: AgentSocket, data: str) -> None:
    try:
        command = msgspec.json.decode(data)
        kind, call_id = command["type"], str(command["call_id"])
    except (msgspec.DecodeError, KeyError, TypeError):
        await socket.send({"type": "error", "error": "not understood"})
        return
    if kind == "take":
        await console.take(socket, call_id, str(command.get("sdp", "")))
    elif kind == "hangup":
        await console.hang_up(socket, call_id)
    elif kind == "hold":
        await console.hold(socket, call_id, bool(command.get("on")))


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[CONSOLE].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(config: ConsoleConfig, registry: CollectorRegistry | None = None) -> web.Application:
    app = web.Application()
    console = Console(config, registry or CollectorRegistry())
    app[CONSOLE] = console

    async def broker_ctx(app: web.Application) -> Any:
        async with console.broker:
            yield

    async def oidc_ctx(app: web.Application) -> Any:
        if config.oidc is None:
            yield
            return
        async with aiohttp.ClientSession() as session:
            console.oidc = OidcVerifier(config.oidc, http_fetcher(session, config.oidc.timeout_seconds))
            with contextlib.suppress(AuthError):  # an identity provider down at start-up: tried again later
                await console.oidc.discovery()
            yield

    async def close_sockets(app: web.Application) -> None:
        for socket in list(console.sockets):  # agents' pages reconnect to another replica
            await socket.ws.close(code=1001, message=b"console shutting down")

    app.cleanup_ctx.append(broker_ctx)
    app.cleanup_ctx.append(oidc_ctx)
    app.on_shutdown.append(close_sockets)
    app.router.add_get("/", index)
    app.router.add_get("/api/config", client_config)
    app.router.add_post("/api/session", sign_in)
    app.router.add_get("/ws", agent_socket)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)  # ready once the broker is (the app starts after it)
    app.router.add_get("/metrics", metrics)
    app.router.add_static("/static/", STATIC)
    return app


def run(config: ConsoleConfig) -> int:
    from callhook import loop

    async def main() -> int:
        # No access log: the identity provider's redirect brings the one-time code in the page's query.
        runner = web.AppRunner(make_app(config), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        log.info("console started", extra={"port": config.port})
        stop = asyncio.Event()
        event_loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            event_loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()
        return 0

    return loop.run(main(), uvloop=False)
