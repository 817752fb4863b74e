"""Call ownership over RabbitMQ: one call lives in one worker process, and every later event reaches it.

Theory of operation (docs/routing.md has the why):

- **A claim is an exclusive queue.** Claiming call ``X`` declares the exclusive classic queue
  ``callhook.call.X`` bound to ``callhook.calls`` with key ``X``, and consumes it as X's mailbox. Another
  connection declaring it gets RESOURCE_LOCKED (someone owns X), and the broker deletes the queue when its
  owner's connection dies, so a dead worker cannot hold a call. A failed declare closes its channel, so claim
  attempts run on a small pool of throw-away channels, never on a channel that consumes anything.
- **Unowned events** reach ``callhook.calls.unclaimed`` through the alternate exchange. A worker consumes it
  only while it has room (``capacity``): the consumer is cancelled when the last slot is taken and started
  again when one frees, with a prefetch no larger than the room. The pure :func:`judge` decides per event:

  - incoming connect: fresh: claim it and hand it to ``on_incoming`` (claim refused: a duplicate, dropped);
    older than ``answer_deadline_seconds``: claim it as a tombstone and ``on_stale`` (reject: Meta may still
    ring); older than ``meta_answer_window_seconds``: dropped.
  - terminate: claim the id as a *tombstone*, so a late or retried connect is never answered; refused: the
    call has an owner now, so publish the terminate again and it gets there.
  - status, outgoing connect (the answer), hangup: not owned *yet* (an outgoing call's events can beat the
    connect response): delayed retry through ``callhook.calls.retry`` up to ``max_attempts``, then
    ``on_orphan``.

- ``callhook.calls.expired`` (unclaimed events nobody had room for in time) is consumed always: an incoming
  connect there is claimed as a tombstone and handed to ``on_overflow`` (reject at once); other events are
  judged as above (none of them needs room).
- **Tombstones** are claims that hold no capacity; their mailbox drops (and counts) whatever arrives; they
  are deleted after ``tombstone_seconds``. A call's claim turns into one on :meth:`Claim.release`.
- **A lost connection loses every claim**: each :class:`Claim` iterator raises :class:`ClaimLost` and
  :meth:`Claim.wait_lost` returns; the link reconnects and consuming resumes on the new connection.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol, Self

import aio_pika
import msgspec
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, DeliveryMode
from aiormq.exceptions import ChannelLockedResource, ChannelPreconditionFailed

from ingress import contract
from worker.amqp import AMQP_FAILURES, AmqpLink, Session, header_float, header_int, publish, settle
from worker.errors import TransientError
from worker.events import CallConnect, CallEvent, CallStatus, CallTerminate, HangupRequest, call_event_decoder
from worker.metrics import WorkerMetrics
from worker.supervised import Supervised

log = logging.getLogger(__name__)

DEAD_SOURCE = "ownership"
# Headers RabbitMQ adds on dead-lettering/requeueing, and the CC used for retries: not copied on republish.
_BROKER_HEADERS = frozenset(
    {"x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
     "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-delivery-count", "CC", "BCC"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class OwnershipSettings:
    capacity: int  # CALLHOOK_MAX_CALLS
    answer_deadline_seconds: float = 30.0
    # Meta rings for 30-60 s: a connect older than this is dead on Meta's side too: not even rejected.
    meta_answer_window_seconds: float = 60.0
    tombstone_seconds: float = 120.0
    max_attempts: int = contract.RETRY_MAX_ATTEMPTS
    unclaimed_prefetch: int = 8
    expired_prefetch: int = 8
    mailbox_prefetch: int = 32
    claim_channels: int = 4
    rpc_timeout_seconds: float = 10.0


class ClaimLost(TransientError):
    """The claim's connection died: the mailbox queue is gone and another worker may claim the call."""


class CallHandler(Protocol):
    """What the worker's service does with calls. Each method should return promptly (spawn long work): the
    event that caused it is acked when it returns, and it holds one of the intake's few prefetch slots."""

    async def on_incoming(self, claim: Claim, event: CallConnect, received_at: float) -> None:
        """A fresh incoming call is now owned through ``claim``: answer it. ``received_at`` is the ingress's
        receipt time of the connect (unix seconds, 0.0 if unknown)."""

    async def on_stale(self, event: CallConnect) -> None:
        """An incoming call too old to answer in time, which Meta may still ring: reject it (Graph API)."""

    async def on_overflow(self, event: CallConnect) -> None:
        """An incoming call no worker had room for in time: reject it (Graph API)."""

    async def on_orphan(self, event: CallEvent) -> None:
        """An event no owner claimed after its retries (e.g. an outgoing call's answer: terminate it)."""


class Verdict(enum.Enum):
    ANSWER = "answer"
    REJECT_STALE = "reject_stale"
    DROP_STALE = "drop_stale"
    OVERFLOW = "overflow"
    TOMBSTONE = "tombstone"
    RETRY = "retry"
    ORPHAN = "orphan"


Source = Literal["unclaimed", "expired"]


def judge(
    event: CallEvent, *, source: Source, now: float, attempt: int, settings: OwnershipSettings
) -> Verdict:
    """What to do with an event of a call this worker does not own (pure; see the module docstring)."""
    if isinstance(event, CallConnect) and event.direction == "incoming":
        age = now - event.timestamp if event.timestamp > 0 else 0.0
        if age > settings.meta_answer_window_seconds:
            return Verdict.DROP_STALE
        if source == "expired":
            return Verdict.OVERFLOW
        return Verdict.REJECT_STALE if age > settings.answer_deadline_seconds else Verdict.ANSWER
    if isinstance(event, CallTerminate):
        return Verdict.TOMBSTONE
    return Verdict.RETRY if attempt < settings.max_attempts else Verdict.ORPHAN


def event_kind(event: CallEvent) -> str:
    """A metric label for an event type."""
    match event:
        case CallConnect():
            return f"connect_{event.direction}"
        case CallTerminate():
            return "terminate"
        case CallStatus():
            return "status"
        case HangupRequest():
            return "hangup"
        case _:  # TransferRequestEvent (worker/handoff)
            return "transfer"


class MailboxItem:
    """One event from a call's mailbox. :meth:`ack` it once applied to the call's state: the mailbox delivers
    at most ``mailbox_prefetch`` unacked items. Acking after the claim was lost or released does nothing."""

    __slots__ = ("_message", "attempt", "event", "received_at")

    def __init__(self, event: CallEvent, received_at: float, attempt: int, message: AbstractIncomingMessage):
        self.event = event
        self.received_at = received_at  # ingress receipt of the webhook, unix seconds (0.0 if unknown)
        self.attempt = attempt  # delayed retries it took to get here
        self._message = message

    async def ack(self) -> None:
        await settle(self._message, ack=True)


class Reservation:
    """One unit of capacity held for a call whose id is not known yet (a dial before ``connect`` returned)."""

    def __init__(self, owner: Ownership) -> None:
        self._owner: Ownership | None = owner

    def release(self) -> None:
        """Give the unit back (idempotent). :meth:`Ownership.claim` takes it over instead when given it."""
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._adjust(-1)

    def _transfer(self) -> bool:
        held, self._owner = self._owner is not None, None
        return held


class Claim:
    """This worker's ownership of one call (or a tombstone) and the call's mailbox.

    ``async for item in claim:`` yields :class:`MailboxItem` in arrival order; it ends after :meth:`release`
    and raises :class:`ClaimLost` when the connection died. A connect after the first one (Meta's retries) is
    dropped here and counted as a duplicate, so the consumer sees each call's connect at most once.
    """

    def __init__(
        self, owner: Ownership, live: _Live, call_id: str, kind: Literal["call", "tombstone"]
    ) -> None:
        self.call_id = call_id
        self._owner = owner
        self._live = live
        self._kind = kind
        self._holds_slot = kind == "call"
        self._seen_connect = False
        self._items: deque[MailboxItem] = deque()
        self._wakeup = asyncio.Event()
        self._lost = asyncio.Event()
        self._released = False
        self._release_lock = asyncio.Lock()

    @property
    def queue_name(self) -> str:
        return contract.mailbox_queue(self.call_id)

    @property
    def is_tombstone(self) -> bool:
        return self._kind == "tombstone"

    @property
    def is_lost(self) -> bool:
        return self._lost.is_set()

    @property
    def is_released(self) -> bool:
        return self._released

    async def wait_lost(self) -> None:
        await self._lost.wait()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> MailboxItem:
        while True:
            if self._lost.is_set():
                raise ClaimLost(f"claim on {self.call_id} lost with its connection")
            if self._items:
                return self._items.popleft()
            if self._released or self._kind == "tombstone":
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    async def release(self, *, tombstone: bool = True) -> None:
        """End the call's ownership (idempotent) and free its capacity at once. With ``tombstone`` (the
        default, for a call that ended) the mailbox stays for ``tombstone_seconds`` and drops what arrives, so
        a retried connect is never answered; without it the queue is deleted now."""
        async with self._release_lock:
            if self._released:
                return
            self._released = True
            self._wakeup.set()
            self._free_slot()
            if self._lost.is_set():
                return
            pending = list(self._items)
            self._items.clear()
            for item in pending:
                await item.ack()
            if tombstone:
                self._kind = "tombstone"
                self._owner._bury_later(self)
            else:
                await self._owner._delete(self)

    # -- called by Ownership --

    def _expect_connect(self) -> None:
        self._seen_connect = True

    def _free_slot(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self._owner._adjust(-1)

    def _lose(self) -> None:
        self._lost.set()
        self._wakeup.set()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        metrics = self._owner.metrics
        try:
            event = call_event_decoder.decode(message.body)
        except msgspec.DecodeError as exc:
            await self._owner._dead_letter(self._live, message, f"undecodable call event: {exc}"[:200])
            return
        if self._kind == "tombstone":
            metrics.dropped_events.labels(reason="tombstoned").inc()
            await settle(message, ack=True)
            return
        if self._released:  # being deleted
            await settle(message, ack=True)
            return
        if isinstance(event, CallConnect):
            if self._seen_connect:
                metrics.dropped_events.labels(reason="duplicate").inc()
                await settle(message, ack=True)
                return
            self._seen_connect = True
        headers = message.headers or {}
        received_at = header_float(headers, contract.HEADER_RECEIVED_AT) or 0.0
        attempt = header_int(headers, contract.HEADER_ATTEMPT)
        self._items.append(MailboxItem(event, received_at, attempt, message))
        self._wakeup.set()


@dataclass(frozen=True, slots=True)
class OwnershipStatistics:
    connected: bool
    consuming_unclaimed: bool
    capacity: int
    in_use: int  # call claims not yet released (lost ones included) + reservations
    calls: int  # live call claims on the current connection
    tombstones: int
    draining: bool


class _Live:
    """The AMQP resources of Ownership on one connection (a :class:`worker.amqp.Session`)."""

    def __init__(self, session: Session, tg: asyncio.TaskGroup) -> None:
        self.session = session
        self.tg = tg
        self.claims: dict[str, Claim] = {}
        self.claiming: set[str] = set()
        self.claim_channels: asyncio.Queue[AbstractChannel] = asyncio.Queue()
        self.mailbox: AbstractChannel
        self.intake: AbstractChannel

    async def open(self, settings: OwnershipSettings) -> None:
        self.mailbox = await self.session.channel(prefetch=settings.mailbox_prefetch)
        self.intake = await self.session.channel(prefetch=settings.expired_prefetch)
        for _ in range(settings.claim_channels):
            self.claim_channels.put_nowait(await self.session.channel(critical=False))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` under this session's TaskGroup; dropped when the session is over (its deliveries are
        redelivered by the broker, its timers are moot)."""
        if self.session.is_lost:
            coro.close()
            return
        try:
            self.tg.create_task(coro)
        except RuntimeError:  # the TaskGroup is shutting down (close())
            coro.close()


class Ownership(Supervised):
    """Claims calls for this worker. ``async with Ownership(link, handler, metrics, settings) as ownership:``

    Consumes ``callhook.calls.unclaimed`` (while there is room) and ``callhook.calls.expired`` (always), and
    offers :meth:`claim` for outgoing calls. Sets the ``calls_active`` and ``calls_capacity`` gauges.
    """

    def __init__(
        self,
        link: AmqpLink,
        handler: CallHandler,
        metrics: WorkerMetrics,
        settings: OwnershipSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("ownership")
        self.metrics = metrics
        self._link = link
        self._handler = handler
        self._settings = settings
        self._clock = clock
        self._live: _Live | None = None
        self._ready = asyncio.Event()
        self._in_use = 0
        self._draining = False
        self._open_gate = asyncio.Event()  # room and not draining: consume unclaimed
        self._shut_gate = asyncio.Event()
        self._consuming_unclaimed = False
        self._room_listeners: list[Callable[[], None]] = []
        metrics.calls_capacity.set(settings.capacity)
        self._adjust(0)

    def close(self) -> None:
        """Stop consuming (idempotent). Claims still held become lost when the link closes the connection."""
        super().close()

    async def wait_ready(self) -> None:
        """Until consumers run on a connection (bound it with asyncio.timeout)."""
        await self._ready.wait()

    @property
    def room(self) -> int:
        return self._settings.capacity - self._in_use

    def watch_room(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (synchronously, keep it short) after every change of :attr:`room` or of
        draining: what another capacity-gated consumer (dials) needs to start or stop."""
        self._room_listeners.append(listener)

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        """Take no more unclaimed work, for good (SIGTERM). Expired calls are still rejected; claims stay."""
        self._draining = True
        self._adjust(0)

    def reserve(self) -> Reservation | None:
        """Hold one unit of capacity for a dial; None when full or draining."""
        if self.room <= 0 or self._draining:
            return None
        self._adjust(+1)
        return Reservation(self)

    async def claim(self, call_id: str, *, reservation: Reservation | None = None) -> Claim | None:
        """Own ``call_id`` (an outgoing call, right after ``connect`` returned its id): events that arrived
        before are in the retry loop and reach the new mailbox. None if it is owned (or tombstoned) elsewhere
        or here. Takes over ``reservation``'s unit, else takes one even beyond capacity. Raises
        :class:`TransientError` when the broker cannot be reached within ``rpc_timeout_seconds``."""
        try:
            async with asyncio.timeout(self._settings.rpc_timeout_seconds):
                live = await self._wait_live()
        except TimeoutError as exc:
            raise TransientError("no broker connection to claim a call on") from exc
        if reservation is None or not reservation._transfer():
            self._adjust(+1)
        return await self._claim_call(live, call_id)

    def statistics(self) -> OwnershipStatistics:
        live = self._live
        claims = list(live.claims.values()) if live is not None else []
        tombstones = sum(1 for c in claims if c.is_tombstone)
        return OwnershipStatistics(
            connected=live is not None and not live.session.is_lost,
            consuming_unclaimed=self._consuming_unclaimed,
            capacity=self._settings.capacity,
            in_use=self._in_use,
            calls=len(claims) - tombstones,
            tombstones=tombstones,
            draining=self._draining,
        )

    # -- capacity --

    def _adjust(self, delta: int) -> None:
        self._in_use += delta
        self.metrics.calls_active.set(self._in_use)
        if self.room > 0 and not self._draining:
            self._shut_gate.clear()
            self._open_gate.set()
        else:
            self._open_gate.clear()
            self._shut_gate.set()
        for listener in self._room_listeners:
            listener()

    def _take_slot(self) -> bool:
        if self.room <= 0 or self._draining:
            return False
        self._adjust(+1)
        return True

    # -- sessions --

    async def _wait_live(self) -> _Live:
        while self._live is None or self._live.session.is_lost or not self._ready.is_set():
            await self._link.wait_session(after=None)
            await self._ready.wait()
        return self._live

    async def _run(self) -> None:
        session: Session | None = None
        # Not ``while True``: a TaskGroup that sees a child fail while it is being cancelled raises the
        # child's error instead of CancelledError, and the handler below must not turn that into a retry.
        while not self._closing:
            session = await self._link.wait_session(after=session)
            try:
                async with asyncio.TaskGroup() as tg:
                    await self._serve(session, tg)
            except* _SessionOver:
                pass
            except* TransientError as group:
                log.warning("ownership session failed", extra={"error": str(group.exceptions[0])})
                session.abort(f"ownership: {group.exceptions[0]}")
            finally:
                self._ready.clear()
                self._consuming_unclaimed = False
                self._lose_all()

    async def _serve(self, session: Session, tg: asyncio.TaskGroup) -> None:
        live = _Live(session, tg)
        await live.open(self._settings)
        self._live = live
        expired = await live.intake.get_queue(contract.EXPIRED_QUEUE, ensure=False)
        await self._consume(live, expired, "expired")
        tg.create_task(self._unclaimed_gate(live))
        self._ready.set()
        await session.wait_lost()
        raise _SessionOver

    def _lose_all(self) -> None:
        live, self._live = self._live, None
        if live is None:
            return
        for claim in live.claims.values():
            claim._lose()
        live.claims.clear()

    async def _consume(self, live: _Live, queue: AbstractQueue, source: Source) -> str:
        async def on_message(message: AbstractIncomingMessage) -> None:
            live.spawn(self._intake(live, message, source))

        try:
            async with asyncio.timeout(live.session.rpc_timeout_seconds):
                return await queue.consume(on_message)
        except AMQP_FAILURES as exc:
            raise TransientError(f"cannot consume {queue.name}: {exc!r}") from exc

    async def _unclaimed_gate(self, live: _Live) -> None:
        """Consume ``callhook.calls.unclaimed`` exactly while there is room (event-driven, no polling)."""
        queue = await live.intake.get_queue(contract.UNCLAIMED_QUEUE, ensure=False)
        timeout = live.session.rpc_timeout_seconds
        while True:
            await self._open_gate.wait()
            try:
                # basic.qos applies to consumers started after it: a full worker cannot hoard connects.
                async with asyncio.timeout(timeout):
                    await live.intake.set_qos(
                        prefetch_count=min(self.room, self._settings.unclaimed_prefetch)
                    )
                tag = await self._consume(live, queue, "unclaimed")
                self._consuming_unclaimed = True
                await self._shut_gate.wait()
                self._consuming_unclaimed = False
                async with asyncio.timeout(timeout):
                    await queue.cancel(tag)
            except AMQP_FAILURES as exc:
                raise TransientError(f"unclaimed consumer: {exc!r}") from exc

    # -- unowned events --

    async def _intake(self, live: _Live, message: AbstractIncomingMessage, source: Source) -> None:
        try:
            event = call_event_decoder.decode(message.body)
        except msgspec.DecodeError as exc:
            await self._dead_letter(live, message, f"undecodable call event: {exc}"[:200])
            return
        headers = message.headers or {}
        attempt = header_int(headers, contract.HEADER_ATTEMPT)
        verdict = judge(event, source=source, now=self._clock(), attempt=attempt, settings=self._settings)
        try:
            ack = await self._apply(live, verdict, event, message, attempt)
        except TransientError as exc:
            log.warning("unowned event requeued", extra={"error": str(exc), "call_id": event.call_id})
            ack = False
        await settle(message, ack=ack, requeue=True)

    async def _apply(
        self, live: _Live, verdict: Verdict, event: CallEvent, message: AbstractIncomingMessage, attempt: int
    ) -> bool:
        """Carry out a verdict; False means "not now": the message goes back to the queue."""
        m = self.metrics
        match verdict:
            case Verdict.ANSWER:
                assert isinstance(event, CallConnect)
                return await self._answer(live, event, message)
            case Verdict.DROP_STALE:
                m.dropped_events.labels(reason="stale").inc()
            case Verdict.REJECT_STALE | Verdict.OVERFLOW:
                assert isinstance(event, CallConnect)
                if await self._claim(live, event.call_id, "tombstone") is None:
                    m.dropped_events.labels(reason="duplicate").inc()
                elif verdict is Verdict.OVERFLOW:
                    m.overflow.inc()
                    await self._call_handler("on_overflow", self._handler.on_overflow(event))
                else:
                    m.dropped_events.labels(reason="stale").inc()
                    await self._call_handler("on_stale", self._handler.on_stale(event))
            case Verdict.TOMBSTONE:
                if await self._claim(live, event.call_id, "tombstone") is not None:
                    return True
                # Owned (or tombstoned) by someone now: send it there, bounded like a retry.
                if attempt >= self._settings.max_attempts:
                    await self._orphan(event)
                else:
                    await self._republish(live, message, event.call_id, attempt + 1, retry=False)
            case Verdict.RETRY:
                await self._republish(live, message, event.call_id, attempt + 1, retry=True)
            case Verdict.ORPHAN:
                await self._orphan(event)
        return True

    async def _answer(self, live: _Live, event: CallConnect, message: AbstractIncomingMessage) -> bool:
        if not self._take_slot():
            return False  # the room went while this was in flight: back to the queue for someone else
        # The claim holds this connect already: a duplicate consumed before _claim_call returns is dropped.
        claim = await self._claim_call(live, event.call_id, seen_connect=True)
        if claim is None:
            self.metrics.dropped_events.labels(reason="duplicate").inc()
            return True
        received_at = header_float(message.headers or {}, contract.HEADER_RECEIVED_AT) or 0.0
        if not await self._call_handler("on_incoming", self._handler.on_incoming(claim, event, received_at)):
            await claim.release()
        return True

    async def _orphan(self, event: CallEvent) -> None:
        self.metrics.orphans.labels(kind=event_kind(event)).inc()
        await self._call_handler("on_orphan", self._handler.on_orphan(event))

    async def _call_handler(self, name: str, call: Any) -> bool:
        """Run a handler hook; its failure is the service's bug, logged here so ownership keeps running."""
        try:
            await call
        except Exception:
            log.exception("call handler failed", extra={"hook": name})
            return False
        return True

    # -- claims --

    async def _claim_call(self, live: _Live, call_id: str, *, seen_connect: bool = False) -> Claim | None:
        """Claim a call with the capacity unit the caller already took (given back if no claim holds it)."""
        claim: Claim | None = None
        try:
            claim = await self._claim(live, call_id, "call", seen_connect=seen_connect)
        finally:
            if claim is None:
                self._adjust(-1)
        return claim

    async def _claim(
        self, live: _Live, call_id: str, kind: Literal["call", "tombstone"], *, seen_connect: bool = False
    ) -> Claim | None:
        if call_id in live.claims or call_id in live.claiming:
            self.metrics.claims.labels(outcome="duplicate" if kind == "call" else "busy").inc()
            return None
        live.claiming.add(call_id)
        try:
            claim = await self._declare(live, call_id, kind, seen_connect=seen_connect)
        finally:
            live.claiming.discard(call_id)
        outcome = (
            ("claimed" if kind == "call" else "tombstone")
            if claim
            else ("duplicate" if kind == "call" else "busy")
        )
        self.metrics.claims.labels(outcome=outcome).inc()
        if claim is not None and kind == "tombstone":
            self._bury_later(claim)
        return claim

    async def _declare(
        self, live: _Live, call_id: str, kind: Literal["call", "tombstone"], *, seen_connect: bool = False
    ) -> Claim | None:
        timeout = live.session.rpc_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                channel = await live.claim_channels.get()
        except TimeoutError as exc:
            raise TransientError("no claim channel free") from exc
        try:
            async with asyncio.timeout(timeout):
                queue = await channel.declare_queue(
                    contract.mailbox_queue(call_id), exclusive=True, arguments={"x-queue-type": "classic"}
                )
        except (ChannelLockedResource, ChannelPreconditionFailed) as exc:
            if isinstance(exc, ChannelPreconditionFailed):
                log.warning("mailbox queue exists with other arguments", extra={"call_id": call_id})
            await self._replace_claim_channel(live, channel)
            return None
        except AMQP_FAILURES as exc:
            await self._replace_claim_channel(live, channel)
            raise TransientError(f"claim of {call_id} failed: {exc!r}") from exc
        claim = Claim(self, live, call_id, kind)
        if seen_connect:  # before consuming: a duplicate already queued must meet the filter
            claim._expect_connect()
        live.claims[call_id] = claim
        try:
            mailbox = await live.mailbox.get_queue(queue.name, ensure=False)
            async with asyncio.timeout(timeout):
                await asyncio.gather(
                    queue.bind(contract.CALLS_EXCHANGE, routing_key=call_id),
                    mailbox.consume(claim._on_message),
                )
        except AMQP_FAILURES as exc:
            live.claims.pop(call_id, None)
            claim._lose()
            raise TransientError(f"claim of {call_id} failed: {exc!r}") from exc
        finally:
            live.claim_channels.put_nowait(channel)
        return claim

    async def _replace_claim_channel(self, live: _Live, channel: AbstractChannel) -> None:
        await live.session.close_channel(channel)
        try:
            live.claim_channels.put_nowait(await live.session.channel(critical=False))
        except TransientError as exc:
            live.session.abort(f"cannot open a claim channel: {exc}")
            raise

    def _bury_later(self, claim: Claim) -> None:
        claim._live.spawn(self._bury(claim))

    async def _bury(self, claim: Claim) -> None:
        await asyncio.sleep(self._settings.tombstone_seconds)  # a timer owned by the session's TaskGroup
        await self._delete(claim)

    async def _delete(self, claim: Claim) -> None:
        """Delete a claim's queue (its consumer goes with it) and forget the claim."""
        live = claim._live
        if live.claims.get(claim.call_id) is claim:
            del live.claims[claim.call_id]
        if live.session.is_lost:
            return
        try:
            async with asyncio.timeout(live.session.rpc_timeout_seconds):
                await live.mailbox.queue_delete(claim.queue_name)
        except AMQP_FAILURES as exc:
            live.session.abort(f"cannot delete {claim.queue_name}: {exc!r}")

    # -- publishing --

    async def _republish(
        self, live: _Live, message: AbstractIncomingMessage, call_id: str, attempt: int, *, retry: bool
    ) -> None:
        """Publish a call event again: through the delay queue (``retry``) or straight to ``callhook.calls``.

        The delay queue dead-letters back to ``callhook.calls`` with the message's routing keys, and nothing
        binds the queue to an exchange by call id: the ``CC`` header carries the call id as a second routing
        key (sender-selected distribution), the one that reaches the mailbox or else the alternate exchange.
        """
        headers = {k: v for k, v in (message.headers or {}).items() if k not in _BROKER_HEADERS}
        headers[contract.HEADER_ATTEMPT] = attempt
        if retry:
            headers["CC"] = [call_id]
        out = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            delivery_mode=DeliveryMode.PERSISTENT,
        )
        if retry:
            exchange, key = live.intake.default_exchange, contract.RETRY_QUEUE
        else:
            exchange, key = await live.intake.get_exchange(contract.CALLS_EXCHANGE, ensure=False), call_id
        await publish(exchange, out, key, confirm_timeout_seconds=live.session.rpc_timeout_seconds)

    async def _dead_letter(self, live: _Live, message: AbstractIncomingMessage, reason: str) -> None:
        headers = dict(message.headers or {})
        headers[contract.HEADER_DEAD_REASON] = reason
        headers[contract.HEADER_DEAD_SOURCE] = DEAD_SOURCE
        dead = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            delivery_mode=DeliveryMode.PERSISTENT,
        )
        exchange = await live.intake.get_exchange(contract.DEAD_EXCHANGE, ensure=False)
        try:
            await publish(exchange, dead, "", confirm_timeout_seconds=live.session.rpc_timeout_seconds)
        except TransientError as exc:
            log.warning("dead-lettering failed, event requeued", extra={"error": str(exc)})
            await settle(message, ack=False, requeue=True)
            return
        self.metrics.dead_letters.labels(source=DEAD_SOURCE, reason="undecodable_call_event").inc()
        await settle(message, ack=True)


class _SessionOver(Exception):
    """Raised inside a session's TaskGroup to end it."""
