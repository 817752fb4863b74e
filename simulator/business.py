"""A reference business on plain aiortc: the smallest thing that answers and places calls through Meta.

It is *not* callhook's worker. It exists so the simulator can be exercised without one: its own tests,
``callhook sim --self-check``, and benchmarks that want a baseline business in the same process. It
verifies each webhook's ``X-Hub-Signature-256`` with hmac over the raw bytes, answers every incoming call
(aiortc answer with SHA-256-only fingerprints and ``a=setup:active`` -> ``pre_accept`` -> media up ->
``accept``), echoes the caller's audio back, applies the answers of calls it placed (``connect``), and hangs
up on request. It keeps ``telephone-event`` in its SDP and collects the caller's keypad presses
(``BusinessCall.digits``), so ``callhook sim --self-check --dtmf`` checks the phone's keys end to end.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from av.frame import Frame
from av.packet import Packet

from simulator import dtmf
from simulator import sdp as sdp_edit
from simulator.errors import SimulatorError
from simulator.journal import Changes
from simulator.tasks import TaskOwner
from simulator.wiretap import DigitTap

log = logging.getLogger(__name__)
Json = dict[str, Any]


class GraphCallError(SimulatorError):
    """The Graph API refused a request of the reference business."""

    def __init__(self, status: int, body: Json) -> None:
        self.status = status
        self.body = body
        error = body.get("error", {}) if isinstance(body, dict) else {}
        self.code = error.get("code")
        super().__init__(f"Graph API {status}: {error.get('message')} {error.get('error_data', '')}")


class EchoTrack(MediaStreamTrack):
    """Sends back whatever the remote sends, once the remote track is known."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.source: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    async def recv(self) -> Frame | Packet[Any]:
        source = await self.source
        return await source.recv()


@dataclass(slots=True)
class BusinessCall:
    call_id: str
    direction: str  # "incoming" | "outgoing"
    pc: RTCPeerConnection
    echo: EchoTrack
    statuses: list[str] = field(default_factory=list)
    accepted: bool = False
    ended: bool = False
    keys: DigitTap | None = None  # the caller's keypad presses, when telephone-event was negotiated

    @property
    def digits(self) -> str:
        return self.keys.digits if self.keys is not None else ""


@dataclass(frozen=True, slots=True)
class ReceivedWebhook:
    received_at: float
    body: bytes
    signature: str
    signature_ok: bool


class EchoBusiness:
    """``async with EchoBusiness(graph_url=sim.graph_url, ...) as business:`` then point the simulator's
    ingress URL at ``business.webhook_url``."""

    def __init__(
        self,
        *,
        graph_url: str,
        access_token: str,
        app_secret: str,
        phone_number_id: str,
        graph_version: str = "v23.0",
        host: str = "127.0.0.1",
        port: int = 0,
        answer_calls: bool = True,
        media_timeout_seconds: float = 10.0,
    ) -> None:
        self.graph_url = graph_url.rstrip("/")
        self._token = access_token
        self._secret = app_secret.encode()
        self.phone_number_id = phone_number_id
        self._version = graph_version
        self._host = host
        self._port = port
        self.answer_calls = answer_calls
        self._media_timeout = media_timeout_seconds
        self.calls: dict[str, BusinessCall] = {}
        self.webhooks: list[ReceivedWebhook] = []
        self.errors: list[str] = []
        self.changes = Changes()
        self._pending_answers: dict[str, str] = {}
        self._tasks = TaskOwner("echo business")
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = port

    @property
    def webhook_url(self) -> str:
        return f"http://{self._host}:{self.port}/webhook"

    async def __aenter__(self) -> EchoBusiness:
        await self._tasks.start()
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/webhook", self._on_webhook)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._tasks.close()
        for call in self.calls.values():
            await call.pc.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # Webhooks
    async def _on_webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers.get("X-Hub-Signature-256", "")
        expected = "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(signature, expected)
        self.webhooks.append(ReceivedWebhook(time.time(), body, signature, ok))
        self.changes.notify()
        if not ok:
            return web.Response(status=401)
        for value in _values(json.loads(body)):
            for item in value.get("calls", []):
                self._on_call_event(item)
            for item in value.get("statuses", []):
                call = self.calls.get(item.get("id", ""))
                if call is not None:
                    call.statuses.append(item.get("status", ""))
                    self.changes.notify()
        return web.Response(text="ok")

    def _on_call_event(self, item: Json) -> None:
        call_id = item.get("id", "")
        event = item.get("event")
        if event == "connect" and item.get("direction") == "USER_INITIATED" and self.answer_calls:
            if call_id not in self.calls:  # a duplicate delivery is not a second call
                self._tasks.spawn(self._answer(call_id, item["session"]["sdp"]))
        elif event == "connect" and item.get("direction") == "BUSINESS_INITIATED":
            sdp = item["session"]["sdp"]
            if call_id in self.calls:
                self._tasks.spawn(self._apply_answer(self.calls[call_id], sdp))
            else:  # the answer beat the HTTP response of connect
                self._pending_answers[call_id] = sdp
        elif event == "terminate" and call_id in self.calls:
            # Never cancelled: aiortc's close() cut short leaves the connection unclosable.
            self._tasks.spawn(self._ended(self.calls[call_id]), cancel_on_close=False)

    # Calls
    def _new_call(self, call_id: str, direction: str) -> BusinessCall:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        echo = EchoTrack()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if not echo.source.done():
                echo.source.set_result(track)

        call = BusinessCall(call_id, direction, pc, echo)
        self.calls[call_id] = call
        self.changes.notify()
        return call

    async def _answer(self, call_id: str, offer: str) -> None:
        call = self._new_call(call_id, "incoming")
        pc = call.pc
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            pc.addTrack(call.echo)
            await pc.setLocalDescription(await pc.createAnswer())
            answer = sdp_edit.business_answer(pc.localDescription.sdp)
            dtmf_pt = dtmf.telephone_event_pt(offer)
            if dtmf_pt is not None:  # keep the caller's keypad: telephone-event with the offer's type
                answer = dtmf.add_telephone_event(answer, dtmf_pt)
                call.keys = DigitTap(dtmf_pt)
                call.keys.install(pc.getTransceivers()[0].receiver.transport)
            session = {"sdp_type": "answer", "sdp": answer}
            await self._calls_action({"action": "pre_accept", "call_id": call_id, "session": session})
            await self._wait_media(pc)
            await self._calls_action({"action": "accept", "call_id": call_id, "session": session})
            call.accepted = True
            self.changes.notify()
        except (GraphCallError, TimeoutError, aiohttp.ClientError) as exc:
            self.errors.append(f"{call_id}: {exc}")
            self.changes.notify()

    async def _wait_media(self, pc: RTCPeerConnection) -> None:
        connected = asyncio.Event()

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                connected.set()

        if pc.connectionState != "connected":
            async with asyncio.timeout(self._media_timeout):
                await connected.wait()

    async def _apply_answer(self, call: BusinessCall, sdp: str) -> None:
        await call.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        call.accepted = True
        self.changes.notify()

    async def _ended(self, call: BusinessCall) -> None:
        call.ended = True
        self.changes.notify()
        await call.pc.close()

    async def dial(self, to: str, *, biz_opaque_callback_data: str | None = None) -> str:
        """Place a call to ``to``; returns the call id. The phone's answer arrives by webhook."""
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        echo = EchoTrack()
        pc.addTrack(echo)
        await pc.setLocalDescription(await pc.createOffer())
        keys = DigitTap(sdp_edit.DTMF_PT)  # offered like Meta's: the phone's keypad as telephone-event 126
        keys.install(pc.getTransceivers()[0].receiver.transport)
        offer = dtmf.add_telephone_event(sdp_edit.business_offer(pc.localDescription.sdp), sdp_edit.DTMF_PT)
        body: Json = {"action": "connect", "to": to, "session": {"sdp_type": "offer", "sdp": offer}}
        if biz_opaque_callback_data is not None:
            body["biz_opaque_callback_data"] = biz_opaque_callback_data
        try:
            response = await self._calls_action(body)
        except BaseException:
            await pc.close()
            raise
        call_id: str = response["calls"][0]["id"]
        call = BusinessCall(call_id, "outgoing", pc, echo, keys=keys)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if not echo.source.done():
                echo.source.set_result(track)

        self.calls[call_id] = call
        self.changes.notify()
        early = self._pending_answers.pop(call_id, None)
        if early is not None:
            await self._apply_answer(call, early)
        return call_id

    async def hangup(self, call_id: str) -> None:
        await self._calls_action({"action": "terminate", "call_id": call_id})
        await self._ended(self.calls[call_id])

    async def reject(self, call_id: str) -> None:
        await self._calls_action({"action": "reject", "call_id": call_id})

    async def wait_accepted(self, call_id: str, timeout: float = 10.0) -> BusinessCall:  # noqa: ASYNC109 - a bounded wait is the API
        def accepted() -> BusinessCall | None:
            call = self.calls.get(call_id)
            return call if call is not None and call.accepted else None

        return await self.changes.wait_for(accepted, timeout)

    async def wait_for_call(self, timeout: float = 10.0) -> BusinessCall:  # noqa: ASYNC109 - a bounded wait is the API
        """The first incoming call."""
        return await self.changes.wait_for(
            lambda: next((c for c in self.calls.values() if c.direction == "incoming"), None), timeout
        )

    # Graph API client
    async def _calls_action(self, body: Json) -> Json:
        return await self.graph_post("calls", body)

    async def graph_post(self, edge: str, body: Json) -> Json:
        if self._session is None:
            raise SimulatorError("the business is closed")
        url = f"{self.graph_url}/{self._version}/{self.phone_number_id}/{edge}"
        headers = {"Authorization": f"Bearer {self._token}"}
        request = {"messaging_product": "whatsapp", **body}
        async with self._session.post(url, json=request, headers=headers) as response:
            payload: Json = await response.json()
            if response.status != 200:
                raise GraphCallError(response.status, payload)
            return payload


def _values(body: object) -> list[Json]:
    if not isinstance(body, dict):
        return []
    return [
        change.get("value", {})
        for entry in body.get("entry", [])
        for change in entry.get("changes", [])
        if isinstance(change, dict)
    ]
