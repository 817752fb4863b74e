"""The ``callhook`` command. Each component registers its own subcommands from its ``cli`` module.

Component ``cli`` modules import only argparse-level things at the top, so ``callhook --help`` stays fast and
the ingress never loads aiortc; the heavy imports happen inside each handler.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from callhook.env import ConfigError

COMPONENT_CLIS = (
    "ingress.cli", "worker.cli", "simulator.cli", "simulator.demo", "console.cli", "callhook.settings_cli",
)  # fmt: skip
# component name -> module with ``load(env) -> frozen settings``
CONFIG_MODULES = {
    "ingress": "ingress.config",
    "worker": "worker.config",
    "sim": "simulator.config",
    "console": "console.config",
}

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callhook",
        description="WhatsApp Business voice calls in production. Settings come from CALLHOOK_* "
        "environment variables (see README); `callhook check-config` validates them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMPONENT_CLIS:
        importlib.import_module(module_name).register(sub)
    check = sub.add_parser(
        "check-config",
        help="validate the CALLHOOK_* settings of one or every component without starting anything",
        description="Parse the settings from the environment and list every missing or invalid one.",
    )
    check.add_argument("component", nargs="?", choices=[*CONFIG_MODULES, "all"], default="all")
    check.set_defaults(handler=_check_config)
    return parser


def _check_config(args: argparse.Namespace) -> int:
    return check_config(args.component, os.environ)


def check_config(component: str, env: Mapping[str, str]) -> int:
    names = list(CONFIG_MODULES) if component == "all" else [component]
    failed = False
    for name in names:
        loader: Callable[[Mapping[str, str]], Any] = importlib.import_module(CONFIG_MODULES[name]).load
        try:
            loader(env)
        except ConfigError as exc:
            failed = True
            print(f"{name}: {exc}", file=sys.stderr)
        else:
            print(f"{name}: ok")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"callhook {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
