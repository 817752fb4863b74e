"""``callhook ingress``: the webhook endpoint; only argparse at import time, the server loads later."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

_SETTINGS = """\
settings (environment):
  CALLHOOK_APP_SECRETS          comma-separated Meta app secrets (required)
  CALLHOOK_VERIFY_TOKEN         token of the GET /webhook subscription handshake (required)
  CALLHOOK_AMQP_URL             default amqp://guest:guest@127.0.0.1:5672/
  CALLHOOK_INGRESS_HOST/_PORT   default 0.0.0.0 / 8080
  CALLHOOK_MAX_BODY_BYTES       default 3500000 (Meta sends at most about 3 MB)
  CALLHOOK_MAX_INFLIGHT_REQUESTS, CALLHOOK_PUBLISH_CONFIRM_TIMEOUT_SECONDS, CALLHOOK_CONNECT_TIMEOUT_SECONDS,
  CALLHOOK_RECONNECT_INITIAL_SECONDS, CALLHOOK_RECONNECT_MAX_SECONDS, CALLHOOK_SHUTDOWN_DELAY_SECONDS,
  CALLHOOK_SHUTDOWN_GRACE_SECONDS, CALLHOOK_LOG_LEVEL, CALLHOOK_LOG_FORMAT (json|console)
  CALLHOOK_API_TOKENS, CALLHOOK_PHONE_NUMBER_ID, CALLHOOK_APPS / CALLHOOK_API_APPS (apps a dial may name),
  CALLHOOK_API_PORT/_HOST (the API and /metrics on a listener of their own), CALLHOOK_HEADER_TIMEOUT_SECONDS,
  CALLHOOK_BODY_TIMEOUT_SECONDS, CALLHOOK_IDLE_TIMEOUT_SECONDS, CALLHOOK_MAX_READING_CONNECTIONS,
  CALLHOOK_API_LOGIN_FAILURES, CALLHOOK_API_LOGIN_WINDOW_SECONDS, CALLHOOK_IDEMPOTENCY_TTL_SECONDS
routes: POST/GET /webhook, POST /v1/calls, GET /healthz, /readyz, /metrics (docs/ingress.md, docs/security.md)
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "ingress",
        help="run the webhook ingress: check Meta's signatures, publish the raw webhooks to RabbitMQ",
        description="Answer Meta's webhooks: 200 once RabbitMQ confirmed a persistent copy, 401 for a bad "
        "signature, 413 for a body over the limit, 503 when the broker cannot take it (Meta retries).",
        epilog=_SETTINGS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from callhook.logs import setup_logging
    from ingress import config
    from ingress.app import run

    settings = config.load(os.environ)
    setup_logging("ingress", settings.log_level, settings.log_format)
    return run(settings)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ingress.cli ingress``: the ingress alone, without the other components' CLIs."""
    from callhook.env import ConfigError

    parser = argparse.ArgumentParser(prog="callhook")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"callhook ingress: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
