"""The reliability drill's fault schedule: which faults, when, for how long. Pure (no I/O).

A :class:`FaultWindow` is one fault with a start and an end, in seconds from the start of the load. The
drill (``bench/drill.py``) begins each at its start, ends it at its end, and logs both with wall-clock times;
the report measures setup latency before, during and after each window and the time calls took to be
answered normally again after it ended.

Kinds:

==================  ========================================================================================
``graph_5xx``       the Graph API answers 503 to a fraction of every action (pre_accept, accept, reject, ...)
``graph_429``       it answers 429 (code 130429) with ``Retry-After: 1`` to a fraction of them
``graph_slow``      it holds a fraction past the worker's request timeout (half applied: outcome unknown) and
                    answers others a second late
``sigkill``         a worker is killed with SIGKILL; its replacement starts after ``duration`` (as a kubelet
                    would restart it)
``sigterm``         a worker is sent SIGTERM (it drains); its replacement starts at once (a rolling update)
``cut_worker``      a worker's broker connections are reset and refused for ``duration`` (its own TCP proxy)
``cut_ingress``     the same for the ingress
``slow_worker``     every byte between a worker and the broker is delayed by ``delay_seconds``
``slow_ingress``    the same for the ingress
``broker_restart``  the real RabbitMQ: ``rabbitmqctl stop_app``, ``duration`` seconds down, ``start_app``
``node_kill``       (``--cluster``) kill -9 of the cluster node leading ``callhook.webhooks``; it is started
                    again after ``duration`` (and rejoins by itself)
``partition``       (``--cluster``) that node is cut off from the other two for ``duration``
                    (``scripts/rabbitmq-cluster partition``; pause_minority pauses it), then healed
==================  ========================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = (
    "graph_5xx",
    "graph_429",
    "graph_slow",
    "sigkill",
    "sigterm",
    "cut_worker",
    "cut_ingress",
    "slow_worker",
    "slow_ingress",
    "broker_restart",
    "node_kill",
    "partition",
)
# The full drill, in this order, each in a slot of its own after a warm-up; durations in seconds.
FULL_SEQUENCE: tuple[tuple[str, float], ...] = (
    ("graph_5xx", 20.0),
    ("sigkill", 5.0),
    ("cut_worker", 6.0),
    ("graph_429", 20.0),
    ("sigterm", 5.0),
    ("slow_ingress", 15.0),
    ("graph_slow", 20.0),
    ("cut_ingress", 8.0),
    ("broker_restart", 5.0),
    ("slow_worker", 15.0),
)
# ``--cluster``: the local 3-node cluster loses a node (the leader of callhook.webhooks) twice, a worker is
# killed between, one node is partitioned off, then a worker cut off from the broker.
CLUSTER_SEQUENCE: tuple[tuple[str, float], ...] = (
    ("node_kill", 15.0),
    ("sigkill", 5.0),
    ("node_kill", 15.0),
    ("partition", 15.0),
    ("cut_worker", 6.0),
)
# The test suite's variant (tests/e2e/test_drill.py): short windows, no broker restart.
SHORT_SEQUENCE: tuple[tuple[str, float], ...] = (
    ("graph_5xx", 6.0),
    ("sigkill", 2.0),
    ("cut_worker", 4.0),
)
WARMUP_FRACTION = 0.12  # the first part of the load runs without faults: the baseline
COOLDOWN_FRACTION = 0.08  # and the last part too: recovery after the last fault


@dataclass(frozen=True, slots=True)
class FaultWindow:
    kind: str
    start: float  # seconds from the start of the load
    duration: float
    fraction: float = 0.3  # graph faults: share of requests hit
    delay_seconds: float = 0.2  # slow_*: added to every chunk

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(KINDS)}")
        if self.start < 0 or self.duration < 0:
            raise ValueError("start and duration must be >= 0")

    @property
    def end(self) -> float:
        return self.start + self.duration


def schedule(
    load_seconds: float,
    sequence: tuple[tuple[str, float], ...] = FULL_SEQUENCE,
    *,
    restart_broker: bool = True,
    only: frozenset[str] | None = None,
) -> list[FaultWindow]:
    """Spread ``sequence`` evenly over the load after a warm-up, leaving a quiet stretch at the end.

    Each fault gets an equal slot and starts at the slot's beginning; a duration longer than half its slot is
    shortened to half, so that every fault is followed by a quiet stretch at least as long as itself.
    """
    chosen = [
        (kind, duration)
        for kind, duration in sequence
        if (restart_broker or kind != "broker_restart") and (only is None or kind in only)
    ]
    if not chosen:
        return []
    first = load_seconds * WARMUP_FRACTION
    slot = (load_seconds * (1.0 - WARMUP_FRACTION - COOLDOWN_FRACTION)) / len(chosen)
    return [
        FaultWindow(kind, round(first + index * slot, 3), round(min(duration, slot / 2), 3))
        for index, (kind, duration) in enumerate(chosen)
    ]
