"""A private RabbitMQ virtual host per test module, so tests never see each other's queues.

The topology's names are fixed by the contract; isolation comes from vhosts instead. ``rabbitmqctl`` runs
locally (CI and developers are root on the same machine as the broker).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from urllib.parse import quote

BROKER_HOST = "127.0.0.1"
BROKER_PORT = 5672


def broker_reachable(timeout_seconds: float = 1.0) -> bool:
    try:
        with socket.create_connection((BROKER_HOST, BROKER_PORT), timeout=timeout_seconds):
            return True
    except OSError:
        return False


def ensure_broker() -> None:
    """Start the local RabbitMQ if it is installed but not running, and wait until it takes connections."""
    if broker_reachable():
        return
    if shutil.which("rabbitmq-server") is None:
        raise RuntimeError("RabbitMQ is not reachable on 127.0.0.1:5672 and rabbitmq-server is not installed")
    subprocess.run(["rabbitmq-server", "-detached"], check=False, capture_output=True)  # noqa: S607
    subprocess.run(["rabbitmqctl", "wait", "--timeout", "60", "--pid", "0"], check=False, capture_output=True)  # noqa: S607
    deadline = time.monotonic() + 60
    while not broker_reachable():
        if time.monotonic() > deadline:
            raise RuntimeError("RabbitMQ did not come up within 60 s")
        time.sleep(0.2)


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)  # noqa: S607


def create_vhost(prefix: str = "callhook-test") -> str:
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    _ctl("add_vhost", name)
    _ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return name


def delete_vhost(name: str) -> None:
    _ctl("delete_vhost", name)


def amqp_url(vhost: str, host: str = BROKER_HOST, port: int = BROKER_PORT) -> str:
    return f"amqp://guest:guest@{host}:{port}/{quote(vhost, safe='')}"
