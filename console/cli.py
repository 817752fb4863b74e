"""``callhook console``: the agents' web console; only argparse at import time."""

from __future__ import annotations

import argparse
import os

_SETTINGS = """\
settings (environment):
  CALLHOOK_CONSOLE_AGENTS       name:token:queue+queue;...  (queues * = all) (required)
  CALLHOOK_CONSOLE_HOST/_PORT   default 0.0.0.0 / 8090
  CALLHOOK_CONSOLE_ICE_SERVERS  STUN/TURN URLs for the agents' browsers (default none)
  CALLHOOK_CONSOLE_REQUEST_TIMEOUT_SECONDS, CALLHOOK_AMQP_URL, CALLHOOK_LOG_LEVEL, CALLHOOK_LOG_FORMAT
routes: GET / (the page), POST /api/session, GET /ws, /healthz, /metrics (see docs/handoff.md)
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "console",
        help="run the agents' web console: queues of calls waiting for a person, answer in the browser",
        description="Agents sign in with a token, see the calls waiting in their queues live, and take "
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
