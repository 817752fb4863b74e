"""The integrator API: place a call, end a call. Bearer tokens from ``CALLHOOK_API_TOKENS``.

``POST /v1/calls`` with ``{"to": "15551234567" | "US.1349...", "recipient"?, "app"?,
"biz_opaque_callback_data"?, "phone_number_id"?, "permission"?: "skip"|"check"|"request"}`` (and Meta's
``"recording"``/``"transcription"`` opt-in objects, checked strictly: docs/platform-2026.md) queues a dial
(``callhook.dials``) and answers 202 with its request id; a worker with room takes it. ``app`` names one of
the operator's apps (``CALLHOOK_APPS``), never a spec. A user id given as ``to`` is sent as Meta's
``recipient``. ``POST /v1/calls/{call_id}/hangup`` sends a hang-up to the call's owner (``callhook.calls``,
routing key = call id) and answers 202. What happens next is published on ``callhook.events`` (``call.*``,
README "Call lifecycle events"), with the request id.

Both take an ``Idempotency-Key`` header (:mod:`ingress.idempotency`): a retry with the same key gets the same
request id and never a second call; the same key with a different request is a 422.

Answers: 202 queued · 400 bad input (the message says what to fix) · 401 missing or wrong token · 404 the API
is disabled (no token configured) · 408 the body did not arrive in time · 413 body over 64 KiB · 422 key
reused with another request · 429 too many failed logins from this address · 503 the broker could not take it
(retry, with the same key).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ingress import contract, idempotency
from ingress.commands import (
    PERMISSION_MODES,
    CommandError,
    Consent,
    Dial,
    check_call_id,
    consent_from_json,
    hangup,
    transfer,
)
from ingress.config import IngressConfig
from ingress.metrics import IngressMetrics, Outcome, Route
from ingress.publisher import Publisher, PublishError
from ingress.signature import token_digest
from ingress.throttle import LoginThrottle

log = logging.getLogger(__name__)

MAX_API_BODY_BYTES = 64 * 1024
_DIAL_FIELDS = frozenset(
    {"to", "recipient", "app", "biz_opaque_callback_data", "phone_number_id", "permission"}
)
MAX_FIELD_BYTES = 1_024  # any string field; the specific checks in ingress.commands are tighter
_CAPTURE_FIELDS = frozenset({"recording", "transcription"})  # Meta's opt-in objects (docs/platform-2026.md)

PublisherOf = Callable[[], Publisher | None]
BodyRead = Callable[[web.Request], None]


class _Refused(Exception):
    def __init__(self, outcome: Outcome, response: web.Response) -> None:
        self.outcome, self.response = outcome, response


class CallsApi:
    def __init__(
        self,
        config: IngressConfig,
        metrics: IngressMetrics,
        publisher: PublisherOf,
        body_read: BodyRead = lambda _: None,
    ) -> None:
        self._token_digests = [token_digest(token) for token in config.api_tokens]
        self._phone_number_id = config.phone_number_id
        self._config = config
        self._metrics = metrics
        self._publisher = publisher
        self._body_read = body_read
        self._throttle = LoginThrottle(
            limit=config.api_login_failures,
            window=config.api_login_window_seconds,
            max_addresses=config.api_login_tracked_addresses,
        )

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
        address = request.remote or ""
        wait = self._throttle.blocked(address, time.monotonic())
        if wait > 0:
            response = _error(429, "too many failed logins from this address: wait")
            response.headers["Retry-After"] = str(int(wait) + 1)
            return Outcome.THROTTLED, response
        if not self._authorized(request.headers.get("Authorization", "")):
            self._throttle.failed(address, time.monotonic())
            response = _error(401, "missing or wrong bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="callhook"'
            return Outcome.UNAUTHORIZED, response
        try:
            return await handler(request)
        except _Refused as refused:
            return refused.outcome, refused.response

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or len(token) > 4_096:
            return False
        digest = token_digest(token.strip())
        # Compare against every token, always, so the time taken says nothing about which one is close.
        matches = [hmac.compare_digest(digest, known) for known in self._token_digests]
        return any(matches)

    async def _dial(self, request: web.Request) -> tuple[Outcome, web.Response]:
        key = _idempotency_key(request)
        body = await self._json_object(request)
        unknown = sorted(name for name in body if name not in _DIAL_FIELDS and name not in _CAPTURE_FIELDS)
        if unknown:
            shown = ", ".join(repr(name[:40]) for name in unknown[:5])
            return Outcome.BAD_REQUEST, _error(400, f"unknown field(s): {shown}")
        problems = [
            f"'{name}' must be a string of at most {MAX_FIELD_BYTES} bytes"
            for name in sorted(_DIAL_FIELDS)
            if name in body and not _short_string(body[name])
        ]
        capture: dict[str, Consent | None] = {}
        for name in sorted(_CAPTURE_FIELDS & set(body)):
            capture[name], found = consent_from_json(name, body[name])
            problems += found
        if problems:
            return Outcome.BAD_REQUEST, _error(400, "; ".join(problems))
        if not body.get("to") and not body.get("recipient"):
            return Outcome.BAD_REQUEST, _error(
                400, "'to' is required: the user's phone number or WhatsApp user id (or 'recipient')"
            )
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
                to=body.get("to", ""),
                recording=capture.get("recording"),
                transcription=capture.get("transcription"),
                phone_number_id=phone_number_id,
                app=body.get("app"),
                biz_opaque_callback_data=body.get("biz_opaque_callback_data"),
                permission=permission,
                recipient=body.get("recipient", ""),
                request_id=idempotency.request_id("dial", key) if key else "",
            ).validated(self._config.app_names)
        except CommandError as exc:
            return Outcome.BAD_REQUEST, _error(400, str(exc))
        requested_at = time.time()
        headers: dict[str, str | int] | None = None
        if key is not None:
            fields: dict[str, object] = {
                "to": dial.to, "recipient": dial.recipient, "phone_number_id": dial.phone_number_id,
                "app": dial.app, "data": dial.biz_opaque_callback_data, "permission": dial.permission,
            }  # fmt: skip
            requested_at = await self._claim(key, "dial", fields, dial.request_id, requested_at)
            headers = {
                idempotency.HEADER_IDEMPOTENT: 1,
                idempotency.HEADER_TTL: self._config.idempotency_ttl_seconds,
            }
        published = await self._publish(
            dial.encode(requested_at), "", contract.DIALS_QUEUE, dial.request_id, headers
        )
        if published is not None:
            return published
        log.info("dial queued", extra={"request_id": dial.request_id})
        return Outcome.OK, web.json_response({"request_id": dial.request_id, "status": "queued"}, status=202)

    async def _hangup(self, request: web.Request) -> tuple[Outcome, web.Response]:
        key = _idempotency_key(request)
        self._body_read(request)  # no body is read: the request is complete
        call_id = request.match_info["call_id"]
        try:
            check_call_id(call_id)
        except CommandError as exc:
            return Outcome.BAD_REQUEST, _error(400, str(exc))
        if key is not None:
            request_id = idempotency.request_id("hangup", key)
            await self._claim(key, "hangup", {"call_id": call_id}, request_id, time.time())
        else:
            request_id = f"hangup-{hashlib.sha256(f'{call_id}{time.time_ns()}'.encode()).hexdigest()[:24]}"
        message = hangup(call_id, request_id)
        published = await self._publish(message, contract.CALLS_EXCHANGE, call_id, request_id)
        if published is not None:
            return published
        log.info("hangup sent", extra={"request_id": request_id, "call_id": call_id})
        body = {"request_id": request_id, "call_id": call_id, "status": "sent"}
        return Outcome.OK, web.json_response(body, status=202)

    async def _claim(
        self, key: str, operation: str, fields: dict[str, object], request_id: str, requested_at: float
    ) -> float:
        """Record the key's first request, or check a retry against it; returns the first request's time.

        Raises :class:`_Refused` (422 for a different request, 503 when the broker cannot tell).
        """
        publisher = self._publisher()
        if publisher is None or not publisher.connected:
            raise _Refused(Outcome.UNAVAILABLE, _error(503, "the broker is not reachable: retry later"))
        record = idempotency.Record(idempotency.fingerprint(operation, fields), request_id, requested_at)
        try:
            stored = await publisher.claim_key(
                idempotency.key_queue(key), record.encode(), ttl_seconds=self._config.idempotency_ttl_seconds
            )
        except PublishError as exc:
            log.warning("idempotency key not recorded", extra={"error": f"{type(exc).__name__}: {exc}"})
            raise _Refused(
                Outcome.UNAVAILABLE, _error(503, "the broker did not take the request: retry later")
            ) from None
        if stored is None:
            return requested_at
        try:
            first = idempotency.Record.decode(stored)
        except (ValueError, KeyError, TypeError):
            raise _Refused(Outcome.CONFLICT, _error(422, "Idempotency-Key is in use")) from None
        if first.fingerprint != record.fingerprint or first.request_id != request_id:
            raise _Refused(
                Outcome.CONFLICT,
                _error(422, "Idempotency-Key was used for a different request: use a new key"),
            )
        log.info("idempotent retry", extra={"request_id": request_id})
        return first.requested_at

    async def _json_object(self, request: web.Request) -> dict[str, Any]:
        """The request's JSON object, or :class:`_Refused` with the answer."""
        if request.content_length is not None and request.content_length > MAX_API_BODY_BYTES:
            raise _Refused(Outcome.TOO_LARGE, _error(413, f"body over {MAX_API_BODY_BYTES} bytes"))
        try:
            async with asyncio.timeout(self._config.body_timeout_seconds):
                raw = await request.content.read(MAX_API_BODY_BYTES + 1)
        except TimeoutError:
            response = _error(408, "the body did not arrive in time")
            response.force_close()
            raise _Refused(Outcome.TIMEOUT, response) from None
        except ConnectionError:  # closed under us (evicted by the guard, or the client went away)
            response = _error(400, "connection closed")
            response.force_close()
            raise _Refused(Outcome.CLIENT_GONE, response) from None
        self._body_read(request)
        if len(raw) > MAX_API_BODY_BYTES:
            response = _error(413, f"body over {MAX_API_BODY_BYTES} bytes")
            response.force_close()
            raise _Refused(Outcome.TOO_LARGE, response)
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Refused(Outcome.BAD_REQUEST, _error(400, f"body is not JSON: {exc}")) from None
        except (RecursionError, ValueError):  # nesting too deep, an integer too long
            raise _Refused(Outcome.BAD_REQUEST, _error(400, "body is not usable JSON")) from None
        if not isinstance(body, dict):
            raise _Refused(Outcome.BAD_REQUEST, _error(400, "body must be a JSON object"))
        return body

    async def _transfer(self, request: web.Request) -> tuple[Outcome, web.Response]:
        """Hand the call to a person (docs/handoff.md): ``{"queue", "reason"?, "context"?}``."""
        call_id = request.match_info["call_id"]
        body = await self._json_object(request)
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
        self,
        body: bytes,
        exchange: str,
        routing_key: str,
        request_id: str,
        headers: dict[str, str | int] | None = None,
    ) -> tuple[Outcome, web.Response] | None:
        publisher = self._publisher()
        if publisher is None or not publisher.connected:
            return Outcome.UNAVAILABLE, _error(503, "the broker is not reachable: retry later")
        try:
            await publisher.publish_command(
                body, exchange=exchange, routing_key=routing_key, message_id=request_id, headers=headers
            )
        except PublishError as exc:
            log.warning("command not queued", extra={"error": f"{type(exc).__name__}: {exc}"})
            return Outcome.UNAVAILABLE, _error(503, "the broker did not take the request: retry later")
        return None


def _idempotency_key(request: web.Request) -> str | None:
    raw = request.headers.get(idempotency.IDEMPOTENCY_HEADER)
    if raw is None:
        return None
    try:
        return idempotency.check_key(raw)
    except idempotency.IdempotencyKeyError as exc:
        raise _Refused(Outcome.BAD_REQUEST, _error(400, str(exc))) from None


def _short_string(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return len(value.encode()) <= MAX_FIELD_BYTES
    except UnicodeEncodeError:  # a lone surrogate: JSON allows "\ud800", UTF-8 does not
        return False


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
