"""The ingress's HTTP side: Meta's webhook endpoint, health, readiness and metrics, and the process lifecycle.

``POST /webhook`` does, in order and as cheaply as possible: refuse when overloaded (503) → refuse a
declared body over the limit before reading it (413) → refuse a missing or malformed signature header (401) →
read the body with a bound, for chunked bodies too (413) → check the HMAC against every app secret (401) →
publish the raw bytes with a confirm (200, or 503 so that Meta retries).
Nothing here parses JSON or logs a body or a signature.

Lifecycle (:func:`serve`): the publisher connects in the background, so the port opens at once and ``/readyz``
says when the broker is there. On stop: readiness fails first, the listener stays open for
``shutdown_delay_seconds`` so load balancers stop sending, then the listener closes, in-flight requests get
``shutdown_grace_seconds`` to finish, and only then does the cleanup context close the broker connection.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from callhook import loop as event_loop
from ingress.api import CallsApi
from ingress.config import IngressConfig
from ingress.connections import ConnectionGuard, GuardedSite, guard_middleware
from ingress.metrics import IngressMetrics, Outcome, Route
from ingress.publisher import BrokerUnavailable, Publisher, PublishError
from ingress.signature import (
    SIGNATURE_HEADER,
    SignatureError,
    SignatureVerifier,
    parse_signature,
    token_digest,
)

log = logging.getLogger(__name__)

# After answering 413 to a body we did not read, aiohttp keeps reading and discarding the rest for this long
# before closing, so that the client sees the answer instead of a reset; it never buffers what it discards.
LINGERING_SECONDS = 1.0
MAX_CHALLENGE_CHARS = 256

_STATUS = {
    Outcome.OK: (200, "ok"),
    Outcome.BAD_SIGNATURE: (401, "bad signature"),
    Outcome.TOO_LARGE: (413, "body too large"),
    Outcome.UNAVAILABLE: (503, "unavailable, retry later"),
    Outcome.FORBIDDEN: (403, "forbidden"),
    Outcome.BAD_REQUEST: (400, "bad request"),
    Outcome.UNSUPPORTED: (415, "content encodings are not accepted: send the body as is"),
    Outcome.TIMEOUT: (408, "the body did not arrive in time"),
    Outcome.CLIENT_GONE: (400, "connection closed"),  # nobody reads this answer
}
# Routes that move to the API listener when CALLHOOK_API_PORT is set; the others stay on the webhook one.
API_PREFIXES = ("/v1/", "/metrics")


@dataclass(slots=True)
class IngressState:
    """What the handlers share; one per application."""

    config: IngressConfig
    verifier: SignatureVerifier
    metrics: IngressMetrics
    verify_token_digest: bytes = field(repr=False)
    publisher: Publisher | None = None
    shutting_down: bool = False
    inflight: int = 0  # requests being published (bodies read and verified)
    guards: dict[str, ConnectionGuard] = field(default_factory=dict)  # listener name -> its guard

    def guard_of(self, request: web.BaseRequest) -> tuple[str, ConnectionGuard] | None:
        transport = request.transport
        for name, guard in self.guards.items():
            if guard.owns(transport):
                return name, guard
        return None

    @property
    def ready(self) -> bool:
        return self.publisher is not None and self.publisher.connected and not self.shutting_down


class ListenError(Exception):
    """The HTTP port could not be opened (in use, not permitted, no such address)."""


STATE = web.AppKey("callhook_ingress_state", IngressState)
PUBLISHER = web.AppKey("callhook_ingress_publisher", Publisher)


def create_app(config: IngressConfig, registry: CollectorRegistry) -> web.Application:
    """The ingress application; its cleanup context owns the broker connection."""
    state = IngressState(
        config=config,
        verifier=SignatureVerifier(config.app_secrets),
        metrics=IngressMetrics(registry),
        verify_token_digest=token_digest(config.verify_token),
    )
    app = web.Application(
        client_max_size=config.max_body_bytes,
        # The guard's middleware is the outermost: it must see every request start and end, 404s included.
        middlewares=[guard_middleware(lambda r: _guard(state, r)), _listener_scope(state)],
    )
    app[STATE] = state
    state.metrics.inflight_requests.set_function(
        lambda: state.inflight
    )  # read at scrape time, not per request
    app.cleanup_ctx.append(_broker)
    handlers = _Handlers(state)
    app.router.add_post("/webhook", handlers.webhook)
    app.router.add_get("/webhook", handlers.verify)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    CallsApi(
        config, state.metrics, lambda: state.publisher, body_read=lambda r: _body_read(state, r)
    ).add_routes(app)
    return app


def _guard(state: IngressState, request: web.BaseRequest) -> ConnectionGuard | None:
    found = state.guard_of(request)
    return None if found is None else found[1]


def _body_read(state: IngressState, request: web.BaseRequest) -> None:
    guard = _guard(state, request)
    if guard is not None:
        guard.body_read(request)


def _listener_scope(state: IngressState) -> Any:
    """With CALLHOOK_API_PORT set, /v1/ and /metrics answer only on the API listener and /webhook only on
    the webhook listener (404 elsewhere); health and readiness answer on both."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if state.config.api_port is not None:
            found = state.guard_of(request)
            listener = found[0] if found is not None else "webhook"
            is_api = request.path.startswith(API_PREFIXES)
            if request.path not in ("/healthz", "/readyz") and is_api != (listener == "api"):
                return web.json_response({"error": "not found on this listener"}, status=404)
        return await handler(request)  # type: ignore[no-any-return]

    return middleware


async def start_listeners(runner: web.AppRunner, config: IngressConfig) -> list[GuardedSite]:
    """Open the webhook listener (and the API one if CALLHOOK_API_PORT is set), each with its own guard."""
    state = runner.app[STATE]
    listeners = [("webhook", config.host, config.port)]
    if config.api_port is not None:
        listeners.append(("api", config.api_host or config.host, config.api_port))
    sites = []
    for name, host, port in listeners:
        guard = ConnectionGuard(
            header_timeout=config.header_timeout_seconds,
            body_timeout=config.body_timeout_seconds,
            idle_timeout=config.idle_timeout_seconds,
            max_reading=config.max_reading_connections,
            on_close=_closed_counter(state.metrics, name),
        )
        state.guards[name] = guard
        state.metrics.reading_connections.labels(listener=name).set_function(_reading_of(guard))
        site = GuardedSite(runner, host, port, guard, backlog=1024, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        sites.append(site)
    return sites


def _reading_of(guard: ConnectionGuard) -> Any:
    return lambda: guard.reading


def _closed_counter(metrics: IngressMetrics, listener: str) -> Any:
    def count(reason: str) -> None:
        metrics.connections_closed.labels(listener=listener, reason=reason).inc()

    return count


def make_runner(app: web.Application, config: IngressConfig) -> web.AppRunner:
    return web.AppRunner(
        app,
        access_log=None,  # one log line per webhook would cost more than the webhook; metrics count them
        handle_signals=False,
        shutdown_timeout=config.shutdown_grace_seconds,
        lingering_time=LINGERING_SECONDS,
        # The signed bytes are the published bytes: never let aiohttp inflate a body (and /webhook refuses
        # any Content-Encoding with a 415 anyway).
        auto_decompress=False,
        keepalive_timeout=config.idle_timeout_seconds,
    )


def begin_shutdown(app: web.Application) -> None:
    """Fail readiness from now on (the first step of a graceful stop)."""
    app[STATE].shutting_down = True


async def _broker(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    config = state.config
    gauge = state.metrics.broker_connected
    gauge.set(0)
    publisher = Publisher(
        config.amqp_url,
        confirm_timeout_seconds=config.publish_confirm_timeout_seconds,
        connect_timeout_seconds=config.connect_timeout_seconds,
        reconnect_initial_seconds=config.reconnect_initial_seconds,
        reconnect_max_seconds=config.reconnect_max_seconds,
        on_connection_change=lambda connected: gauge.set(1 if connected else 0),
    )
    async with publisher:
        state.publisher = publisher
        app[PUBLISHER] = publisher
        yield
    state.publisher = None


class _Handlers:
    def __init__(self, state: IngressState) -> None:
        self._state = state
        self._metrics = state.metrics

    async def webhook(self, request: web.Request) -> web.Response:
        received_at = time.time()
        started = time.perf_counter()
        outcome = await self._accept(request, received_at)
        self._metrics.requests[Route.WEBHOOK, outcome].inc()
        self._metrics.request_duration[Route.WEBHOOK].observe(time.perf_counter() - started)
        return _respond(outcome)

    async def _accept(self, request: web.Request, received_at: float) -> Outcome:
        state = self._state
        limit = state.config.max_body_bytes
        if request.headers.get("Content-Encoding", "").strip().lower() not in ("", "identity"):
            return Outcome.UNSUPPORTED  # Meta sends plain JSON; what is signed must be what is stored
        if state.inflight >= state.config.max_inflight_requests:
            return Outcome.UNAVAILABLE
        declared = request.content_length
        if declared is not None and declared > limit:
            return Outcome.TOO_LARGE
        try:
            digest = parse_signature(request.headers.get(SIGNATURE_HEADER))
            try:
                async with asyncio.timeout(state.config.body_timeout_seconds):
                    body = await _read_bounded(request.content, limit)
            except TimeoutError:
                return Outcome.TIMEOUT
            except ConnectionError:  # closed under us (evicted by the guard, or the client went away)
                return Outcome.CLIENT_GONE
            guard = _guard(state, request)
            if guard is not None:
                guard.body_read(request)
            if body is None:
                return Outcome.TOO_LARGE
            secret_id = state.verifier.match(body, digest)
        except SignatureError as exc:
            self._metrics.signature_failures[exc.failure].inc()
            return Outcome.BAD_SIGNATURE
        self._metrics.body_bytes.observe(len(body))
        # Only requests being published count here; connections still sending are the guard's business.
        if state.inflight >= state.config.max_inflight_requests:
            return Outcome.UNAVAILABLE
        state.inflight += 1
        try:
            return await self._publish(body, received_at, secret_id)
        finally:
            state.inflight -= 1

    async def _publish(self, body: bytes, received_at: float, secret_id: str) -> Outcome:
        publisher = self._state.publisher
        if publisher is None or not publisher.accepting_webhooks:
            return Outcome.UNAVAILABLE  # at once: no confirm to wait for
        started = time.perf_counter()
        try:
            await publisher.publish(body, received_at=received_at, secret_id=secret_id)
        except BrokerUnavailable as exc:
            log.debug("webhook not stored", extra={"error": str(exc)})
            return Outcome.UNAVAILABLE
        except PublishError as exc:
            log.warning("webhook not stored", extra={"error": f"{type(exc).__name__}: {exc}"})
            return Outcome.UNAVAILABLE
        finally:
            self._metrics.publish_confirm_duration.observe(time.perf_counter() - started)
        return Outcome.OK

    async def verify(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        query = request.query
        token = query.get("hub.verify_token")
        challenge = query.get("hub.challenge", "")
        text: str | None = None
        subscribe = query.get("hub.mode") == "subscribe" and token is not None
        if not subscribe or not hmac.compare_digest(
            token_digest(token or ""), self._state.verify_token_digest
        ):
            outcome = Outcome.FORBIDDEN
        elif not challenge or len(challenge) > MAX_CHALLENGE_CHARS:
            outcome = Outcome.BAD_REQUEST
        else:
            outcome, text = Outcome.OK, challenge
        self._metrics.requests[Route.VERIFY, outcome].inc()
        self._metrics.request_duration[Route.VERIFY].observe(time.perf_counter() - started)
        return _respond(outcome) if text is None else web.Response(text=text, content_type="text/plain")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        state = self._state
        if state.ready:
            return web.Response(text="ready")
        reason = "shutting down" if state.shutting_down else "broker not connected"
        return web.Response(status=503, text=reason)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _read_bounded(content: StreamReader, limit: int) -> bytes | None:
    """The whole body, or None as soon as more than ``limit`` bytes arrived (the rest is never buffered)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.readany():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _respond(outcome: Outcome) -> web.Response:
    status, text = _STATUS[outcome]
    response = web.Response(status=status, text=text)
    if outcome in (Outcome.TOO_LARGE, Outcome.TIMEOUT, Outcome.UNSUPPORTED, Outcome.CLIENT_GONE):
        response.force_close()  # the rest of the body is not worth reading: do not keep this connection
    return response


async def serve(config: IngressConfig, registry: CollectorRegistry, stop: asyncio.Event) -> None:
    """Run the ingress until ``stop`` is set, then shut down gracefully (see module docstring)."""
    app = create_app(config, registry)
    runner = make_runner(app, config)
    await runner.setup()
    try:
        await start_listeners(runner, config)
        log.info("listening", extra={"addresses": [list(a) for a in runner.addresses]})
        await stop.wait()
        log.info("shutting down", extra={"inflight": app[STATE].inflight})
        begin_shutdown(app)
        if config.shutdown_delay_seconds > 0:
            # Deliberate: keep serving while load balancers notice the failing readiness.
            await asyncio.sleep(config.shutdown_delay_seconds)
        for listening in runner.sites:
            await listening.stop()
        log.info("listener closed, finishing in-flight requests", extra={"inflight": app[STATE].inflight})
    finally:
        await runner.cleanup()
    log.info("stopped")


def run(config: IngressConfig) -> int:
    """The ``callhook ingress`` process: serve until SIGTERM or SIGINT. Returns the exit code."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(config, CollectorRegistry(), stop)

    try:
        event_loop.run(main(), uvloop=event_loop.uvloop_wanted(os.environ))
    except ListenError as exc:
        log.error("cannot start", extra={"error": str(exc)})  # noqa: TRY400  the message says it all
        return 1
    return 0
