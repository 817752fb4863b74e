"""Call lifecycle events for integrators: ``call.dialed``, ``.ringing``, ``.answered``, ``.ended``.

Published on the topic exchange ``callhook.events`` (routing key ``call.<event>``) as JSON, with publisher
confirms, for incoming and outgoing calls alike. A notification must never hold a call up: each publish is
bounded, and one that fails (broker away) is logged and counted, the call goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aio_pika
import msgspec
from aio_pika.abc import AbstractChannel, AbstractExchange

from ingress import contract
from worker.amqp import AmqpLink, Session, publish
from worker.apps.api import CallInfo
from worker.errors import TransientError
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class MediaQuality(msgspec.Struct, frozen=True, kw_only=True):
    """A call's inbound audio quality, in ``call.ended`` (README, "Media quality");
    ``worker.media.quality.CallQuality.as_fields`` fills it."""

    expected: int = 0  # RTP packets the sequence numbers say were sent
    received: int = 0
    lost: int = 0  # never arrived
    late: int = 0  # arrived after their playout time, dropped
    concealed: int = 0  # frames the decoder's PLC made up
    fec: int = 0  # frames rebuilt from the next packet's in-band FEC
    jitter_ms: float = 0.0  # RFC 3550 interarrival jitter
    buffer_delay_ms: float = 0.0  # mean jitter-buffer delay
    rtt_ms: float | None = None  # from RTCP, when the phone sent receiver reports
    loss_percent: float = 0.0  # frames heard as concealment, of all frames played
    mos: float | None = None  # estimated (simplified E-model, ITU-T G.107)


class LifecycleEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The body of every ``call.*`` event (README, "Call lifecycle events")."""

    event: str  # dialed | ringing | answered | ended | rejected
    call_id: str
    direction: str
    phone_number_id: str
    user: str  # the WhatsApp user's number, "" for a username-only user (see user_id)
    timestamp: float
    user_name: str | None = None
    biz_opaque_callback_data: str | None = None
    request_id: str | None = None  # the dial request of an outgoing call
    state: str | None = None
    outcome: str | None = (
        None  # ended: completed | rejected | abandoned | declined | unanswered | failed | ...
    )
    reason: str | None = None
    error_code: int | None = None  # Meta's code from the terminate webhook or the refused request
    duration_seconds: float | None = None
    media: MediaQuality | None = None  # ended: the caller's audio as the worker received it
    # handoff (docs/handoff.md): transferred | queued | agent_answered | abandoned_in_queue
    queue: str | None = None
    agent: str | None = None
    wait_seconds: float | None = None
    user_id: str | None = None  # the user's business-scoped id (BSUID), when known
    caller_id: str | None = None  # who called: a number, else a user id (the business number when outgoing)
    username: str | None = None
    error_name: str | None = None  # error_code's name and what to do: retry | stop | alert | fix
    error_action: str | None = None  # (worker/meta_codes.py)
    recording: bool | None = None  # Meta records / transcribes this call (opted in on accept or connect)
    transcription: bool | None = None


_encoder = msgspec.json.Encoder()


class LifecyclePublisher:
    def __init__(self, link: AmqpLink, metrics: WorkerMetrics, *, timeout_seconds: float = 5.0) -> None:
        self._link = link
        self._metrics = metrics
        self._timeout_seconds = timeout_seconds
        self._exchange: tuple[Session, AbstractChannel, AbstractExchange] | None = None
        self._lock = asyncio.Lock()

    async def call_event(self, name: str, info: CallInfo, **fields: object) -> None:
        body = LifecycleEvent(
            event=name,
            call_id=info.call_id,
            direction=info.direction,
            phone_number_id=info.phone_number_id,
            user=info.user_number,
            user_name=info.user_name,
            user_id=info.user_id,
            username=info.username,
            caller_id=info.caller_id or None,
            recording=info.capture.recording if info.capture is not None else None,
            transcription=info.capture.transcription if info.capture is not None else None,
            biz_opaque_callback_data=info.biz_opaque_callback_data,
            timestamp=round(time.time(), 3),
            **{k: v for k, v in fields.items() if v is not None},  # type: ignore[arg-type]
        )
        await self.publish(f"call.{name}", _encoder.encode(body), request_id=body.request_id)

    async def publish(self, routing_key: str, body: bytes, *, request_id: str | None = None) -> None:
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={contract.HEADER_REQUEST_ID: request_id} if request_id else None,
        )
        try:
            async with asyncio.timeout(self._timeout_seconds):
                exchange = await self._events_exchange()
                await publish(exchange, message, routing_key, confirm_timeout_seconds=self._timeout_seconds)
        except (TransientError, TimeoutError) as exc:
            log.warning(
                "lifecycle event not published", extra={"routing_key": routing_key, "error": str(exc)}
            )
            self._metrics.lifecycle_events.labels(event="unpublished").inc()
            return
        self._metrics.lifecycle_events.labels(event=routing_key).inc()

    async def _events_exchange(self) -> AbstractExchange:
        async with self._lock:
            cached = self._exchange
            if cached is not None and not cached[0].is_lost and not cached[1].is_closed:
                return cached[2]
            session = await self._link.wait_session()
            channel = await session.channel(critical=False)
            exchange = await channel.get_exchange(contract.EVENTS_EXCHANGE, ensure=False)
            self._exchange = (session, channel, exchange)
            return exchange
