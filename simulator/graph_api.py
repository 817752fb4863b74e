"""The simulated Graph API over HTTP (aiohttp): routing, the bearer token, faults, the journal, errors.

Routes (any ``vX.Y`` version)::

    POST /<version>/<phone_number_id>/calls              connect | pre_accept | accept | reject | terminate
    POST /<version>/<phone_number_id>/messages           call_permission_request (others are accepted)
    GET  /<version>/<phone_number_id>/call_permissions?user_wa_id=  (or ?recipient=<user id>)
    GET  /<version>/<phone_number_id>/settings               calling settings (simulator/call_settings.py)
    POST /<version>/<phone_number_id>/settings               {"calling": {...}}: named members replaced whole
    GET  /<version>/<media_id>                               a fresh URL for a recording or transcript
    GET  /media/<token>                                      the media bytes (bearer token; URLs expire)

Every request is journalled on arrival (``time.time()``) and completed with its status and Meta error code.
Fault switches (:mod:`simulator.faults`) act before the token check, like a failing front end would. What a
request *means* is the backend's business (:class:`GraphBackend`, implemented by the simulator); this module
only turns its answers and :class:`~simulator.errors.MetaError`\\ s into Meta's HTTP responses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from simulator.errors import MetaError, invalid_parameter
from simulator.faults import FaultKind, FaultPlan, FaultRule
from simulator.journal import GraphRequest, Journal
from simulator.platform import StoredMedia

log = logging.getLogger(__name__)

CALL_ACTIONS = frozenset({"connect", "pre_accept", "accept", "reject", "terminate"})
Json = dict[str, Any]


class GraphBackend(Protocol):
    """What the Graph API asks of Meta's side. Methods raise :class:`MetaError` to refuse."""

    def check_number(self, phone_number_id: str) -> None: ...

    async def calls_action(self, phone_number_id: str, body: Json, record: GraphRequest) -> Json: ...

    async def send_message(self, phone_number_id: str, body: Json, record: GraphRequest) -> Json: ...

    def call_permissions(self, phone_number_id: str, user: str) -> Json: ...

    def settings(self, phone_number_id: str) -> Json: ...

    def update_settings(self, phone_number_id: str, body: Json) -> Json: ...

    def media_info(self, media_id: str) -> Json: ...

    def media_fetch(self, token: str) -> StoredMedia | None: ...


class GraphServer:
    """An aiohttp server for :class:`GraphBackend`; ``async with`` starts and stops it. Port 0 = any."""

    def __init__(
        self,
        backend: GraphBackend,
        *,
        journal: Journal,
        faults: FaultPlan,
        access_token: str,
        host: str,
        port: int,
        closing: asyncio.Event,
    ) -> None:
        self._backend = backend
        self._journal = journal
        self._faults = faults
        self._access_token = access_token
        self._host = host
        self._port = port
        self._closing = closing
        self._runner: web.AppRunner | None = None
        self.port = port

    @property
    def url(self) -> str:
        """The base URL a Graph API client is configured with (``CALLHOOK_GRAPH_URL``)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{version}/{phone_number_id}/calls", self._calls)
        app.router.add_post("/{version}/{phone_number_id}/messages", self._messages)
        app.router.add_get("/{version}/{phone_number_id}/call_permissions", self._permissions)
        app.router.add_get("/{version}/{phone_number_id}/settings", self._settings)
        app.router.add_post("/{version}/{phone_number_id}/settings", self._settings)
        app.router.add_get("/media/{token}", self._media_download)
        app.router.add_get("/{version}/{media_id}", self._media_info)
        return app

    async def __aenter__(self) -> GraphServer:
        self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # Handlers
    async def _calls(self, request: web.Request) -> web.Response:
        async def run(body: Json, record: GraphRequest) -> Json:
            return await self._backend.calls_action(record.phone_number_id, body, record)

        return await self._serve(request, run, _calls_action)

    async def _messages(self, request: web.Request) -> web.Response:
        async def run(body: Json, record: GraphRequest) -> Json:
            return await self._backend.send_message(record.phone_number_id, body, record)

        return await self._serve(request, run, lambda _body: "messages")

    async def _permissions(self, request: web.Request) -> web.Response:
        async def run(_body: Json, record: GraphRequest) -> Json:
            user = request.query.get("user_wa_id", "") or request.query.get("recipient", "")
            if not user:
                raise invalid_parameter("user_wa_id or recipient is required")
            record.to = user
            return self._backend.call_permissions(record.phone_number_id, user)

        return await self._serve(request, run, lambda _body: "call_permissions")

    async def _settings(self, request: web.Request) -> web.Response:
        async def run(body: Json, record: GraphRequest) -> Json:
            if request.method == "GET":
                return self._backend.settings(record.phone_number_id)
            return self._backend.update_settings(record.phone_number_id, body)

        return await self._serve(request, run, lambda _body: "settings")

    async def _media_info(self, request: web.Request) -> web.Response:
        async def run(_body: Json, _record: GraphRequest) -> Json:
            return self._backend.media_info(request.match_info["media_id"])

        return await self._serve(request, run, lambda _body: "media")

    async def _media_download(self, request: web.Request) -> web.Response:
        """Meta's lookaside download: the token must be fresh and the bearer token right."""
        record = GraphRequest(
            received_at=time.time(),
            method="GET",
            path=request.path,
            action="media_download",
            phone_number_id="",
        )
        self._journal.record_request(record)
        try:
            self._check_token(request)
            stored = self._backend.media_fetch(request.match_info["token"])
        except MetaError as refused:
            stored, error = None, refused
        else:
            error = MetaError(100, "URL signature expired")
        if stored is None:
            record.http_status, record.error_code = error.http_status, error.code
            record.responded_at = time.time()
            self._journal.touched()
            return web.json_response(error.envelope(), status=error.http_status)
        record.http_status = 200
        record.responded_at = time.time()
        self._journal.touched()
        return web.Response(body=stored.data, content_type=stored.mime_type.split(";")[0])

    async def _serve(
        self,
        request: web.Request,
        run: Callable[[Json, GraphRequest], Awaitable[Json]],
        action_of: Callable[[Json | None], str],
    ) -> web.Response:
        record = GraphRequest(
            received_at=time.time(),
            method=request.method,
            path=request.path,
            action="",
            phone_number_id=request.match_info.get("phone_number_id", ""),
        )
        self._journal.record_request(record)
        body = await _read_json(request) if request.method == "POST" else {}
        record.action = action_of(body)
        if body is not None:
            record.call_id = _str_or_none(body.get("call_id"))
            record.to = _str_or_none(body.get("to"))
        fault: FaultRule | None = None
        try:
            fault = self._faults.pick(record.action)
            if fault is not None:
                record.fault = fault.describe()
                status, payload = await self._faulty(fault, request, body, record, run)
            else:
                status, payload = 200, await self._checked(request, body, record, run)
        except MetaError as exc:
            status, payload = exc.http_status, exc.envelope()
            record.error_code = exc.code
        record.http_status = status
        record.responded_at = time.time()
        self._journal.touched()
        headers = None
        if fault is not None and fault.retry_after_seconds is not None and status >= 400:
            headers = {"Retry-After": str(fault.retry_after_seconds)}  # Meta's hint: wait this long
        return web.json_response(payload, status=status, headers=headers)

    async def _checked(
        self,
        request: web.Request,
        body: Json | None,
        record: GraphRequest,
        run: Callable[[Json, GraphRequest], Awaitable[Json]],
    ) -> Json:
        self._check_token(request)
        if body is None:
            raise invalid_parameter("the request body must be a JSON object")
        if (
            request.method == "POST"
            and record.action != "settings"
            and body.get("messaging_product") != "whatsapp"
        ):
            raise invalid_parameter("The parameter messaging_product is required and must be 'whatsapp'")
        if record.phone_number_id:  # media ids are not numbers of the business
            self._backend.check_number(record.phone_number_id)
        return await run(body, record)

    def _check_token(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        token = (
            header[len("Bearer ") :] if header.startswith("Bearer ") else request.query.get("access_token")
        )
        if not token or token != self._access_token:
            raise MetaError(190)

    async def _faulty(
        self,
        fault: FaultRule,
        request: web.Request,
        body: Json | None,
        record: GraphRequest,
        run: Callable[[Json, GraphRequest], Awaitable[Json]],
    ) -> tuple[int, Json]:
        if fault.kind is FaultKind.DELAY:
            await self._hold(fault.seconds)
            return 200, await self._checked(request, body, record, run)
        if fault.kind is FaultKind.TIMEOUT:
            result: Json | None = None
            if fault.apply:
                result = await self._checked(request, body, record, run)
            await self._hold(fault.seconds)
            if result is not None:
                return 200, result
            raise MetaError(2)
        if fault.kind is FaultKind.SERVER_ERROR:
            code = 2 if fault.http_status == 503 else 1
            raise MetaError(code, http_status=fault.http_status)
        if fault.kind is FaultKind.THROTTLE:
            raise MetaError(fault.code, http_status=429)
        raise MetaError(fault.code, f"injected fault {fault.describe()}")

    async def _hold(self, seconds: float) -> None:
        """Hold a request for ``seconds``, or less if the simulator is closing."""
        try:
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        except TimeoutError:
            pass


async def _read_json(request: web.Request) -> Json | None:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _calls_action(body: Json | None) -> str:
    action = body.get("action") if body else None
    return action if isinstance(action, str) else ""


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
