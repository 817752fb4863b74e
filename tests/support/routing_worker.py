"""A small real worker process for the multi-process routing tests, and the client that drives it.

The process (``python -m tests.support.routing_worker --amqp-url URL``) runs the production router and
ownership on its own connections, with a handler that records instead of answering calls: it claims, reads
each mailbox, acks, and releases a call (as a tombstone) when its terminate arrives. It writes one JSON object
per line to stdout:

    {"ready": true, "pid": 123}
    {"claimed": "<call id>", "direction": "incoming", "received_at": 1700000000.1}
    {"fenced": "<call id>"}        (the answer marker holds its record and the connect is settled)
    {"event": "status", "call_id": "<call id>", "status": "ringing", "attempt": 0, "delivered_at": ...}
    {"released": "<call id>"}      {"lost": "<call id>"}
    {"stale": "<call id>"}         {"overflow": "<call id>"}      {"abandoned": "<call id>"}
    {"orphan": "status", "call_id": "<call id>"}
    {"reply": "claim", "call_id": "<call id>", "ok": true}          {"reply": "metrics", "metrics": {...}}

and reads JSON commands from stdin: ``{"cmd": "claim", "call_id": ...}`` (claim like an outgoing call),
``{"cmd": "metrics"}``. End of stdin stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Self

from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------- process side


class RecordingHandler:
    """A CallHandler that writes down what it was given instead of running calls."""

    def __init__(self, emit: Callable[[dict[str, Any]], None], tg: asyncio.TaskGroup) -> None:
        self._emit = emit
        self._tg = tg

    async def on_incoming(self, claim: Any, event: Any, received_at: float) -> None:
        self._emit({"claimed": claim.call_id, "direction": event.direction, "received_at": received_at})
        # As a worker that answers at once: fence (before pre_accept), then settle the connect (accepted).
        await claim.fence()
        await claim.settle()
        self._emit({"fenced": claim.call_id})
        self.follow(claim)

    async def on_abandoned(self, event: Any) -> None:
        self._emit({"abandoned": event.call_id})

    async def on_stale(self, event: Any) -> None:
        self._emit({"stale": event.call_id})

    async def on_overflow(self, event: Any) -> None:
        self._emit({"overflow": event.call_id})

    async def on_orphan(self, event: Any) -> None:
        from worker.ownership import event_kind

        self._emit({"orphan": event_kind(event), "call_id": event.call_id})

    def follow(self, claim: Any) -> None:
        self._tg.create_task(self._read(claim))

    async def _read(self, claim: Any) -> None:
        from worker.events import CallTerminate
        from worker.ownership import ClaimLost, event_kind

        try:
            async for item in claim:
                record = {"event": event_kind(item.event), "call_id": claim.call_id, "attempt": item.attempt}
                record["status"] = getattr(item.event, "status", None)
                record["received_at"] = item.received_at
                record["delivered_at"] = time.time()
                self._emit(record)
                await item.ack()
                if isinstance(item.event, CallTerminate):
                    await claim.release()
                    self._emit({"released": claim.call_id})
        except ClaimLost:
            self._emit({"lost": claim.call_id})
            await claim.release()


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _snapshot(registry: CollectorRegistry) -> dict[str, float]:
    """Counter and gauge samples as ``name{label=value,...}`` -> value."""
    out: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith(("_created", "_bucket")):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


async def _commands(ownership: Any, handler: RecordingHandler, registry: CollectorRegistry) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        if command["cmd"] == "claim":
            claim = await ownership.claim(command["call_id"])
            _emit({"reply": "claim", "call_id": command["call_id"], "ok": claim is not None})
            if claim is not None:
                handler.follow(claim)
        elif command["cmd"] == "metrics":
            _emit({"reply": "metrics", "metrics": _snapshot(registry)})


async def _serve(args: argparse.Namespace) -> None:
    from worker.amqp import AmqpLink
    from worker.metrics import WorkerMetrics
    from worker.ownership import Ownership, OwnershipSettings
    from worker.router import Router

    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    settings = OwnershipSettings(
        capacity=args.capacity,
        tombstone_seconds=args.tombstone_seconds,
        max_attempts=args.max_attempts,
    )
    async with AsyncExitStack() as stack:
        tg = await stack.enter_async_context(asyncio.TaskGroup())
        handler = RecordingHandler(_emit, tg)
        router_link = await stack.enter_async_context(AmqpLink(args.amqp_url, name=f"{args.name}-router"))
        owner_link = await stack.enter_async_context(AmqpLink(args.amqp_url, name=f"{args.name}-owner"))
        ownership = await stack.enter_async_context(Ownership(owner_link, handler, metrics, settings))
        router = None
        if not args.no_router:
            router = await stack.enter_async_context(Router(router_link, metrics))
        async with asyncio.timeout(30):
            await ownership.wait_ready()
            if router is not None:
                await router.wait_consuming()
        _emit({"ready": True, "pid": os.getpid()})
        await _commands(ownership, handler, registry)
        # Leaving the stack closes the router, ownership (claims become lost: the readers end), the links.


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--name", default="worker")
    parser.add_argument("--capacity", type=int, default=500)
    parser.add_argument("--tombstone-seconds", type=float, default=120.0)
    parser.add_argument("--max-attempts", type=int, default=8)
    parser.add_argument("--no-router", action="store_true", help="ownership only")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    asyncio.run(_serve(args))


# ----------------------------------------------------------------------------------------------- test side


class WorkerProcess:
    """Runs the process above and collects its records; waits are event-driven (stdout lines), bounded."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.records: list[dict[str, Any]] = []
        self.changed = asyncio.Event()  # set on every record (callers clear it before they look)
        self._changed = asyncio.Condition()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, amqp_url: str, *, name: str, wait_seconds: float = 30.0, **options: Any) -> Self:
        argv = [sys.executable, "-m", "tests.support.routing_worker", "--amqp-url", amqp_url, "--name", name]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            argv += [flag] if value is True else [flag, str(value)]
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        worker = cls(process, name)
        try:
            await worker.wait_for(lambda r: r.get("ready") is True, wait_seconds=wait_seconds)
        except BaseException:
            await worker.kill()
            raise
        return worker

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            async with self._changed:
                self.records.append(json.loads(line))
                self.changed.set()
                self._changed.notify_all()
        async with self._changed:
            self.changed.set()
            self._changed.notify_all()

    @property
    def exited(self) -> bool:
        return self._reader.done()

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, count: int = 1, wait_seconds: float = 20.0
    ) -> list[dict[str, Any]]:
        """The first ``count`` records matching ``predicate``, waiting for them as lines arrive."""

        def matches() -> list[dict[str, Any]]:
            return [r for r in self.records if predicate(r)]

        async with asyncio.timeout(wait_seconds), self._changed:
            while len(found := matches()) < count:
                if self._reader.done():
                    raise RuntimeError(f"worker {self.name} exited (code {self.process.returncode})")
                await self._changed.wait()
        return found[:count]

    def claimed(self) -> set[str]:
        return {r["claimed"] for r in self.records if "claimed" in r}

    def fenced(self) -> set[str]:
        return {r["fenced"] for r in self.records if "fenced" in r}

    def events(self, call_id: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("call_id") == call_id and "event" in r]

    async def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()

    async def claim(self, call_id: str) -> bool:
        seen = len([r for r in self.records if r.get("reply") == "claim" and r["call_id"] == call_id])
        await self.send({"cmd": "claim", "call_id": call_id})
        replies = await self.wait_for(
            lambda r: r.get("reply") == "claim" and r["call_id"] == call_id, count=seen + 1
        )
        return bool(replies[-1]["ok"])

    async def metrics(self) -> dict[str, float]:
        seen = len([r for r in self.records if r.get("reply") == "metrics"])
        await self.send({"cmd": "metrics"})
        replies = await self.wait_for(lambda r: r.get("reply") == "metrics", count=seen + 1)
        metrics: dict[str, float] = replies[-1]["metrics"]
        return metrics

    async def kill(self) -> None:
        """SIGKILL: no goodbye to the broker; the kernel closes the sockets."""
        if self.process.returncode is None:
            self.process.kill()
        await self._finish()

    async def stop(self, wait_seconds: float = 10.0) -> None:
        """End of stdin: the worker closes its connections and exits."""
        if self.process.returncode is None and self.process.stdin is not None:
            self.process.stdin.close()
        try:
            async with asyncio.timeout(wait_seconds):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
        await self._finish()

    async def _finish(self) -> None:
        await self.process.wait()
        async with asyncio.timeout(10):
            await self._reader


async def until(predicate: Callable[[], bool], *workers: WorkerProcess, wait_seconds: float = 20.0) -> None:
    """Wait until ``predicate()`` holds, re-checking whenever any of ``workers`` writes a record."""
    async with asyncio.timeout(wait_seconds):
        while True:
            for worker in workers:
                worker.changed.clear()
            if predicate():
                return
            if any(w.exited for w in workers):
                raise RuntimeError("a worker exited")
            waits = [asyncio.ensure_future(w.changed.wait()) for w in workers]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()


if __name__ == "__main__":
    main()
