"""The integrator API: place a call, end a call. Bearer tokens from ``CALLHOOK_API_TOKENS``.

``POST /v1/calls`` with ``{"to": "15551234567", "app"?, "biz_opaque_callback_data"?, "phone_number_id"?,
"permission"?: "skip"|"check"|"request"}`` queues a dial (``callhook.dials``) and answers 202 with its request
id; a worker with room takes it. ``POST /v1/calls/{call_id}/hangup`` sends a hang-up to the call's owner
(``callhook.calls``, routing key = call id) and answers 202. What happens next is published on
``callhook.events`` (``call.*``, README "Call lifecycle events"), with the request id.

Answers: 202 queued · 400 bad input (the message says what to fix) · 401 missing or wrong token · 404 the API
is disabled (no token configured) · 413 body over 64 KiB · 503 the broker could not take it (retry).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ingress import contract
from ingress.commands import PERMISSION_MODES, CommandError, Dial, hangup, transfer
from ingress.config import IngressConfig
from ingress.metrics import IngressMetrics, Outcome, Route
from ingress.publisher import Publisher, PublishError
from ingress.signature import token_digest

log = logging.getLogger(__name__)

MAX_API_BODY_BYTES = 64 * 1024
_DIAL_FIELDS = frozenset({"to", "app", "biz_opaque_callback_data", "phone_number_id", "permission"})

PublisherOf = Callable[[], Publisher | None]


class CallsApi:
    def __init__(self, config: IngressConfig, metrics: IngressMetrics, publisher: PublisherOf) -> None:
        self._token_digests = [token_digest(token) for token in config.api_tokens]
        self._phone_number_id = config.phone_number_id
        self._metrics = metrics
        self._publisher = publisher

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/calls", self._measured(Route.DIAL, self._dial))
        app.router.add_post("/v1/calls/{call_id}/hangup", self._measured(Route.HANGUP, self._hangup))
        app.router.add_post("/v1/calls/{call_id}/transfer", self._measured(Route.TRANSFER, self._transfer))

    def _measured(
        self, route: Route, handler: Callable[[web.Request], Awaitable[tuple[Outcome, web.Response]]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            started = time.perf_counter()
            outcome, response = await self._guarded(request, handler)
            self._metrics.requests[route, outcome].inc()
            self._metrics.request_duration[route].observe(time.perf_counter() - started)
            return response

        return handle

    async def _guarded(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[tuple[Outcome, web.Response]]]
    ) -> tuple[Outcome, web.Response]:
        if not self._token_digests:
            return Outcome.FORBIDDEN, _error(404, "the calls API is disabled: set CALLHOOK_API_TOKENS")
        if not self._authorized(request.headers.get("Authorization", "")):
            response = _error(401, "missing or wrong bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="callhook"'
            return Outcome.UNAUTHORIZED, response
        return await handler(request)

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        digest = token_digest(token.strip())
        # Compare against every token, always, so the time taken says nothing about which one is close.
        matches = [hmac.compare_digest(digest, known) for known in self._token_digests]
        return any(matches)

    async def _dial(self, request: web.Request) -> tuple[Outcome, web.Response]:
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return _outcome_of(body), body
        unknown = sorted(set(body) - _DIAL_FIELDS)
        if unknown:
            return Outcome.BAD_REQUEST, _error(400, f"unknown field(s): {', '.join(unknown)}")
        problems = [
            f"'{name}' must be a string"
            for name in _DIAL_FIELDS
            if name in body and not isinstance(body[name], str)
        ]
        if problems:
            return Outcome.BAD_REQUEST, _error(400, "; ".join(problems))
        if "to" not in body:
            return Outcome.BAD_REQUEST, _error(400, "'to' is required: the user's phone number")
        phone_number_id = body.get("phone_number_id") or self._phone_number_id
        if not phone_number_id:
            return Outcome.BAD_REQUEST, _error(
                400, "'phone_number_id' is required (no CALLHOOK_PHONE_NUMBER_ID set)"
            )
        permission = body.get("permission", "skip")
        if permission not in PERMISSION_MODES:
            return Outcome.BAD_REQUEST, _error(
                400, f"'permission' must be one of {', '.join(PERMISSION_MODES)}"
            )
        try:
            dial = Dial(
                to=body["to"],
                phone_number_id=phone_number_id,
                app=body.get("app"),
                biz_opaque_callback_data=body.get("biz_opaque_callback_data"),
                permission=permission,
            ).validated()
        except CommandError as exc:
            return Outcome.BAD_REQUEST, _error(400, str(exc))
        published = await self._publish(dial.encode(), "", contract.DIALS_QUEUE, dial.request_id)
        if published is not None:
            return published
        log.info("dial queued", extra={"request_id": dial.request_id})
        return Outcome.OK, web.json_response({"request_id": dial.request_id, "status": "queued"}, status=202)

    async def _hangup(self, request: web.Request) -> tuple[Outcome, web.Response]:
        call_id = request.match_info["call_id"]
        request_id = f"hangup-{hashlib.sha256(f'{call_id}{time.time_ns()}'.encode()).hexdigest()[:24]}"
        try:
            message = hangup(call_id, request_id)
        except CommandError as exc:
            return Outcome.BAD_REQUEST, _error(400, str(exc))
        published = await self._publish(message, contract.CALLS_EXCHANGE, call_id, request_id)
        if published is not None:
            return published
        log.info("hangup sent", extra={"request_id": request_id, "call_id": call_id})
        body = {"request_id": request_id, "call_id": call_id, "status": "sent"}
        return Outcome.OK, web.json_response(body, status=202)

    async def _transfer(self, request: web.Request) -> tuple[Outcome, web.Response]:
        """Hand the call to a person (docs/handoff.md): ``{"queue", "reason"?, "context"?}``."""
        call_id = request.match_info["call_id"]
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return _outcome_of(body), body
        request_id = f"transfer-{hashlib.sha256(f'{call_id}{time.time_ns()}'.encode()).hexdigest()[:24]}"
        try:
            message = transfer(call_id, body, request_id)
        except CommandError as exc:
            return Outcome.BAD_REQUEST, _error(400, str(exc))
        published = await self._publish(message, contract.CALLS_EXCHANGE, call_id, request_id)
        if published is not None:
            return published
        log.info("transfer sent", extra={"request_id": request_id, "call_id": call_id})
        return Outcome.OK, web.json_response({"request_id": request_id, "status": "sent"}, status=202)

    async def _publish(
        self, body: bytes, exchange: str, routing_key: str, request_id: str
    ) -> tuple[Outcome, web.Response] | None:
        publisher = self._publisher()
        if publisher is None or not publisher.connected:
            return Outcome.UNAVAILABLE, _error(503, "the broker is not reachable: retry later")
        try:
            await publisher.publish_command(
                body, exchange=exchange, routing_key=routing_key, message_id=request_id
            )
        except PublishError as exc:
            log.warning("command not queued", extra={"error": f"{type(exc).__name__}: {exc}"})
            return Outcome.UNAVAILABLE, _error(503, "the broker did not take the request: retry later")
        return None


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    if request.content_length is not None and request.content_length > MAX_API_BODY_BYTES:
        return _error(413, f"body over {MAX_API_BODY_BYTES} bytes")
    raw = await request.content.read(MAX_API_BODY_BYTES + 1)
    if len(raw) > MAX_API_BODY_BYTES:
        return _error(413, f"body over {MAX_API_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _error(400, f"body is not JSON: {exc}")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    return body


def _outcome_of(response: web.Response) -> Outcome:
    return Outcome.TOO_LARGE if response.status == 413 else Outcome.BAD_REQUEST


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
