"""The router stage: raw webhooks in, one small normalized event per call (and per non-call item) out.

Consumes ``callhook.webhooks``; per webhook: decode (pure, :func:`worker.decode.decode_webhook`), publish
every event concurrently with publisher confirms, then ack. The webhook is acked only once every publish of it
was confirmed, so a crash or a broker hiccup in between means a redelivery (at-least-once; owners drop
duplicates), never a loss.

- per-call events (connect, terminate, status) -> ``callhook.calls``, routing key = call id; whoever owns
  the call has its mailbox bound there, else the alternate exchange parks the event in
  ``callhook.calls.unclaimed`` (see ``worker/ownership.py``);
- everything else -> topic exchange ``callhook.events``: a Passthrough under its change's ``field``, a
  CallNotice as ``call.<event>``, a PermissionReply as ``call.permission_reply``; the body is the event's
  msgspec JSON (a Passthrough's ``value`` is Meta's exact bytes inside it);
- Skipped items are counted, nothing is published for them.

Failure policy: a webhook the decoder calls poison (or that makes the decoder fail at all: the same bytes
would fail again) is published, bytes unchanged, to ``callhook.dead`` with the reason, then acked. A publish
that fails is transient: the webhook is nacked with requeue, and the quorum queue's delivery limit
dead-letters one that keeps failing. Nothing a webhook contains can stop the router.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, DeliveryMode

from ingress import contract
from worker.amqp import AMQP_FAILURES, AmqpLink, Session, header_float, publish, settle
from worker.decode import decode_webhook
from worker.errors import PoisonWebhook, TransientError
from worker.events import (
    AccountAlert,
    CallConnect,
    CallMediaReady,
    CallNotice,
    CallStatus,
    CallTerminate,
    Event,
    Passthrough,
    PermissionReply,
    Skipped,
    call_event_encoder,
)
from worker.metrics import WorkerMetrics
from worker.supervised import Supervised

log = logging.getLogger(__name__)

Decoder = Callable[[bytes], list[Event]]

# A routing key (and a mailbox queue name, 14 characters longer) is an AMQP shortstr: at most 255 bytes.
MAX_CALL_ID_BYTES = 255 - len(contract.MAILBOX_PREFIX)
DEAD_SOURCE = "router"


@dataclass(frozen=True, slots=True)
class RouterSettings:
    # Webhooks in flight per router. Each one waits a broker round trip for its confirms, so throughput is
    # roughly prefetch / confirm latency; 100 keeps a 2-core box busy without hoarding messages.
    prefetch: int = 100
    publish_timeout_seconds: float = 10.0
    session_timeout_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class RouterStatistics:
    connected: bool
    consuming: bool
    in_flight: int
    routed: int  # webhooks whose events were all confirmed, then acked
    events: int  # events published
    poison: int
    requeued: int


class Router(Supervised):
    """``async with Router(link, metrics) as router:`` consumes webhooks until closed, across reconnects."""

    def __init__(
        self,
        link: AmqpLink,
        metrics: WorkerMetrics,
        settings: RouterSettings | None = None,
        *,
        decode: Decoder = decode_webhook,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("router")
        self._link = link
        self._metrics = metrics
        self._settings = settings or RouterSettings()
        self._decode = decode
        self._clock = clock
        self._consuming = asyncio.Event()
        self._session: Session | None = None
        self._in_flight = 0
        self._counts = {"routed": 0, "events": 0, "poison": 0, "requeued": 0}

    def close(self) -> None:
        """Stop consuming (idempotent). Unacked webhooks go back to the queue with the channel."""
        super().close()

    async def wait_consuming(self) -> None:
        """Until the router consumes webhooks (bound it with asyncio.timeout)."""
        await self._consuming.wait()

    def statistics(self) -> RouterStatistics:
        return RouterStatistics(
            connected=self._session is not None and not self._session.is_lost,
            consuming=self._consuming.is_set(),
            in_flight=self._in_flight,
            **self._counts,
        )

    async def _run(self) -> None:
        session: Session | None = None
        # Not ``while True``: a TaskGroup that sees a child fail while it is being cancelled raises the
        # child's error instead of CancelledError, and the handler below must not turn that into a retry.
        while not self._closing:
            session = await self._link.wait_session(after=session)
            self._session = session
            try:
                async with asyncio.TaskGroup() as tg:
                    await self._serve(session, tg)
            except* _SessionOver:
                pass
            except* TransientError as group:
                log.warning("router session failed", extra={"error": str(group.exceptions[0])})
                session.abort(f"router: {group.exceptions[0]}")
            finally:
                self._consuming.clear()

    async def _serve(self, session: Session, tg: asyncio.TaskGroup) -> None:
        channel = await session.channel(prefetch=self._settings.prefetch)
        out = _Outlets(
            calls=await channel.get_exchange(contract.CALLS_EXCHANGE, ensure=False),
            events=await channel.get_exchange(contract.EVENTS_EXCHANGE, ensure=False),
            dead=await channel.get_exchange(contract.DEAD_EXCHANGE, ensure=False),
            media=channel.default_exchange,
        )
        queue = await channel.get_queue(contract.WEBHOOKS_QUEUE, ensure=False)

        async def on_message(message: AbstractIncomingMessage) -> None:
            if not session.is_lost:
                tg.create_task(self._handle(message, out))  # bounded by the prefetch

        try:
            async with asyncio.timeout(session.rpc_timeout_seconds):
                await queue.consume(on_message)
        except AMQP_FAILURES as exc:
            raise TransientError(f"cannot consume {contract.WEBHOOKS_QUEUE}: {exc!r}") from exc
        self._consuming.set()
        await session.wait_lost()
        # Leaving the TaskGroup cancels in-flight handlers; their webhooks are redelivered.
        await session.close_channel(channel)
        raise _SessionOver

    async def _handle(self, message: AbstractIncomingMessage, out: _Outlets) -> None:
        self._in_flight += 1
        try:
            await self._route(message, out)
        finally:
            self._in_flight -= 1

    async def _route(self, message: AbstractIncomingMessage, out: _Outlets) -> None:
        headers = dict(message.headers or {})
        received_at = header_float(headers, contract.HEADER_RECEIVED_AT)
        if received_at is not None:
            self._metrics.webhook_lag.observe(max(0.0, self._clock() - received_at))
        try:
            events = self._decode(message.body)
        except PoisonWebhook as exc:
            await self._dead_letter(message, out, exc.reason)
            return
        except Exception as exc:  # a decoder bug: these bytes would fail again, so keep them for a human
            log.exception("decoder failed on a webhook", extra={"message_id": message.message_id})
            await self._dead_letter(message, out, f"decoder error: {type(exc).__name__}")
            return
        publishes = [
            p for p in (self._outgoing(event, out, received_at) for event in events) if p is not None
        ]
        timeout = self._settings.publish_timeout_seconds
        results = await asyncio.gather(
            *(publish(ex, msg, key, confirm_timeout_seconds=timeout) for ex, msg, key in publishes),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if not isinstance(failure, TransientError):
                raise failure
        if failures:
            log.warning(
                "webhook requeued", extra={"error": str(failures[0]), "message_id": message.message_id}
            )
            await self._requeue(message)
            return
        for event in events:
            self._count_event(event)
        self._metrics.router_webhooks.labels(outcome="ok").inc()
        self._counts["routed"] += 1
        self._counts["events"] += len(publishes)
        await settle(message, ack=True)

    def _outgoing(
        self, event: Event, out: _Outlets, received_at: float | None
    ) -> tuple[AbstractExchange, aio_pika.Message, str] | None:
        match event:
            case CallConnect() | CallTerminate() | CallStatus():
                if not _routable(event.call_id):
                    return None
                return out.calls, _message(event, received_at), event.call_id
            case Passthrough():
                return out.events, _message(event, received_at), event.field
            case CallNotice():
                return out.events, _message(event, received_at), f"call.{event.event}"
            case PermissionReply():
                return out.events, _message(event, received_at), "call.permission_reply"
            case CallMediaReady():  # judged once, after the call, by whoever consumes the media queue
                return out.media, _message(event, received_at), contract.MEDIA_QUEUE
            case AccountAlert():
                return out.events, _message(event, received_at), f"account.{event.kind}"
            case Skipped():
                return None

    def _count_event(self, event: Event) -> None:
        match event:
            case AccountAlert(kind="restriction"):
                label = event.type if _RESTRICTION_LABEL.fullmatch(event.type) else "OTHER"
                self._metrics.account_restrictions.labels(restriction_type=label).inc()
                log.warning("account restricted by Meta", extra={"restriction_type": event.type,
                                                                 "expiration": event.expiration})  # fmt: skip
                self._metrics.router_events.labels(kind="account_alert").inc()
            case Skipped():
                self._metrics.router_skipped.labels(kind=event.kind).inc()
            case CallConnect() | CallTerminate() | CallStatus() if not _routable(event.call_id):
                self._metrics.router_skipped.labels(kind="call_id_too_long").inc()
            case _:
                self._metrics.router_events.labels(kind=_KINDS[type(event)]).inc()

    async def _dead_letter(self, message: AbstractIncomingMessage, out: _Outlets, reason: str) -> None:
        headers: dict[str, Any] = dict(message.headers or {})
        headers[contract.HEADER_DEAD_REASON] = reason
        headers[contract.HEADER_DEAD_SOURCE] = DEAD_SOURCE
        dead = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            message_id=message.message_id,
            timestamp=message.timestamp,
            delivery_mode=DeliveryMode.PERSISTENT,
        )
        try:
            timeout = self._settings.publish_timeout_seconds
            await publish(out.dead, dead, "", confirm_timeout_seconds=timeout)
        except TransientError as exc:
            log.warning("dead-lettering failed, webhook requeued", extra={"error": str(exc)})
            await self._requeue(message)
            return
        log.warning(
            "poison webhook dead-lettered", extra={"reason": reason, "message_id": message.message_id}
        )
        self._metrics.router_webhooks.labels(outcome="poison").inc()
        self._metrics.dead_letters.labels(source=DEAD_SOURCE, reason=reason_label(reason)).inc()
        self._counts["poison"] += 1
        await settle(message, ack=True)

    async def _requeue(self, message: AbstractIncomingMessage) -> None:
        self._metrics.router_webhooks.labels(outcome="requeued").inc()
        self._counts["requeued"] += 1
        await settle(message, ack=False, requeue=True)


@dataclass(frozen=True, slots=True)
class _Outlets:
    calls: AbstractExchange
    events: AbstractExchange
    dead: AbstractExchange
    media: AbstractExchange  # the default exchange (routing key = the media queue)


class _SessionOver(Exception):
    """Raised inside a session's TaskGroup to end it (cancels the in-flight handlers)."""


_KINDS: dict[type, str] = {
    CallConnect: "connect",
    CallTerminate: "terminate",
    CallStatus: "status",
    CallNotice: "notice",
    CallMediaReady: "media_ready",
    AccountAlert: "account_alert",
    PermissionReply: "permission_reply",
    Passthrough: "passthrough",
}


def _message(event: Event, received_at: float | None) -> aio_pika.Message:
    headers: dict[str, Any] = {}
    if received_at is not None:
        # A string, as the ingress sends it: pamqp encodes a Python float as a 32-bit float, which at today's
        # unix time has a resolution of 128 s.
        headers[contract.HEADER_RECEIVED_AT] = f"{received_at:.6f}"
    return aio_pika.Message(
        call_event_encoder.encode(event),
        headers=headers,
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT,
    )


_RESTRICTION_LABEL = re.compile(r"[A-Z_]{1,64}")


def _routable(call_id: str) -> bool:
    return 0 < len(call_id.encode()) <= MAX_CALL_ID_BYTES


def reason_label(reason: str) -> str:
    """A low-cardinality metric label for a dead-letter reason (the full reason travels in the header)."""
    head = reason.split(":", 1)[0].lower()
    return re.sub(r"[^a-z]+", "_", head).strip("_")[:32] or "other"
