"""Publishing raw webhooks to ``callhook.webhooks`` with publisher confirms, over a self-healing connection.

Theory of operation: one supervisor task (owned by the :class:`Publisher`, cancelled by its ``close()``)
connects, declares the topology, opens one confirm channel, then waits for that channel to close and starts
again with capped, jittered exponential back-off. :attr:`Publisher.connected` is true exactly while a channel
is usable; the ingress's readiness and ``broker_connected`` gauge follow it through ``on_connection_change``.

Publishes are pipelined: every request awaits only its own confirm, so hundreds can be in flight on the one
channel. We call aiormq's ``basic_publish(wait=False)`` on the underlying channel, because aio-pika's
``Exchange.publish`` waits for each frame to be written before releasing the channel lock, which serialises
publishes on loop iterations.

aiormq matches a returned (unroutable) message to its publish by ``message_id``, and our ``message_id`` is the
body's hash, so two identical bodies in flight at once (Meta retrying while the first copy is still
unconfirmed) could make a return look like an ack. Publishes of the same body are therefore serialised.

Errors (all mean "answer 503, Meta retries")::

    PublishError
     ├── BrokerUnavailable   no usable channel, or it closed while we waited for the confirm
     ├── PublishNacked       the broker refused the message (e.g. the queue is full: reject-publish)
     ├── PublishReturned     unroutable: the queue does not exist (mandatory publish came back)
     └── PublishTimeout      no confirm within the configured time
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import aio_pika
import aiormq
from aiormq.exceptions import AMQPError, ChannelInvalidStateError
from pamqp.commands import Basic
from yarl import URL

from ingress import contract
from ingress.broker import declare_topology

log = logging.getLogger(__name__)


class PublishError(Exception):
    """A webhook could not be stored by the broker; the ingress answers 503 so that Meta retries."""


class BrokerUnavailable(PublishError):
    pass


class PublishNacked(PublishError):
    pass


class PublishReturned(PublishError):
    pass


class PublishTimeout(PublishError):
    pass


@dataclass(frozen=True, slots=True)
class PublisherStatistics:
    connected: bool
    connects: int
    inflight: int
    published: int
    failed: int


class Publisher:
    """Async context manager; ``close()`` is idempotent and waits (bounded) for in-flight publishes."""

    def __init__(
        self,
        amqp_url: str,
        *,
        confirm_timeout_seconds: float = 5.0,
        connect_timeout_seconds: float = 5.0,
        reconnect_initial_seconds: float = 0.2,
        reconnect_max_seconds: float = 5.0,
        on_connection_change: Callable[[bool], None] | None = None,
        connection_name: str = "callhook-ingress",
    ) -> None:
        self._url = amqp_url
        self._confirm_timeout = confirm_timeout_seconds
        self._connect_timeout = connect_timeout_seconds
        self._reconnect_initial = reconnect_initial_seconds
        self._reconnect_max = reconnect_max_seconds
        self._on_connection_change = on_connection_change
        self._connection_name = connection_name
        self._channel: aiormq.Channel | None = None
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping: asyncio.Future[None] | None = None  # resolved by close(): the supervisor's way out
        self._closing = False
        self._pending: dict[str, asyncio.Future[None]] = {}  # message_id -> done, see module docstring
        self._drained: asyncio.Future[None] | None = None
        self._connects = self._inflight = self._published = self._failed = 0

    async def __aenter__(self) -> Self:
        if self._supervisor is None:
            stopping = self._stopping = asyncio.get_running_loop().create_future()
            self._supervisor = asyncio.create_task(self._supervise(stopping), name="callhook-ingress-broker")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._channel is not None and not self._closing

    async def wait_connected(self) -> None:
        """Wait until a confirm channel is open (wrap in ``asyncio.timeout``)."""
        await self._connected.wait()

    async def wait_disconnected(self) -> None:
        """Wait until no confirm channel is open (wrap in ``asyncio.timeout``)."""
        await self._disconnected.wait()

    def statistics(self) -> PublisherStatistics:
        return PublisherStatistics(
            self.connected, self._connects, self._inflight, self._published, self._failed
        )

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True  # new publishes fail at once from here on
        if self._inflight:
            self._drained = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self._confirm_timeout):
                    await self._drained
            except TimeoutError:
                log.warning("closing with publishes still unconfirmed", extra={"inflight": self._inflight})
        if self._stopping is not None and not self._stopping.done():
            self._stopping.set_result(None)
        if self._supervisor is not None:
            # Connected or backing off, the supervisor sees ``stopping`` and returns, closing the connection
            # properly; a connection attempt is cut short by cancelling. On Python 3.11 a cancellation can be
            # lost inside a library's wait_for, which is why ``stopping`` exists at all.
            if self._channel is None:
                self._supervisor.cancel()
            await asyncio.wait([self._supervisor])

    async def publish(self, body: bytes, *, received_at: float, secret_id: str) -> None:
        """Store ``body`` unchanged in ``callhook.webhooks``; returns once the broker confirmed it."""
        message_id = contract.message_id(body)
        while (same := self._pending.get(message_id)) is not None:
            await asyncio.shield(same)
        channel = self._channel
        if channel is None or self._closing:
            self._failed += 1
            raise BrokerUnavailable("no broker connection")
        done = asyncio.get_running_loop().create_future()
        self._pending[message_id] = done
        self._inflight += 1
        try:
            await self._publish(channel, body, message_id, received_at, secret_id)
        except PublishError:
            self._failed += 1
            raise
        else:
            self._published += 1
        finally:
            del self._pending[message_id]
            done.set_result(None)
            self._inflight -= 1
            if self._inflight == 0 and self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

    async def _publish(
        self, channel: aiormq.Channel, body: bytes, message_id: str, received_at: float, secret_id: str
    ) -> None:
        properties = Basic.Properties(
            content_type=contract.WEBHOOK_CONTENT_TYPE,
            delivery_mode=2,  # persistent
            message_id=message_id,
            timestamp=datetime.fromtimestamp(received_at, UTC),
            # pamqp encodes a Python float as a 32-bit AMQP float (about two minutes of resolution for a unix
            # time), so the receive time travels as a decimal string of unix seconds.
            headers={
                contract.HEADER_RECEIVED_AT: f"{received_at:.6f}",
                contract.HEADER_APP_SECRET_ID: secret_id,
            },
        )
        try:
            async with asyncio.timeout(self._confirm_timeout):
                await channel.basic_publish(
                    body,
                    routing_key=contract.WEBHOOKS_QUEUE,
                    properties=properties,
                    mandatory=True,
                    wait=False,
                )
        except TimeoutError:
            raise PublishTimeout(f"no confirm within {self._confirm_timeout} s") from None
        except aiormq.exceptions.PublishError:
            raise PublishReturned("unroutable: is the queue declared?") from None
        except aiormq.exceptions.DeliveryError:
            raise PublishNacked("the broker refused the message") from None
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            raise BrokerUnavailable(f"broker connection lost: {type(exc).__name__}") from None
        except asyncio.CancelledError:
            # aiormq fails pending confirms with CancelledError when its connection closes; only a
            # cancellation of this task is a real one.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise BrokerUnavailable("broker connection closed") from None

    async def _supervise(self, stopping: asyncio.Future[None]) -> None:
        delay = self._reconnect_initial
        while not stopping.done():
            try:
                await self._run_connection(stopping)
            except (AMQPError, ConnectionError, OSError, TimeoutError) as exc:
                log.warning(
                    "broker connection failed",
                    extra={"broker": _redacted(self._url), "error": _describe(exc, self._url)},
                )
            else:
                delay = self._reconnect_initial  # we were connected: start backing off afresh
            await asyncio.wait([stopping], timeout=delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._reconnect_max)

    async def _run_connection(self, stopping: asyncio.Future[None]) -> None:
        async with asyncio.timeout(self._connect_timeout):
            connection = await aio_pika.connect(
                self._url, client_properties={"connection_name": self._connection_name}
            )
        try:
            if stopping.done():
                return
            async with asyncio.timeout(self._connect_timeout):
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                await declare_topology(channel)
                raw = await channel.get_underlay_channel()
            if not isinstance(raw, aiormq.Channel):  # we need its basic_publish(wait=False)
                raise TypeError(f"unexpected aiormq channel type {type(raw).__name__}")
            self._set_channel(raw)
            await asyncio.wait([raw.closing, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not stopping.done():
                log.warning("broker connection lost", extra={"broker": _redacted(self._url)})
        finally:
            self._set_channel(None)
            await self._close_connection(connection)

    async def _close_connection(self, connection: aio_pika.abc.AbstractConnection) -> None:
        try:
            async with asyncio.timeout(self._connect_timeout):
                await connection.close()
        except (AMQPError, ConnectionError, OSError, TimeoutError) as exc:
            log.info("broker connection closed uncleanly", extra={"error": _describe(exc, self._url)})

    def _set_channel(self, channel: aiormq.Channel | None) -> None:
        was_connected = self._channel is not None
        self._channel = channel
        if channel is not None:
            self._connects += 1
            self._connected.set()
            self._disconnected.clear()
            log.info("broker connected", extra={"broker": _redacted(self._url)})
        else:
            self._connected.clear()
            self._disconnected.set()
        if was_connected != (channel is not None) and self._on_connection_change is not None:
            self._on_connection_change(channel is not None)


def _redacted(url: str) -> str:
    return str(URL(url).with_user(None).with_password(None))


def _describe(exc: BaseException, url: str) -> str:
    """The error for a log line, with the URL's password blanked out should a library have put it there."""
    text = f"{type(exc).__name__}: {exc}"
    password = URL(url).password
    return text.replace(password, "***") if password else text
