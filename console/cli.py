"""``callhook console``: the agents' web console; only argparse at import time."""

from __future__ import annotations

import argparse
import os

_SETTINGS = """\
settings (environment):
  CALLHOOK_CONSOLE_AGENTS       name:token:queue+queue;...  (queues * = all)
  CALLHOOK_CONSOLE_OIDC_ISSUER  sign-in through an OpenID Connect provider (this, the agents or both)
  CALLHOOK_CONSOLE_OIDC_CLIENT_ID       the console's client id at the provider (public client, PKCE)
  CALLHOOK_CONSOLE_OIDC_NAME_CLAIMS     claims naming the agent, first present wins (preferred_username,email)
  CALLHOOK_CONSOLE_OIDC_QUEUES_CLAIM    claim granting queues, dotted for nested (groups)
  CALLHOOK_CONSOLE_OIDC_QUEUE_MAP       value=queue+queue;value=*  (none: the values are queue names)
  CALLHOOK_CONSOLE_OIDC_SCOPES / _ALGORITHMS / _LEEWAY_SECONDS / _TIMEOUT_SECONDS /
    _JWKS_MIN_REFRESH_SECONDS   openid profile email / RS256,ES256 / 60 / 5 / 30
  CALLHOOK_CONSOLE_HOST/_PORT   default 0.0.0.0 / 8090
  CALLHOOK_CONSOLE_ICE_SERVERS  STUN/TURN URLs for the agents' browsers (default none)
  CALLHOOK_CONSOLE_REQUEST_TIMEOUT_SECONDS, CALLHOOK_AMQP_URL, CALLHOOK_LOG_LEVEL, CALLHOOK_LOG_FORMAT
routes: GET / (the page), GET /api/config, POST /api/session, GET /ws, /healthz, /metrics
(see docs/handoff.md)
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "console",
        help="run the agents' web console: queues of calls waiting for a person, answer in the browser",
        description="Agents sign in with a token or through the company's identity provider (OpenID "
        "Connect), see the calls waiting in their queues live, and take "
        "one: their browser talks to the caller through the worker that owns the call.",
        epilog=_SETTINGS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from callhook.logs import setup_logging
    from console import config
    from console.app import run

    settings = config.load(os.environ)
    setup_logging("console", settings.log_level, settings.log_format)
    return run(settings)
