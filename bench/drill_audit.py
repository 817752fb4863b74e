"""The drill's broker-side witness: what reached RabbitMQ, seen by the broker itself, not by callhook.

Two quorum queues in the drill's private vhost, consumed by the drill over its own connection, straight to
the broker (never through the proxies the faults cut):

- ``drill.audit.trace`` is bound to RabbitMQ's **firehose** (``rabbitmqctl trace_on -p <vhost>``): the broker
  copies every message published in the vhost to ``amq.rabbitmq.trace`` as ``publish.<exchange>`` and every
  delivery to a consumer as ``deliver.<queue>``, with the original body, properties, routing keys, the queues
  it was routed to and the publishing connection's address. The drill binds:

  ==================================  =====================================================================
  ``publish.``                        default exchange: the ingress storing a webhook in callhook.webhooks
                                      (``message_id`` = sha256 of the body, ``routed_queues``)
  ``publish.callhook.calls``          a router (or ownership) publishing a call event: type and call id
  ``publish.callhook.dead``           a poison webhook or event dead-lettered by callhook, with its reason
  ``deliver.callhook.calls.unclaimed`` an unowned call event handed to a worker (which one: the connection)
  ``deliver.callhook.calls.expired``
  ==================================  =====================================================================

  Binding a queue to ``callhook.calls`` itself is impossible without changing what it measures: a direct
  exchange with a binding for a call id no longer hands that call's events to its alternate exchange.
- ``drill.audit.events`` is bound to ``callhook.events`` with ``#``: every non-call webhook item
  (passthrough ``messages``, carrying the drill's markers) and every lifecycle event (``call.*``).

Quorum queues keep what they hold across a broker restart; the consumer reconnects by itself. The
connection address of a trace record (``127.0.0.1:<port> -> ...``) is attributed with the callback given
(the drill's proxies know the local ports of their upstream connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aio_pika.abc import AbstractIncomingMessage

from ingress import contract
from ingress.broker import declare_topology
from worker.amqp import AMQP_FAILURES, AmqpLink, Session, SessionServer
from worker.errors import TransientError
from worker.events import CallConnect, CallStatus, CallTerminate, HangupRequest, call_event_decoder

TRACE_EXCHANGE = "amq.rabbitmq.trace"
TRACE_QUEUE = "drill.audit.trace"
EVENTS_QUEUE = "drill.audit.events"
TRACE_KEYS = (
    "publish.",
    f"publish.{contract.CALLS_EXCHANGE}",
    f"publish.{contract.DEAD_EXCHANGE}",
    f"deliver.{contract.UNCLAIMED_QUEUE}",
    f"deliver.{contract.EXPIRED_QUEUE}",
)
MARKER = re.compile(rb"drill-[0-9a-f]+-[a-z]+-\d+")
_PORT = re.compile(r":(\d+) ->")
_TAGS: dict[type, str] = {CallConnect: "connect", CallTerminate: "terminate", CallStatus: "status"}


# How to run rabbitmqctl: the local broker's, or the local cluster's (``scripts/rabbitmq-cluster ctl``; its
# ``ctl-all`` for what is per node, as the firehose is).
LOCAL_CTL: tuple[str, ...] = ("rabbitmqctl",)


async def rabbitmqctl(*args: str, timeout_seconds: float = 60.0, ctl: Sequence[str] = LOCAL_CTL) -> str:
    """Run ``rabbitmqctl -q ARGS`` (the local broker, or ``ctl``); its output, or RuntimeError with its
    stderr."""
    process = await asyncio.create_subprocess_exec(
        *ctl, "-q", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(timeout_seconds):
        out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


@dataclass(frozen=True, slots=True)
class QueueDepth:
    messages: int
    ready: int
    unacked: int
    consumers: int


async def queue_depths(vhost: str, ctl: Sequence[str] = LOCAL_CTL) -> dict[str, QueueDepth]:
    out = await rabbitmqctl(
        "list_queues", "-p", vhost, "--no-table-headers",
        "name", "messages", "messages_ready", "messages_unacknowledged", "consumers", ctl=ctl,
    )  # fmt: skip
    depths: dict[str, QueueDepth] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 5 and parts[1].isdigit():
            depths[parts[0]] = QueueDepth(*(int(p) for p in parts[1:]))
    return depths


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message_id: str | None
    source: str  # x-callhook-dead-source, or "broker:<x-first-death-reason>"
    reason: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Delivered:
    at: float
    queue: str
    kind: str
    who: str  # the process whose connection consumed it


@dataclass
class AuditRecords:
    ingress_published: Counter[str] = field(default_factory=Counter)  # message_id -> publishes routed
    call_events: dict[tuple[str, str], list[tuple[float, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )  # (kind, call id) -> [(time, who)]
    dead_published: list[tuple[str | None, str]] = field(default_factory=list)  # (message_id, reason)
    intake: dict[str, list[Delivered]] = field(default_factory=lambda: defaultdict(list))  # call id ->
    markers: Counter[str] = field(default_factory=Counter)  # drill markers seen on callhook.events
    lifecycle: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    traced: int = 0
    events: int = 0
    undecodable: int = 0


class BrokerAudit:
    """``async with BrokerAudit(url, vhost, attribute) as audit:`` records into ``audit.records``."""

    def __init__(
        self,
        amqp_url: str,
        vhost: str,
        attribute: Callable[[int], str],
        *,
        ctl: Sequence[str] = LOCAL_CTL,
        trace_ctl: Sequence[str] = LOCAL_CTL,
    ) -> None:
        self._ctl = tuple(ctl)
        self._trace_ctl = tuple(trace_ctl)  # the firehose is per node: a cluster turns it on on each
        self._url = amqp_url
        self._vhost = vhost
        self._attribute = attribute
        self.records = AuditRecords()
        self._last_message = time.monotonic()
        self._stack = contextlib.AsyncExitStack()
        self._link: AmqpLink | None = None

    async def __aenter__(self) -> BrokerAudit:
        await self.trace_on()
        # Every node of the list, tried in turn on each reconnect (a robust connection to one node waits for
        # that node, and after a partition of it did not always restore its consumers), the consumers set up
        # again on every new connection.
        self._link = await self._stack.enter_async_context(
            AmqpLink(self._url, name="drill-audit", connect_timeout_seconds=2, retry_max_seconds=1)
        )
        consumer = await self._stack.enter_async_context(_AuditConsumer(self._link, self))
        async with asyncio.timeout(60):
            await consumer.ready.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self._stack.aclose()
        with contextlib.suppress(RuntimeError):
            await rabbitmqctl("trace_off", "-p", self._vhost, ctl=self._trace_ctl)

    async def trace_on(self) -> None:
        """Turn the firehose on for the vhost (again after a broker restart: idempotent)."""
        await rabbitmqctl("trace_on", "-p", self._vhost, ctl=self._trace_ctl)

    async def wait_drained(self, timeout_seconds: float = 60.0) -> None:
        """Until both audit queues are empty (everything the broker traced so far has been recorded)."""
        async with asyncio.timeout(timeout_seconds):
            while True:
                depths = await queue_depths(self._vhost, self._ctl)
                if all(
                    depths.get(q, QueueDepth(0, 0, 0, 0)).messages == 0 for q in (TRACE_QUEUE, EVENTS_QUEUE)
                ):
                    return
                await asyncio.sleep(0.5)  # a probe of another process's state; nothing announces it

    async def dead_letters(self) -> list[DeadLetter]:
        """Everything in ``callhook.dead`` (taken off the queue: the drill's vhost is thrown away after)."""
        assert self._link is not None
        async with asyncio.timeout(60):
            session = await self._link.wait_session()
        channel = await session.channel(critical=False)
        queue = await channel.declare_queue(contract.DEAD_QUEUE, passive=True)
        letters: list[DeadLetter] = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            headers = message.headers or {}
            source = _text(headers.get(contract.HEADER_DEAD_SOURCE))
            reason = _text(headers.get(contract.HEADER_DEAD_REASON))
            if not source:
                source = f"broker:{_text(headers.get('x-first-death-reason')) or '?'}"
                reason = _text(headers.get("x-first-death-queue"))
            letters.append(DeadLetter(message.message_id, source, reason, message.body))
        await channel.close()
        return letters

    # -- consumers --

    async def _on_trace(self, message: AbstractIncomingMessage) -> None:
        self._last_message = time.monotonic()
        records = self.records
        records.traced += 1
        headers = message.headers or {}
        key = message.routing_key or ""
        properties = headers.get("properties") or {}
        message_id = properties.get("message_id") if isinstance(properties, dict) else None
        who = self._who(headers.get("connection"))
        if key == "publish.":
            queues = headers.get("routed_queues")
            if isinstance(queues, list) and contract.WEBHOOKS_QUEUE in queues and isinstance(message_id, str):
                records.ingress_published[message_id] += 1
        elif key == f"publish.{contract.CALLS_EXCHANGE}":
            event = self._decode(message.body)
            if event is not None:
                records.call_events[(_TAGS.get(type(event), "other"), event.call_id)].append(
                    (time.time(), who)
                )
        elif key == f"publish.{contract.DEAD_EXCHANGE}":
            inner = properties.get("headers") if isinstance(properties, dict) else None
            reason = inner.get(contract.HEADER_DEAD_REASON, "") if isinstance(inner, dict) else ""
            records.dead_published.append((message_id if isinstance(message_id, str) else None, str(reason)))
        elif key.startswith("deliver."):
            event = self._decode(message.body)
            if event is not None:
                queue = key.removeprefix("deliver.")
                kind = _TAGS.get(type(event), "other")
                records.intake[event.call_id].append(Delivered(time.time(), queue, kind, who))
        await message.ack()

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        self._last_message = time.monotonic()
        records = self.records
        records.events += 1
        for marker in MARKER.findall(message.body):
            records.markers[marker.decode()] += 1
        if (message.routing_key or "").startswith("call."):
            try:
                event = json.loads(message.body)
            except ValueError:
                records.undecodable += 1
            else:
                if isinstance(event, dict) and isinstance(event.get("call_id"), str):
                    records.lifecycle[event["call_id"]].append(event)
        await message.ack()

    def _decode(self, body: bytes) -> CallConnect | CallTerminate | CallStatus | HangupRequest | None:
        try:
            return call_event_decoder.decode(body)
        except msgspec.DecodeError:
            self.records.undecodable += 1
            return None

    def _who(self, connection: object) -> str:
        if isinstance(connection, bytes):
            connection = connection.decode(errors="replace")
        if not isinstance(connection, str):
            return "?"
        match = _PORT.search(connection)
        return self._attribute(int(match.group(1))) if match else "?"


class _AuditConsumer(SessionServer):
    """Consumes both audit queues on each session of the audit's link."""

    def __init__(self, link: AmqpLink, audit: BrokerAudit) -> None:
        super().__init__("drill-audit", link, "drill audit")
        self._audit = audit
        self.ready = asyncio.Event()

    async def _serve(self, session: Session) -> None:
        channel = await session.channel(prefetch=500, confirms=False)
        try:
            async with asyncio.timeout(session.rpc_timeout_seconds * 3):
                await declare_topology(channel)
                quorum = {"x-queue-type": "quorum"}
                trace = await channel.declare_queue(TRACE_QUEUE, durable=True, arguments=quorum)
                for key in TRACE_KEYS:
                    await trace.bind(TRACE_EXCHANGE, routing_key=key)
                events = await channel.declare_queue(EVENTS_QUEUE, durable=True, arguments=quorum)
                await events.bind(contract.EVENTS_EXCHANGE, routing_key="#")
                await trace.consume(self._audit._on_trace)
                await events.consume(self._audit._on_event)
        except AMQP_FAILURES as exc:
            raise TransientError(f"audit consumers: {exc!r}") from exc
        self.ready.set()
        await session.wait_lost()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)
