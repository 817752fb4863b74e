"""The whole of callhook on this machine as real processes, for the demo, end-to-end tests, benches, drills.

``System`` starts ``callhook ingress`` and one or more ``callhook worker`` processes against a RabbitMQ vhost,
with every setting pointed at 127.0.0.1 (the simulator's Graph API, loopback-only ICE candidates). Readiness
is the processes' own ``/readyz`` (broker connected, consumers running), as Kubernetes would see it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

# Credentials of a throw-away local deployment (the simulator plays Meta), never of a real one.
APP_SECRET = "local-app-secret"  # noqa: S105
ACCESS_TOKEN = "local-access-token"  # noqa: S105
VERIFY_TOKEN = "local-verify-token"  # noqa: S105
ROOT = Path(__file__).resolve().parents[1]


def broker_reachable(host: str = "127.0.0.1", port: int = 5672) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def ensure_broker(timeout_seconds: float = 90.0) -> None:
    """Start the local RabbitMQ if it is installed but not running, and wait until it takes connections."""
    if broker_reachable():
        return
    if shutil.which("rabbitmq-server") is None:
        raise RuntimeError("RabbitMQ is not reachable on 127.0.0.1:5672 and is not installed "
                           "(Debian/Ubuntu: apt-get install rabbitmq-server)")  # fmt: skip
    subprocess.run(["rabbitmq-server", "-detached"], capture_output=True, check=False)
    deadline = time.monotonic() + timeout_seconds
    while not broker_reachable():
        if time.monotonic() > deadline:
            raise RuntimeError(f"RabbitMQ did not come up within {timeout_seconds:.0f} s")
        time.sleep(0.5)  # the broker boots in seconds; nothing to wait on but its port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def wait_exit(self, timeout_seconds: float) -> int:
        return self.popen.wait(timeout_seconds)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class System:
    amqp_url: str
    graph_url: str
    log_dir: Path
    workers: int = 2
    worker_env: Mapping[str, str] = field(default_factory=dict)
    ingress_env: Mapping[str, str] = field(default_factory=dict)
    ingress: Process | None = None
    worker_processes: list[Process] = field(default_factory=list)

    @property
    def webhook_url(self) -> str:
        assert self.ingress is not None
        return f"{self.ingress.url}/webhook"

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLHOOK_")}
        env.update(
            CALLHOOK_AMQP_URL=self.amqp_url,
            CALLHOOK_APP_SECRETS=APP_SECRET,
            CALLHOOK_VERIFY_TOKEN=VERIFY_TOKEN,
            CALLHOOK_ACCESS_TOKEN=ACCESS_TOKEN,
            CALLHOOK_GRAPH_URL=self.graph_url,
            CALLHOOK_ICE_HOST_ADDRESSES="127.0.0.1",
            CALLHOOK_ICE_PEER_NETWORKS="127.0.0.0/8",  # a browser's other candidates get no answer
            CALLHOOK_LOG_FORMAT="json",
            CALLHOOK_LOG_LEVEL="info",
            PYTHONUNBUFFERED="1",
        )
        return env

    def _spawn(self, name: str, command: str, env: dict[str, str], port: int) -> Process:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "callhook", command],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return Process(name, popen, port, log_path)

    def start_ingress(self) -> Process:
        port = free_port()
        env = self.base_env() | {"CALLHOOK_INGRESS_HOST": "127.0.0.1", "CALLHOOK_INGRESS_PORT": str(port)}
        self.ingress = self._spawn("ingress", "ingress", env | dict(self.ingress_env), port)
        return self.ingress

    def start_worker(self, **env_overrides: str) -> Process:
        port = free_port()
        env = self.base_env() | {"CALLHOOK_METRICS_HOST": "127.0.0.1", "CALLHOOK_METRICS_PORT": str(port)}
        env |= dict(self.worker_env) | env_overrides
        process = self._spawn(f"worker-{len(self.worker_processes)}", "worker", env, port)
        self.worker_processes.append(process)
        return process

    async def start(self) -> System:
        self.start_ingress()
        for _ in range(self.workers):
            self.start_worker()
        await self.wait_ready()
        return self

    async def wait_ready(self, timeout_seconds: float = 30.0) -> None:
        processes = [p for p in [self.ingress, *self.worker_processes] if p is not None and p.alive()]
        async with aiohttp.ClientSession() as http, asyncio.timeout(timeout_seconds):
            await asyncio.gather(*(wait_ready(http, p) for p in processes))

    async def stop(self, timeout_seconds: float = 30.0) -> None:
        processes = [p for p in [*self.worker_processes, self.ingress] if p is not None]
        for process in processes:
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_seconds
        for process in processes:
            try:
                await asyncio.to_thread(process.wait_exit, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                await asyncio.to_thread(process.wait_exit, 5)

    async def __aenter__(self) -> System:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def wait_ready(http: aiohttp.ClientSession, process: Process) -> None:
    """Ask ``/readyz`` until it says yes: the process's own readiness, as a kubelet would ask it."""
    while True:
        if not process.alive():
            raise RuntimeError(
                f"{process.name} exited with {process.popen.returncode}:\n{process.log()[-3000:]}"
            )
        try:
            async with http.get(f"{process.url}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)  # a readiness probe's interval, not a synchronisation guess


async def scrape(http: aiohttp.ClientSession, process: Process) -> dict[str, float]:
    """The process's Prometheus samples, ``name{labels}`` -> value."""
    async with http.get(f"{process.url}/metrics") as response:
        text = await response.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples
