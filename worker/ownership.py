"""Call ownership over RabbitMQ: one call lives in one worker process, and every later event reaches it.

Theory of operation (docs/routing.md has the why):

- **A mailbox outlives its owner's connection; owning is consuming it exclusively.** Claiming call ``X``
  declares the classic queue ``callhook.call.X`` (not exclusive; ``x-expires``: the broker deletes it only
  after it went unused for :data:`ingress.contract.MAILBOX_EXPIRES_MS`), binds it to ``callhook.calls`` with
  key ``X`` and consumes it with ``exclusive=True`` on a channel of the claim's own. A second worker's consume
  is refused (ACCESS_REFUSED, which closes only that worker's claim channel): the broker is the lock. When the
  owner's connection dies its consumer goes, but the queue and its binding stay: the call's events wait there,
  and the owner consumes the mailbox again when it reconnects (:meth:`Ownership.reclaim`).
- **The answer marker** ``callhook.answered.X`` fences a takeover. Before the owner sends Meta anything that
  answers or refuses an incoming call (``pre_accept``, ``reject``), it publishes, with a confirm, a record
  into the marker (:meth:`Claim.fence`), a *quorum* queue: the record survives the loss of any one broker
  node. Every claim reads the marker after its exclusive consume succeeded (:func:`read_marker`): no such
  queue (queue metadata is replicated on every node) or no record means nothing was sent to Meta, so the call
  is answered; a record means it may have been answered, so it is ended (``on_abandoned``), never answered
  twice. The record is read with ``basic.get`` (through the queue's Raft leader), never from a declare's
  message count, which a quorum queue reports as 0 while it elects a new leader. The marker is created in the
  background while the call's answer SDP is made (:meth:`Claim.prepare_fence`): a Raft group costs ~17 ms.
- **A connect is settled (acked) only once the call is safely answered or refused** (:meth:`Claim.settle`,
  called after ``accept``, or at release): a worker that dies before leaves the connect to another worker.
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
- **Tombstones** are claims that hold no capacity; their consumer drops (and counts) whatever arrives; they
  are deleted after ``tombstone_seconds`` (or by ``x-expires`` if their worker is gone). A call's claim turns
  into one on :meth:`Claim.release`.
- **A lost connection loses every claim** (the consumers, not the mailboxes): each :class:`Claim` iterator
  raises :class:`ClaimLost` and :meth:`Claim.wait_lost` returns; the service calls :meth:`Ownership.reclaim`.
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
from aiormq.exceptions import (
    ChannelAccessRefused,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
)

from ingress import contract
from worker.amqp import (
    AMQP_FAILURES,
    AmqpLink,
    Session,
    close_quietly,
    header_float,
    header_int,
    publish,
    settle,
)
from worker.crashpoints import crash_point
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
    rpc_timeout_seconds: float = 10.0
    # x-expires of mailboxes and markers: every process of one broker must use the same value (tests shorten
    # it in a vhost of their own).
    mailbox_expires_ms: int = contract.MAILBOX_EXPIRES_MS
    # A taken-over mailbox whose marker holds a record: its previous owner may only be cut off and come back
    # (its reconnect backs off up to 5 s). The connect is put back (delayed, RETRY_DELAY_MS each) this many
    # times before the call is given up as abandoned: about 10 s.
    abandon_grace_attempts: int = 40


# A fence whose marker refuses the record (a quorum queue electing a leader after a node loss) is retried
# this often, within the caller's deadline, while the claim holds.
FENCE_RETRY_SECONDS = 0.25


class ClaimLost(TransientError):
    """The claim's connection (or channel) died: the mailbox waits, but another worker may take it over."""


class CallHandler(Protocol):
    """What the worker's service does with calls. Each method should return promptly (spawn long work): the
    event that caused it is acked when it returns (an incoming connect: when the claim is settled), and it
    holds one of the intake's few prefetch slots."""

    async def on_incoming(self, claim: Claim, event: CallConnect, received_at: float) -> None:
        """A fresh incoming call is now owned through ``claim``: answer it. ``received_at`` is the ingress's
        receipt time of the connect (unix seconds, 0.0 if unknown). Call :meth:`Claim.fence` before sending
        Meta ``pre_accept`` or ``reject``, and :meth:`Claim.settle` once the call is accepted."""

    async def on_stale(self, event: CallConnect) -> None:
        """An incoming call too old to answer in time, which Meta may still ring: reject it (Graph API)."""

    async def on_overflow(self, event: CallConnect) -> None:
        """An incoming call no worker had room for in time: reject it (Graph API)."""

    async def on_orphan(self, event: CallEvent) -> None:
        """An event no owner claimed after its retries (e.g. an outgoing call's answer: terminate it)."""

    async def on_abandoned(self, event: CallConnect) -> None:
        """An incoming call whose owner lost its connection after it may have answered it (the mailbox was
        taken over and its answer marker holds a record): end it (Graph API ``terminate``), never answer."""


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
        self,
        owner: Ownership,
        live: _Live,
        call_id: str,
        kind: Literal["call", "tombstone"],
        channel: AbstractChannel,
    ) -> None:
        self.call_id = call_id
        self._owner = owner
        self._live = live
        self._kind = kind
        self._channel = channel
        self._holds_slot = kind == "call"
        self._seen_connect = False
        self._connect: AbstractIncomingMessage | None = None  # the unclaimed connect, acked by settle()
        self._fenced = False
        self._marker_declared: asyncio.Future[None] | None = None  # prepare_fence()
        self.answered_before = False  # the answer marker held a record when this claim was made
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

    @property
    def fenced(self) -> bool:
        """True once :meth:`fence` succeeded (on this claim or the one it was reclaimed from)."""
        return self._fenced

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

    async def fence(self) -> None:
        """Record in the call's answer marker, confirmed by the broker, that this worker may answer or refuse
        the call from now on. Call it before the first Graph request that answers or refuses an incoming
        call: a worker that takes the mailbox over later finds the record and never answers the call again.
        Raises :class:`ClaimLost` when the claim is lost: another worker may be answering the call then, so
        send Meta nothing (or :meth:`Ownership.reclaim` first and fence the new claim). Idempotent."""
        while not self._fenced:
            if self._lost.is_set() or self._released:
                raise ClaimLost(f"claim on {self.call_id} lost before it was fenced")
            try:
                await self._write_marker()
            except TransientError as exc:
                if self._lost.is_set() or self._released:
                    raise ClaimLost(f"claim on {self.call_id} lost while fencing: {exc}") from exc
                # The claim holds, the marker does not take the record yet: a broker node just died and the
                # marker is electing a leader (the publish is nacked). Bounded by the caller's deadline.
                log.info("answer marker not writable yet", extra={"call_id": self.call_id, "error": str(exc)})
                self._owner.metrics.claims.labels(outcome="fence_retried").inc()
                await asyncio.sleep(FENCE_RETRY_SECONDS)
                continue
            # The confirm arrived on this connection after any close the broker sent on it: still not lost
            # means the record was written while this worker held the mailbox.
            if self._lost.is_set():
                raise ClaimLost(f"claim on {self.call_id} lost while fencing")
            self._fenced = True

    def prepare_fence(self) -> None:
        """Start declaring the answer marker now, in the background, so that :meth:`fence` only has to
        publish: a quorum queue's Raft group takes longer to create than the answer SDP takes to make."""
        if self._marker_declared is None and not self._fenced:
            self._marker_declared = asyncio.ensure_future(self._declare_marker())
            self._marker_declared.add_done_callback(_retrieve)

    async def _write_marker(self) -> None:
        """Declare the answer marker (unless :meth:`prepare_fence` did) and publish one record into it,
        confirmed. Raises :class:`TransientError`."""
        declared, self._marker_declared = self._marker_declared, None
        ready = False
        if declared is not None:
            try:
                await declared
                ready = True
            except TransientError:  # declared again below
                pass
        if not ready:
            await self._declare_marker()
        timeout = self._owner._settings.rpc_timeout_seconds
        record = aio_pika.Message(b"answering", delivery_mode=DeliveryMode.PERSISTENT)
        marker = contract.answer_marker_queue(self.call_id)
        await publish(self._channel.default_exchange, record, marker, confirm_timeout_seconds=timeout)

    async def _declare_marker(self) -> None:
        """Declare the answer marker on the marker connection (``Ownership._marker_link``): RabbitMQ answers
        a quorum declare it cannot carry out now (``cluster_not_formed`` while a node rejoins) with
        INTERNAL_ERROR, which closes the connection, and that must not be the claims' connection."""
        marker = contract.answer_marker_queue(self.call_id)
        session = await self._owner._marker_session()
        channel = await session.channel(confirms=False, critical=False)
        try:
            async with asyncio.timeout(session.rpc_timeout_seconds):
                arguments = self._owner._marker_arguments
                await channel.declare_queue(marker, durable=True, arguments=arguments)
        except AMQP_FAILURES as exc:
            raise TransientError(f"cannot declare {marker}: {exc!r}") from exc
        finally:
            await session.close_channel(channel)

    async def settle(self) -> None:
        """Ack the unclaimed connect this claim was made for (idempotent; nothing for other claims). Until
        then a worker that dies leaves the connect to another worker."""
        message, self._connect = self._connect, None
        if message is not None:
            await settle(message, ack=True)

    async def release(self, *, tombstone: bool = True) -> None:
        """End the call's ownership (idempotent) and free its capacity at once. With ``tombstone`` (the
        default, for a call that ended) the mailbox stays for ``tombstone_seconds`` and drops what arrives, so
        a retried connect is never answered; without it the queues are deleted now."""
        async with self._release_lock:
            if self._released:
                return
            self._released = True
            self._wakeup.set()
            self._free_slot()
            self._owner._forget(self)
            await self.settle()
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

    def _adopt_connect(self, message: AbstractIncomingMessage) -> bool:
        """A redelivery of the connect this call was claimed for (its first delivery died with a connection):
        keep it unsettled in place of the dead one. False when there is nothing to settle any more."""
        held = self._connect
        if self._released or held is None or not self._connect_lost():
            return False  # settled, or a second copy while the first is still held: a duplicate
        self._connect = message
        return True

    def _connect_lost(self) -> bool:
        if self._connect is None:
            return True
        try:
            return self._connect.channel.is_closed
        except ChannelInvalidStateError:  # aio-pika's way of saying "closed"
            return True

    def _take_over(self, lost: Claim) -> None:
        """Carry a lost claim's state over to this one (made on a new connection by ``Ownership.reclaim``)."""
        self._holds_slot, lost._holds_slot = lost._holds_slot, False
        self._seen_connect = lost._seen_connect
        self._fenced = lost._fenced
        self._connect, lost._connect = lost._connect, None

    async def _let_go(self) -> None:
        """Stop consuming the mailbox (its channel closes) and forget this claim, leaving the mailbox as it
        is: for its previous owner to come back to, or for a later look."""
        self._released = True
        self._wakeup.set()
        self._free_slot()
        self._owner._forget(self)
        if self._live.claims.get(self.call_id) is self:
            del self._live.claims[self.call_id]
        await close_quietly(self._channel)

    def _free_slot(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self._owner._adjust(-1)

    def _lose(self) -> None:
        if not self._released:
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
        self.intake: AbstractChannel

    async def open(self, settings: OwnershipSettings) -> None:
        self.intake = await self.session.channel(prefetch=settings.expired_prefetch)

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
    offers :meth:`claim` for outgoing calls and :meth:`reclaim` after a lost connection. Sets the
    ``calls_active`` and ``calls_capacity`` gauges.
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
        # Answer markers are declared and read on a connection of their own: RabbitMQ 3.x answers a basic.get
        # on a quorum queue whose leader's node just died, or a quorum declare while a node rejoins, with
        # INTERNAL_ERROR, which closes the whole connection. Only the fence's publish goes on the claim's.
        self._marker_link = link.sibling(f"{link.name}-markers")
        self._ready = asyncio.Event()
        self._in_use = 0
        self._draining = False
        self._open_gate = asyncio.Event()  # room and not draining: consume unclaimed
        self._shut_gate = asyncio.Event()
        self._consuming_unclaimed = False
        self._room_listeners: list[Callable[[], None]] = []
        # Call claims of this process until released, across connections (lost ones too): a redelivered
        # connect of a call held here is never claimed again, not even after the connection changed.
        self._calls: dict[str, Claim] = {}
        self._arguments: dict[str, Any] = dict(contract.mailbox_arguments(settings.mailbox_expires_ms))
        self._marker_arguments: dict[str, Any] = dict(
            contract.answer_marker_arguments(settings.mailbox_expires_ms)
        )
        metrics.calls_capacity.set(settings.capacity)
        self._adjust(0)

    async def __aenter__(self) -> Self:
        await self._marker_link.__aenter__()
        try:
            return await super().__aenter__()
        except BaseException:
            await self._marker_link.__aexit__(None, None, None)
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc, tb)
        finally:
            await self._marker_link.__aexit__(None, None, None)

    def close(self) -> None:
        """Stop consuming (idempotent). Claims still held become lost when the link closes the connection."""
        super().close()

    async def wait_ready(self) -> None:
        """Until consumers run on a connection and the marker connection is open (bound it with
        asyncio.timeout)."""
        await self._ready.wait()
        await self._marker_link.wait_session()

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
        or here, or its answer marker holds a record. Takes over ``reservation``'s unit, else takes one even
        beyond capacity. Raises :class:`TransientError` when the broker cannot be reached within
        ``rpc_timeout_seconds``."""
        live = await self._wait_live_bounded()
        if reservation is None or not reservation._transfer():
            self._adjust(+1)
        claim = await self._claim_call(live, call_id, check_marker=True)
        if claim is not None and claim.answered_before:
            await self._bury_taken_over(claim)
            return None
        return claim

    async def reclaim(self, lost: Claim) -> Claim | None:
        """Consume a lost claim's mailbox again on the current connection: the events that arrived while this
        worker was cut off are delivered now. The new claim keeps the lost one's capacity unit, fence and
        unsettled connect. None when another worker took the mailbox over meanwhile (the lost claim is then
        released here). Raises :class:`TransientError` when no connection comes within the RPC timeout."""
        if lost.is_released or not lost.is_lost:
            raise ValueError("only a lost, unreleased claim can be reclaimed")
        live = await self._wait_live_bounded()
        claim: Claim | None = None
        try:
            claim = await self._claim(live, lost.call_id, "call", reclaim=True)
        finally:
            if claim is None:
                await lost.release()
        assert claim is not None or lost.is_released
        if claim is not None:
            claim._take_over(lost)
            lost._released = True
            self._calls[claim.call_id] = claim
            self.metrics.claims.labels(outcome="reclaimed").inc()
            if claim.fenced:  # the marker may have gone with a broker node: write the record again
                try:
                    await claim._write_marker()
                except TransientError as exc:  # the claim holds: the connection will tell if it is lost
                    log.warning("could not rewrite an answer marker", extra={"error": str(exc)})
        return claim

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

    def _forget(self, claim: Claim) -> None:
        if self._calls.get(claim.call_id) is claim:
            del self._calls[claim.call_id]

    # -- sessions --

    async def _wait_live(self) -> _Live:
        while self._live is None or self._live.session.is_lost or not self._ready.is_set():
            await self._link.wait_session(after=None)
            await self._ready.wait()
        return self._live

    async def _wait_live_bounded(self) -> _Live:
        try:
            async with asyncio.timeout(self._settings.rpc_timeout_seconds):
                return await self._wait_live()
        except TimeoutError as exc:
            raise TransientError("no broker connection to claim a call on") from exc

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
            if verdict is Verdict.ANSWER:  # e.g. its marker's node is down: not in a hot loop, later
                try:
                    await self._requeue_later(live, message, attempt)
                    ack = True
                except TransientError:
                    pass
        if ack is not None:
            await settle(message, ack=ack, requeue=True)

    async def _apply(
        self, live: _Live, verdict: Verdict, event: CallEvent, message: AbstractIncomingMessage, attempt: int
    ) -> bool | None:
        """Carry out a verdict; False means "not now": the message goes back to the queue; None means a claim
        holds the message and settles it (an incoming connect, once its call is answered or refused)."""
        m = self.metrics
        match verdict:
            case Verdict.ANSWER:
                assert isinstance(event, CallConnect)
                return await self._answer(live, event, message)
            case Verdict.DROP_STALE:
                m.dropped_events.labels(reason="stale").inc()
            case Verdict.REJECT_STALE | Verdict.OVERFLOW:
                assert isinstance(event, CallConnect)
                tombstone = None
                if event.call_id not in self._calls:
                    tombstone = await self._claim(live, event.call_id, "tombstone", check_marker=True)
                if tombstone is None or tombstone.answered_before:  # owned, or answered by someone
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

    async def _answer(self, live: _Live, event: CallConnect, message: AbstractIncomingMessage) -> bool | None:
        held = self._calls.get(event.call_id)
        if held is not None:  # ours already: a redelivery after a lost connection, or Meta's copy
            if held._adopt_connect(message):
                return None
            self.metrics.dropped_events.labels(reason="duplicate").inc()
            return True
        if not self._take_slot():
            return False  # the room went while this was in flight: back to the queue for someone else
        # The claim holds this connect already: a duplicate consumed before _claim_call returns is dropped.
        claim = await self._claim_call(live, event.call_id, seen_connect=True, check_marker=True)
        if claim is None:
            self.metrics.dropped_events.labels(reason="duplicate").inc()
            return True
        crash_point("after_claim")
        if not claim.answered_before:
            claim.prepare_fence()
        if claim.answered_before:
            # Its owner lost its connection after fencing: it may have answered; never answer twice. It may
            # also be only cut off: give it time to come back and consume its mailbox again first.
            attempt = header_int(message.headers or {}, contract.HEADER_ATTEMPT)
            if attempt < self._settings.abandon_grace_attempts:
                await claim._let_go()
                self.metrics.claims.labels(outcome="owner_awaited").inc()
                await self._requeue_later(live, message, attempt + 1)
                return True
            await self._bury_taken_over(claim)
            await self._call_handler("on_abandoned", self._handler.on_abandoned(event))
            return True
        claim._connect = message
        received_at = header_float(message.headers or {}, contract.HEADER_RECEIVED_AT) or 0.0
        if not await self._call_handler("on_incoming", self._handler.on_incoming(claim, event, received_at)):
            await claim.release()  # settles the connect: a failing handler would fail again elsewhere
        return None

    async def _bury_taken_over(self, claim: Claim) -> None:
        """A mailbox taken over whose marker holds a record: keep it as a tombstone, hold no capacity."""
        self.metrics.claims.labels(outcome="abandoned").inc()
        await claim.release()

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

    async def _claim_call(
        self, live: _Live, call_id: str, *, seen_connect: bool = False, check_marker: bool = False
    ) -> Claim | None:
        """Claim a call with the capacity unit the caller already took (given back if no claim holds it)."""
        claim: Claim | None = None
        try:
            if call_id not in self._calls:
                claim = await self._claim(
                    live, call_id, "call", seen_connect=seen_connect, check_marker=check_marker
                )
            else:
                self.metrics.claims.labels(outcome="duplicate").inc()
        finally:
            if claim is None:
                self._adjust(-1)
        if claim is not None:
            self._calls[call_id] = claim
        return claim

    async def _claim(
        self,
        live: _Live,
        call_id: str,
        kind: Literal["call", "tombstone"],
        *,
        seen_connect: bool = False,
        check_marker: bool = False,
        reclaim: bool = False,
    ) -> Claim | None:
        if call_id in live.claims or call_id in live.claiming:
            self.metrics.claims.labels(outcome="duplicate" if kind == "call" else "busy").inc()
            return None
        live.claiming.add(call_id)
        try:
            claim = await self._declare(
                live, call_id, kind, seen_connect=seen_connect, check_marker=check_marker
            )
        finally:
            live.claiming.discard(call_id)
        if not reclaim:
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
        self,
        live: _Live,
        call_id: str,
        kind: Literal["call", "tombstone"],
        *,
        seen_connect: bool,
        check_marker: bool,
    ) -> Claim | None:
        """Declare and bind the mailbox, then consume it exclusively on a channel of its own (a refusal
        closes that channel only). None: another consumer holds it (another worker owns the call). A mailbox
        deleted between the declare and the consume (a tombstone's end) is declared again, twice at most."""
        for attempt in range(3):
            try:
                return await self._declare_once(live, call_id, kind, seen_connect, check_marker)
            except ChannelNotFoundEntity as exc:
                if attempt == 2:
                    raise TransientError(f"claim of {call_id} failed: {exc!r}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _declare_once(
        self,
        live: _Live,
        call_id: str,
        kind: Literal["call", "tombstone"],
        seen_connect: bool,
        check_marker: bool,
    ) -> Claim | None:
        session = live.session
        channel = await session.channel(prefetch=self._settings.mailbox_prefetch, critical=False)
        claim = Claim(self, live, call_id, kind, channel)
        if seen_connect:  # before consuming: a duplicate already queued must meet the filter
            claim._expect_connect()
        name = contract.mailbox_queue(call_id)
        try:
            async with asyncio.timeout(session.rpc_timeout_seconds):
                queue = await channel.declare_queue(name, arguments=self._arguments)
                await queue.bind(contract.CALLS_EXCHANGE, routing_key=call_id)
                await queue.consume(claim._on_message, exclusive=True)
            if check_marker:
                claim.answered_before = await self._read_marker(call_id)
        except TransientError:
            await session.close_channel(channel)
            raise
        except ChannelAccessRefused:
            await session.close_channel(channel)
            return None
        except ChannelPreconditionFailed:
            log.warning("mailbox queue exists with other arguments", extra={"call_id": call_id})
            await session.close_channel(channel)
            return None
        except ChannelNotFoundEntity:
            await session.close_channel(channel)
            raise
        except AMQP_FAILURES as exc:
            await session.close_channel(channel)
            raise TransientError(f"claim of {call_id} failed: {exc!r}") from exc
        channel.close_callbacks.add(lambda *_: claim._lose())
        if session.is_lost:  # the connection went while this claim was being made
            claim._lose()
        else:
            live.claims[call_id] = claim
        return claim

    async def _marker_session(self) -> Session:
        try:
            async with asyncio.timeout(self._settings.rpc_timeout_seconds):
                return await self._marker_link.wait_session()
        except TimeoutError as exc:
            raise TransientError("no broker connection for answer markers") from exc

    async def _read_marker(self, call_id: str) -> bool:
        return await read_marker(await self._marker_session(), call_id)

    def _bury_later(self, claim: Claim) -> None:
        claim._live.spawn(self._bury(claim))

    async def _bury(self, claim: Claim) -> None:
        await asyncio.sleep(self._settings.tombstone_seconds)  # a timer owned by the session's TaskGroup
        await self._delete(claim)

    async def _delete(self, claim: Claim) -> None:
        """Delete a claim's mailbox and marker (its consumer goes with them) and forget the claim."""
        live = claim._live
        if live.claims.get(claim.call_id) is claim:
            del live.claims[claim.call_id]
        if live.session.is_lost:
            return
        channel = claim._channel
        try:
            async with asyncio.timeout(live.session.rpc_timeout_seconds):
                await channel.queue_delete(claim.queue_name)
                await channel.queue_delete(contract.answer_marker_queue(claim.call_id))
        except AMQP_FAILURES as exc:
            log.warning("could not delete a mailbox", extra={"call_id": claim.call_id, "error": repr(exc)})
        await close_quietly(channel)

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

    async def _requeue_later(self, live: _Live, message: AbstractIncomingMessage, attempt: int) -> None:
        """Put an unclaimed message back into ``callhook.calls.unclaimed`` after the retry delay: published to
        the delay queue with no CC, it dead-letters into ``callhook.calls`` under the delay queue's own name,
        which nothing binds, so the alternate exchange takes it to the unclaimed queue."""
        headers = {k: v for k, v in (message.headers or {}).items() if k not in _BROKER_HEADERS}
        headers[contract.HEADER_ATTEMPT] = attempt
        out = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            delivery_mode=DeliveryMode.PERSISTENT,
        )
        await publish(
            live.intake.default_exchange,
            out,
            contract.RETRY_QUEUE,
            confirm_timeout_seconds=live.session.rpc_timeout_seconds,
        )

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


async def read_marker(session: Session, call_id: str) -> bool:
    """Does the call's answer marker hold a record? On a channel of its own (a passive declare of a queue
    that does not exist closes its channel), of a connection of its own (``Ownership._marker_link``).

    No queue: False (queue metadata is on every node, so "absent" is reliable even while a node is down).
    A queue: ``basic.get`` goes through its Raft leader, so it answers only once a leader holds the log (the
    record is given back at once). Raises :class:`TransientError` when that cannot be known now (no leader
    yet: RabbitMQ closes the connection; a timeout)."""
    name = contract.answer_marker_queue(call_id)
    channel = await session.channel(confirms=False, critical=False)
    try:
        async with asyncio.timeout(session.rpc_timeout_seconds):
            try:
                marker = await channel.declare_queue(name, passive=True)
            except ChannelNotFoundEntity:
                return False
            record = await marker.get(no_ack=False, fail=False)
            if record is None:
                return False
            await settle(record, ack=False, requeue=True)
            return True
    except AMQP_FAILURES as exc:
        raise TransientError(f"cannot read {name}: {exc!r}") from exc
    finally:
        await session.close_channel(channel)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Done callback of a background task whose failure is handled by whoever awaits it (or by nobody)."""
    if not future.cancelled():
        future.exception()


class _SessionOver(Exception):
    """Raised inside a session's TaskGroup to end it."""
