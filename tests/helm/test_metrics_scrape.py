"""A real ingress and a real worker, started as the image starts them (`python -m callhook <name>`), serve
the probe paths the chart points at, and their /metrics carry every metric of theirs the chart's PromQL uses
(test_metrics_names shows that every metric the PromQL uses is declared by one of the two).

Each process gets a private RabbitMQ vhost, free ports on 127.0.0.1 and ICE restricted to loopback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helm import chart as c
from tests.helm import exported
from tests.support.system import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

STARTUP_SECONDS = 45.0
SHUTDOWN_SECONDS = 30.0


@dataclass
class Running:
    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def get(self, path: str) -> tuple[int, str, str]:
        """(status, content type, body) of a GET; (0, "", error) when nothing answers yet."""
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=2) as response:  # noqa: S310 (loopback)
                return response.status, response.headers.get("Content-Type", ""), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode(errors="replace")
        except OSError as exc:
            return 0, "", str(exc)

    def wait_for(self, path: str, status: int, timeout: float = STARTUP_SECONDS) -> None:
        """Poll ``path`` until it answers ``status``; the process dying or the deadline fails the test."""
        deadline = time.monotonic() + timeout
        last: tuple[int, str, str] = (0, "", "")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.output()}")
            last = self.get(path)
            if last[0] == status:
                return
            time.sleep(0.05)  # an external process: nothing to await but its HTTP answer
        pytest.fail(f"{self.name} {path}: wanted {status}, last {last[0]} {last[2][:200]}\n{self.output()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=SHUTDOWN_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"{self.name} ignored SIGTERM for {SHUTDOWN_SECONDS} s:\n{self.output()}")


@contextmanager
def start(name: str, env: dict[str, str], port: int, log_dir: Path) -> Iterator[Running]:
    log = log_dir / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "callhook", name],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=c.ROOT,
        )
    running = Running(name, process, f"http://127.0.0.1:{port}", log)
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def base_env(amqp_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLHOOK_")}
    env.update(
        CALLHOOK_AMQP_URL=amqp_url,
        CALLHOOK_LOG_FORMAT="json",
        CALLHOOK_LOG_LEVEL="info",
        CALLHOOK_APP_SECRETS="scrape-app-secret-0123",  # start-up refuses secrets under 16 characters
        CALLHOOK_VERIFY_TOKEN="scrape-verify-token-0123",
        CALLHOOK_ACCESS_TOKEN="scrape-access-token-0123",
        CALLHOOK_GRAPH_URL="http://127.0.0.1:9",
        CALLHOOK_ICE_HOST_ADDRESSES="127.0.0.1",
    )
    return env


@pytest.mark.parametrize(
    ("component", "port_settings"),
    [
        ("ingress", ("CALLHOOK_INGRESS_HOST", "CALLHOOK_INGRESS_PORT")),
        ("worker", ("CALLHOOK_METRICS_HOST", "CALLHOOK_METRICS_PORT")),
    ],
)
def test_process_serves_probes_and_the_metrics_the_chart_uses(
    amqp_url: str, observability: c.Rendered, tmp_path: Path, component: str, port_settings: tuple[str, str]
) -> None:
    port = free_port()
    host_setting, port_setting = port_settings
    env = base_env(amqp_url) | {host_setting: "127.0.0.1", port_setting: str(port)}
    with start(component, env, port, tmp_path) as running:
        # The chart's probes: liveness on /healthz, readiness on /readyz (ready once the broker is there).
        running.wait_for("/healthz", 200)
        running.wait_for("/readyz", 200)
        status, content_type, body = running.get("/metrics")
        assert status == 200, status
        assert content_type.startswith("text/plain"), content_type
        scraped = exported.series_of(exported.families_of_scrape(body))
        declared = exported.series_of(exported.families_of_component(f"{component}.metrics"))
        assert declared.keys() <= scraped.keys(), f"{component} does not register its metrics class"
        used = {metric for _, e in c.promql_expressions(observability) for metric in e.metrics}
        ours = used & declared.keys()
        assert ours, f"the chart uses none of the {component}'s metrics"
        assert ours <= scraped.keys(), f"not exported: {sorted(ours - scraped.keys())}"
        # It stops cleanly on SIGTERM (what Kubernetes sends), well inside the chart's grace period.
        assert running.stop() == 0, running.output()
