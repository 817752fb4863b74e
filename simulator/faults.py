"""Fault switches for the simulated Graph API. Pure (a seeded ``random.Random`` is passed in).

A :class:`FaultRule` names an action (``connect``, ``pre_accept``, ``accept``, ``reject``, ``terminate``,
``messages``, ``call_permissions`` or ``*``), what goes wrong, and how often: the next ``count`` matching
requests, a ``fraction`` of them, or (neither given) every one. :class:`FaultPlan` picks the first rule that
fires for a request. The same rules come from the CLI as specs, parsed by :func:`parse_fault`::

    ACTION:KIND[:OPTION]...
    KIND    5xx | 500 | 502 | 503 | 504          server error (Meta code 1, or 2 for 503)
            429[=CODE]                            throttled: HTTP 429, code 130429 (or 4, 80007, 613)
            error=CODE                            any Meta error code, with Meta's HTTP status for it
            delay=SECONDS                         answer normally, late
            timeout[=SECONDS]                     hold the request (default 30 s), then answer 503
    OPTION  next=N | fraction=F | apply           apply: a timeout applies the action before holding
            retry_after=SECONDS                   a 5xx or 429 carries ``Retry-After`` (a backoff hint)
    e.g.    pre_accept:503:next=2    accept:429=4:fraction=0.1    connect:error=138002
            terminate:timeout=5:apply    accept:429:retry_after=1
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from enum import StrEnum

ACTIONS = ("connect", "pre_accept", "accept", "reject", "terminate", "messages", "call_permissions", "*")
THROTTLE_CODES = (130429, 4, 80007, 613)


class FaultKind(StrEnum):
    SERVER_ERROR = "5xx"
    THROTTLE = "429"
    ERROR = "error"
    DELAY = "delay"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class FaultRule:
    action: str
    kind: FaultKind
    count: int | None = None
    fraction: float | None = None
    http_status: int = 500  # SERVER_ERROR
    code: int = 130429  # THROTTLE / ERROR
    seconds: float = 30.0  # DELAY / TIMEOUT
    apply: bool = False  # TIMEOUT: run the action, then hold the response
    retry_after_seconds: int | None = None  # SERVER_ERROR / THROTTLE: the ``Retry-After`` header's value
    id: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; one of {', '.join(ACTIONS)}")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be >= 1")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ValueError("fraction must be within 0..1")
        if self.seconds < 0:
            raise ValueError("seconds must be >= 0")
        if self.retry_after_seconds is not None and (
            self.retry_after_seconds < 0 or self.kind not in (FaultKind.SERVER_ERROR, FaultKind.THROTTLE)
        ):
            raise ValueError("retry_after must be >= 0 and applies to 5xx and 429 only")

    def describe(self) -> str:
        what = {
            FaultKind.SERVER_ERROR: str(self.http_status),
            FaultKind.THROTTLE: f"429/{self.code}",
            FaultKind.ERROR: f"error {self.code}",
            FaultKind.DELAY: f"delay {self.seconds}s",
            FaultKind.TIMEOUT: f"timeout {self.seconds}s" + (" (applied)" if self.apply else ""),
        }[self.kind]
        hint = f" retry-after {self.retry_after_seconds}s" if self.retry_after_seconds is not None else ""
        return f"{self.action}:{what}{hint}"


class FaultPlan:
    """The live set of rules; thread-unsafe by design (one event loop)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._rules: list[FaultRule] = []
        self._remaining: dict[int, int] = {}
        self._next_id = 1
        self.fired: dict[str, int] = {}

    def add(self, rule: FaultRule) -> FaultRule:
        rule = replace(rule, id=self._next_id)
        self._next_id += 1
        self._rules.append(rule)
        if rule.count is not None:
            self._remaining[rule.id] = rule.count
        return rule

    def remove(self, rule: FaultRule) -> None:
        self._rules = [r for r in self._rules if r.id != rule.id]
        self._remaining.pop(rule.id, None)

    def clear(self) -> None:
        self._rules.clear()
        self._remaining.clear()

    @property
    def rules(self) -> tuple[FaultRule, ...]:
        return tuple(self._rules)

    def pick(self, action: str) -> FaultRule | None:
        """The rule that fires for this request, consuming one of its ``count`` if it has one."""
        for rule in self._rules:
            if rule.action not in (action, "*"):
                continue
            if rule.fraction is not None and self._rng.random() >= rule.fraction:
                continue
            if rule.count is not None:
                self._remaining[rule.id] -= 1
                if self._remaining[rule.id] == 0:
                    self.remove(rule)
            key = rule.describe()
            self.fired[key] = self.fired.get(key, 0) + 1
            return rule
        return None


def parse_fault(spec: str) -> FaultRule:
    """A :class:`FaultRule` from ``ACTION:KIND[:OPTION]...`` (see the module docstring); ValueError if bad."""
    parts = [p.strip() for p in spec.split(":")]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"fault {spec!r}: expected ACTION:KIND[:OPTION]...")
    action, kind_text, options = parts[0], parts[1], parts[2:]
    rule = _parse_kind(action, kind_text)
    for option in options:
        name, _, value = option.partition("=")
        if name == "next":
            rule = replace(rule, count=int(value))
        elif name == "fraction":
            rule = replace(rule, fraction=float(value))
        elif name == "apply" and not value:
            rule = replace(rule, apply=True)
        elif name == "retry_after":
            rule = replace(rule, retry_after_seconds=int(value))
        else:
            raise ValueError(f"fault {spec!r}: unknown option {option!r}")
    return rule


def _parse_kind(action: str, text: str) -> FaultRule:
    name, _, value = text.partition("=")
    if name in ("5xx", "500", "502", "503", "504") and not value:
        status = 500 if name == "5xx" else int(name)
        return FaultRule(action, FaultKind.SERVER_ERROR, http_status=status)
    if name == "429":
        code = int(value) if value else 130429
        if code not in THROTTLE_CODES:
            raise ValueError(f"throttle code must be one of {THROTTLE_CODES}")
        return FaultRule(action, FaultKind.THROTTLE, code=code)
    if name == "error" and value:
        return FaultRule(action, FaultKind.ERROR, code=int(value))
    if name == "delay" and value:
        return FaultRule(action, FaultKind.DELAY, seconds=float(value))
    if name == "timeout":
        return FaultRule(action, FaultKind.TIMEOUT, seconds=float(value) if value else 30.0)
    raise ValueError(f"unknown fault kind {text!r}")
