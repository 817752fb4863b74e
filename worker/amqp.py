"""AMQP plumbing for the worker: one connection at a time, re-established after loss, and confirmed publishes.

Why not aio-pika's robust connection: after a reconnect it re-declares every queue and re-consumes, which for
callhook would silently re-claim calls whose exclusive mailbox queues vanished with the old connection (while
another worker may already have claimed them). Ownership must *see* a lost connection, so :class:`AmqpLink`
hands out one :class:`Session` per connection; a session is lost exactly once, and its users start over on the
next one. Library errors are translated here into :class:`worker.errors.TransientError`.

Deadlines: every broker round trip is bounded with ``asyncio.timeout``, never with aio-pika's ``timeout=``
arguments: those use ``asyncio.wait_for``, which in Python 3.11 can swallow a cancellation that coincides with
the result (the task then runs on after it was cancelled, and a TaskGroup waiting for it never exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractIncomingMessage
from aiormq.exceptions import AMQPError, ChannelInvalidStateError

from ingress import contract
from ingress.broker import declare_topology
from worker.errors import TransientError
from worker.supervised import Supervised

log = logging.getLogger(__name__)

# Everything aio-pika/aiormq raise when the broker, the channel or the socket fails us.
AMQP_FAILURES = (AMQPError, ChannelInvalidStateError, ConnectionError, TimeoutError)

Prepare = Callable[["Session"], Awaitable[None]]


async def declare_contract_topology(session: Session) -> None:
    """Default ``prepare`` hook: declare the whole contract topology (idempotent) on every new connection."""
    channel = await session.channel(critical=False)
    try:
        await declare_topology(channel)
    finally:
        await close_quietly(channel)


class Session:
    """One open AMQP connection. ``lost`` is set once, when the connection closed or was aborted."""

    def __init__(self, connection: AbstractConnection, generation: int, rpc_timeout_seconds: float) -> None:
        self.connection = connection
        self.generation = generation
        self.rpc_timeout_seconds = rpc_timeout_seconds
        self.lost_reason = ""
        self._lost = asyncio.Event()
        # Set by the connection's close callbacks once they ran (aio-pika runs them in a task of its own): a
        # link waits for it on the way out, so no callback is left pending when the event loop ends.
        self.callbacks_done = asyncio.Event()
        self._watches: dict[AbstractChannel, Callable[[object, BaseException | None], None]] = {}

    @property
    def is_lost(self) -> bool:
        return self._lost.is_set()

    async def wait_lost(self) -> None:
        await self._lost.wait()

    def abort(self, reason: str) -> None:
        """Declare this session dead; the link closes the connection and connects again."""
        if not self._lost.is_set():
            self.lost_reason = reason
            self._lost.set()

    async def channel(
        self, *, prefetch: int = 0, confirms: bool = True, critical: bool = True
    ) -> AbstractChannel:
        """Open a channel. A *critical* channel that closes while the session lives aborts the session: its
        consumers are gone, and a fresh connection is simpler than repairing half a session."""
        if self.is_lost:
            raise TransientError(f"cannot open a channel: the session is over ({self.lost_reason})")
        try:
            async with asyncio.timeout(self.rpc_timeout_seconds):
                channel = await self.connection.channel(publisher_confirms=confirms)
                if prefetch:
                    await channel.set_qos(prefetch_count=prefetch)
        except AMQP_FAILURES as exc:
            raise TransientError(f"cannot open a channel: {exc!r}") from exc
        except RuntimeError as exc:  # aio-pika: "Connection was not opened" (closed under us, not yet lost)
            raise TransientError(f"cannot open a channel: {exc!r}") from exc
        if critical:

            def on_close(_: object, exc: BaseException | None) -> None:
                if not self.is_lost:
                    self.abort(f"channel {channel} closed: {exc!r}")

            channel.close_callbacks.add(on_close)
            self._watches[channel] = on_close
        return channel

    async def close_channel(self, channel: AbstractChannel) -> None:
        """Close a channel on purpose (without aborting the session)."""
        watch = self._watches.pop(channel, None)
        if watch is not None:
            channel.close_callbacks.discard(watch)
        await close_quietly(channel)


class AmqpLink(Supervised):
    """Keeps one connection to ``url`` open, reconnecting with capped exponential backoff.

    ``url`` may list several brokers separated by commas (``CALLHOOK_AMQP_URL``, the nodes of a cluster): each
    connect tries them in turn, starting after the one that served last, and backs off only when all failed.

    ``async with AmqpLink(url, name="router") as link:`` starts connecting at once; users call
    :meth:`wait_session` and, when that session is lost, call it again with ``after=`` the old one.
    ``prepare`` runs on every new connection before it is handed out (default: declare the topology).
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        connect_timeout_seconds: float = 10.0,
        rpc_timeout_seconds: float = 10.0,
        retry_min_seconds: float = 0.1,
        retry_max_seconds: float = 5.0,
        prepare: Prepare | None = declare_contract_topology,
    ) -> None:
        super().__init__(f"amqp-link-{name}")
        self._urls = contract.broker_urls(url) or (url,)
        self._next_url = 0
        self._name = name
        self._connect_timeout_seconds = connect_timeout_seconds
        self._rpc_timeout_seconds = rpc_timeout_seconds
        self._retry = (retry_min_seconds, retry_max_seconds)
        self._prepare = prepare
        self._current: Session | None = None
        self._generation = 0
        self._changed = asyncio.Condition()
        self.connects = 0
        self.failed_connects = 0

    @property
    def name(self) -> str:
        return self._name

    def sibling(self, name: str) -> AmqpLink:
        """A second link to the same brokers, with the same timeouts, that prepares nothing: a connection of
        its own for requests whose failure the broker answers by closing the connection."""
        return AmqpLink(
            ",".join(self._urls),
            name=name,
            connect_timeout_seconds=self._connect_timeout_seconds,
            rpc_timeout_seconds=self._rpc_timeout_seconds,
            retry_min_seconds=self._retry[0],
            retry_max_seconds=self._retry[1],
            prepare=None,
        )

    def close(self) -> None:
        """Stop reconnecting and close the connection (idempotent; completes in ``__aexit__``)."""
        super().close()

    @property
    def current(self) -> Session | None:
        session = self._current
        return None if session is None or session.is_lost else session

    async def wait_session(self, *, after: Session | None = None) -> Session:
        """The live session newer than ``after``; waits while there is none (bound it: asyncio.timeout)."""
        floor = after.generation if after is not None else 0

        def ready() -> bool:
            s = self._current
            return s is not None and not s.is_lost and s.generation > floor

        async with self._changed:
            await self._changed.wait_for(ready)
        assert self._current is not None
        return self._current

    async def _run(self) -> None:
        delay = self._retry[0]
        while not self._closing:
            session = await self._connect_once()
            if session is None:
                self.failed_connects += 1
                await asyncio.sleep(delay)  # backoff between attempts, not a poll
                delay = min(delay * 2, self._retry[1])
                continue
            delay = self._retry[0]
            self.connects += 1
            await self._publish(session)
            try:
                await session.wait_lost()
                log.warning("amqp connection lost", extra={"link": self._name, "reason": session.lost_reason})
            finally:
                await self._publish(None)
                await _close_connection(session.connection, self._rpc_timeout_seconds)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._rpc_timeout_seconds):
                        await session.callbacks_done.wait()

    async def _connect_any(self) -> AbstractConnection | None:
        """A connection to the first broker of the list, in turn, that accepts one; None if none did."""
        for _ in self._urls:
            url, index = self._urls[self._next_url], self._next_url
            self._next_url = (index + 1) % len(self._urls)  # whichever serves, the next connect starts after
            connection = aio_pika.Connection(
                aio_pika.connection.make_url(url),
                client_properties={"connection_name": f"callhook-{self._name}"},
            )
            try:
                async with asyncio.timeout(self._connect_timeout_seconds):
                    await connection.connect()
            except BaseException as exc:
                # Cut short (a timeout, the link closing): close what was half opened, so that aio-pika's
                # close callbacks run now rather than be left pending when the event loop ends.
                await _close_connection(connection, self._rpc_timeout_seconds)
                if not isinstance(exc, AMQP_FAILURES):
                    raise
                log.warning(
                    "amqp connect failed", extra={"link": self._name, "broker": index, "error": repr(exc)}
                )
            else:
                return connection
        return None

    async def _connect_once(self) -> Session | None:
        connection = await self._connect_any()
        if connection is None:
            return None
        self._generation += 1
        session = Session(connection, self._generation, self._rpc_timeout_seconds)

        def on_close(_: object, exc: BaseException | None) -> None:
            session.abort(f"connection closed: {exc!r}")
            session.callbacks_done.set()

        connection.close_callbacks.add(on_close)
        if self._prepare is not None:
            try:
                async with asyncio.timeout(self._rpc_timeout_seconds * 3):
                    await self._prepare(session)
            except (*AMQP_FAILURES, TransientError) as exc:
                log.warning("amqp prepare failed", extra={"link": self._name, "error": repr(exc)})
                session.abort("prepare failed")
                await _close_connection(connection, self._rpc_timeout_seconds)
                return None
            except BaseException:  # the link closing meanwhile: the connection must not outlive it
                session.abort("link closed while preparing")
                await _close_connection(connection, self._rpc_timeout_seconds)
                raise
        return session

    async def _publish(self, session: Session | None) -> None:
        async with self._changed:
            self._current = session
            self._changed.notify_all()


async def _close_connection(connection: AbstractConnection, timeout_seconds: float) -> None:
    try:
        async with asyncio.timeout(timeout_seconds):
            await connection.close()
    except AMQP_FAILURES as exc:
        log.debug("closing a connection failed", extra={"error": repr(exc)})


async def close_quietly(channel: AbstractChannel) -> None:
    """Close a channel that may already be closed (by the broker or with its connection)."""
    if channel.is_closed:
        return
    try:
        async with asyncio.timeout(5.0):
            await channel.close()
    except AMQP_FAILURES as exc:
        log.debug("closing a channel failed", extra={"error": repr(exc)})


async def publish(
    exchange: AbstractExchange,
    message: aio_pika.Message,
    routing_key: str,
    *,
    confirm_timeout_seconds: float,
) -> None:
    """Publish and wait for the broker's confirm. Never ``mandatory``: ``callhook.calls`` has an alternate
    exchange, and ``callhook.events`` may legitimately have no queue bound."""
    try:
        async with asyncio.timeout(confirm_timeout_seconds):
            await exchange.publish(message, routing_key, mandatory=False)
    except AMQP_FAILURES as exc:
        raise TransientError(f"publish to {exchange.name or '(default)'!r} failed: {exc!r}") from exc


async def settle(message: AbstractIncomingMessage, *, ack: bool, requeue: bool = True) -> bool:
    """Ack or nack a delivery; False when its channel is gone (the broker redelivers it then)."""
    if message.processed:
        return True
    try:
        if ack:
            await message.ack()
        else:
            await message.nack(requeue=requeue)
    except AMQP_FAILURES as exc:
        log.debug("settling a delivery failed", extra={"error": repr(exc)})
        return False
    return True


def header_float(headers: dict[str, Any], key: str) -> float | None:
    value = headers.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str | bytes):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def header_int(headers: dict[str, Any], key: str, default: int = 0) -> int:
    value = headers.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return default


class SessionServer(Supervised):
    """A long-lived part that serves each broker session of an :class:`AmqpLink` in turn.

    :meth:`_serve` runs until its session ends; a :class:`TransientError` it raises is logged and aborts that
    session (the link reconnects and :meth:`_serve` runs again on the next one). ``purpose`` names the part in
    those log lines and the abort reason.
    """

    def __init__(self, task_name: str, link: AmqpLink, purpose: str) -> None:
        super().__init__(task_name)
        self._link = link
        self._purpose = purpose

    async def _serve(self, session: Session) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        session: Session | None = None
        while True:
            session = await self._link.wait_session(after=session)
            try:
                await self._serve(session)
            except TransientError as exc:
                log.warning(f"{self._purpose} lost its channel", extra={"error": str(exc)})
                session.abort(f"{self._purpose} failed")
