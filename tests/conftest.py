from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import rabbit


@pytest.fixture(scope="session")
def broker() -> None:
    """The real RabbitMQ on 127.0.0.1:5672, started if installed but not running."""
    rabbit.ensure_broker()


@pytest.fixture(scope="module")
def amqp_url(broker: None) -> Iterator[str]:
    """An AMQP URL of a fresh virtual host private to this test module, deleted afterwards."""
    vhost = rabbit.create_vhost()
    try:
        yield rabbit.amqp_url(vhost)
    finally:
        rabbit.delete_vhost(vhost)
