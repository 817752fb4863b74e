"""Throttling failed logins of the integrator API, per client address, in bounded memory. Pure: no I/O.

After ``limit`` failed logins from one address within ``window`` seconds, that address is refused (429) until
the window that started with its first counted failure has passed; a success does not reset the count (an
attacker holding one valid token must not unlock guessing of others). At most ``max_addresses`` addresses
are remembered: the least recently failing one is forgotten first, so a flood from many addresses costs
bounded memory (and can only make the throttle forget, never lock out an address that did not fail).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class _Failures:
    since: float
    count: int


class LoginThrottle:
    def __init__(self, *, limit: int, window: float, max_addresses: int) -> None:
        self._limit = limit
        self._window = window
        self._max = max_addresses
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def blocked(self, address: str, now: float) -> float:
        """Seconds ``address`` must still wait (0 when it may try)."""
        entry = self._failures.get(address)
        if entry is None:
            return 0.0
        remaining = entry.since + self._window - now
        if remaining <= 0:
            del self._failures[address]
            return 0.0
        return remaining if entry.count >= self._limit else 0.0

    def failed(self, address: str, now: float) -> None:
        entry = self._failures.get(address)
        if entry is None or entry.since + self._window <= now:
            entry = self._failures[address] = _Failures(now, 0)
        entry.count += 1
        self._failures.move_to_end(address)
        while len(self._failures) > self._max:
            self._failures.popitem(last=False)
