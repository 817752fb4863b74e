"""Helpers shared by the call benchmarks (setup_latency, capacity): vhosts, percentiles, tables, probes.

Import it as ``from _common import ...`` (each bench runs as a script from ``bench/``); importing it puts the
repository root on ``sys.path`` so the benches can use ``tests.support`` and the simulator.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import re
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support import rabbit  # noqa: E402

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
Samples = Mapping[str, float]


def machine() -> str:
    return (
        f"python {platform.python_version()}, {os.cpu_count()} CPUs ({platform.machine()}), "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )


@contextmanager
def private_vhost(prefix: str) -> Iterator[str]:
    """The AMQP URL of a fresh RabbitMQ virtual host, deleted afterwards (the broker is shared)."""
    rabbit.ensure_broker()
    vhost = rabbit.create_vhost(prefix)
    try:
        yield rabbit.amqp_url(vhost)
    finally:
        rabbit.delete_vhost(vhost)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def ratio(value: float, baseline: float) -> str:
    if math.isnan(value) or math.isnan(baseline) or baseline <= 0:
        return "-"
    return f"{value / baseline:.1f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ Prometheus samples
def sample(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        sample_name, _, label_text = key.partition("{")
        if sample_name == name and all(
            dict(_LABEL.findall(label_text)).get(k) == v for k, v in labels.items()
        ):
            total += value
    return total


def histogram_quantile(before: Samples, after: Samples, name: str, q: float, **labels: str) -> float:
    """The ``q`` quantile (0..1) of what a histogram observed between two scrapes, as the upper bound of the
    bucket it falls in (Prometheus buckets: an upper bound, never an interpolation). NaN if nothing."""
    buckets: dict[float, float] = {}
    for key in after:
        sample_name, _, label_text = key.partition("{")
        if sample_name != f"{name}_bucket":
            continue
        found = dict(_LABEL.findall(label_text))
        if any(found.get(k) != v for k, v in labels.items()):
            continue
        bound = math.inf if found["le"] == "+Inf" else float(found["le"])
        buckets[bound] = buckets.get(bound, 0.0) + after[key] - before.get(key, 0.0)
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return math.nan
    for bound in sorted(buckets):
        if buckets[bound] >= q * total:
            return bound
    return math.inf


def histogram_mean(before: Samples, after: Samples, name: str, **labels: str) -> float:
    count = sample(after, f"{name}_count", **labels) - sample(before, f"{name}_count", **labels)
    total = sample(after, f"{name}_sum", **labels) - sample(before, f"{name}_sum", **labels)
    return total / count if count > 0 else math.nan


# ------------------------------------------------------------------------------------------ loop lag
class LagProbe:
    """How late this process's event loop wakes a sleeper, sampled every ``interval_seconds`` (the same
    measure as the worker's ``callhook_event_loop_lag_seconds``). ``async with LagProbe() as probe:``."""

    def __init__(self, interval_seconds: float = 0.01) -> None:
        self.interval_seconds = interval_seconds
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LagProbe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def reset(self) -> None:
        self.samples = []

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.interval_seconds
            await asyncio.sleep(self.interval_seconds)
            self.samples.append(max(0.0, loop.time() - expected))


def wait_ready(port: int, timeout_seconds: float = 30.0) -> None:
    """Until ``http://127.0.0.1:<port>/readyz`` answers 200 (a server process the bench started)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server on {port} not ready after {timeout_seconds} s")
        time.sleep(0.05)
