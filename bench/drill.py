"""Reliability drill: sustained load plus scheduled faults, then a call-by-call, webhook-by-webhook audit.

What runs (all on 127.0.0.1, in a private RabbitMQ vhost that is thrown away afterwards):

- the real ``callhook ingress`` and ``--workers`` ``callhook worker`` processes (``simulator.local.System``),
  each talking to the real broker through **its own TCP proxy** (``tests/support/tcpproxy.py``), so one
  process's broker link can be cut or slowed alone; a worker that is killed or drained gets a replacement
  (with a proxy of its own), as Kubernetes would start one;
- the simulator as Meta: incoming calls at ``--call-rate`` per second held ``--hold`` seconds by real aiortc
  phones (``simulator.scenario.run_scenario``), ``messages`` webhooks at ``--message-rate`` per second, all
  signed and delivered with duplicates, reordering, batching and stale stamps mixed in, plus a side stream of
  junk POSTs (signed poison, bad and missing signatures) straight to the ingress (``bench/drill_load.py``);
- faults on a schedule (``bench/drill_plan.py``), each a logged window: Graph API 5xx, 429 with
  ``Retry-After``, timeouts and slow answers; a worker SIGKILLed, another SIGTERMed; a worker's and the
  ingress's broker connections cut and slowed; the real broker restarted (``--restart-broker``);
- a broker-side witness (``bench/drill_audit.py``): RabbitMQ's firehose and an audit queue on
  ``callhook.events``.

Then it waits until everything settled and prints the report (``bench/drill_report.py``): the four
invariants (lost webhooks, calls answered twice, calls left half-open, unsigned bodies published: all must be
0), call counts, setup latency before/during/after each fault and the recovery time after it. Exit status 0
when every invariant holds.

    ./run bench drill --minutes 10                       # the full drill (restarts the REAL broker once)
    ./run bench drill --minutes 3 --no-restart-broker    # while others use the broker
    ./run bench drill --minutes 10 --cluster             # the local 3-node cluster (scripts/rabbitmq-cluster)
                                                         # loses nodes: never touches the broker on 5672

With ``--cluster`` every process gets the three nodes as a list (``CALLHOOK_AMQP_URL``), each through a TCP
proxy of its own per node, and the faults are a node killed with SIGKILL (the leader of ``callhook.webhooks``)
and started again, twice, a node partitioned off and healed, a worker killed and a worker cut off.
    uv run --frozen python bench/drill.py --minutes 2 --no-restart-broker --faults graph_5xx,sigkill

docs/reliability.md has the design, the measures and the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository's packages first (bench/ingress.py would shadow ``ingress``)

import aiohttp  # noqa: E402
import psutil  # noqa: E402

from bench.drill_audit import LOCAL_CTL, BrokerAudit, queue_depths, rabbitmqctl  # noqa: E402
from bench.drill_load import api_abuse_stream, junk_stream, message_stream  # noqa: E402
from bench.drill_plan import CLUSTER_SEQUENCE, FULL_SEQUENCE, FaultWindow, schedule  # noqa: E402
from bench.drill_report import (  # noqa: E402
    Answer,
    DrillData,
    ProcessLog,
    Report,
    WindowLog,
    analyse,
    calls_csv,
)
from ingress import contract  # noqa: E402
from simulator import payloads  # noqa: E402
from simulator.calls import Direction  # noqa: E402
from simulator.config import CallTiming, DeliveryConfig, DeliverySwitches, SimulatorConfig  # noqa: E402
from simulator.faults import FaultKind, FaultRule  # noqa: E402
from simulator.graph_api import Json  # noqa: E402
from simulator.journal import GraphRequest  # noqa: E402
from simulator.local import ACCESS_TOKEN, APP_SECRET, Process, System, free_port, scrape, wait_ready  # noqa: E402
from simulator.scenario import Scenario, run_scenario  # noqa: E402
from simulator.sim import Simulator  # noqa: E402
from tests.support import rabbit  # noqa: E402
from tests.support.tcpproxy import TcpProxy  # noqa: E402

SCRAPE_SECONDS = 2.0
STALE_SECONDS = (
    40.0  # stale connects are stamped this old: past the worker's 30 s deadline, inside Meta's 60 s
)
QUIET_QUEUES = (
    contract.WEBHOOKS_QUEUE,
    contract.UNCLAIMED_QUEUE,
    contract.EXPIRED_QUEUE,
    contract.RETRY_QUEUE,
)
WORKER_ENV = {"CALLHOOK_DRAIN_TIMEOUT_SECONDS": "30"}
# Meta's phone hangs up after 10 s without audio (a killed worker's calls end that long after the kill).
DRILL_API_TOKEN = "drill-integrator-token-0123456789"
DRILL_TIMING = CallTiming(start_silence_seconds=10.0, midcall_silence_seconds=10.0)


CLUSTER_SCRIPT = str(REPO / "scripts" / "rabbitmq-cluster")


@dataclass(frozen=True)
class BrokerSetup:
    """Where the drill's processes find RabbitMQ, and how it is administered."""

    ports: tuple[int, ...] = (rabbit.BROKER_PORT,)
    ctl: tuple[str, ...] = LOCAL_CTL
    trace_ctl: tuple[str, ...] = LOCAL_CTL  # the firehose is per node
    cluster: bool = False

    def url(self, vhost: str, ports: Sequence[int] | None = None) -> str:
        """``CALLHOOK_AMQP_URL``: one URL per node, comma-separated."""
        return ",".join(rabbit.amqp_url(vhost, port=p) for p in (ports or self.ports))


CLUSTER = BrokerSetup(
    ports=(5681, 5682, 5683),
    ctl=(CLUSTER_SCRIPT, "ctl"),
    trace_ctl=(CLUSTER_SCRIPT, "ctl-all"),
    cluster=True,
)


@dataclass(frozen=True)
class DrillSettings:
    load_seconds: float = 600.0
    workers: int = 3
    call_rate: float = 0.7  # new incoming calls per second
    hold_seconds: float = 15.0  # longer than a cut plus the reconnect: calls live through the faults
    message_rate: float = 10.0  # non-call webhooks per second
    junk_rate: float = 1.0  # junk POSTs per second
    abuse_rate: float = 0.5  # API abuse actions per second (bench/drill_load.py api_abuse_stream)
    duplicates: float = 0.1
    reorder: float = 0.05
    stale: float = 0.03
    batch: int = 3
    faults: tuple[FaultWindow, ...] = ()
    timing: CallTiming = DRILL_TIMING
    worker_env: Mapping[str, str] = field(default_factory=lambda: dict(WORKER_ENV))
    log_dir: Path = Path(tempfile.gettempdir()) / "callhook-drill"
    seed: int | None = None
    record_seconds: float = 3.0  # audio each phone keeps for its echo check
    settle_timeout_seconds: float = 150.0
    log: Callable[[str], None] = print
    broker: BrokerSetup = field(default_factory=BrokerSetup)


class ProxyGroup:
    """One TCP proxy per broker node in front of one process: cutting or slowing the group is that process
    losing (or crawling to) the broker, whichever node it is on."""

    def __init__(self, ports: Sequence[int], blocked: set[int] | None = None) -> None:
        self.targets = list(ports)
        self.proxies = [TcpProxy(rabbit.BROKER_HOST, port) for port in ports]
        self._blocked = blocked if blocked is not None else set()  # shared: the node ports now refused

    async def __aenter__(self) -> ProxyGroup:
        for proxy in self.proxies:
            await proxy.__aenter__()
        for port in self._blocked:
            await self.block(port)
        return self

    async def block(self, port: int) -> None:
        """Refuse (and reset) this process's connections to the node on ``port``."""
        await self.proxies[self.targets.index(port)].cut()

    def unblock(self, port: int) -> None:
        self.proxies[self.targets.index(port)].restore()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def ports(self) -> list[int]:
        return [proxy.port for proxy in self.proxies]

    @property
    def upstream_ports(self) -> set[int]:
        return set().union(*(proxy.upstream_ports for proxy in self.proxies))

    async def cut(self) -> None:
        await asyncio.gather(*(proxy.cut() for proxy in self.proxies))

    def restore(self) -> None:
        for port, proxy in zip(self.targets, self.proxies, strict=True):
            if port not in self._blocked:
                proxy.restore()

    def set_delay(self, seconds: float) -> None:
        for proxy in self.proxies:
            proxy.set_delay(seconds)

    async def close(self) -> None:
        for proxy in self.proxies:
            await proxy.close()


async def cluster(*args: str, timeout_seconds: float = 180.0) -> str:
    """Run ``scripts/rabbitmq-cluster ARGS``; its output, or RuntimeError with its stderr."""
    process = await asyncio.create_subprocess_exec(
        CLUSTER_SCRIPT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(timeout_seconds):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        command = " ".join(args)
        raise RuntimeError(f"rabbitmq-cluster {command}: no answer within {timeout_seconds} s") from None
    if process.returncode != 0:
        raise RuntimeError(f"rabbitmq-cluster {' '.join(args)}: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace").strip()


class DrillSimulator(Simulator):
    """The simulator, also noting the answer SDP of every pre_accept/accept that reaches Meta's rules: each
    owner of a call makes its own SDP, so two SDPs for one call mean it was answered by two owners."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answers: dict[str, list[Answer]] = defaultdict(list)

    async def calls_action(self, phone_number_id: str, body: Json, record: GraphRequest) -> Json:
        session, call_id, action = body.get("session"), body.get("call_id"), body.get("action")
        if action in ("pre_accept", "accept") and isinstance(call_id, str):
            sdp = session.get("sdp") if isinstance(session, dict) else None
            if isinstance(sdp, str):
                self.answers[call_id].append(Answer(action, hashlib.sha256(sdp.encode()).hexdigest(), record))
        return await super().calls_action(phone_number_id, body, record)


class Drill:
    def __init__(self, settings: DrillSettings, vhost: str) -> None:
        self.s = settings
        self.vhost = vhost
        self.run_id = secrets.token_hex(4)
        self.processes: dict[str, ProcessLog] = {}
        self.workers: dict[str, tuple[Process, ProxyGroup]] = {}
        self.windows = [WindowLog(w) for w in settings.faults]
        self.loop_lag: list[float] = []
        self.t0 = 0.0
        self._stack = AsyncExitStack()
        self._exits: set[asyncio.Task[None]] = set()
        self._proxies: list[ProxyGroup] = []
        self._nodes_down: set[str] = set()  # --cluster: nodes killed, not started yet
        self._partitioned: set[str] = set()
        # Node ports every process is kept off while the node is down or paused, and until the firehose is on
        # there again: a node accepts clients before its firehose can be turned on, and what they published
        # in that gap would be invisible to the audit (reported as lost).
        self._blocked: set[int] = set()
        self._reviving = asyncio.Lock()
        # One node fault at a time, each until its node is back: two nodes of three lost at once is no quorum
        # (a total outage, not the fault meant). On a slow machine a node takes tens of seconds to come back,
        # so a node fault may begin after its slot: its logged window says when it really ran.
        self._node_faults = asyncio.Lock()
        self._load_over = False
        self._broker_down = False
        self.cpu = CpuSampler()

    # -------------------------------------------------------------------------------------------- run
    async def run(self) -> Report:
        s = self.s
        async with self._stack as stack:
            self.http = await stack.enter_async_context(aiohttp.ClientSession())
            broker = s.broker
            self.audit = await stack.enter_async_context(
                BrokerAudit(
                    broker.url(self.vhost), self.vhost, self.attribute,
                    ctl=broker.ctl, trace_ctl=broker.trace_ctl,
                )
            )  # fmt: skip
            self.ingress_proxy = await stack.enter_async_context(ProxyGroup(broker.ports, self._blocked))
            stack.push_async_callback(self._close_worker_proxies)  # once the processes have stopped
            graph_port = free_port()
            self.system = System(
                amqp_url=broker.url(self.vhost),
                graph_url=f"http://127.0.0.1:{graph_port}",
                log_dir=s.log_dir,
                workers=0,
                worker_env=dict(s.worker_env),
                ingress_env={
                    "CALLHOOK_AMQP_URL": broker.url(self.vhost, self.ingress_proxy.ports),
                    "CALLHOOK_API_TOKENS": DRILL_API_TOKEN,
                    "CALLHOOK_PHONE_NUMBER_ID": self._sim_config().numbers[0].phone_number_id,
                },
            )
            ingress = self.system.start_ingress()
            self.processes[ingress.name] = ProcessLog(ingress.name, time.time())
            self.cpu.watch(ingress.name, ingress.popen.pid)
            self.sim = DrillSimulator(
                self._sim_config(), ingress_url=self.system.webhook_url, graph_port=graph_port
            )
            await stack.enter_async_context(self.sim)
            stack.push_async_callback(self.system.stop)  # before the simulator closes: workers drain first
            stack.push_async_callback(self._restart_broker_if_down)  # never leave the shared broker stopped
            stack.push_async_callback(self._revive_nodes)  # nor a cluster node down or partitioned
            for _ in range(s.workers):
                await self.start_worker()
            await self.system.wait_ready()
            self.processes[ingress.name].ready_at = time.time()
            background = [asyncio.create_task(self._scrape_loop()), asyncio.create_task(self._lag_loop())]
            try:
                return await self._load_and_audit()
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, *self._exits, return_exceptions=True)
        raise AssertionError("unreachable")  # pragma: no cover - the ``async with`` returns or raises

    async def _load_and_audit(self) -> Report:
        s = self.s
        self.t0 = time.time()
        s.log(f"drill {self.run_id}: {s.load_seconds:.0f} s of load, {len(s.faults)} faults ({s.log_dir})")
        scenario = Scenario(
            calls=int(s.call_rate * s.load_seconds), rate_per_second=s.call_rate, hold_seconds=s.hold_seconds
        )
        async with asyncio.TaskGroup() as tg:
            calls = tg.create_task(run_scenario(self.sim, scenario, keep_calls=False))
            messages = tg.create_task(message_stream(self.sim, self.run_id, s.message_rate, s.load_seconds))
            junk = tg.create_task(
                junk_stream(
                    lambda: self.system.webhook_url, APP_SECRET, self.sim.config.waba_id, self.run_id,
                    s.junk_rate, s.load_seconds,
                )
            )  # fmt: skip
            abuse = tg.create_task(
                api_abuse_stream(
                    lambda: self.system.webhook_url.removesuffix("/webhook"), DRILL_API_TOKEN, self.run_id,
                    s.abuse_rate, s.load_seconds,
                )
            )  # fmt: skip
            for log in self.windows:
                tg.create_task(self._fault(log))
        self._load_over = True
        self._log("load over; settling")
        settled_at = time.monotonic()
        active = await self._settle()
        settle_seconds = time.monotonic() - settled_at
        await self.audit.wait_drained()
        dead = await self.audit.dead_letters()
        depths = await queue_depths(self.vhost, self.s.broker.ctl)
        await self._scrape_once()
        data = DrillData(
            run_id=self.run_id,
            settings=_describe(s),
            t0=self.t0,
            load_seconds=s.load_seconds,
            windows=self.windows,
            outcomes=calls.result().outcomes,
            journal=self.sim.journal,
            answers=dict(self.sim.answers),
            messages=messages.result(),
            junk=junk.result(),
            audit=self.audit.records,
            dead=dead,
            depths=depths,
            processes=list(self.processes.values()),
            ingress_metrics=self.processes["ingress"].metrics,
            calls_active_at_end=active,
            loop_lag=self.loop_lag,
            settle_seconds=settle_seconds,
            cpu=dict(self.cpu.samples),
        )
        report = analyse(data)
        report.api_abuse = abuse.result().violations
        return report

    def _sim_config(self) -> SimulatorConfig:
        s = self.s
        return SimulatorConfig(
            app_secret=APP_SECRET,
            access_token=ACCESS_TOKEN,
            ice_host_addresses=("127.0.0.1",),
            timing=s.timing,
            # Meta keeps retrying for hours; ten attempts (about a minute) outlast every fault of the drill.
            delivery=DeliveryConfig(max_attempts=10, retry_initial_seconds=0.5, retry_max_seconds=8.0),
            switches=DeliverySwitches(
                duplicate_fraction=s.duplicates,
                duplicate_delay_seconds=0.5,
                reorder_fraction=s.reorder,
                reorder_seconds=1.0,
                batch_size=s.batch,
                batch_window_seconds=0.05,
                stale_fraction=s.stale,
                stale_seconds=STALE_SECONDS,
            ),
            record_seconds=s.record_seconds,
            random_seed=s.seed,
        )

    # -------------------------------------------------------------------------------------- processes
    async def start_worker(self) -> str:
        proxy = await ProxyGroup(self.s.broker.ports, self._blocked).__aenter__()
        self._proxies.append(proxy)
        process = self.system.start_worker(CALLHOOK_AMQP_URL=self.s.broker.url(self.vhost, proxy.ports))
        log = self.processes[process.name] = ProcessLog(process.name, time.time())
        self.workers[process.name] = (process, proxy)
        self.cpu.watch(process.name, process.popen.pid)
        async with asyncio.timeout(60):
            await wait_ready(self.http, process)
        log.ready_at = time.time()
        return process.name

    async def _close_worker_proxies(self) -> None:
        for proxy in self._proxies:
            await proxy.close()

    def attribute(self, port: int) -> str:
        """Which process a broker connection (its client port, seen through the proxies) belongs to."""
        if port in self.ingress_proxy.upstream_ports:
            return "ingress"
        for name, (_, proxy) in self.workers.items():
            if port in proxy.upstream_ports:
                return name
        return "direct"

    def _live_workers(self) -> list[str]:
        return [
            name for name, (p, _) in self.workers.items() if p.alive() and self.processes[name].signal is None
        ]

    def _busiest(self) -> str:
        """The live worker with the most active calls (at the last scrape): the fault should hurt."""
        live = self._live_workers()
        if not live:
            raise RuntimeError("no live worker to inflict a fault on")
        return max(live, key=lambda n: self.processes[n].metrics.get("callhook_calls_active", 0.0))

    def _signal(self, name: str, sig: signal.Signals) -> None:
        process, _ = self.workers[name]
        log = self.processes[name]
        log.signal, log.signalled_at = sig.name, time.time()
        process.signal(sig)
        task = asyncio.create_task(self._watch_exit(process, log))
        self._exits.add(task)

    async def _watch_exit(self, process: Process, log: ProcessLog) -> None:
        try:
            log.exit_code = await asyncio.to_thread(process.wait_exit, 120.0)
        except subprocess.TimeoutExpired:  # a process that does not exit in time is killed and reported
            process.popen.kill()
            log.exit_code = await asyncio.to_thread(process.wait_exit, 10.0)
            self._log(f"{log.name} did not exit within 120 s of {log.signal}: killed")
        log.exited_at = time.time()
        self._log(f"{log.name} exited with {log.exit_code}")

    # ----------------------------------------------------------------------------------------- faults
    async def _fault(self, log: WindowLog) -> None:
        window = log.window
        await asyncio.sleep(max(0.0, self.t0 + window.start - time.time()))  # the schedule itself
        log.started_at = time.time()
        end = await self._begin(log)
        self._log(f"fault {window.kind} begins ({log.target})")
        # A fault that began late (a node fault waits for the one before) still lasts its duration.
        assert log.started_at is not None
        ends_at = max(self.t0 + window.end, log.started_at + window.duration)
        await asyncio.sleep(max(0.0, ends_at - time.time()))
        await end()
        log.ended_at = time.time()
        self._log(f"fault {window.kind} ends ({log.target}){': ' + log.note if log.note else ''}")

    async def _begin(self, log: WindowLog) -> Callable[[], Any]:
        """Start the fault; returns the coroutine function that ends it."""
        kind, window, sim = log.window.kind, log.window, self.sim
        if kind.startswith("graph_"):
            log.target = "graph api"
            rules = [sim.graph_faults.add(rule) for rule in _graph_rules(kind, window.fraction)]

            async def end_graph() -> None:
                for rule in rules:
                    sim.graph_faults.remove(rule)
                log.note = ", ".join(f"{k} {v}" for k, v in sorted(sim.graph_faults.fired.items()))

            return end_graph
        if kind in ("sigkill", "sigterm"):
            victim = log.target = self._busiest()
            sig = signal.SIGKILL if kind == "sigkill" else signal.SIGTERM
            self._signal(victim, sig)
            replacement: asyncio.Task[str] | None = None
            if kind == "sigterm":  # a rolling update starts the new pod while the old one drains
                replacement = asyncio.create_task(self.start_worker())

            async def end_signal() -> None:
                name = await (replacement if replacement is not None else self.start_worker())
                log.note = f"replaced by {name}"

            return end_signal
        if kind in ("cut_worker", "slow_worker", "cut_ingress", "slow_ingress"):
            if kind.endswith("_worker"):
                log.target = self._busiest()
                proxy = self.workers[log.target][1]
            else:
                log.target, proxy = "ingress", self.ingress_proxy
            if kind.startswith("cut"):
                await proxy.cut()
                if kind == "cut_worker":
                    log.note = f"{self._deliver_connects_again(log.target)} connects delivered again"

                async def restore() -> None:
                    proxy.restore()

                return restore
            proxy.set_delay(window.delay_seconds)

            async def unslow() -> None:
                proxy.set_delay(0.0)

            return unslow
        if kind in ("node_kill", "partition"):
            return await self._node_fault(log)
        if kind == "broker_restart":
            log.target = "rabbitmq"
            self._broker_down = True
            await rabbitmqctl("stop_app")

            async def start() -> None:
                await self._restart_broker_if_down()
                await self.audit.trace_on()

            return start
        raise ValueError(f"unknown fault kind {kind}")

    async def _node_fault(self, log: WindowLog) -> Callable[[], Any]:
        """--cluster: kill -9 (or partition off) the node leading ``callhook.webhooks``; the coroutine
        function returned starts it again (or heals it) and turns the firehose on there again."""
        if not self.s.broker.cluster:
            raise ValueError(f"{log.window.kind} needs --cluster")
        await self._node_faults.acquire()
        log.started_at = time.time()
        node = await cluster("leader", contract.WEBHOOKS_QUEUE, self.vhost)
        log.target = f"node {node}"
        await self._block(self.s.broker.ports[int(node) - 1])
        if log.window.kind == "node_kill":
            self._nodes_down.add(node)
            await cluster("kill", node)
        else:
            self._partitioned.add(node)
            await cluster("partition", node)

        async def end() -> None:
            try:
                await self._revive_nodes()
                leader = await cluster("leader", contract.WEBHOOKS_QUEUE, self.vhost)
                log.note = f"webhooks leader now node {leader}"
            finally:
                self._node_faults.release()

        return end

    async def _block(self, port: int) -> None:
        self._blocked.add(port)
        for group in [self.ingress_proxy, *self._proxies]:
            await group.block(port)

    async def _revive_nodes(self) -> None:
        async with self._reviving:  # one at a time: a node started twice at once would fail
            await self._revive_nodes_now()

    async def _revive_nodes_now(self) -> None:
        revived = []
        for node in sorted(self._partitioned):
            try:
                await cluster("heal", node)
            except RuntimeError as exc:
                self._log(f"could not heal node {node}: {exc}")
            self._partitioned.discard(node)
            revived.append(node)
        for node in sorted(self._nodes_down):
            try:
                await cluster("start-node", node)
            except RuntimeError as exc:
                self._log(f"could not start node {node}: {exc}")
            self._nodes_down.discard(node)
            revived.append(node)
        for node in revived:
            with contextlib.suppress(RuntimeError):
                await cluster("ctl-node", node, "await_startup", timeout_seconds=120)
        if revived:
            with contextlib.suppress(RuntimeError):
                await self.audit.trace_on()
        for node in revived:
            port = self.s.broker.ports[int(node) - 1]
            self._blocked.discard(port)
            for group in [self.ingress_proxy, *self._proxies]:
                group.unblock(port)

    async def _restart_broker_if_down(self) -> None:
        if self._broker_down:
            await rabbitmqctl("start_app", timeout_seconds=120)
            await rabbitmqctl("await_startup", timeout_seconds=120)
            self._broker_down = False

    def _deliver_connects_again(self, victim: str) -> int:
        """Meta delivers at least once: copies of the connects of the victim's live calls, while it is cut off
        (its claims went with its connection). Returns how many."""
        live = {c.call_id: c for c in self.sim.calls if not c.ended and c.direction is Direction.INCOMING}
        count = 0
        for call_id, deliveries in self.audit.records.intake.items():
            connects = [d for d in deliveries if d.kind == "connect"]
            call = live.get(call_id)
            if call is None or not connects or connects[-1].who != victim:
                continue
            count += 1
            self.sim.webhooks.submit(
                payloads.call_connect(
                    waba_id=self.sim.config.waba_id, number=call.number, call_id=call.call_id, user=call.user,
                    direction=payloads.USER_INITIATED, timestamp=int(call.created_at), sdp_type="offer",
                    sdp=call.offer_sdp,
                )
            )  # fmt: skip
        return count

    # ----------------------------------------------------------------------------------------- settle
    async def _settle(self) -> float:
        """Wait until Meta's side has delivered everything and the broker and workers are idle; returns the
        active calls left in live workers (0 when all went well)."""
        journal = self.sim.journal
        deadline = time.monotonic() + self.s.settle_timeout_seconds
        await asyncio.sleep(2.0)  # held (reordered, duplicated, batched) webhooks leave within this
        with contextlib.suppress(TimeoutError):
            await journal.changes.wait_for(
                lambda: all(d.delivered_at is not None or d.gave_up for d in journal.deliveries),
                max(1.0, deadline - time.monotonic()),
            )
        active = 0.0
        while time.monotonic() < deadline:
            depths = await queue_depths(self.vhost, self.s.broker.ctl)
            busy = [q for q in QUIET_QUEUES if q in depths and depths[q].messages]
            await self._scrape_once()
            active = sum(
                self.processes[n].metrics.get("callhook_calls_active", 0.0) for n in self._live_workers()
            )
            if not busy and not active:
                return 0.0
            await asyncio.sleep(1.0)  # a probe of other processes' state
        self._log(f"not settled after {self.s.settle_timeout_seconds:.0f} s")
        return active

    # ---------------------------------------------------------------------------------------- helpers
    async def _scrape_loop(self) -> None:
        while True:
            if not self._load_over:
                self.cpu.sample()
            await self._scrape_once()
            await asyncio.sleep(SCRAPE_SECONDS)  # Prometheus's job, at a Prometheus-like interval

    async def _scrape_once(self) -> None:
        processes = [
            p for p in [self.system.ingress, *self.system.worker_processes] if p is not None and p.alive()
        ]
        results = await asyncio.gather(*(scrape(self.http, p) for p in processes), return_exceptions=True)
        for process, result in zip(processes, results, strict=True):
            if isinstance(result, dict):
                self.processes[process.name].metrics = result

    async def _lag_loop(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(0.25)
            self.loop_lag.append(max(0.0, time.monotonic() - started - 0.25))

    def _log(self, text: str) -> None:
        self.s.log(f"[{time.time() - self.t0:7.1f} s] {text}")


class CpuSampler:
    """CPU use of the drill's processes, the broker and the whole machine, in % of one core."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self._processes: dict[str, psutil.Process] = {"drill": psutil.Process()}
        broker = next((p for p in psutil.process_iter(["name"]) if p.info["name"] == "beam.smp"), None)
        if broker is not None:
            self._processes["rabbitmq"] = broker
        for process in self._processes.values():
            process.cpu_percent(None)  # the first reading only sets the baseline
        psutil.cpu_percent(None)

    def watch(self, name: str, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            self._processes[name] = process = psutil.Process(pid)
            process.cpu_percent(None)

    def sample(self) -> None:
        for name, process in list(self._processes.items()):
            try:
                self.samples[name].append(process.cpu_percent(None))
            except psutil.Error:
                del self._processes[name]
        self.samples["machine"].append(psutil.cpu_percent(None) * (psutil.cpu_count() or 1))


def _graph_rules(kind: str, fraction: float) -> list[FaultRule]:
    """The window's fault rules: the first request in it is always hit (the fault surely bites), then a
    ``fraction`` of the others."""
    if kind == "graph_5xx":
        return [
            FaultRule("*", FaultKind.SERVER_ERROR, count=1, http_status=503),
            FaultRule("*", FaultKind.SERVER_ERROR, fraction=fraction, http_status=503),
        ]
    if kind == "graph_429":
        throttle = FaultRule("*", FaultKind.THROTTLE, code=130429, retry_after_seconds=1)
        return [replace(throttle, count=1), replace(throttle, fraction=fraction)]
    # graph_slow: held past the worker's 5 s request timeout (half of them applied first: outcome unknown),
    # and slow answers.
    return [
        FaultRule("*", FaultKind.TIMEOUT, count=1, seconds=6.0, apply=True),
        FaultRule("*", FaultKind.TIMEOUT, fraction=fraction / 2, seconds=6.0, apply=True),
        FaultRule("*", FaultKind.TIMEOUT, fraction=fraction / 2, seconds=6.0),
        FaultRule("*", FaultKind.DELAY, fraction=0.5, seconds=1.0),
    ]


def _describe(settings: DrillSettings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name in ("log",):
            continue
        out[f.name] = [dataclasses.asdict(w) for w in value] if f.name == "faults" else str(value)
    return out


async def run_drill(settings: DrillSettings, vhost: str) -> Report:
    """Run the drill against a fresh vhost of the local broker (its topology is declared by the processes)."""
    return await Drill(settings, vhost).run()


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load (default 10)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--call-rate", type=float, default=0.7, help="new incoming calls per second")
    parser.add_argument("--hold", type=float, default=15.0, help="seconds each answered call lasts")
    parser.add_argument("--message-rate", type=float, default=10.0, help="non-call webhooks per second")
    parser.add_argument("--junk-rate", type=float, default=1.0, help="junk POSTs per second")
    parser.add_argument("--abuse-rate", type=float, default=0.5, help="API abuse actions per second")
    parser.add_argument(
        "--restart-broker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="restart the REAL RabbitMQ once (rabbitmqctl stop_app/start_app): everyone's connections drop",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run against the local 3-node cluster (scripts/rabbitmq-cluster, started if needed) and kill, "
        "restart and partition its nodes; the broker on 5672 is not touched",
    )
    parser.add_argument(
        "--faults", default="", help=f"only these, comma-separated ({', '.join(k for k, _ in FULL_SEQUENCE)})"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the invariants and rows here")
    parser.add_argument("--log-dir", type=Path, default=None, help="process logs (default: a temp dir)")
    parser.add_argument("--calls-csv", type=Path, default=None, help="write one row per call here")
    args = parser.parse_args(argv)

    load_seconds = args.minutes * 60.0
    only = frozenset(k for k in args.faults.split(",") if k) or None
    broker = CLUSTER if args.cluster else BrokerSetup()
    if args.cluster:
        faults = schedule(load_seconds, CLUSTER_SEQUENCE, restart_broker=False, only=only)
    else:
        faults = schedule(load_seconds, restart_broker=args.restart_broker, only=only)
    settings = DrillSettings(
        load_seconds=load_seconds,
        workers=args.workers,
        call_rate=args.call_rate,
        hold_seconds=args.hold,
        message_rate=args.message_rate,
        junk_rate=args.junk_rate,
        abuse_rate=args.abuse_rate,
        faults=tuple(faults),
        log_dir=args.log_dir or Path(tempfile.mkdtemp(prefix="callhook-drill-")),
        seed=args.seed,
        broker=broker,
    )
    if args.cluster:
        subprocess.run([CLUSTER_SCRIPT, "start"], check=True)
        vhost = f"callhook-drill-{secrets.token_hex(4)}"
        subprocess.run([*broker.ctl, "-q", "add_vhost", vhost], check=True)
        grant = ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]
        subprocess.run([*broker.ctl, "-q", *grant], check=True)
    else:
        rabbit.ensure_broker()
        vhost = rabbit.create_vhost("callhook-drill")
    try:
        report = asyncio.run(run_drill(settings, vhost))
    finally:
        with contextlib.suppress(Exception):
            if args.cluster:
                subprocess.run([*broker.ctl, "-q", "delete_vhost", vhost], check=True)
            else:
                rabbit.delete_vhost(vhost)
    print()
    print(f"command: ./run bench drill {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(report.format())
    if args.calls_csv is not None:
        args.calls_csv.write_text(calls_csv(report))
    if args.json is not None:
        summary = {"invariants": report.invariants(), "ok": report.ok, "report": report.format().splitlines()}
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
