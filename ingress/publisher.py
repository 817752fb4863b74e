"""Publishing raw webhooks to ``callhook.webhooks`` with publisher confirms, over a self-healing connection.

Theory of operation: one supervisor task (owned by the :class:`Publisher`, stopped by its ``close()``)
connects, declares the topology, opens one confirm channel, then waits for that channel to close and starts
again with capped, jittered exponential back-off. :attr:`Publisher.connected` is true exactly while a channel
is usable; the ingress's readiness and ``broker_connected`` gauge follow it through ``on_connection_change``.

Publishes are pipelined and batched (:class:`_Pipeline`): each request gets its delivery tag and its confirm
future at once and awaits only that future, so hundreds are in flight on the one channel; the frames of all
publishes made in one event-loop iteration leave in one write. One write per message (aiormq's
``basic_publish``) cost a syscall each and about twice the broker CPU per message, and pamqp's generic
encoder cost more than the rest of the request; the frames are therefore encoded here (:func:`encode_content`,
checked against pamqp by the tests), and the pipeline registers confirms with the aiormq channel the way
``basic_publish`` does: ``delivery_tag``, ``confirmations``, ``message_id_delivery_tag``, ``write_queue``.
aiormq still reads every frame and settles the futures (ack, nack, return, connection lost).

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
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import aio_pika
import aiormq
import pamqp.frame
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import ChannelFrame
from aiormq.exceptions import AMQPError, ChannelInvalidStateError
from pamqp.commands import Basic
from yarl import URL

from ingress import contract, idempotency
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


class PublishRefused(PublishError):
    """The command cannot be published at all (checked before anything is sent)."""


# --- wire encoding (pure) ----------------------------------------------------------------------------------

_FRAME_END: Final = b"\xce"
_BASIC_CLASS: Final = 60
# content-type, headers, delivery-mode, message-id, timestamp: AMQP 0-9-1 property bits 15, 13, 12, 7, 6
_PROPERTY_FLAGS: Final = (1 << 15) | (1 << 13) | (1 << 12) | (1 << 7) | (1 << 6)
_PERSISTENT: Final = b"\x02"


def _shortstr(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError("AMQP short string over 255 bytes")
    return bytes((len(raw),)) + raw


def _longstr(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


_CONTENT_TYPE: Final = _shortstr(contract.WEBHOOK_CONTENT_TYPE)
_RECEIVED_AT_KEY: Final = _shortstr(contract.HEADER_RECEIVED_AT) + b"S"
_SECRET_ID_KEY: Final = _shortstr(contract.HEADER_APP_SECRET_ID) + b"S"


def publish_frame(channel_number: int) -> bytes:
    """The Basic.Publish method frame of every webhook: default exchange, ``callhook.webhooks``, mandatory."""
    method = Basic.Publish(exchange="", routing_key=contract.WEBHOOKS_QUEUE, mandatory=True)
    return pamqp.frame.marshal(method, channel_number)


def encode_content(
    channel_number: int,
    max_body_frame: int,
    body: bytes,
    *,
    message_id: str,
    received_at: float,
    secret_id: str,
) -> list[bytes]:
    """The content header and body frames of one webhook, as pieces to be joined.

    Properties: content type, persistent, ``message_id``, ``timestamp`` (whole seconds, AMQP's resolution) and
    the two contract headers. The receive time is a decimal string: pamqp (hence aio-pika consumers) would
    read an AMQP float as 32 bits, about two minutes of resolution at today's unix time.
    """
    received = f"{received_at:.6f}".encode()
    table = _RECEIVED_AT_KEY + _longstr(received) + _SECRET_ID_KEY + _longstr(secret_id.encode())
    header = (
        struct.pack(">HHQH", _BASIC_CLASS, 0, len(body), _PROPERTY_FLAGS)
        + _CONTENT_TYPE
        + _longstr(table)
        + _PERSISTENT
        + _shortstr(message_id)
        + struct.pack(">Q", int(received_at))
    )
    pieces = [struct.pack(">BHI", 2, channel_number, len(header)), header, _FRAME_END]
    for start in range(0, len(body), max_body_frame):  # an empty body has no body frame
        chunk = body if len(body) <= max_body_frame else body[start : start + max_body_frame]
        pieces += (struct.pack(">BHI", 3, channel_number, len(chunk)), chunk, _FRAME_END)
    return pieces


# --- the confirm pipeline on one aiormq channel ------------------------------------------------------------

_CHANNEL_INTERNALS: Final = ("delivery_tag", "confirmations", "message_id_delivery_tag", "write_queue")


class _Pipeline:
    """Publishes on one confirm channel; one write per event-loop iteration. Lives as long as the channel."""

    def __init__(self, channel: aiormq.Channel) -> None:
        missing = [name for name in _CHANNEL_INTERNALS if not hasattr(channel, name)]
        if missing or not channel.publisher_confirms:
            raise TypeError(f"aiormq channel lacks what the pipeline needs: {missing or 'confirms'}")
        self.channel = channel
        self._publish_frame = publish_frame(channel.number)
        self._max_body_frame: int = channel.max_content_size
        self._pieces: list[bytes] = []
        self._ready = asyncio.Event()

    def submit(
        self, body: bytes, *, message_id: str, received_at: float, secret_id: str
    ) -> asyncio.Future[Any]:
        """Queue one publish; the future settles with the broker's ack (or fails) as in ``basic_publish``."""
        channel = self.channel
        channel.delivery_tag += 1
        tag = channel.delivery_tag
        confirmation: asyncio.Future[Any] = channel.create_future()  # failed by aiormq if the channel dies
        channel.confirmations[tag] = confirmation
        channel.message_id_delivery_tag[message_id] = tag
        confirmation.add_done_callback(lambda _: channel.message_id_delivery_tag.pop(message_id, None))
        self._pieces.append(self._publish_frame)
        self._pieces += encode_content(
            channel.number,
            self._max_body_frame,
            body,
            message_id=message_id,
            received_at=received_at,
            secret_id=secret_id,
        )
        self._ready.set()
        return confirmation

    async def run(self) -> None:
        """Hand the queued frames to the connection's writer in delivery-tag order, one payload a time."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            payload, self._pieces = b"".join(self._pieces), []
            await self.channel.write_queue.put(ChannelFrame(payload=payload, should_close=False))


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
        self._urls = contract.broker_urls(amqp_url) or (amqp_url,)
        self._url_index = 0  # the broker tried next; several are tried in turn (CALLHOOK_AMQP_URL)
        self._confirm_timeout = confirm_timeout_seconds
        self._connect_timeout = connect_timeout_seconds
        self._reconnect_initial = reconnect_initial_seconds
        self._reconnect_max = reconnect_max_seconds
        self._on_connection_change = on_connection_change
        self._connection_name = connection_name
        self._pipeline: _Pipeline | None = None
        self._commands: AbstractChannel | None = None  # integrator commands: their own confirm channel
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping: asyncio.Future[None] | None = None  # resolved by close(): the supervisor's way out
        self._closing = False
        self._pending: dict[str, asyncio.Future[None]] = {}  # message_id -> done, see module docstring
        self._drained: asyncio.Future[None] | None = None
        self._connects = self._inflight = self._published = self._failed = 0
        self._connection: AbstractConnection | None = None
        self._background: set[asyncio.Future[None]] = set()

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
        """A webhook channel and a command channel are open (the command channel is replaced after any
        unexpected error: readiness is false until it is back)."""
        return self._pipeline is not None and self._commands is not None and not self._closing

    @property
    def accepting_webhooks(self) -> bool:
        """The webhook channel is open (the command channel may be being replaced)."""
        return self._pipeline is not None and not self._closing

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
            if self._pipeline is None:
                self._supervisor.cancel()
            await asyncio.wait([self._supervisor])

    async def publish(self, body: bytes, *, received_at: float, secret_id: str) -> None:
        """Store ``body`` unchanged in ``callhook.webhooks``; returns once the broker confirmed it."""
        message_id = contract.message_id(body)
        while (same := self._pending.get(message_id)) is not None:
            await asyncio.shield(same)
        pipeline = self._pipeline
        if pipeline is None or self._closing:
            self._failed += 1
            raise BrokerUnavailable("no broker connection")
        done = asyncio.get_running_loop().create_future()
        self._pending[message_id] = done
        self._inflight += 1
        try:
            confirmation = pipeline.submit(
                body, message_id=message_id, received_at=received_at, secret_id=secret_id
            )
            await self._wait_confirm(confirmation)
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

    async def publish_command(self, body: bytes, *, exchange: str, routing_key: str, message_id: str,
                              headers: dict[str, str | int] | None = None) -> None:  # fmt: skip
        """Publish an integrator's command (a dial, a hang-up) persistently; returns once confirmed.

        Low volume, so plain aio-pika on the command channel; unroutable is a failure like for webhooks.
        Any failure other than a clean nack or return leaves the channel in an unknown state (aiormq may have
        counted a publish that never left, shifting every later confirm), so the channel is replaced before
        the error is raised; until it is, :attr:`connected` (hence readiness) is false.
        """
        if len(routing_key.encode()) > 255 or len(message_id.encode()) > 255:
            raise PublishRefused("routing key or message id over 255 bytes")  # before touching the channel
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            headers={contract.HEADER_REQUEST_ID: message_id, **(headers or {})},
        )

        async def send(channel: AbstractChannel) -> None:
            target = (
                channel.default_exchange
                if not exchange
                else await channel.get_exchange(exchange, ensure=False)
            )
            await target.publish(message, routing_key, mandatory=True)

        await self._on_commands(send)

    async def claim_key(self, queue_name: str, record: bytes, *, ttl_seconds: int) -> bytes | None:
        """First-writer-wins on ``queue_name`` (:mod:`ingress.idempotency`): None if ``record`` is now the
        key's record, else the record stored by the request that came first."""
        result: bytes | None = None

        async def claim(channel: AbstractChannel) -> None:
            nonlocal result
            queue = await channel.declare_queue(
                queue_name, durable=True, arguments=dict(idempotency.marker_arguments(ttl_seconds))
            )
            for _ in range(3):  # the stored record may expire between our nack and our get: try again
                try:
                    await channel.default_exchange.publish(
                        aio_pika.Message(record, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        queue_name,
                        mandatory=True,
                    )
                except aiormq.exceptions.DeliveryError:
                    stored = await queue.get(no_ack=False, fail=False)
                    if stored is None:
                        continue
                    await stored.reject(requeue=True)  # leave the record where it was
                    result = stored.body
                    return
                result = None
                return
            raise PublishNacked("the idempotency record kept changing")

        await self._on_commands(claim)
        return result

    async def _on_commands(self, operation: Callable[[AbstractChannel], Awaitable[None]]) -> None:
        channel = self._commands
        if channel is None or self._closing:
            raise BrokerUnavailable("no broker connection")
        try:
            async with asyncio.timeout(self._confirm_timeout):
                await operation(channel)
        except TimeoutError:
            await self._replace_commands(channel, "no confirm in time")
            raise PublishTimeout(f"no confirm within {self._confirm_timeout} s") from None
        except aiormq.exceptions.PublishError:
            raise PublishReturned("unroutable: is the queue declared?") from None
        except aiormq.exceptions.DeliveryError:
            raise PublishNacked("the broker refused the message") from None
        except PublishError:
            raise
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            await self._replace_commands(channel, type(exc).__name__)
            raise BrokerUnavailable(f"broker connection lost: {type(exc).__name__}") from None
        except Exception as exc:
            # Anything else (an encoder refusing a value, a bug) may have happened half-way through a publish.
            await self._replace_commands(channel, type(exc).__name__)
            raise BrokerUnavailable(f"command channel reset after {type(exc).__name__}") from None

    async def _replace_commands(self, broken: AbstractChannel, reason: str) -> None:
        """Close the command channel and open a fresh one on the same connection; if that fails, drop the
        connection (the supervisor reconnects). Readiness is false meanwhile."""
        if self._commands is not broken:
            return  # another request replaced it already
        self._commands = None
        self._notify()
        log.warning("command channel reset", extra={"reason": reason})
        connection = self._connection
        try:
            async with asyncio.timeout(self._connect_timeout):
                if not broken.is_closed:
                    await broken.close()
                if connection is None or connection.is_closed:
                    return
                fresh = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except Exception as exc:  # any failure here: start over with a new connection
            log.warning("command channel could not be reopened", extra={"error": _describe(exc, self._url)})
            if connection is not None:
                self._abandon(connection)
            return
        if self._pipeline is not None and not self._closing:
            self._commands = fresh
            self._notify()

    def _abandon(self, connection: AbstractConnection) -> None:
        task = asyncio.ensure_future(connection.close())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _wait_confirm(self, confirmation: asyncio.Future[Any]) -> None:
        try:
            async with asyncio.timeout(self._confirm_timeout):
                await confirmation
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

    @property
    def _url(self) -> str:
        return self._urls[self._url_index]

    async def _supervise(self, stopping: asyncio.Future[None]) -> None:
        delay = self._reconnect_initial
        failed = 0  # brokers that failed since the last backoff
        while not stopping.done():
            try:
                await self._run_connection(stopping)
            except (AMQPError, ConnectionError, OSError, TimeoutError) as exc:
                log.warning(
                    "broker connection failed",
                    extra={"broker": _redacted(self._url), "error": _describe(exc, self._url)},
                )
                failed += 1
            else:
                delay = self._reconnect_initial  # we were connected: start backing off afresh
                failed = 0
            # The next broker of the list: the one that just failed (or served and went) is tried last.
            self._url_index = (self._url_index + 1) % len(self._urls)
            if 0 < failed < len(self._urls):
                continue  # another broker at once; back off only when each failed once
            failed = 0
            await asyncio.wait([stopping], timeout=delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._reconnect_max)

    async def _run_connection(self, stopping: asyncio.Future[None]) -> None:
        async with asyncio.timeout(self._connect_timeout):
            connection = await aio_pika.connect(
                self._url, client_properties={"connection_name": self._connection_name}
            )
        writer: asyncio.Task[None] | None = None
        self._connection = connection
        try:
            if stopping.done():
                return
            async with asyncio.timeout(self._connect_timeout):
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                await declare_topology(channel)
                raw = await channel.get_underlay_channel()
            if not isinstance(raw, aiormq.Channel):
                raise TypeError(f"unexpected aiormq channel type {type(raw).__name__}")
            pipeline = _Pipeline(raw)
            writer = asyncio.create_task(pipeline.run(), name="callhook-ingress-publish-writer")
            async with asyncio.timeout(self._connect_timeout):
                # Commands get a channel of their own: the webhook pipeline owns its channel's delivery tags.
                self._commands = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self._set_pipeline(pipeline)
            closed = asyncio.ensure_future(_closed(connection))
            try:
                await asyncio.wait(
                    [raw.closing, stopping, writer, closed], return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                closed.cancel()
            if not stopping.done():
                log.warning("broker connection lost", extra={"broker": _redacted(self._url)})
        finally:
            self._commands = None
            self._connection = None
            self._set_pipeline(None)
            if writer is not None:
                writer.cancel()
                await asyncio.wait([writer])
                if not writer.cancelled() and (failure := writer.exception()) is not None:
                    log.error("publish writer failed", extra={"error": _describe(failure, self._url)})
            await self._close_connection(connection)

    async def _close_connection(self, connection: AbstractConnection) -> None:
        try:
            async with asyncio.timeout(self._connect_timeout):
                await connection.close()
        except (AMQPError, ConnectionError, OSError, TimeoutError) as exc:
            log.info("broker connection closed uncleanly", extra={"error": _describe(exc, self._url)})

    def _set_pipeline(self, pipeline: _Pipeline | None) -> None:
        was_connected = self._pipeline is not None
        self._pipeline = pipeline
        if pipeline is not None:
            self._connects += 1
            self._connected.set()
            self._disconnected.clear()
            log.info("broker connected", extra={"broker": _redacted(self._url)})
        else:
            self._connected.clear()
            self._disconnected.set()
        if was_connected != (pipeline is not None):
            self._notify()

    def _notify(self) -> None:
        if self._on_connection_change is not None:
            self._on_connection_change(self.connected)


async def _closed(connection: AbstractConnection) -> None:
    """Until the connection closes (e.g. abandoned after a command channel could not be reopened)."""
    closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_close(*_: object) -> None:
        if not closing.done():
            closing.set_result(None)

    connection.close_callbacks.add(on_close)
    await closing


def _redacted(url: str) -> str:
    return str(URL(url).with_user(None).with_password(None))


def _describe(exc: BaseException, url: str) -> str:
    """The error for a log line, with the URL's password blanked out should a library have put it there."""
    text = f"{type(exc).__name__}: {exc}"
    password = URL(url).password
    return text.replace(password, "***") if password else text
