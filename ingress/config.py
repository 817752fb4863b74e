"""The ingress's settings: one frozen object parsed once from an environment mapping.

Secrets (the app secrets, the verify token and the AMQP URL, which carries a password) are excluded from
``repr``; log :attr:`IngressConfig.amqp_url_redacted` instead of the URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from yarl import URL

from callhook.env import APP_NAME, EnvReader

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
# Meta's bodies are "at most about 3 MB"; leave headroom so a legitimate large batch is never refused.
DEFAULT_MAX_BODY_BYTES = 3_500_000
# Shortest secrets accepted at start-up (Meta's app secrets are 32 hex digits).
MIN_SECRET_CHARS = 16
MIN_API_TOKEN_CHARS = 20
_ASCII_DIGITS = re.compile(r"[0-9]{1,32}")


@dataclass(frozen=True, slots=True)
class IngressConfig:
    app_secrets: tuple[str, ...] = field(repr=False)
    verify_token: str = field(repr=False)
    amqp_url: str = field(default=DEFAULT_AMQP_URL, repr=False)
    host: str = "0.0.0.0"
    port: int = 8080
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # More concurrent requests than this are answered 503 at once: bounds memory (bodies are held until
    # confirmed) and keeps latency from collapsing under overload; Meta retries.
    max_inflight_requests: int = 2_000
    log_level: str = "info"
    log_format: str = "json"
    # broker
    publish_confirm_timeout_seconds: float = 5.0
    connect_timeout_seconds: float = 5.0
    reconnect_initial_seconds: float = 0.2
    reconnect_max_seconds: float = 5.0
    # shutdown: readiness fails at once; the listener stays open for shutdown_delay_seconds (so load balancers
    # stop sending), then in-flight requests get up to shutdown_grace_seconds before the broker is closed.
    shutdown_delay_seconds: float = 2.0
    shutdown_grace_seconds: float = 10.0
    # integrator API (/v1/calls): disabled while no token is configured
    api_tokens: tuple[str, ...] = field(default=(), repr=False)
    phone_number_id: str = ""  # the business number dials use when the request names none
    # --- hardening (docs/security.md) ---
    # The names of the apps a dial may ask for (CALLHOOK_APPS; names only, the specs are the worker's);
    # "echo" is always allowed. Anything else is a 400: an API caller never chooses what code runs.
    app_names: frozenset[str] = frozenset({"echo"})
    # The integrator API and /metrics on a listener of their own (CALLHOOK_API_PORT); None: webhook port.
    api_port: int | None = None
    api_host: str = ""  # empty: the same address as the webhook listener
    # Slow clients: a request's headers must arrive within header_timeout_seconds of its first byte (of the
    # connection for a new one), its body within body_timeout_seconds; an idle keep-alive connection closes
    # after idle_timeout_seconds. Connections still reading (or idle) count against max_reading_connections,
    # separately from max_inflight_requests (requests being published): past the cap the oldest one is closed.
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 20.0
    idle_timeout_seconds: float = 60.0
    max_reading_connections: int = 1_000
    # Failed API logins: after api_login_failures failures from one address within api_login_window_seconds,
    # that address gets 429 until the window has passed. At most api_login_tracked_addresses are remembered.
    api_login_failures: int = 10
    api_login_window_seconds: float = 60.0
    api_login_tracked_addresses: int = 10_000
    # Idempotency-Key records are kept this long (RabbitMQ queues with a message TTL, docs/security.md).
    idempotency_ttl_seconds: int = 86_400

    @property
    def amqp_url_redacted(self) -> str:
        return ",".join(
            str(URL(url.strip()).with_password(None).with_user(None)) for url in self.amqp_url.split(",")
        )


def load(env: Mapping[str, str]) -> IngressConfig:
    """Parse the ingress's settings; raises :class:`callhook.env.ConfigError` listing every problem."""
    r = EnvReader(env)
    config = IngressConfig(
        app_secrets=r.required_list("CALLHOOK_APP_SECRETS"),
        verify_token=r.required_str("CALLHOOK_VERIFY_TOKEN", secret=True),
        amqp_url=r.url_list("CALLHOOK_AMQP_URL", DEFAULT_AMQP_URL, schemes=("amqp", "amqps")),
        host=r.str("CALLHOOK_INGRESS_HOST", "0.0.0.0"),
        port=r.int("CALLHOOK_INGRESS_PORT", 8080, minimum=0, maximum=65535),
        max_body_bytes=r.int("CALLHOOK_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1, maximum=2**30),
        max_inflight_requests=r.int("CALLHOOK_MAX_INFLIGHT_REQUESTS", 2_000, minimum=1, maximum=1_000_000),
        log_level=r.choice("CALLHOOK_LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
        log_format=r.choice("CALLHOOK_LOG_FORMAT", "json", ("json", "console")),
        publish_confirm_timeout_seconds=r.float(
            "CALLHOOK_PUBLISH_CONFIRM_TIMEOUT_SECONDS", 5.0, minimum=0.01, maximum=60
        ),
        connect_timeout_seconds=r.float("CALLHOOK_CONNECT_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=120),
        reconnect_initial_seconds=r.float(
            "CALLHOOK_RECONNECT_INITIAL_SECONDS", 0.2, minimum=0.01, maximum=60
        ),
        reconnect_max_seconds=r.float("CALLHOOK_RECONNECT_MAX_SECONDS", 5.0, minimum=0.01, maximum=300),
        shutdown_delay_seconds=r.float("CALLHOOK_SHUTDOWN_DELAY_SECONDS", 2.0, minimum=0, maximum=300),
        shutdown_grace_seconds=r.float("CALLHOOK_SHUTDOWN_GRACE_SECONDS", 10.0, minimum=0, maximum=600),
        api_tokens=r.list("CALLHOOK_API_TOKENS"),
        phone_number_id=r.str("CALLHOOK_PHONE_NUMBER_ID", ""),
        app_names=frozenset(r.app_map("CALLHOOK_APPS")) | _app_names(r, "CALLHOOK_API_APPS"),
        api_port=_optional_port(r, "CALLHOOK_API_PORT"),
        api_host=r.str("CALLHOOK_API_HOST", ""),
        header_timeout_seconds=r.float("CALLHOOK_HEADER_TIMEOUT_SECONDS", 10.0, minimum=0.1, maximum=300),
        body_timeout_seconds=r.float("CALLHOOK_BODY_TIMEOUT_SECONDS", 20.0, minimum=0.1, maximum=600),
        idle_timeout_seconds=r.float("CALLHOOK_IDLE_TIMEOUT_SECONDS", 60.0, minimum=0.1, maximum=3600),
        max_reading_connections=r.int(
            "CALLHOOK_MAX_READING_CONNECTIONS", 1_000, minimum=1, maximum=1_000_000
        ),
        api_login_failures=r.int("CALLHOOK_API_LOGIN_FAILURES", 10, minimum=1, maximum=1_000_000),
        api_login_window_seconds=r.float(
            "CALLHOOK_API_LOGIN_WINDOW_SECONDS", 60.0, minimum=1, maximum=86_400
        ),
        idempotency_ttl_seconds=r.int(
            "CALLHOOK_IDEMPOTENCY_TTL_SECONDS", 86_400, minimum=60, maximum=7 * 86_400
        ),
    )
    r.min_length("CALLHOOK_APP_SECRETS", config.app_secrets, MIN_SECRET_CHARS)
    r.min_length(
        "CALLHOOK_VERIFY_TOKEN", (config.verify_token,) if config.verify_token else (), MIN_SECRET_CHARS
    )
    r.min_length("CALLHOOK_API_TOKENS", config.api_tokens, MIN_API_TOKEN_CHARS)
    if config.phone_number_id and not _ASCII_DIGITS.fullmatch(config.phone_number_id):
        r.problems.append("CALLHOOK_PHONE_NUMBER_ID must be the business number's Graph API id (digits)")
    if config.api_port and config.api_port == config.port:
        r.problems.append("CALLHOOK_API_PORT must differ from CALLHOOK_INGRESS_PORT (or be unset)")
    if config.reconnect_max_seconds < config.reconnect_initial_seconds:
        r.problems.append("CALLHOOK_RECONNECT_MAX_SECONDS must be >= CALLHOOK_RECONNECT_INITIAL_SECONDS")
    if len(set(config.app_secrets)) != len(config.app_secrets):
        r.problems.append("CALLHOOK_APP_SECRETS lists the same secret twice")
    r.finish()
    return config


def _optional_port(r: EnvReader, name: str) -> int | None:
    if r.str(name, "") == "":
        return None
    return r.int(name, 0, minimum=0, maximum=65535)


def _app_names(r: EnvReader, name: str) -> frozenset[str]:
    """Names only (the ingress needs no spec): what the chart gives the ingress instead of CALLHOOK_APPS."""
    names = r.list(name)
    for bad in (n for n in names if not APP_NAME.fullmatch(n)):
        r.problems.append(f"{name}: app name {bad!r} must match {APP_NAME.pattern}")
    return frozenset(names)
