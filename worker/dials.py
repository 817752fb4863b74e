"""Taking outgoing-call commands (``callhook.dials``) only while this worker has room for another call.

A dial holds one unit of capacity (an :class:`worker.ownership.Reservation`) from the moment it is taken until
its call ends. The consumer runs only while there is room: it is cancelled when a dial finds the worker full
(the dial goes back to the queue for another worker) and started again when a call ends here.

The dial message is acked just before ``connect`` is sent, not when it is taken: a worker that dies before
that point leaves the dial in the queue for another worker, and one that dies after it can never cause a
second call to the same person (``connect`` is never repeated when its outcome is unknown).

Defence in depth (docs/security.md): a dial is checked again here as the ingress checks it (recipient
pattern, ASCII-digit ids for Graph URL paths, callback data without control characters); one that fails is
dead-lettered. A dial sent with an ``Idempotency-Key`` (header ``x-callhook-idempotent``) is started only by
whoever first takes its marker queue ``callhook.dialed.<request id>`` (:mod:`ingress.idempotency`); a second
copy (a client's retry, two ingress replicas racing) is acked and dropped: one key, one call. The marker is
taken when the dial is taken, so a worker that dies between taking it and ``connect`` loses that dial (the
integrator sees no ``call.*`` event for it and dials again with a new key) rather than risking a second call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aio_pika
import aiormq
import msgspec
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from callhook.env import APP_NAME
from ingress import contract, idempotency
from ingress.commands import (
    GRAPH_ID,
    MAX_CALLBACK_DATA,
    has_control_characters,
    is_recipient,
    is_user_id,
    utf8_length,
)
from worker.amqp import AMQP_FAILURES, AmqpLink, Session, SessionServer, settle
from worker.errors import TransientError
from worker.events import DialRequest, dial_decoder
from worker.metrics import WorkerMetrics
from worker.ownership import Ownership, Reservation

log = logging.getLogger(__name__)

Ack = Callable[[], Awaitable[None]]
StartDial = Callable[[DialRequest, Reservation, Ack], None]


class DialIntake(SessionServer):
    """``async with DialIntake(link, ownership, start_dial, metrics)``: follows the ownership's room and
    draining (:meth:`Ownership.watch_room`), so it takes dials exactly while a call could be owned."""

    def __init__(
        self, link: AmqpLink, ownership: Ownership, start_dial: StartDial, metrics: WorkerMetrics
    ) -> None:
        super().__init__("dial-intake", link, "dial intake")
        self._ownership = ownership
        self._start_dial = start_dial
        self._metrics = metrics
        self._room = asyncio.Event()
        self._full = asyncio.Event()
        self._markers: AbstractChannel | None = None  # confirm channel for the idempotency markers
        self._marker_timeout = 5.0
        self._session: Session | None = None

    def _starting(self) -> None:
        self._ownership.watch_room(self.room_changed)
        self.room_changed()

    def room_changed(self) -> None:
        """Re-check capacity (the ownership calls this on every change of room or draining)."""
        if self._ownership.room > 0 and not self._ownership.draining:
            self._full.clear()
            self._room.set()
        else:
            self._room.clear()
            self._full.set()

    async def _serve(self, session: Session) -> None:
        channel = await session.channel(prefetch=1)
        self._markers = await session.channel(critical=False)
        self._session = session
        self._marker_timeout = session.rpc_timeout_seconds
        try:
            queue = await channel.get_queue(contract.DIALS_QUEUE, ensure=False)
            lost = asyncio.ensure_future(session.wait_lost())
            try:
                while not lost.done():
                    await _first(self._room.wait(), lost)
                    if lost.done():
                        return
                    tag = await queue.consume(self._on_message)
                    await _first(self._full.wait(), lost)
                    if not lost.done():
                        await queue.cancel(tag)
            finally:
                lost.cancel()
        except AMQP_FAILURES as exc:
            raise TransientError(f"dials consumer failed: {exc!r}") from exc
        finally:
            markers, self._markers = self._markers, None
            if markers is not None:
                await session.close_channel(markers)
            await session.close_channel(channel)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            request = dial_decoder.decode(message.body)
        except msgspec.DecodeError as exc:
            log.warning("undecodable dial dead-lettered", extra={"error": str(exc)[:200]})
            self._metrics.dead_letters.labels(source="dials", reason="undecodable").inc()
            await settle(message, ack=False, requeue=False)  # the queue dead-letters it to callhook.dead
            return
        problem = dial_problem(request)
        if problem is not None:
            log.warning(
                "invalid dial dead-lettered", extra={"request_id": request.request_id[:80], "error": problem}
            )
            self._metrics.dead_letters.labels(source="dials", reason="invalid").inc()
            await settle(message, ack=False, requeue=False)
            return
        if (message.headers or {}).get(idempotency.HEADER_IDEMPOTENT) is not None:
            first = await self._take_marker(request.request_id, message)
            if first is None:  # the broker did not answer: the dial goes back to the queue
                await settle(message, ack=False, requeue=True)
                return
            if not first:
                log.info("duplicate dial dropped", extra={"request_id": request.request_id})
                self._metrics.dials.labels(outcome="duplicate").inc()
                await settle(message, ack=True)
                return
        reservation = self._ownership.reserve()
        if reservation is None:  # full or draining: another worker, or us once room frees
            await settle(message, ack=False, requeue=True)
            self.room_changed()
            return
        acked = False

        async def ack() -> None:
            nonlocal acked
            if not acked:
                acked = True
                await settle(message, ack=True)

        self._start_dial(request, reservation, ack)
        self.room_changed()

    async def _take_marker(self, request_id: str, message: AbstractIncomingMessage) -> bool | None:
        """True if this copy of the dial is the first to start, False for a duplicate, None if unknown."""
        channel = self._markers
        if channel is None:
            return None
        name = idempotency.dialed_queue(request_id)
        ttl = _marker_ttl(message.headers or {})
        try:
            async with asyncio.timeout(self._marker_timeout):
                await channel.declare_queue(
                    name, durable=True, arguments=dict(idempotency.marker_arguments(ttl))
                )
                await channel.default_exchange.publish(
                    aio_pika.Message(request_id.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    name,
                    mandatory=True,
                )
        except aiormq.exceptions.DeliveryError:
            return False  # nacked: the marker queue already holds this dial's marker
        except AMQP_FAILURES as exc:
            log.warning("dial marker not taken", extra={"error": repr(exc)[:200]})
            if channel.is_closed and self._session is not None:
                self._session.abort("dial marker channel closed")  # start over on a fresh connection
            return None
        return True


def _marker_ttl(headers: dict[str, Any]) -> int:
    value = headers.get(idempotency.HEADER_TTL)
    if isinstance(value, int) and not isinstance(value, bool) and 60 <= value <= 7 * 86_400:
        return value
    return idempotency.DEFAULT_TTL_SECONDS


def dial_problem(request: DialRequest) -> str | None:
    """Why a dial from the queue must not be placed (the ingress checks the same), or None."""
    if not request.to and not request.recipient:
        return "the dial names no user: 'to' or 'recipient' is required"
    if request.to and not is_recipient(request.to):
        return "'to' is neither a phone number nor a WhatsApp user id"
    if request.recipient and not is_user_id(request.recipient):
        return "'recipient' is not a WhatsApp user id"
    if not GRAPH_ID.fullmatch(request.phone_number_id):
        return "'phone_number_id' is not ASCII digits"
    data = request.biz_opaque_callback_data
    if data is not None:
        size = utf8_length(data)
        if size is None or size > MAX_CALLBACK_DATA or has_control_characters(data):
            return "'biz_opaque_callback_data' is too long or has control characters"
    if request.app is not None and not APP_NAME.fullmatch(request.app):
        return "'app' is not an app name"
    return None


async def _first(wait: Coroutine[Any, Any, Any], lost: asyncio.Future[None]) -> None:
    """Until ``wait`` completes or the session is lost (``lost`` itself is left running)."""
    task: asyncio.Future[Any] = asyncio.ensure_future(wait)
    try:
        await asyncio.wait([task, lost], return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
