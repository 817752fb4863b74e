"""Reading settings from an environment mapping, collecting every problem before failing.

Each component's ``config.py`` builds its frozen settings object with one :class:`EnvReader`; the reader
never raises on a bad value, it records the problem and returns a harmless placeholder, and ``finish()``
raises one :class:`ConfigError` that lists them all, so a person fixes a deployment in one round.
"""

from __future__ import annotations

import builtins
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

from yarl import URL

T = TypeVar("T")

# Names of operator-defined apps (CALLHOOK_APPS): short, lower-case ASCII, safe in logs, metrics and JSON.
APP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# The built-in app every deployment may name without configuring it: it sends the caller's audio back to the
# caller and nothing leaves the worker.
BUILTIN_APPS: dict[builtins.str, builtins.str] = {"echo": "echo"}


class ConfigError(Exception):
    """One or more settings are missing or invalid; ``problems`` has one line per setting."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class EnvReader:
    def __init__(self, env: Mapping[builtins.str, builtins.str]) -> None:
        self._env = env
        self.problems: list[str] = []

    def _raw(self, name: builtins.str) -> builtins.str | None:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def _parse(
        self, name: builtins.str, default: T, parse: Callable[[builtins.str], T], expected: builtins.str
    ) -> T:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError:
            self.problems.append(f"{name}={raw!r} is not {expected}")
            return default

    def required_str(self, name: builtins.str, *, secret: builtins.bool = False) -> builtins.str:
        raw = self._raw(name)
        if raw is None:
            self.problems.append(f"{name} is required")
            return ""
        return raw

    def str(self, name: builtins.str, default: builtins.str) -> builtins.str:
        return self._raw(name) or default

    def choice(
        self, name: builtins.str, default: builtins.str, choices: tuple[builtins.str, ...]
    ) -> builtins.str:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() not in choices:
            self.problems.append(f"{name}={raw!r} must be one of {', '.join(choices)}")
            return default
        return raw.lower()

    def int(
        self,
        name: builtins.str,
        default: builtins.int,
        *,
        minimum: builtins.int | None = None,
        maximum: builtins.int | None = None,
    ) -> builtins.int:
        value = self._parse(name, default, builtins.int, "an integer")
        self._check_range(name, value, minimum, maximum)
        return value

    def float(
        self,
        name: builtins.str,
        default: builtins.float,
        *,
        minimum: builtins.float | None = None,
        maximum: builtins.float | None = None,
    ) -> builtins.float:
        value = self._parse(name, default, _finite_float, "a finite number")
        self._check_range(name, value, minimum, maximum)
        return value

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        return self._parse(name, default, _parse_bool, "a boolean (true/false)")

    def list(self, name: builtins.str, default: tuple[builtins.str, ...] = ()) -> tuple[builtins.str, ...]:
        raw = self._raw(name)
        if raw is None:
            return default
        return tuple(item.strip() for item in raw.split(",") if item.strip())

    def required_list(self, name: builtins.str) -> tuple[builtins.str, ...]:
        items = self.list(name)
        if not items:
            self.problems.append(f"{name} is required (comma-separated)")
        return items

    def url(
        self, name: builtins.str, default: builtins.str, *, schemes: tuple[builtins.str, ...]
    ) -> builtins.str:
        raw = self._raw(name) or default
        url = URL(raw)
        if url.scheme not in schemes or not url.host:
            self.problems.append(f"{name} must be a {'/'.join(schemes)} URL with a host")
        return raw

    def url_list(
        self, name: builtins.str, default: builtins.str, *, schemes: tuple[builtins.str, ...]
    ) -> builtins.str:
        """One URL or several separated by commas (each checked), returned as given."""
        raw = self._raw(name) or default
        urls = [u.strip() for u in raw.split(",")]
        for url in urls:
            parsed = URL(url)
            if parsed.scheme not in schemes or not parsed.host:
                self.problems.append(
                    f"{name} must be a {'/'.join(schemes)} URL with a host, or several separated by commas"
                )
                break
        return raw

    def ip_list(self, name: builtins.str) -> tuple[builtins.str, ...]:
        items = self.list(name)
        for item in items:
            try:
                ipaddress.ip_address(item)
            except ValueError:
                self.problems.append(f"{name}: {item!r} is not an IP address")
        return items

    def network_list(self, name: builtins.str) -> tuple[builtins.str, ...]:
        """Comma-separated IP networks (``127.0.0.0/8``) or addresses (a /32 or /128)."""
        items = self.list(name)
        for item in items:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                self.problems.append(f"{name}: {item!r} is not an IP network or address")
        return items

    def _check_range(
        self,
        name: builtins.str,
        value: builtins.float,
        minimum: builtins.float | None,
        maximum: builtins.float | None,
    ) -> None:
        if minimum is not None and value < minimum:
            self.problems.append(f"{name}={value} must be >= {minimum}")
        if maximum is not None and value > maximum:
            self.problems.append(f"{name}={value} must be <= {maximum}")

    def min_length(self, name: builtins.str, values: tuple[builtins.str, ...], minimum: builtins.int) -> None:
        """Record a problem if any of ``values`` (secrets) is shorter than ``minimum`` (never shown)."""
        short = sum(1 for value in values if len(value) < minimum)
        if short:
            self.problems.append(
                f"{name}: {short} value(s) shorter than {minimum} characters; use long random values "
                "(e.g. `openssl rand -hex 32`)"
            )

    def app_map(self, name: builtins.str) -> dict[builtins.str, builtins.str]:
        """``name=spec,name=spec``: the apps an operator allows dials to name (plus :data:`BUILTIN_APPS`).

        Only names are checked here (the worker loads each spec at start-up); a spec is never echoed in a
        problem, since a voice agent's URL may carry a token.
        """
        apps = dict(BUILTIN_APPS)
        for item in self.list(name):
            app, sep, spec = item.partition("=")
            app = app.strip()
            if not sep or not spec.strip():
                self.problems.append(f"{name}: each item must be name=spec (an item has no '=' or no spec)")
                continue
            if not APP_NAME.fullmatch(app):
                self.problems.append(f"{name}: app name {app!r} must match {APP_NAME.pattern}")
                continue
            if app in apps and app not in BUILTIN_APPS:
                self.problems.append(f"{name}: app {app!r} is defined twice")
                continue
            apps[app] = spec.strip()
        return apps

    def finish(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


def _finite_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):  # "nan", "inf": every range check is False for NaN
        raise ValueError(raw)
    return value


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
