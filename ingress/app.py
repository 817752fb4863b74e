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

from aiohttp import web
from aiohttp.streams import StreamReader
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from callhook import loop as event_loop
from ingress.api import CallsApi
from ingress.config import IngressConfig
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
}


@dataclass(slots=True)
class IngressState:
    """What the handlers share; one per application."""

    config: IngressConfig
    verifier: SignatureVerifier
    metrics: IngressMetrics
    verify_token_digest: bytes = field(repr=False)
    publisher: Publisher | None = None
    shutting_down: bool = False
    inflight: int = 0

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
    app = web.Application(client_max_size=config.max_body_bytes)
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
    CallsApi(config, state.metrics, lambda: state.publisher).add_routes(app)
    return app


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
        state = self._state
        state.inflight += 1
        try:
            outcome = await self._accept(request, received_at)
        finally:
            state.inflight -= 1
        self._metrics.requests[Route.WEBHOOK, outcome].inc()
        self._metrics.request_duration[Route.WEBHOOK].observe(time.perf_counter() - started)
        return _respond(outcome)

    async def _accept(self, request: web.Request, received_at: float) -> Outcome:
        state = self._state
        limit = state.config.max_body_bytes
        if state.inflight > state.config.max_inflight_requests:
            return Outcome.UNAVAILABLE
        declared = request.content_length
        if declared is not None and declared > limit:
            return Outcome.TOO_LARGE
        try:
            digest = parse_signature(request.headers.get(SIGNATURE_HEADER))
            body = await _read_bounded(request.content, limit)
            if body is None:
                return Outcome.TOO_LARGE
            secret_id = state.verifier.match(body, digest)
        except SignatureError as exc:
            self._metrics.signature_failures[exc.failure].inc()
            return Outcome.BAD_SIGNATURE
        self._metrics.body_bytes.observe(len(body))
        return await self._publish(body, received_at, secret_id)

    async def _publish(self, body: bytes, received_at: float, secret_id: str) -> Outcome:
        publisher = self._state.publisher
        if publisher is None or not publisher.connected:
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
    if outcome is Outcome.TOO_LARGE:
        response.force_close()  # the rest of the body is not worth reading: do not keep this connection
    return response


async def serve(config: IngressConfig, registry: CollectorRegistry, stop: asyncio.Event) -> None:
    """Run the ingress until ``stop`` is set, then shut down gracefully (see module docstring)."""
    app = create_app(config, registry)
    runner = web.AppRunner(
        app,
        access_log=None,  # one log line per webhook would cost more than the webhook; metrics count them
        handle_signals=False,
        shutdown_timeout=config.shutdown_grace_seconds,
        lingering_time=LINGERING_SECONDS,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, backlog=1024, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from exc
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
