"""The broker contract between the ingress and the workers: names, headers, queue arguments.

Standard library only, so that anything (the ingress, the worker, tests, the Helm chart's tests) can import it
without dragging a broker client in. Queue arguments live here as constants because RabbitMQ refuses a second
declaration of a queue whose arguments differ: every process must declare exactly the same thing.

Topology (see docs/architecture.md)::

    ingress ──▶ [callhook.webhooks] (quorum) ──router──▶ callhook.calls (direct, key = call id)
                      │ delivery limit                      │ bound: callhook.call.<id> (owner's mailbox)
                      ▼                                     │ unbound: alternate exchange
                 callhook.dead ◀── poison                   ▼
                                                  callhook.unclaimed (fanout) ──▶ [callhook.calls.unclaimed]
                                                                                       │ TTL, dead-letter
                                                                                       ▼
                                                                               [callhook.calls.expired]
    router ──▶ callhook.events (topic, key = change field or call.*) ──▶ integrators' queues
    [callhook.calls.retry] : TTL, dead-letters back into callhook.calls (events that beat their owner)
    [callhook.dials]       : outgoing call commands, taken by a worker with free capacity
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

# Exchanges
CALLS_EXCHANGE: Final = "callhook.calls"
UNCLAIMED_EXCHANGE: Final = "callhook.unclaimed"
EVENTS_EXCHANGE: Final = "callhook.events"
DEAD_EXCHANGE: Final = "callhook.dead"

# Queues
WEBHOOKS_QUEUE: Final = "callhook.webhooks"
DEAD_QUEUE: Final = "callhook.dead"
UNCLAIMED_QUEUE: Final = "callhook.calls.unclaimed"
EXPIRED_QUEUE: Final = "callhook.calls.expired"
RETRY_QUEUE: Final = "callhook.calls.retry"
DIALS_QUEUE: Final = "callhook.dials"
# Meta's recordings and transcripts of ended calls (worker/media_ready.py): one consumer at a time
# (single active consumer), so a duplicate is always judged after its twin, against a broker-held marker.
MEDIA_QUEUE: Final = "callhook.media"
MEDIA_SEEN_PREFIX: Final = "callhook.media.seen."
MAILBOX_PREFIX: Final = "callhook.call."
# Quorum queues since the cluster drill (a classic marker died with its node); a new prefix, so a marker of
# the classic era never meets a quorum declare (PRECONDITION_FAILED) during a rolling upgrade.
ANSWER_MARKER_PREFIX: Final = "callhook.answered."

# Message headers (AMQP header table keys)
HEADER_RECEIVED_AT: Final = "x-callhook-received-at"  # float unix seconds at the ingress
HEADER_APP_SECRET_ID: Final = "x-callhook-app-secret-id"  # noqa: S105 - a header name: which secret matched
HEADER_DEAD_REASON: Final = "x-callhook-dead-reason"  # why a message was dead-lettered by callhook
HEADER_DEAD_SOURCE: Final = "x-callhook-dead-source"  # which stage dead-lettered it
HEADER_ATTEMPT: Final = "x-callhook-attempt"  # delayed-retry count of a call event
HEADER_REQUEST_ID: Final = "x-callhook-request-id"  # id of a dial request (API or CLI)

WEBHOOK_CONTENT_TYPE: Final = "application/json"

# Timing constants baked into queue arguments (identical in every process, see module docstring).
WEBHOOK_DELIVERY_LIMIT: Final = 5
# Unclaimed call events expire a little before Meta's shortest answer window (30 s), leaving time to reject.
UNCLAIMED_TTL_MS: Final = 20_000
# Events of a call whose owner has not claimed it yet (outgoing call: webhook before the connect response).
RETRY_DELAY_MS: Final = 250
RETRY_MAX_ATTEMPTS: Final = 8
# A call's mailbox (and its answer marker) outlives its owner's connection: it is deleted by the broker only
# after it went this long without a consumer (``x-expires``), well after Meta's longest ring (60 s) and any
# broker cut a call can ride out. A live owner consumes it, so it never expires under a running call.
MAILBOX_EXPIRES_MS: Final = 600_000


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    arguments: dict[str, str | int] = field(default_factory=dict)
    bind_to: str | None = None
    routing_key: str = ""


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    name: str
    kind: str  # direct | fanout | topic
    arguments: dict[str, str | int] = field(default_factory=dict)


Arguments = dict[str, str | int]


def _quorum(extra: Arguments | None = None) -> Arguments:
    return {"x-queue-type": "quorum", **(extra or {})}


def _dead_lettered(extra: Arguments) -> Arguments:
    # at-least-once dead-lettering needs reject-publish overflow (RabbitMQ >= 3.10).
    return _quorum(
        {
            "x-dead-letter-exchange": DEAD_EXCHANGE,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            **extra,
        }
    )


EXCHANGES: Final[tuple[ExchangeSpec, ...]] = (
    ExchangeSpec(DEAD_EXCHANGE, "fanout"),
    ExchangeSpec(UNCLAIMED_EXCHANGE, "fanout"),
    ExchangeSpec(CALLS_EXCHANGE, "direct", {"alternate-exchange": UNCLAIMED_EXCHANGE}),
    ExchangeSpec(EVENTS_EXCHANGE, "topic"),
)

QUEUES: Final[tuple[QueueSpec, ...]] = (
    QueueSpec(DEAD_QUEUE, _quorum(), bind_to=DEAD_EXCHANGE),
    QueueSpec(WEBHOOKS_QUEUE, _dead_lettered({"x-delivery-limit": WEBHOOK_DELIVERY_LIMIT})),
    QueueSpec(EXPIRED_QUEUE, _quorum()),
    QueueSpec(
        UNCLAIMED_QUEUE,
        _quorum(
            {
                "x-message-ttl": UNCLAIMED_TTL_MS,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": EXPIRED_QUEUE,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
        ),
        bind_to=UNCLAIMED_EXCHANGE,
    ),
    QueueSpec(
        RETRY_QUEUE,
        _quorum(
            {
                "x-message-ttl": RETRY_DELAY_MS,
                "x-dead-letter-exchange": CALLS_EXCHANGE,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
        ),
    ),
    QueueSpec(DIALS_QUEUE, _dead_lettered({"x-delivery-limit": WEBHOOK_DELIVERY_LIMIT})),
    QueueSpec(
        MEDIA_QUEUE,
        _dead_lettered({"x-delivery-limit": WEBHOOK_DELIVERY_LIMIT, "x-single-active-consumer": True}),
    ),
)


_QUEUE_NAME_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
_MAX_QUEUE_NAME_BYTES = 255


def mailbox_arguments(expires_ms: int = MAILBOX_EXPIRES_MS) -> Arguments:
    """Arguments of a call's mailbox: classic, deleted once unused for ``expires_ms``."""
    return {"x-queue-type": "classic", "x-expires": expires_ms}


def answer_marker_arguments(expires_ms: int = MAILBOX_EXPIRES_MS) -> Arguments:
    """Arguments of a call's answer marker: a quorum queue (replicated: it outlives any one broker node,
    and its record is read through its Raft leader), deleted once unused for ``expires_ms``."""
    return {"x-queue-type": "quorum", "x-expires": expires_ms}


def answer_marker_queue(call_id: str) -> str:
    """Name of the queue whose messages say "this call may have been answered" (see docs/routing.md)."""
    return _per_call_name(ANSWER_MARKER_PREFIX, call_id)


def mailbox_queue(call_id: str) -> str:
    """Name of the queue that is a call's mailbox; owning the call is consuming it exclusively.

    Meta's call ids are base64 (``wacid.HBgL...AA==``) and AMQP clients accept only ``[A-Za-z0-9-_.:]`` in
    queue names, so every other character (and ``:`` itself) is written ``:XX`` (its UTF-8 bytes in hex): a
    one-to-one mapping, readable for the ids Meta really sends. Ids too long for a queue name are hashed.
    """
    return _per_call_name(MAILBOX_PREFIX, call_id)


def _per_call_name(prefix: str, call_id: str) -> str:
    escaped = "".join(c if c in _QUEUE_NAME_SAFE else _escape(c) for c in call_id)
    name = prefix + escaped
    if len(name) > _MAX_QUEUE_NAME_BYTES:
        name = prefix + "sha256:" + hashlib.sha256(call_id.encode()).hexdigest()
    return name


def _escape(char: str) -> str:
    return "".join(f":{byte:02X}" for byte in char.encode())


def broker_urls(setting: str) -> tuple[str, ...]:
    """The brokers of ``CALLHOOK_AMQP_URL``: one URL, or several separated by commas (the nodes of a cluster
    without a load balancer in front), tried in turn on every (re)connect."""
    return tuple(url.strip() for url in setting.split(",") if url.strip())


def message_id(body: bytes) -> str:
    """Meta's retries of one delivery carry the same bytes, so they share this id."""
    return hashlib.sha256(body).hexdigest()


def secret_id(secret: str) -> str:
    """A short, non-reversible tag telling which configured app secret matched (never the secret)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]
