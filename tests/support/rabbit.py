"""A private RabbitMQ virtual host per test module, so tests never see each other's queues.

The topology's names are fixed by the contract; isolation comes from vhosts instead. ``rabbitmqctl`` runs
locally (CI and developers are root on the same machine as the broker).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from urllib.parse import quote

BROKER_HOST = "127.0.0.1"
BROKER_PORT = 5672


def ensure_broker() -> None:
    """Start the local RabbitMQ if it is installed but not running (the demo does the same)."""
    from simulator.local import ensure_broker as ensure

    ensure()


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)


def create_vhost(prefix: str = "callhook-test") -> str:
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    _ctl("add_vhost", name)
    _ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return name


def delete_vhost(name: str) -> None:
    _ctl("delete_vhost", name)


def amqp_url(vhost: str, host: str = BROKER_HOST, port: int = BROKER_PORT) -> str:
    return f"amqp://guest:guest@{host}:{port}/{quote(vhost, safe='')}"
