"""``Idempotency-Key`` for the integrator API, held by plain RabbitMQ. Pure: names, records and arguments.

RabbitMQ has no key-value store and, without a plugin, no message de-duplication, but it has one atomic
"first writer wins" primitive: a queue with ``x-max-length: 1`` and ``x-overflow: reject-publish`` accepts
(confirms) the first message published into it and refuses (nacks) every further one while that message is
there. ``x-message-ttl`` ends the record after the retention time and ``x-expires`` removes the empty queue.
Every ingress replica declares the same queue with the same arguments, so this works across replicas.

Two such markers are used per key (docs/security.md):

* ``callhook.idem.<sha256(key)>`` (the ingress): holds the first request's fingerprint and request id. A
  retry with the same key and the same request gets the same request id (and the dial is published again:
  the first publish may have timed out); the same key with a different request is a 422.
* ``callhook.dialed.<request id>`` (the worker): taken just before a dial is started. A second copy of the
  same dial (a replay above, or two replicas racing) finds it taken and is dropped: one key, one call.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Final

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
HEADER_IDEMPOTENT: Final = "x-callhook-idempotent"  # on a dial message: it came with a key, dedupe it
HEADER_TTL: Final = (
    "x-callhook-idempotency-ttl"  # seconds the ingress keeps keys: the worker's marker lives as long
)
DEFAULT_TTL_SECONDS: Final = 86_400
KEY_QUEUE_PREFIX: Final = "callhook.idem."
DIALED_QUEUE_PREFIX: Final = "callhook.dialed."
# Printable ASCII, no spaces: what clients put there (UUIDs, ULIDs, hashes).
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_EXPIRES_MARGIN_MS: Final = 3_600_000


class IdempotencyKeyError(ValueError):
    """The ``Idempotency-Key`` header is not usable; the message says why."""


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise IdempotencyKeyError(
            "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces"
        )
    return key


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def key_queue(key: str) -> str:
    return KEY_QUEUE_PREFIX + _digest("key", key)


def request_id(operation: str, key: str) -> str:
    """The request id of a keyed request: derived from the key, so every retry (on any replica) shares it."""
    return f"{operation}-{_digest('request', operation, key)[:32]}"


def dialed_queue(dial_request_id: str) -> str:
    return DIALED_QUEUE_PREFIX + _digest("dialed", dial_request_id)


def fingerprint(operation: str, fields: dict[str, object]) -> str:
    """What makes two requests "the same": the operation and its effective, normalised fields."""
    return _digest(operation, json.dumps(fields, sort_keys=True, separators=(",", ":")))


def marker_arguments(ttl_seconds: int) -> dict[str, str | int]:
    """Arguments of both marker queues (identical in every process: RabbitMQ refuses different ones)."""
    ttl_ms = ttl_seconds * 1000
    return {
        "x-queue-type": "classic",
        "x-max-length": 1,
        "x-overflow": "reject-publish",
        "x-message-ttl": ttl_ms,
        "x-expires": ttl_ms + _EXPIRES_MARGIN_MS,
    }


@dataclass(frozen=True, slots=True)
class Record:
    """What the key's queue holds: enough to answer a retry exactly like the first request."""

    fingerprint: str
    request_id: str
    requested_at: float

    def encode(self) -> bytes:
        return json.dumps(
            {
                "fingerprint": self.fingerprint,
                "request_id": self.request_id,
                "requested_at": self.requested_at,
            }
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Record:
        data = json.loads(raw)
        return cls(str(data["fingerprint"]), str(data["request_id"]), float(data["requested_at"]))
