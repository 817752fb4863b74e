"""The console's side of RabbitMQ: the board (every waiting call, from the owners' announcements), commands
to a call's owner, and the replies.

One exclusive queue per console process, ``callhook.console.<id>``: bound to the board exchange, and the
``reply_to`` of every command this console sends. Commands are published ``mandatory`` on
``callhook.handoff`` with the call's key: when no worker has that key bound (the call ended, its worker
died) the broker returns the message and the agent is told at once that the call is gone.

On every (re)connection the console asks every worker for its presence (``query``), so a console that starts,
or comes back, rebuilds the board from the owners within one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import aio_pika
import msgspec
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from aio_pika.exceptions import DeliveryError
from aiormq.exceptions import AMQPError

from worker.handoff import wire
from worker.handoff.board import Board

log = logging.getLogger(__name__)

TAKEN_REMEMBERED = 1000


class ConsoleBroker:
    def __init__(
        self,
        url: str,
        *,
        on_board: Callable[[], None],
        on_reply: Callable[[wire.Reply], None],
        timeout_seconds: float = 10.0,
    ) -> None:
        self._url = url
        self._on_board = on_board
        self._on_reply = on_reply
        self._timeout = timeout_seconds
        self.reply_queue = f"callhook.console.{uuid.uuid4().hex[:12]}"
        self.board = Board()
        self.taken: dict[str, str] = {}  # call id -> agent, the last TAKEN_REMEMBERED takes
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._commands: AbstractExchange | None = None
        self._changed = asyncio.Event()
        self._expiry: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._connection = await aio_pika.connect_robust(
            self._url, client_properties={"connection_name": "callhook-console"}
        )
        channel = self._channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        board = await channel.declare_exchange(wire.BOARD_EXCHANGE, aio_pika.ExchangeType.FANOUT)
        self._commands = await channel.declare_exchange(wire.COMMAND_EXCHANGE, aio_pika.ExchangeType.TOPIC)
        queue = await channel.declare_queue(self.reply_queue, exclusive=True, auto_delete=True)
        await queue.bind(board)
        await queue.consume(self._on_message, no_ack=True)
        self._connection.reconnect_callbacks.add(self._reconnected)
        self._expiry = asyncio.get_running_loop().create_task(self._expire(), name="console-board-expiry")
        await self.query()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        if self._connection is not None:
            await self._connection.close()

    def _reconnected(self, *_: Any) -> None:
        task = asyncio.get_running_loop().create_task(self.query())  # one publish, bounded
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def query(self) -> None:
        """Ask every worker to announce its waiting calls now."""
        await self.send(wire.Query(), key=wire.QUERY_KEY)

    async def send(self, command: wire.Command, *, key: str | None = None) -> bool:
        """Publish a command to its call's owner; False when nobody owns the call (or the broker failed)."""
        assert self._commands is not None
        routing_key = key or wire.call_key(getattr(command, "call_id", ""))
        message = aio_pika.Message(
            wire.encoder.encode(command), content_type="application/json", reply_to=self.reply_queue
        )
        try:
            async with asyncio.timeout(self._timeout):
                await self._commands.publish(message, routing_key, mandatory=key is None)
        except DeliveryError:
            return False  # returned: no worker has the call's key bound
        except (AMQPError, ConnectionError, TimeoutError) as exc:
            log.warning("console command not sent", extra={"error": repr(exc)})
            return False
        return True

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if message.exchange == wire.BOARD_EXCHANGE:
            try:
                update = wire.board_decoder.decode(message.body)
            except msgspec.DecodeError:
                return
            if isinstance(update, wire.Taken):
                self.taken[update.call_id] = update.agent  # a late take of it is told "taken", not "gone"
                while len(self.taken) > TAKEN_REMEMBERED:
                    del self.taken[next(iter(self.taken))]
            if self.board.apply(update, time.monotonic()):
                self._changed.set()
                self._on_board()
            return
        try:
            reply = wire.reply_decoder.decode(message.body)
        except msgspec.DecodeError:
            return
        self._on_reply(reply)

    async def _expire(self) -> None:
        """Drop entries whose owner went silent (a killed worker), when their lease runs out."""
        while True:
            self._changed.clear()
            expiry = self.board.next_expiry()
            timeout = None if expiry is None else max(0.0, expiry - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
            if self.board.expire(time.monotonic()):
                self._on_board()
