"""The ingress's settings: defaults, every problem reported at once, secrets kept out of sight."""

from __future__ import annotations

import dataclasses

import pytest

from callhook.cli import check_config
from callhook.env import ConfigError
from ingress.config import DEFAULT_AMQP_URL, IngressConfig, load

REQUIRED = {"CALLHOOK_APP_SECRETS": "app-secret-one-0123", "CALLHOOK_VERIFY_TOKEN": "verify-token-xyz"}


def test_defaults() -> None:
    config = load(REQUIRED)
    assert config.app_secrets == ("app-secret-one-0123",)
    assert config.verify_token == "verify-token-xyz"
    assert config.amqp_url == DEFAULT_AMQP_URL == "amqp://guest:guest@127.0.0.1:5672/"
    assert (config.host, config.port) == ("0.0.0.0", 8080)
    assert 3_000_000 < config.max_body_bytes <= 4_000_000  # a little above Meta's 3 MB
    assert (config.log_level, config.log_format) == ("info", "json")
    assert config.publish_confirm_timeout_seconds < 20  # Meta gives up after about 20 s


def test_everything_set() -> None:
    config = load(
        {
            "CALLHOOK_APP_SECRETS": " one-0123456789ab , two-0123456789ab,three-0123456789a ",
            "CALLHOOK_VERIFY_TOKEN": "t-0123456789abcd",
            "CALLHOOK_AMQP_URL": "amqps://u:p@broker.example:5671/vh",
            "CALLHOOK_INGRESS_HOST": "127.0.0.1",
            "CALLHOOK_INGRESS_PORT": "9000",
            "CALLHOOK_MAX_BODY_BYTES": "1000",
            "CALLHOOK_MAX_INFLIGHT_REQUESTS": "10",
            "CALLHOOK_LOG_LEVEL": "DEBUG",
            "CALLHOOK_LOG_FORMAT": "console",
            "CALLHOOK_PUBLISH_CONFIRM_TIMEOUT_SECONDS": "2.5",
            "CALLHOOK_CONNECT_TIMEOUT_SECONDS": "3",
            "CALLHOOK_RECONNECT_INITIAL_SECONDS": "0.05",
            "CALLHOOK_RECONNECT_MAX_SECONDS": "1",
            "CALLHOOK_SHUTDOWN_DELAY_SECONDS": "0",
            "CALLHOOK_SHUTDOWN_GRACE_SECONDS": "30",
        }
    )
    assert config == IngressConfig(
        app_secrets=("one-0123456789ab", "two-0123456789ab", "three-0123456789a"),
        verify_token="t-0123456789abcd",
        amqp_url="amqps://u:p@broker.example:5671/vh",
        host="127.0.0.1",
        port=9000,
        max_body_bytes=1000,
        max_inflight_requests=10,
        log_level="debug",
        log_format="console",
        publish_confirm_timeout_seconds=2.5,
        connect_timeout_seconds=3.0,
        reconnect_initial_seconds=0.05,
        reconnect_max_seconds=1.0,
        shutdown_delay_seconds=0.0,
        shutdown_grace_seconds=30.0,
    )


def test_one_error_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            {
                "CALLHOOK_APP_SECRETS": " , ",
                "CALLHOOK_AMQP_URL": "http://broker",
                "CALLHOOK_INGRESS_PORT": "eighty",
                "CALLHOOK_MAX_BODY_BYTES": "0",
                "CALLHOOK_LOG_FORMAT": "xml",
                "CALLHOOK_PUBLISH_CONFIRM_TIMEOUT_SECONDS": "soon",
                "CALLHOOK_RECONNECT_INITIAL_SECONDS": "2",
                "CALLHOOK_RECONNECT_MAX_SECONDS": "1",
            }
        )
    problems = "\n".join(caught.value.problems)
    for name in (
        "CALLHOOK_APP_SECRETS",
        "CALLHOOK_VERIFY_TOKEN",
        "CALLHOOK_AMQP_URL",
        "CALLHOOK_INGRESS_PORT",
        "CALLHOOK_MAX_BODY_BYTES",
        "CALLHOOK_LOG_FORMAT",
        "CALLHOOK_PUBLISH_CONFIRM_TIMEOUT_SECONDS",
        "CALLHOOK_RECONNECT_MAX_SECONDS",
    ):
        assert name in problems
    assert len(caught.value.problems) == 8


def test_duplicate_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load({**REQUIRED, "CALLHOOK_APP_SECRETS": "same-secret,same-secret"})
    assert "same-secret" not in str(caught.value)


def test_secrets_never_show_in_repr() -> None:
    config = load({**REQUIRED, "CALLHOOK_AMQP_URL": "amqp://user:broker-password@rabbit:5672/vh"})
    shown = repr(config) + str(config)
    for secret in ("app-secret-one", "verify-token-xyz", "broker-password"):
        assert secret not in shown
    assert "broker-password" not in config.amqp_url_redacted
    assert config.amqp_url_redacted == "amqp://rabbit:5672/vh"


def test_frozen() -> None:
    config = load(REQUIRED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


def test_check_config_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config("ingress", REQUIRED) == 0
    assert check_config("ingress", {}) == 1
    err = capsys.readouterr().err
    assert "CALLHOOK_APP_SECRETS" in err
    assert "CALLHOOK_VERIFY_TOKEN" in err
