"""The worker's small HTTP server (/healthz, /readyz, /metrics) and its event-loop lag probe."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from worker.metrics import WorkerMetrics

READY_KEY: web.AppKey[Callable[[], bool]] = web.AppKey("ready")
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    if request.app[READY_KEY]():
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready\n")


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class HealthServer:
    """Serves health and metrics on ``host:port``; ``ready`` is asked on every /readyz."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, ready: Callable[[], bool]) -> None:
        self._host, self._port = host, port
        self._app = web.Application()
        self._app[READY_KEY] = ready
        self._app[REGISTRY_KEY] = registry
        self._app.router.add_get("/healthz", _healthz)
        self._app.router.add_get("/readyz", _readyz)
        self._app.router.add_get("/metrics", _metrics)
        self._runner = web.AppRunner(self._app, access_log=None)
        self.port: int = port

    async def __aenter__(self) -> HealthServer:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the real port when 0 was asked for
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


async def watch_loop_lag(metrics: WorkerMetrics, interval_seconds: float = 0.25) -> None:
    """Sample how late the loop wakes a sleeper; runs until cancelled (owned by the service's TaskGroup)."""
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + interval_seconds
        await asyncio.sleep(interval_seconds)
        metrics.loop_lag.observe(max(0.0, loop.time() - expected))
