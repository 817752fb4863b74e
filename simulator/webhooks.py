"""Webhook delivery as Meta does it: signed POSTs of exact bytes, retried with backoff, misbehaving on demand.

:meth:`WebhookSender.submit` takes one :class:`~simulator.payloads.Update`; the sender turns it (alone, or
batched with others) into a body, signs it with the app secret (``X-Hub-Signature-256``, plus the legacy
``X-Hub-Signature``), POSTs it to the ingress and retries on any non-2xx answer, connection error or timeout,
with exponential backoff and jitter, up to ``max_attempts``. :class:`~simulator.config.DeliverySwitches` adds
Meta's habits on demand: duplicates (the same bytes again after a success), connect webhooks held back so
later events overtake them, batches of several updates per POST, connect webhooks stamped in the past, and a
delay on everything. Each POST and attempt is journalled; the first attempt's send time of a connect webhook
is where setup latency starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from simulator import payloads
from simulator.config import DeliveryConfig, DeliverySwitches
from simulator.journal import Attempt, Delivery, Journal

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], object]
USER_AGENT = "facebookexternalua"


class WebhookSender:
    """Delivers updates to one ingress URL. ``async with`` opens and closes its HTTP session."""

    def __init__(
        self,
        *,
        url: str,
        app_secret: str,
        config: DeliveryConfig,
        switches: DeliverySwitches,
        journal: Journal,
        spawn: Spawn,
        rng: random.Random,
    ) -> None:
        self.url = url
        self.switches = switches
        self._secret = app_secret
        self._config = config
        self._journal = journal
        self._spawn = spawn
        self._rng = rng
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._batch: list[tuple[payloads.Update, asyncio.Future[None]]] = []
        self._batch_timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> WebhookSender:
        connector = aiohttp.TCPConnector(limit=self._config.concurrency)
        self._session = aiohttp.ClientSession(connector=connector)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def stamp(self, kind: str, now: float) -> int:
        """The ``timestamp`` of a new update of ``kind``: now, or long ago when the stale switch fires."""
        switches = self.switches
        if kind == "connect" and switches.stale_fraction and self._rng.random() < switches.stale_fraction:
            return int(now - switches.stale_seconds)
        return int(now)

    def submit(self, update: payloads.Update) -> asyncio.Future[None]:
        """Queue ``update`` for delivery; the future resolves when the first POST carrying it got an answer
        (any answer, or a connection error), which is what "sent before the HTTP response" waits on."""
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._spawn(self._route(update, answered))
        return answered

    async def _route(self, update: payloads.Update, answered: asyncio.Future[None]) -> None:
        switches = self.switches  # the switches in force when the update was submitted apply to it
        hold = switches.delay_seconds
        if (
            update.kind == "connect"
            and switches.reorder_fraction
            and self._rng.random() < switches.reorder_fraction
        ):
            hold += switches.reorder_seconds
        if hold > 0:
            await asyncio.sleep(hold)  # the switch's whole point: this update leaves later
        if switches.batch_size > 1:
            self._add_to_batch(update, answered, switches)
        else:
            await self._deliver([update], [answered], switches)

    def _add_to_batch(
        self, update: payloads.Update, answered: asyncio.Future[None], switches: DeliverySwitches
    ) -> None:
        self._batch.append((update, answered))
        if len(self._batch) >= switches.batch_size:
            self._flush_batch()
        elif self._batch_timer is None:
            loop = asyncio.get_running_loop()
            self._batch_timer = loop.call_later(switches.batch_window_seconds, self._flush_batch)

    def _flush_batch(self) -> None:
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        items, self._batch = self._batch, []
        if items:
            self._spawn(self._deliver([u for u, _ in items], [f for _, f in items], self.switches))

    async def _deliver(
        self,
        updates: list[payloads.Update],
        answered: list[asyncio.Future[None]],
        switches: DeliverySwitches,
    ) -> None:
        body = payloads.encode(payloads.envelope(updates), escape_slashes=self._config.escape_slashes)
        delivery = Delivery(
            id=next(self._ids),
            kinds=payloads.kinds(updates),
            call_ids=tuple(u.call_id for u in updates),
            body=body,
            created_at=time.time(),
        )
        self._journal.record_delivery(delivery)
        delivered = await self._post(delivery, answered)
        if delivered and switches.duplicate_fraction and self._rng.random() < switches.duplicate_fraction:
            if switches.duplicate_delay_seconds > 0:
                await asyncio.sleep(switches.duplicate_delay_seconds)
            duplicate = dataclasses.replace(
                delivery, id=next(self._ids), created_at=time.time(), duplicate_of=delivery.id, attempts=[]
            )
            duplicate.delivered_at = None
            self._journal.record_delivery(duplicate)
            await self._post(duplicate, [])

    async def _post(self, delivery: Delivery, answered: list[asyncio.Future[None]]) -> bool:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Hub-Signature-256": payloads.signature(delivery.body, self._secret),
            "X-Hub-Signature": payloads.signature_sha1(delivery.body, self._secret),
        }
        for number in range(1, self._config.max_attempts + 1):
            attempt = Attempt(number=number, sent_at=time.time())
            delivery.attempts.append(attempt)
            self._journal.touched()
            await self._attempt(delivery.body, headers, attempt)
            for future in answered:
                if not future.done():
                    future.set_result(None)
            if attempt.ok:
                delivery.delivered_at = attempt.finished_at
                self._journal.touched()
                return True
            self._journal.touched()
            if number < self._config.max_attempts:
                await asyncio.sleep(self._backoff(number))  # Meta's retry schedule, shortened
        delivery.gave_up = True
        self._journal.touched()
        log.warning("webhook delivery %s gave up after %s attempts", delivery.id, self._config.max_attempts)
        return False

    async def _attempt(self, body: bytes, headers: dict[str, str], attempt: Attempt) -> None:
        if self._session is None:
            raise RuntimeError("WebhookSender is closed")
        timeout = aiohttp.ClientTimeout(total=self._config.timeout_seconds)
        try:
            async with self._session.post(self.url, data=body, headers=headers, timeout=timeout) as response:
                await response.read()
                attempt.http_status = response.status
        except aiohttp.ClientError as exc:
            attempt.error = f"{type(exc).__name__}: {exc}"
        except TimeoutError:
            attempt.error = f"timeout after {self._config.timeout_seconds}s"
        attempt.finished_at = time.time()

    def _backoff(self, attempt_number: int) -> float:
        base = self._config.retry_initial_seconds * 2.0 ** (attempt_number - 1)
        return min(self._config.retry_max_seconds, base) * self._rng.uniform(0.8, 1.2)
