"""``callhook settings show|diff|apply FILE`` and ``callhook permissions USER``: Meta's platform from the CLI.

Needs ``CALLHOOK_ACCESS_TOKEN`` and the business number (``--phone-number-id`` or
``CALLHOOK_PHONE_NUMBER_ID``); ``CALLHOOK_GRAPH_URL``/``CALLHOOK_GRAPH_VERSION`` as for the worker.

- ``show``: the number's ``calling`` settings, as YAML (a file ``apply`` takes back).
- ``diff FILE``: what ``apply`` would change, one line per setting (``+`` new, ``~`` changed, ``-`` removed).
- ``apply FILE``: checks the file locally and lists *every* problem before any request (exit 2); refuses
  Meta's traps (exit 3); sends one POST with the changed members, each whole; reads the settings back and
  fails (exit 1) if they do not say what the file says.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    settings = sub.add_parser(
        "settings",
        help="Meta's call settings as code: show, diff or apply a YAML/JSON file",
        description="Call hours, holidays, call icon, callback permission, codecs... kept in a file. SIP is "
        "left untouched unless the file names it. Needs CALLHOOK_ACCESS_TOKEN.",
    )
    settings.add_argument("action", choices=("show", "diff", "apply"))
    settings.add_argument("file", nargs="?", type=Path, help="the settings file (diff, apply)")
    settings.add_argument("--phone-number-id", help="business number id (default CALLHOOK_PHONE_NUMBER_ID)")
    settings.set_defaults(handler=_settings)

    permissions = sub.add_parser(
        "permissions",
        help="a user's call permission: status, expiry, and each action's limits",
        description="GET call_permissions for USER (a phone number or a user id) and print what Meta says.",
    )
    permissions.add_argument("user", help="the user's phone number, or their user id (BSUID)")
    permissions.add_argument(
        "--phone-number-id", help="business number id (default CALLHOOK_PHONE_NUMBER_ID)"
    )
    permissions.add_argument("--json", action="store_true", help="print Meta's answer as JSON")
    permissions.set_defaults(handler=_permissions)


def _settings(args: argparse.Namespace) -> int:
    import asyncio

    from callhook.settings_run import load_file, run_settings

    desired = {}
    if args.action != "show":
        if args.file is None:
            print(f"callhook settings {args.action}: a FILE is required", file=sys.stderr)
            return 2
        loaded = load_file(args.file)
        if loaded is None:
            return 2
        desired = loaded
    return asyncio.run(run_settings(args.action, desired, args.phone_number_id, os.environ))


def _permissions(args: argparse.Namespace) -> int:
    import asyncio

    from callhook.settings_run import run_permissions

    return asyncio.run(run_permissions(args.user, args.phone_number_id, args.json, os.environ))
