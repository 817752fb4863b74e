"""CALLHOOK_AMQP_URL as a list of brokers (the nodes of a cluster without a load balancer in front)."""

from __future__ import annotations

import pytest

from callhook.env import ConfigError
from ingress import config as ingress_config
from ingress.contract import broker_urls
from worker import config as worker_config

NODES = (
    "amqp://u:secret-pw@10.0.0.1:5672/vh, amqp://u:secret-pw@10.0.0.2:5672/vh,amqp://u:secret-pw@10.0.0.3/vh"
)
INGRESS = {
    "CALLHOOK_APP_SECRETS": "app-secret-one-0123456789",
    "CALLHOOK_VERIFY_TOKEN": "verify-token-xyz-0123456789",
}


def test_a_list_is_split_in_order_and_one_url_is_a_list_of_one() -> None:
    assert broker_urls(NODES) == (
        "amqp://u:secret-pw@10.0.0.1:5672/vh",
        "amqp://u:secret-pw@10.0.0.2:5672/vh",
        "amqp://u:secret-pw@10.0.0.3/vh",
    )
    assert broker_urls("amqp://rabbit/") == ("amqp://rabbit/",)
    assert broker_urls("amqp://a/,,") == ("amqp://a/",)


def test_both_processes_accept_a_list_and_redact_every_password() -> None:
    ingress = ingress_config.load({**INGRESS, "CALLHOOK_AMQP_URL": NODES})
    assert broker_urls(ingress.amqp_url) == broker_urls(NODES)
    assert "secret-pw" not in ingress.amqp_url_redacted
    assert ingress.amqp_url_redacted.count("amqp://") == 3
    worker = worker_config.load(
        {"CALLHOOK_AMQP_URL": NODES, "CALLHOOK_ACCESS_TOKEN": "test-access-token-0123456789"}
    )
    assert broker_urls(worker.amqp_url) == broker_urls(NODES)


@pytest.mark.parametrize("value", ["amqp://a/,http://b/", "amqp://a/,", "amqp://a/, nonsense"])
def test_every_url_of_a_list_is_checked(value: str) -> None:
    with pytest.raises(ConfigError, match="CALLHOOK_AMQP_URL"):
        ingress_config.load({**INGRESS, "CALLHOOK_AMQP_URL": value})
