"""The worker's handoff metrics (on the worker's registry; no call ids in labels)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

WAIT_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class HandoffMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.waiting = Gauge(
            "callhook_handoff_waiting_calls",
            "Calls this worker holds waiting for an agent (summed over workers: the queue's length).",
            ["queue"],
            registry=registry,
        )
        self.with_agent = Gauge(
            "callhook_handoff_agent_calls", "Calls this worker relays to an agent.", registry=registry
        )
        self.wait_seconds = Histogram(
            "callhook_handoff_wait_seconds",
            "How long a call waited in its queue, by how the wait ended (answered, abandoned, timeout).",
            ["queue", "outcome"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.time_to_answer = Histogram(
            "callhook_handoff_time_to_answer_seconds",
            "Transfer to an agent's audio connected.",
            ["queue"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.relays = Counter(
            "callhook_handoff_relays_total",
            "Relays to an agent started, by mode: forwarded (Opus packets as they are) or transcoded (PCM).",
            ["mode"],
            registry=registry,
        )
        self.transfers = Counter(
            "callhook_handoff_transfers_total", "Calls transferred to a queue.", ["queue"], registry=registry
        )
        self.takes_refused = Counter(
            "callhook_handoff_takes_refused_total",
            "Agents' takes refused by the owner (taken, bad_offer).",
            ["reason"],
            registry=registry,
        )
