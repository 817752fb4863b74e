"""The worker's side of the handoff on RabbitMQ: announcements, commands from consoles, replies.

One :class:`HandoffHub` per worker process, on the worker's :class:`~worker.amqp.AmqpLink`. On every
connection it declares the two exchanges of :mod:`worker.handoff.wire` and one exclusive, auto-deleted queue
of its own, bound to ``query`` and to ``call.<id>`` of each call it holds in a queue or with an agent. The
broker deletes that queue (and its bindings) with the connection, so commands for the calls of a dead worker
are returned to the console (``mandatory``): it learns at once that the call is gone.

The same queue is bound to the board exchange, so the hub keeps a :class:`~worker.handoff.board.Board` of
every worker's waiting calls: a caller's position counts the calls of other workers too.

Announcements and replies are queued and published by one task, in order; a broker that is away drops them
(logged): every announcement is repeated by the next heartbeat's presence, and a console that misses a reply
times out its request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Protocol

import aio_pika
import msgspec
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractQueue

from worker.amqp import AMQP_FAILURES, AmqpLink, Session, close_quietly
from worker.handoff import wire
from worker.handoff.board import Board
from worker.handoff.config import HandoffSettings
from worker.supervised import Supervised

log = logging.getLogger(__name__)


class CommandHandler(Protocol):
    """A transferred call, as the hub sees it."""

    def on_command(self, command: wire.Command, reply_to: str) -> None:
        """A console's command for this call (must return promptly: spawn long work)."""

    def presence(self) -> wire.Waiting | None:
        """The call's entry while it waits for an agent, else None."""


class HandoffHub(Supervised):
    def __init__(self, link: AmqpLink, settings: HandoffSettings, *, worker_id: str | None = None) -> None:
        super().__init__("handoff-hub")
        self._link = link
        self.settings = settings
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        self.board = Board()
        self._handlers: dict[str, CommandHandler] = {}
        self._outbox: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()  # (exchange, key, body)
        self._queue: AbstractQueue | None = None
        self._board_changed = asyncio.Event()

    # ------------------------------------------------------------------------------------ for calls
    async def register(self, call_id: str, handler: CommandHandler) -> None:
        """Route ``call.<call_id>`` commands to ``handler`` (bound now if connected, else on connect)."""
        self._handlers[call_id] = handler
        queue = self._queue
        if queue is not None:
            try:
                async with asyncio.timeout(5.0):
                    await queue.bind(wire.COMMAND_EXCHANGE, wire.call_key(call_id))
            except AMQP_FAILURES as exc:  # the connection is going: the next one binds it
                log.warning("handoff bind failed", extra={"error": repr(exc)})

    async def unregister(self, call_id: str) -> None:
        if self._handlers.pop(call_id, None) is None:
            return
        queue = self._queue
        if queue is not None:
            try:
                async with asyncio.timeout(5.0):
                    await queue.unbind(wire.COMMAND_EXCHANGE, wire.call_key(call_id))
            except AMQP_FAILURES as exc:
                log.warning("handoff unbind failed", extra={"error": repr(exc)})

    def announce(self, message: wire.BoardMessage) -> None:
        self._outbox.put_nowait((wire.BOARD_EXCHANGE, "", wire.encoder.encode(message)))

    def reply(self, reply_to: str, message: wire.Reply) -> None:
        if reply_to:
            self._outbox.put_nowait(("", reply_to, wire.encoder.encode(message)))

    def position(self, call_id: str) -> int | None:
        return self.board.position(call_id)

    async def wait_board_changed(self) -> None:
        self._board_changed.clear()
        await self._board_changed.wait()

    # ------------------------------------------------------------------------------------- the task
    async def _run(self) -> None:
        session: Session | None = None
        while not self._closing:
            session = await self._link.wait_session(after=session)
            try:
                await self._serve(session)
            except AMQP_FAILURES as exc:
                log.warning("handoff hub lost its channel", extra={"error": repr(exc)})
                session.abort(f"handoff hub: {exc!r}")
            finally:
                self._queue = None

    async def _serve(self, session: Session) -> None:
        channel = await session.channel(critical=False, confirms=False)
        try:
            async with asyncio.timeout(session.rpc_timeout_seconds):
                board = await channel.declare_exchange(wire.BOARD_EXCHANGE, aio_pika.ExchangeType.FANOUT)
                commands = await channel.declare_exchange(wire.COMMAND_EXCHANGE, aio_pika.ExchangeType.TOPIC)
                queue = await channel.declare_queue(
                    f"callhook.handoff.worker.{self.worker_id}", exclusive=True, auto_delete=True
                )
                await queue.bind(board)
                await queue.bind(commands, wire.QUERY_KEY)
                for call_id in list(self._handlers):
                    await queue.bind(commands, wire.call_key(call_id))
                await queue.consume(self._on_message, no_ack=True)
            self._queue = queue
            self._publish_presence()  # whatever waited here before a reconnect is announced again
            async with asyncio.TaskGroup() as tg:
                sender = tg.create_task(self._send(channel, board), name="handoff-outbox")
                beat = tg.create_task(self._heartbeat(), name="handoff-heartbeat")
                await session.wait_lost()
                sender.cancel()
                beat.cancel()
        finally:
            await close_quietly(channel)

    async def _send(self, channel: AbstractChannel, board: AbstractExchange) -> None:
        while True:
            exchange_name, key, body = await self._outbox.get()
            exchange = board if exchange_name else channel.default_exchange
            message = aio_pika.Message(body, content_type="application/json")
            try:
                await exchange.publish(message, key)
            except AMQP_FAILURES as exc:
                log.warning("handoff announcement dropped", extra={"error": repr(exc)})
                raise

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)  # the lease's period, not a poll
            self._publish_presence()
            if self.board.expire(time.monotonic()):
                self._board_changed.set()

    def _publish_presence(self) -> None:
        entries = [e for h in self._handlers.values() if (e := h.presence()) is not None]
        if entries or self._handlers:
            self.announce(
                wire.Presence(worker=self.worker_id, entries=entries, ttl_seconds=self.settings.ttl_seconds)
            )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if message.exchange == wire.BOARD_EXCHANGE:
            try:
                update = wire.board_decoder.decode(message.body)
            except msgspec.DecodeError:
                return
            if self.board.apply(update, time.monotonic()):
                self._board_changed.set()
            return
        try:
            command = wire.command_decoder.decode(message.body)
        except msgspec.DecodeError:
            log.warning("handoff command not understood")
            return
        if isinstance(command, wire.Query):
            self._publish_presence()
            return
        handler = self._handlers.get(command.call_id)
        if handler is None:
            refusal = wire.Refused(call_id=command.call_id, reason="gone", agent=command.agent)
            self.reply(message.reply_to or "", refusal)
            return
        handler.on_command(command, message.reply_to or "")
