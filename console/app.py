"""``callhook console``: the agents' web console.

Routes: ``GET /`` (the page, static files under ``/static/``), ``POST /api/session`` (check a token:
``{"token"}`` -> ``{"agent", "queues"}``), ``GET /ws`` (the agent's live connection), ``GET /healthz``,
``GET /metrics``.

The console keeps nothing that matters: the board is rebuilt from the workers' announcements, each call's
state is its owner's, and an agent's call is tied to the WebSocket that took it. Any number of consoles can
run; an agent whose console restarts signs in again (and the call they were on ends with its WebRTC leg).

WebSocket messages, JSON. From the browser: ``{"type": "hello", "token"}`` first, then
``{"type": "take", "call_id", "sdp"}`` (the browser's complete offer), ``{"type": "hangup", "call_id"}``,
``{"type": "hold", "call_id", "on"}``. To the browser: ``welcome`` (agent, queues, ice_servers),
``board`` (the calls waiting in the agent's queues, oldest first), ``answer`` (sdp), ``refused`` (reason),
``ended`` (reason), ``quality`` (both legs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from console.broker import ConsoleBroker
from console.config import Agent, ConsoleConfig
from console.metrics import ConsoleMetrics
from worker.handoff import wire

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


class AgentSocket:
    def __init__(self, agent: Agent, ws: web.WebSocketResponse) -> None:
        self.agent = agent
        self.ws = ws
        self.calls: set[str] = set()
        self.last_board: list[dict[str, Any]] | None = None

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

    # ------------------------------------------------------------------------------------ commands
    async def take(self, socket: AgentSocket, call_id: str, sdp: str) -> None:
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
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def sign_in(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    try:
        body = await request.json()
        token = str(body["token"])
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": 'send {"token": ...}'}, status=400)
    agent = console.config.agent_by_token(token)
    console.metrics.sign_ins.labels(outcome="ok" if agent else "refused").inc()
    if agent is None:
        return web.json_response({"error": "unknown token"}, status=401)
    return web.json_response({"agent": agent.name, "queues": _queues(agent)})


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
    agent = console.config.agent_by_token(str(hello.get("token", ""))) if isinstance(hello, dict) else None
    if agent is None:
        await ws.close(code=4003, message=b"unknown token")
        return ws
    socket = AgentSocket(agent, ws)
    console.sockets.add(socket)
    console.metrics.agents_online.inc()
    log.info("agent signed in", extra={"agent": agent.name})
    try:
        await socket.send(
            {
                "type": "welcome",
                "agent": agent.name,
                "queues": _queues(agent),
                "ice_servers": list(console.config.ice_servers),
            }
        )
        await console.push_board(socket)
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                continue
            await _command(console, socket, message.data)
    finally:
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

    async def close_sockets(app: web.Application) -> None:
        for socket in list(console.sockets):  # agents' pages reconnect to another replica
            await socket.ws.close(code=1001, message=b"console shutting down")

    app.cleanup_ctx.append(broker_ctx)
    app.on_shutdown.append(close_sockets)
    app.router.add_get("/", index)
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
        runner = web.AppRunner(make_app(config))
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
