"""The drill's verdict: what Meta's side sent compared with what happened, call by call, webhook by webhook.

Pure: it reads what the drill collected (the simulator's journal and call outcomes, the junk posts, the
broker-side audit, the dead letters, queue depths, the processes' fates and last metrics) and computes the
invariants and the tables. docs/reliability.md explains each measure.

Invariants (each must be 0):

- **lost**: webhooks answered 200 that were not processed. A 2xx answer to a body counts as processed when
  the broker traced the ingress storing that body in ``callhook.webhooks`` and everything it carries came out
  of a router: each call item as a call event of its type and id published to ``callhook.calls``, each message
  marker on ``callhook.events``, a poison body in ``callhook.dead`` with the router as its source. Also lost:
  any webhook left in ``callhook.webhooks`` at the end, any dead-lettered by the broker's delivery limit, and
  every incoming call whose connect was answered 200 but that the business neither pre-accepted nor rejected
  (unless the only worker that took the connect was SIGKILLed before it could: shown apart as excused).
- **answered twice**: calls whose pre_accept/accept requests carried more than one answer SDP (each owner
  makes its own, so two SDPs mean two owners).
- **answered by a second worker**: calls for which a second owner *tried* to answer (a pre_accept or accept
  with a second SDP, even one Meta refused). Our simulator refuses such a request; nothing says Meta does, so
  the attempt itself counts (docs/routing.md: the mailbox that outlives its owner and the answer marker).
- **half-open**: calls Meta's side did not end; calls a worker touched (pre_accept sent) that neither the
  business ended (reject/terminate sent) nor Meta did (terminate webhook delivered); calls whose every
  reject/terminate failed (the business gave up while Meta still had the call); calls still active in a live
  worker once everything settled.
- **dropped**: answered calls that the business hung up. In the drill only the phones hang up (the echo app
  never does, drains outlast the holds), so each one is a live call callhook ended.
- **unsigned published**: bodies with a bad or missing signature that got anything but 401, or whose bytes or
  marker appear anywhere downstream (stored, on ``callhook.events``, in ``callhook.dead``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.drill_audit import MARKER, AuditRecords, DeadLetter, QueueDepth
from bench.drill_load import JunkPost, SentMessage
from bench.drill_plan import FaultWindow
from simulator.calls import TERMINAL_STATES
from simulator.journal import Delivery, GraphRequest, Journal
from simulator.scenario import CallOutcome, percentile

EDGE_SECONDS = 20.0  # "before" and "after" a fault: this long on each side of its window
RECOVERY_RUN = 3  # calls answered normally in a row that mark a recovery
STALE_AFTER_SECONDS = 30.0  # a connect stamped this much older than it was sent was made stale on purpose
_TERMINAL = frozenset(str(state) for state in TERMINAL_STATES)


@dataclass(frozen=True, slots=True)
class Answer:
    """A pre_accept or accept that reached Meta's rules: which SDP (a digest) and how it was answered."""

    action: str
    sdp_digest: str
    request: GraphRequest


@dataclass
class WindowLog:
    window: FaultWindow
    target: str = ""
    started_at: float | None = None  # wall clock
    ended_at: float | None = None
    note: str = ""


@dataclass
class ProcessLog:
    name: str
    started_at: float
    ready_at: float | None = None
    signal: str | None = None  # "SIGKILL" | "SIGTERM"
    signalled_at: float | None = None
    exit_code: int | None = None
    exited_at: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class DrillData:
    run_id: str
    settings: dict[str, Any]
    t0: float  # wall clock at the start of the load
    load_seconds: float
    windows: list[WindowLog]
    outcomes: list[CallOutcome]
    journal: Journal
    answers: dict[str, list[Answer]]
    messages: list[SentMessage]
    junk: list[JunkPost]
    audit: AuditRecords
    dead: list[DeadLetter]
    depths: dict[str, QueueDepth]
    processes: list[ProcessLog]
    ingress_metrics: dict[str, float]
    calls_active_at_end: float
    loop_lag: list[float]
    settle_seconds: float
    cpu: dict[str, list[float]] = field(default_factory=dict)  # % of one core, sampled during the load


@dataclass
class CallView:
    outcome: CallOutcome
    sent_at: float | None  # connect first sent
    connect_acked: bool
    stale: bool
    pre_accepted: bool
    rejected_by_business: bool
    business_end_requests: list[tuple[int, int | None]]  # (http status, error code) of reject/terminate
    business_gave_up: bool  # every reject/terminate failed, and Meta's call outlived the last of them
    meta_terminate_delivered: bool
    accepted_sdps: int  # distinct SDPs among accept requests and among successful pre_accepts/accepts
    offered_sdps: int  # distinct SDPs among all pre_accepts/accepts: more than one = a second owner tried
    owner: str | None  # last worker handed its connect (broker trace)
    graph: str  # the business's Graph requests for the call: "action:status", in order
    ended_reason: str | None  # the worker's lifecycle "ended" reason

    @property
    def call_id(self) -> str:
        return self.outcome.call_id

    @property
    def setup(self) -> float | None:
        return self.outcome.setup_pre_accept_seconds

    def normal(self, threshold: float) -> bool:
        return self.outcome.answered and self.setup is not None and self.setup <= threshold


@dataclass
class Report:
    data: DrillData
    calls: list[CallView]
    lost: list[str]
    excused: list[str]
    answered_twice: list[str]
    second_owner: list[str]  # a second owner tried to answer (even if Meta refused it): an invariant
    half_open: list[str]
    unsigned_published: list[str]
    dropped: list[str]  # answered calls the business hung up: in the drill only the phones hang up
    webhooks_acked: int
    threshold: float
    api_abuse: list[str] = field(default_factory=list)  # bench/drill_load.py AbuseResult.violations

    @property
    def ok(self) -> bool:
        return not any(self.invariants().values())

    def invariants(self) -> dict[str, int]:
        return {
            "lost": len(self.lost),
            "answered_twice": len(self.answered_twice),
            "answered_by_second_worker": len(self.second_owner),
            "half_open": len(self.half_open),
            "unsigned_published": len(self.unsigned_published),
            "dropped": len(self.dropped),
            "api_abuse": len(self.api_abuse),
        }

    def format(self) -> str:
        return format_report(self)


# --------------------------------------------------------------------------------------------- analysis
def analyse(data: DrillData) -> Report:
    killed = {p.name: p.signalled_at for p in data.processes if p.signal == "SIGKILL"}
    index = _Index(data)
    calls = [_call_view(data, index, outcome) for outcome in data.outcomes]
    lost = _lost_webhooks(data) + _leftovers(data)
    excused: list[str] = []
    for call in calls:
        if call.connect_acked and not call.pre_accepted and not call.rejected_by_business:
            owner_killed = call.owner in killed
            line = f"call {call.call_id}: connect acked, never pre-accepted nor rejected (owner {call.owner})"
            (excused if owner_killed else lost).append(line)
    dropped = [
        f"call {c.call_id}: answered, then hung up by the business ({c.ended_reason})"
        for c in calls
        if c.outcome.answered and c.outcome.end_reason == "business_hangup"
    ]
    answered_twice = [
        f"call {c.call_id}: accepted with {c.accepted_sdps} SDPs" for c in calls if c.accepted_sdps > 1
    ]
    second_owner = [
        f"call {c.call_id}: answers with {c.offered_sdps} SDPs" for c in calls if c.offered_sdps > 1
    ]
    half_open = _half_open(data, calls)
    unsigned = _unsigned_published(data)
    baseline = [
        c.setup
        for c in calls
        if c.setup is not None and c.sent_at is not None and c.sent_at < _first_fault(data) and not c.stale
    ]
    threshold = max(0.5, 2.0 * percentile(baseline, 0.99)) if baseline else 1.0
    acked = sum(1 for d in data.journal.deliveries for a in d.attempts if a.ok)
    acked += sum(p.statuses.count(200) for p in data.junk)
    return Report(
        data,
        calls,
        lost,
        excused,
        answered_twice,
        second_owner,
        half_open,
        unsigned,
        dropped,
        acked,
        threshold,
    )


def _first_fault(data: DrillData) -> float:
    starts = [w.started_at for w in data.windows if w.started_at is not None]
    return min(starts) if starts else math.inf


class _Index:
    """The journal and the audit grouped by call id, once (the drill's journal holds thousands of records)."""

    def __init__(self, data: DrillData) -> None:
        self.requests: dict[str, list[GraphRequest]] = defaultdict(list)
        self.deliveries: dict[str, list[Delivery]] = defaultdict(list)
        self.ended_at: dict[str, float] = {}
        journal = data.journal
        for request in journal.requests:
            if request.call_id is not None:
                self.requests[request.call_id].append(request)
        for delivery in journal.deliveries:
            for call_id in set(delivery.call_ids):
                if call_id is not None:
                    self.deliveries[call_id].append(delivery)
        for change in journal.states:
            if change.state in _TERMINAL:
                self.ended_at[change.call_id] = max(change.at, self.ended_at.get(change.call_id, 0.0))


def _call_view(data: DrillData, index: _Index, outcome: CallOutcome) -> CallView:
    cid = outcome.call_id
    requests = index.requests.get(cid, [])
    deliveries = index.deliveries.get(cid, [])
    connects = [d for d in deliveries if d.has("connect", cid)]
    sent = [d.first_sent_at for d in connects if d.first_sent_at is not None]
    ends = [r for r in requests if r.action in ("reject", "terminate")]
    last_answer = max((r.responded_at or r.received_at for r in ends), default=0.0)
    gave_up = (
        bool(ends)
        and not any(r.ok or r.error_code == 100 for r in ends)  # 100: refused, the call had ended already
        and index.ended_at.get(cid, math.inf) > last_answer
    )
    answers = data.answers.get(cid, [])
    intake = [d for d in data.audit.intake.get(cid, []) if d.kind == "connect"]
    ended = [e for e in data.audit.lifecycle.get(cid, []) if e.get("event") == "ended"]
    return CallView(
        outcome=outcome,
        sent_at=min(sent) if sent else None,
        connect_acked=any(a.ok for d in connects for a in d.attempts),
        stale=any(_stale_connect(d) for d in connects),
        pre_accepted=any(r.action == "pre_accept" for r in requests),
        rejected_by_business=any(r.action == "reject" for r in requests),
        business_end_requests=[(r.http_status, r.error_code) for r in ends],
        business_gave_up=gave_up,
        meta_terminate_delivered=any(
            d.delivered_at is not None for d in deliveries if d.has("terminate", cid)
        ),
        accepted_sdps=max(
            len({a.sdp_digest for a in answers if a.action == "accept"}),
            len({a.sdp_digest for a in answers if a.request.ok}),
        ),
        offered_sdps=len({a.sdp_digest for a in answers}),
        owner=intake[-1].who if intake else None,
        graph=", ".join(f"{r.action}:{r.http_status}" for r in requests),
        ended_reason=str(ended[-1].get("reason")) if ended else None,
    )


def _stale_connect(delivery: Delivery) -> bool:
    try:
        body = json.loads(delivery.body)
        stamps = [
            int(item["timestamp"])
            for entry in body["entry"]
            for change in entry["changes"]
            for item in change["value"].get("calls", [])
            if item.get("event") == "connect"
        ]
    except (ValueError, KeyError, TypeError):
        return False
    return any(delivery.created_at - stamp > STALE_AFTER_SECONDS for stamp in stamps)


def _lost_webhooks(data: DrillData) -> list[str]:
    audit = data.audit
    router_dead = {d.message_id for d in data.dead if d.source == "router"}
    acted_on = _acted_on(data)
    lost: list[str] = []
    for delivery in data.journal.deliveries:
        acks = sum(1 for a in delivery.attempts if a.ok)
        if not acks:
            continue
        missing = _missing_downstream(delivery, audit, acted_on)
        if missing:
            lost.append(f"delivery {delivery.id} {list(delivery.kinds)} x{acks}: {'; '.join(missing)}")
    for post in data.junk:
        if not post.signed or not post.stored:
            continue
        if post.message_id in router_dead:  # what a router dead-lettered was stored, traced or not
            continue
        if audit.ingress_published[post.message_id] == 0:
            lost.append(f"junk {post.marker} ({post.kind}): 200 but no store traced")
        else:
            lost.append(f"junk {post.marker} ({post.kind}): stored but never dead-lettered by a router")
    return lost


def _store_traced(delivery: Delivery, audit: AuditRecords) -> bool:
    return audit.ingress_published[hashlib.sha256(delivery.body).hexdigest()] > 0


def store_trace_gaps(data: DrillData) -> int:
    """Bodies answered 200 whose store the firehose did not trace, although everything they carry came out
    downstream: the firehose is per node, and a node that dies loses the trace copies it had not routed yet
    (the stored webhook itself is in a quorum queue and survives). Shown, not counted as lost."""
    acted_on = _acted_on(data)
    return sum(
        1
        for d in data.journal.deliveries
        if any(a.ok for a in d.attempts) and not _store_traced(d, data.audit) and d.kinds
        and not _missing_downstream(d, data.audit, acted_on)
    )  # fmt: skip


def _acted_on(data: DrillData) -> set[str]:
    """Calls the business sent Meta a request about: their connect came out of a router, traced or not."""
    return {r.call_id for r in data.journal.requests if r.call_id is not None and r.action != "connect"}


def _ended_by_meta(audit: AuditRecords) -> set[str]:
    """Calls whose ``call.ended`` says a worker applied Meta's terminate ("remote <status>"): their terminate
    came out of a router, traced or not ("remote owner_lost" is a worker giving a call up, not Meta)."""
    return {
        call_id
        for call_id, events in audit.lifecycle.items()
        for event in events
        if event.get("event") == "ended"
        and str(event.get("reason") or "").startswith("remote ")
        and "owner_lost" not in str(event.get("reason"))
    }


def _missing_downstream(delivery: Delivery, audit: AuditRecords, acted_on: set[str]) -> list[str]:
    """What a body answered 200 carries that never came out of a router. Its store in callhook.webhooks is
    proven by what came out; only a body that carries nothing to witness needs the firehose's record of it.
    An incoming call's connect is witnessed by its trace or by the business answering or refusing the call,
    a terminate by its trace or by the worker ending the call on it (the firehose copy of a publish through
    a node that died may be gone)."""
    missing: list[str] = []
    ended = _ended_by_meta(audit) if "terminate" in delivery.kinds else set()
    if not delivery.kinds and not _store_traced(delivery, audit):
        missing.append("no store in callhook.webhooks traced")
    for kind, call_id in zip(delivery.kinds, delivery.call_ids, strict=True):
        if kind == "message":
            continue
        event = "status" if kind.startswith("status") else kind
        if call_id is None or (event, call_id) in audit.call_events:
            continue
        witnessed = acted_on if event == "connect" else ended if event == "terminate" else set()
        if call_id not in witnessed:
            missing.append(f"no {event} event published for {call_id}")
    if "message" in delivery.kinds:
        markers = [m.decode() for m in MARKER.findall(delivery.body)]
        gone = [m for m in markers if audit.markers[m] == 0]
        if gone:
            missing.append(f"messages never on callhook.events: {', '.join(gone)}")
    return missing


def _leftovers(data: DrillData) -> list[str]:
    lost: list[str] = []
    webhooks = data.depths.get("callhook.webhooks")
    if webhooks is not None and webhooks.messages:
        lost.append(f"{webhooks.messages} webhooks still in callhook.webhooks ({webhooks.unacked} unacked)")
    junk_ids = {p.message_id for p in data.junk if p.signed}
    for letter in data.dead:
        if letter.source.startswith("broker:"):
            lost.append(
                f"dead-lettered by the broker ({letter.source}, {letter.reason}): {letter.message_id}"
            )
        elif letter.source == "router" and letter.message_id not in junk_ids:
            lost.append(f"a simulator webhook dead-lettered as poison: {letter.reason}")
        elif letter.source != "router":
            lost.append(f"dead-lettered by {letter.source}: {letter.reason}")
    return lost


def _half_open(data: DrillData, calls: Iterable[CallView]) -> list[str]:
    half: list[str] = []
    for call in calls:
        cid = call.call_id
        if call.outcome.state not in _TERMINAL:
            half.append(f"call {cid}: still {call.outcome.state} at Meta")
        if call.pre_accepted and not call.business_end_requests and not call.meta_terminate_delivered:
            half.append(f"call {cid}: touched, never ended by the business nor by a delivered terminate")
        if call.business_gave_up:
            # The business's every reject/terminate failed while Meta still had the call: nobody ended it.
            half.append(f"call {cid}: every reject/terminate failed while Meta kept the call")
    if data.calls_active_at_end:
        half.append(f"{data.calls_active_at_end:.0f} calls still active in live workers after settling")
    return half


def _unsigned_published(data: DrillData) -> list[str]:
    audit = data.audit
    dead_ids = {d.message_id for d in data.dead}
    bad: list[str] = []
    for post in data.junk:
        if post.signed:
            continue
        if any(status != 401 for status in post.statuses):
            bad.append(f"junk {post.marker} ({post.kind}) answered {post.statuses}")
        if audit.ingress_published[post.message_id] or post.message_id in dead_ids:
            bad.append(f"junk {post.marker} ({post.kind}) reached the broker")
        if audit.markers[post.marker]:
            bad.append(f"junk {post.marker} ({post.kind}) reached callhook.events")
    return bad


# ------------------------------------------------------------------------------------------------ tables
def _ms(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{percentile(values, 0.5) * 1000:.0f}/{percentile(values, 0.99) * 1000:.0f}"


def _setups(calls: Iterable[CallView], start: float, end: float) -> tuple[list[float], int, int]:
    chosen = [c for c in calls if c.sent_at is not None and start <= c.sent_at < end and not c.stale]
    setups = [c.setup for c in chosen if c.setup is not None]
    return setups, len(chosen), sum(1 for c in chosen if not c.outcome.answered)


def recovery_seconds(report: Report, log: WindowLog, until: float) -> float | None:
    """From the fault's end until calls were answered normally again: to the first call placed after the end
    that starts a run of ``RECOVERY_RUN`` normal ones. 0 when every call placed during the fault and that
    first run were normal (the fault hurt nobody); None when no such run came before ``until``."""
    if log.started_at is None or log.ended_at is None:
        return None
    end = log.ended_at
    placed = sorted(
        (
            c
            for c in report.calls
            if c.sent_at is not None and log.started_at <= c.sent_at < until and not c.stale
        ),
        key=lambda c: c.sent_at or 0.0,
    )
    during = [c for c in placed if (c.sent_at or 0.0) <= end]
    after = [c for c in placed if (c.sent_at or 0.0) > end]
    for index in range(len(after) - RECOVERY_RUN + 1):
        run = after[index : index + RECOVERY_RUN]
        if all(c.normal(report.threshold) for c in run):
            if index == 0 and all(c.normal(report.threshold) for c in during):
                return 0.0
            return max(0.0, (run[0].sent_at or end) - end)
    return None


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(report: Report) -> str:
    data = report.data
    t0 = data.t0
    parts = [f"callhook reliability drill {data.run_id}: {data.load_seconds / 60:.1f} min of load", ""]
    inv = report.invariants()
    parts.append(
        table(
            ["invariant", "count", "measured by"],
            [
                [
                    "webhooks answered 200, never processed",
                    inv["lost"],
                    "firehose + events audit + dead letters + journal",
                ],
                ["calls answered twice", inv["answered_twice"], "answer SDPs of accepts at the Graph API"],
                [
                    "calls answered by a second worker",
                    inv["answered_by_second_worker"],
                    "answer SDPs of pre_accepts/accepts",
                ],
                ["calls left half-open", inv["half_open"], "journal + calls_active of live workers"],
                [
                    "unsigned bodies published",
                    inv["unsigned_published"],
                    "junk posts vs firehose/events/dead",
                ],
                ["answered calls dropped by callhook", inv["dropped"], "journal: terminate of a live call"],
                ["API abuse answered wrongly", inv["api_abuse"], "bad inputs, reused keys, slow clients"],
                ["(excused: connect taken by a SIGKILLed worker)", len(report.excused), ""],
            ],
        )
    )
    parts += ["", _calls_table(report), "", _webhooks_table(report), "", _faults_table(report, t0), ""]
    parts.append(_processes_table(report, t0))
    parts += ["", _cpu_table(report)]
    lag = data.loop_lag
    parts += [
        "",
        "setup latency = connect webhook first sent -> pre_accept received (ms, p50/p99); normal = answered "
        f"with setup <= {report.threshold * 1000:.0f} ms (2x the warm-up p99, at least 500 ms)",
        f"drill process event-loop lag p50/p99: {_ms(lag)} ms; "
        f"settled {data.settle_seconds:.1f} s after the load",
    ]
    failed = [
        _describe_call(report, c)
        for c in report.calls
        if not c.stale and (not c.outcome.answered or c.outcome.end_reason not in ("phone_hangup", None))
    ]
    for title, lines in (
        ("calls not answered or not ended by the phone", failed),
        ("LOST", report.lost),
        ("ANSWERED TWICE", report.answered_twice),
        ("HALF-OPEN", report.half_open),
        ("UNSIGNED PUBLISHED", report.unsigned_published),
        ("DROPPED", report.dropped),
        ("excused", report.excused),
        ("ANSWERED BY A SECOND WORKER", report.second_owner),
    ):
        if lines:
            parts += ["", f"{title} ({len(lines)}):", *(f"  {line}" for line in lines[:30])]
    return "\n".join(parts)


def _describe_call(report: Report, call: CallView) -> str:
    """One call in a line: when, who had it, what the business asked of the Graph API, how it ended."""
    t0 = report.data.t0
    when = f"{call.sent_at - t0:.1f}" if call.sent_at is not None else "?"
    return (
        f"{call.call_id} at {when} s, owner {call.owner}: graph [{call.graph}] -> "
        f"{call.outcome.state} ({call.outcome.end_reason}); worker said: {call.ended_reason}"
    )


def calls_csv(report: Report) -> str:
    """One row per call, for digging into a run: times from the start of the load, setup in ms."""
    t0 = report.data.t0
    rows = ["call_id,sent_s,setup_ms,answered,state,end_reason,owner,stale,graph,worker_said"]
    for c in sorted(report.calls, key=lambda c: c.sent_at or 0.0):
        sent = f"{c.sent_at - t0:.3f}" if c.sent_at is not None else ""
        setup = f"{c.setup * 1000:.0f}" if c.setup is not None else ""
        fields = [c.call_id, sent, setup, str(c.outcome.answered), c.outcome.state]
        fields += [c.outcome.end_reason or "", c.owner or "", str(c.stale), c.graph, c.ended_reason or ""]
        rows.append(",".join(f'"{f}"' if "," in f or " " in f else f for f in fields))
    return "\n".join(rows) + "\n"


def _calls_table(report: Report) -> str:
    calls = report.calls
    states = Counter(c.outcome.state for c in calls)
    reasons = Counter(c.outcome.end_reason or c.outcome.state for c in calls)
    capacity = sum(1 for c in calls if (c.ended_reason or "").startswith("overflow"))
    stale = sum(1 for c in calls if c.stale)
    setups = [c.setup for c in calls if c.setup is not None and not c.stale]
    audio = sum(1 for c in calls if c.outcome.audio is not None and c.outcome.audio.matched)
    rows: list[list[object]] = [
        ["placed (incoming)", len(calls)],
        ["connect answered 200 by the ingress", sum(c.connect_acked for c in calls)],
        ["answered (accepted at Meta)", sum(c.outcome.answered for c in calls)],
        ["  of which audio echoed intact", audio],
        ["rejected by the business", states.get("rejected", 0)],
        ["  stale on purpose (stamped 40 s old)", stale],
        ["  for capacity (overflow)", capacity],
        ["failed at Meta (unanswered, media)", states.get("failed", 0)],
        ["end reasons", ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))],
        ["setup p50/p99 ms (all non-stale)", _ms(setups)],
    ]
    return table(["calls", "count"], rows)


def _webhooks_table(report: Report) -> str:
    data = report.data
    deliveries = data.journal.deliveries
    attempts = [a for d in deliveries for a in d.attempts]
    statuses = Counter(str(a.http_status or "no answer") for a in attempts)
    junk = Counter((p.kind, "/".join(str(s) for s in sorted(set(p.statuses)))) for p in data.junk)
    rows: list[list[object]] = [
        ["simulator deliveries (POSTs)", len(deliveries)],
        ["  duplicates", sum(1 for d in deliveries if d.duplicate_of is not None)],
        ["  attempts by answer", ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))],
        ["  gave up after retries", sum(1 for d in deliveries if d.gave_up)],
        ["message webhooks submitted (markers)", len(data.messages)],
        ["  markers seen on callhook.events", sum(1 for m in data.messages if data.audit.markers[m.marker])],
        ["answers 200 audited (incl. junk)", report.webhooks_acked],
        ["junk posts by kind and answer", ", ".join(f"{k}:{s} {n}" for (k, s), n in sorted(junk.items()))],
        ["firehose records / events audited", f"{data.audit.traced} / {data.audit.events}"],
        ["  stores not traced, all they carry processed (firehose gap)", store_trace_gaps(data)],
        ["callhook.dead at the end", len(data.dead)],
    ]
    return table(["webhooks", "count"], rows)


def _faults_table(report: Report, t0: float) -> str:
    data = report.data
    rows = []
    logs = sorted(data.windows, key=lambda w: w.started_at or math.inf)
    for index, log in enumerate(logs):
        if log.started_at is None or log.ended_at is None:
            rows.append([log.window.kind, log.target, "not run", "", "", "", "", "", "", log.note])
            continue
        following = logs[index + 1].started_at if index + 1 < len(logs) else None
        until = following if following is not None else t0 + data.load_seconds + 60.0
        before, _, _ = _setups(report.calls, log.started_at - EDGE_SECONDS, log.started_at)
        during, placed, unanswered = _setups(report.calls, log.started_at, log.ended_at)
        after, _, _ = _setups(report.calls, log.ended_at, log.ended_at + EDGE_SECONDS)
        recovery = recovery_seconds(report, log, until)
        rows.append(
            [
                log.window.kind,
                log.target,
                f"{log.started_at - t0:.1f}-{log.ended_at - t0:.1f}",
                _ms(before),
                _ms(during),
                _ms(after),
                f"{placed}/{unanswered}",
                "-" if recovery is None else f"{recovery:.1f}",
                _unavailable(data, log, until),
                log.note,
            ]
        )
    headers = [
        "fault",
        "target",
        "window s",
        "before",
        "during",
        "after",
        "placed/unans.",
        "recovery s",
        "503s",
        "note",
    ]
    return table(headers, rows)


def _unavailable(data: DrillData, log: WindowLog, until: float) -> str:
    """Webhooks the ingress answered 503 (broker unavailable) from the fault's start until the next one: how
    many, and the span from the first to the last (``n / s``), ``0`` if none."""
    assert log.started_at is not None
    times = sorted(
        a.sent_at
        for d in data.journal.deliveries
        for a in d.attempts
        if a.http_status == 503 and log.started_at <= a.sent_at < until
    )
    if not times:
        return "0"
    return f"{len(times)} / {times[-1] - times[0]:.1f}"


def _processes_table(report: Report, t0: float) -> str:
    rows = []
    for p in report.data.processes:
        if not p.name.startswith("worker"):
            continue
        m = p.metrics
        fate = "running"
        if p.signal is not None and p.signalled_at is not None:
            fate = f"{p.signal} at {p.signalled_at - t0:.1f}" + (
                f", exit {p.exit_code}" if p.exit_code is not None else ""
            )
        routed = _metric(m, "callhook_router_webhooks_total", outcome="ok")
        requeued = _metric(m, "callhook_router_webhooks_total", outcome="requeued")
        calls = {
            k: _metric(m, "callhook_calls_total", outcome=k)
            for k in ("completed", "rejected", "abandoned", "failed")
        }
        rows.append(
            [
                p.name,
                f"{p.started_at - t0:.1f}",
                fate,
                f"{routed:.0f}/{requeued:.0f}",
                " ".join(f"{k[:4]} {v:.0f}" for k, v in calls.items()),
                f"{_metric(m, 'callhook_calls_overflow_total'):.0f}",
            ]
        )
    ingress = report.data.ingress_metrics
    outcomes = ("ok", "bad_signature", "unavailable")
    rows.append(
        [
            "ingress",
            "",
            "",
            " ".join(
                f"{o} {_metric(ingress, 'callhook_ingress_requests_total', outcome=o):.0f}" for o in outcomes
            ),
            "",
            "",
        ]
    )
    return table(["process", "start s", "fate", "webhooks routed/requeued", "calls", "overflow"], rows)


def _metric(samples: dict[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for key, value in samples.items():
        sample, _, rest = key.partition("{")
        if sample != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def _cpu_table(report: Report) -> str:
    rows = []
    for name, samples in sorted(report.data.cpu.items()):
        values = samples[1:] or samples
        if values:
            rows.append([name, f"{sum(values) / len(values):.0f}", f"{percentile(values, 0.95):.0f}"])
    return table(["cpu (% of one core, during the load)", "mean", "p95"], rows)
