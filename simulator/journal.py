"""What the simulator saw and did, with timestamps, and event-driven waiting on it.

Every Graph API request is a :class:`GraphRequest` (receive time from ``time.time()``, action, call id, HTTP
status, Meta error code, fault), every webhook POST a :class:`Delivery` with its :class:`Attempt`\\ s and
the exact bytes of its first body. Benches join the two: "connect webhook first sent"
(:meth:`Journal.connect_sent_at`) to "pre_accept received" (:meth:`Journal.first_request`) is the business's
setup latency.

:class:`Changes` is the one waiting primitive: whoever changes state calls ``notify()`` (synchronous, so pure
callbacks can do it) and waiters re-check their predicate; there is no polling and every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


class Changes:
    """A broadcast "something changed": ``notify()`` wakes every ``wait_for`` to re-check its predicate."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], T | None], timeout: float | None) -> T:  # noqa: ASYNC109 - a bounded wait is the API
        """The first truthy value of ``predicate()``; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                result = predicate()
                if result:
                    return result
                await self._event.wait()


@dataclass(slots=True)
class GraphRequest:
    received_at: float  # time.time() when the request arrived
    method: str
    path: str
    action: str  # calls action, "messages" or "call_permissions"; "" if the body had none
    phone_number_id: str
    call_id: str | None = None
    to: str | None = None
    http_status: int = 0
    error_code: int | None = None
    fault: str | None = None
    responded_at: float | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.http_status < 300


@dataclass(slots=True)
class Attempt:
    number: int
    sent_at: float
    finished_at: float | None = None
    http_status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300


@dataclass(slots=True)
class Delivery:
    """One webhook body POSTed (and retried) to the ingress."""

    id: int
    kinds: tuple[str, ...]  # "connect", "terminate", "status:RINGING", "message", one per update
    call_ids: tuple[str | None, ...]
    body: bytes  # the exact bytes of the first attempt
    created_at: float
    duplicate_of: int | None = None
    attempts: list[Attempt] = field(default_factory=list)
    delivered_at: float | None = None
    gave_up: bool = False

    @property
    def first_sent_at(self) -> float | None:
        return self.attempts[0].sent_at if self.attempts else None

    def has(self, kind: str, call_id: str | None = None) -> bool:
        return any(
            k == kind and (call_id is None or c == call_id)
            for k, c in zip(self.kinds, self.call_ids, strict=True)
        )


@dataclass(frozen=True, slots=True)
class StateChange:
    at: float
    call_id: str
    state: str
    reason: str | None = None


class Journal:
    def __init__(self) -> None:
        self.requests: list[GraphRequest] = []
        self.deliveries: list[Delivery] = []
        self.states: list[StateChange] = []
        self.changes = Changes()

    def record_request(self, request: GraphRequest) -> None:
        self.requests.append(request)
        self.changes.notify()

    def record_delivery(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.changes.notify()

    def record_state(self, change: StateChange) -> None:
        self.states.append(change)
        self.changes.notify()

    def touched(self) -> None:
        """A recorded object changed in place (an attempt finished, a response was sent)."""
        self.changes.notify()

    # Queries
    def graph_requests(self, action: str | None = None, call_id: str | None = None) -> list[GraphRequest]:
        return [
            r
            for r in self.requests
            if (action is None or r.action == action) and (call_id is None or r.call_id == call_id)
        ]

    def first_request(self, call_id: str, action: str) -> GraphRequest | None:
        return next((r for r in self.requests if r.call_id == call_id and r.action == action), None)

    def deliveries_of(self, kind: str | None = None, call_id: str | None = None) -> list[Delivery]:
        if kind is None:
            return [d for d in self.deliveries if call_id is None or call_id in d.call_ids]
        return [d for d in self.deliveries if d.has(kind, call_id)]

    def connect_sent_at(self, call_id: str) -> float | None:
        """When the first POST carrying this call's ``connect`` left the simulator (setup latency's zero)."""
        times = [
            d.first_sent_at for d in self.deliveries_of("connect", call_id) if d.first_sent_at is not None
        ]
        return min(times) if times else None

    async def wait_for_request(
        self,
        action: str,
        *,
        call_id: str | None = None,
        timeout: float | None = 10.0,  # noqa: ASYNC109 - a bounded wait is the API
    ) -> GraphRequest:
        """The first answered request with this action (and call id), waiting for it if needed."""

        def answered() -> GraphRequest | None:
            return next(
                (
                    r
                    for r in self.requests
                    if r.action == action and (call_id is None or r.call_id == call_id) and r.http_status
                ),
                None,
            )

        return await self.changes.wait_for(answered, timeout)

    async def wait_for_delivery(
        self,
        kind: str,
        *,
        call_id: str | None = None,
        timeout: float | None = 10.0,  # noqa: ASYNC109 - a bounded wait is the API
    ) -> Delivery:
        """The first delivery with an update of ``kind`` that the receiver acknowledged (2xx)."""

        def delivered() -> Delivery | None:
            return next(
                (d for d in self.deliveries if d.has(kind, call_id) and d.delivered_at is not None), None
            )

        return await self.changes.wait_for(delivered, timeout)
