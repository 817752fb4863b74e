"""The console's metrics (no agent names or call ids in labels)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ConsoleMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.agents_online = Gauge(
            "callhook_console_agents_online", "Agents signed in on this console (a WebSocket each).",
            registry=registry,
        )  # fmt: skip
        self.waiting = Gauge(
            "callhook_console_waiting_calls",
            "Calls waiting for an agent, per queue, as this console's board sees them (every worker's).",
            ["queue"],
            registry=registry,
        )
        self.takes = Counter(
            "callhook_console_takes_total",
            "Agents' attempts to take a call, by outcome (answered, taken, gone, not_allowed, ...).",
            ["outcome"],
            registry=registry,
        )
        self.sign_ins = Counter(
            "callhook_console_sign_ins_total", "Sign-in attempts, by outcome.", ["outcome"], registry=registry
        )
