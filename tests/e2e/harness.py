"""What the end-to-end tests drive: callhook as real processes and the simulator (Meta) in the test process.

A :class:`Deployment` is one :class:`tests.support.system.System` (``callhook ingress`` plus
``callhook worker`` processes on a private vhost, everything on 127.0.0.1) and one
:class:`simulator.sim.Simulator` whose Graph API the workers call and whose phones are real aiortc peers.
Tests talk to it through the simulator's handles and waits, and read the workers' own Prometheus metrics.
Conditions that nothing announces (a counter in another process, a readiness flip) are re-read on a probe
interval, like a kubelet or Prometheus would, always under a bounded timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from simulator.config import CallTiming, SimulatorConfig
from simulator.sim import SimulatedCall, Simulator
from tests.support.system import ACCESS_TOKEN, APP_SECRET, Process, System, free_port, wait_ready

T = TypeVar("T")

PROBE_SECONDS = 0.05  # how often an unannounced condition is re-read
WAIT_SECONDS = 20.0  # the default bound of every wait

# Systems alive right now, so a failing test can show their processes' logs (see conftest.py).
ACTIVE: list[System] = []

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Samples:
    """One scrape of a process's /metrics: ``name{labels}`` -> value, with label-aware lookups."""

    raw: Mapping[str, float]

    def value(self, name: str, **labels: str) -> float:
        """The sum of every sample of ``name`` whose labels include ``labels`` (0.0 when there is none)."""
        total = 0.0
        for key, value in self.raw.items():
            sample_name, _, label_text = key.partition("{")
            if sample_name != name:
                continue
            found = dict(_LABEL.findall(label_text))
            if all(found.get(k) == v for k, v in labels.items()):
                total += value
        return total


@dataclass
class Deployment:
    system: System
    sim: Simulator
    http: aiohttp.ClientSession
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def workers(self) -> list[Process]:
        return [p for p in self.system.worker_processes if p.alive()]

    # ---------------------------------------------------------------------------------------- processes
    async def start_worker(self, **env: str) -> Process:
        """One more worker process (settings ``CALLHOOK_*`` as keyword arguments), returned once ready."""
        process = self.system.start_worker(**env)
        async with asyncio.timeout(WAIT_SECONDS):
            await wait_ready(self.http, process)
        return process

    async def wait_not_ready(self, process: Process, timeout: float = WAIT_SECONDS) -> None:  # noqa: ASYNC109
        """Until the process's /readyz answers 503 (draining), as a kubelet's probe would see it."""
        async with asyncio.timeout(timeout):
            while True:
                async with self.http.get(f"{process.url}/readyz") as response:
                    if response.status == 503:
                        return
                await asyncio.sleep(PROBE_SECONDS)

    async def wait_exit(self, process: Process, timeout: float = WAIT_SECONDS) -> int:  # noqa: ASYNC109
        return await asyncio.to_thread(process.wait_exit, timeout)

    async def stop_worker(self, process: Process, timeout: float = WAIT_SECONDS) -> int:  # noqa: ASYNC109
        process.signal(signal.SIGTERM)
        return await self.wait_exit(process, timeout)

    # ------------------------------------------------------------------------------------------ metrics
    async def samples(self, process: Process) -> Samples:
        async with self.http.get(f"{process.url}/metrics") as response:
            text = await response.text()
        raw: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                raw[key] = float(value)
        return Samples(raw)

    async def values(
        self, name: str, processes: Iterable[Process] | None = None, **labels: str
    ) -> list[float]:
        """``name{labels}`` of each worker (default: the live ones), in order."""
        chosen = list(self.workers if processes is None else processes)
        scraped = await asyncio.gather(*(self.samples(p) for p in chosen))
        return [s.value(name, **labels) for s in scraped]

    async def wait_values(
        self,
        name: str,
        reached: Callable[[list[float]], bool],
        processes: Iterable[Process] | None = None,
        timeout: float = WAIT_SECONDS,  # noqa: ASYNC109 - a bounded wait is the API
        **labels: str,
    ) -> list[float]:
        """Re-scrape until ``reached(values)``; TimeoutError (with the last values) after ``timeout``."""
        chosen = list(self.workers if processes is None else processes)
        try:
            return await poll(lambda: self.values(name, chosen, **labels), reached, timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"{name}{labels or ''}: {exc}") from None

    def log_records(self, call_id: str, **fields: object) -> list[dict[str, Any]]:
        """The workers' JSON log records about ``call_id`` that carry every one of ``fields``."""
        records = []
        for process in self.system.worker_processes:
            for line in process.log().splitlines():
                if call_id not in line:
                    continue
                record = json.loads(line)
                if record.get("call_id") == call_id and all(record.get(k) == v for k, v in fields.items()):
                    records.append(record)
        return records

    # -------------------------------------------------------------------------------------------- calls
    async def place_calls(self, count: int) -> list[SimulatedCall]:
        return [await self.sim.place_call(from_=f"1555{next(self._numbers):07d}") for _ in range(count)]


async def poll(
    read: Callable[[], Awaitable[T]],
    reached: Callable[[T], bool],
    timeout: float = WAIT_SECONDS,  # noqa: ASYNC109 - a bounded wait is the API
) -> T:
    """Re-read a value nothing announces until ``reached(value)``; TimeoutError (with the last value)."""
    last: T | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = await read()
                if reached(last):
                    return last
                await asyncio.sleep(PROBE_SECONDS)  # a probe's interval, not a synchronisation guess
    except TimeoutError:
        raise TimeoutError(f"condition not reached; last value {last!r}") from None


async def all_of(*waits: object) -> None:
    """Run several bounded waits together; the first failure is raised (the others are cancelled)."""
    async with asyncio.TaskGroup() as tg:
        for wait in waits:
            tg.create_task(wait)  # type: ignore[arg-type]


@asynccontextmanager
async def deploy(
    amqp_url: str,
    log_dir: Path,
    *,
    workers: int,
    worker_env: Mapping[str, str] | None = None,
    timing: CallTiming | None = None,
    ingress_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Deployment]:
    """Start ingress + ``workers`` workers + the simulator; stop them in reverse (workers drain first, while
    the simulator still answers their Graph requests)."""
    graph_port = free_port()
    system = System(
        amqp_url=amqp_url,
        graph_url=f"http://127.0.0.1:{graph_port}",
        log_dir=log_dir,
        workers=workers,
        worker_env=dict(worker_env or {}),
        ingress_env=dict(ingress_env or {}),
    )
    config = SimulatorConfig(
        app_secret=APP_SECRET,
        access_token=ACCESS_TOKEN,
        ice_host_addresses=("127.0.0.1",),
        timing=timing or CallTiming(),
        random_seed=1,
    )
    ACTIVE.append(system)
    try:
        async with (
            system,
            aiohttp.ClientSession() as http,
            Simulator(config, ingress_url=system.webhook_url, graph_port=graph_port) as sim,
        ):
            try:
                yield Deployment(system, sim, http)
            finally:
                await system.stop()  # workers drain while Meta's side still answers
    finally:
        ACTIVE.remove(system)
