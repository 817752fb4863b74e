"""A worker process: the router stage, call ownership, one session per owned call, health and metrics.

Start-up is one AsyncExitStack, torn down in reverse: the calls' TaskGroup is entered last, so on the way out
every call has ended (and sent its reject or terminate) before ownership, the Graph client and the broker
connection close.

SIGTERM drains: stop taking unclaimed calls and dials at once (readiness fails), let running calls end by
themselves for up to ``CALLHOOK_DRAIN_TIMEOUT_SECONDS``, then hang up the rest through the Graph API, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

from prometheus_client import CollectorRegistry

from callhook import loop
from callhook.ice import restrict_host_addresses, restrict_peer_networks
from callhook.logs import call_id_var, setup_logging
from callhook.loop import loop_name
from worker import call as machine
from worker.amqp import AmqpLink
from worker.apps.api import App, CallInfo
from worker.apps.loader import APP_REFUSED, AppRegistry, AppSpecError
from worker.archive import Archiver, ArchiveSettings
from worker.capture import Capture, CaptureError, Consent, consent
from worker.config import WorkerConfig
from worker.dials import Ack, DialIntake
from worker.errors import GraphError
from worker.events import CallConnect, CallEvent, DialRequest
from worker.graph import GraphClient, GraphSettings
from worker.handoff.hub import HandoffHub
from worker.handoff.metrics import HandoffMetrics
from worker.handoff.transfer import Handoff
from worker.health import HealthServer, watch_loop_lag
from worker.lifecycle import LifecyclePublisher
from worker.media import MediaSettings, MediaStatistics
from worker.media_ready import MediaReadyConsumer
from worker.metrics import WorkerMetrics
from worker.ownership import Claim, Ownership, OwnershipSettings, Reservation
from worker.router import Router
from worker.session import DIAL_REFUSALS, CallSession, SessionDeps, SessionSettings

log = logging.getLogger(__name__)


class WorkerService:
    """``async with WorkerService(config) as service: await service.wait_stopped()``; ``stop()`` drains."""

    def __init__(self, config: WorkerConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.metrics = WorkerMetrics(self.registry)
        # Every app this worker may run is loaded now (fail at start-up, not mid-call); dials pick by name.
        self.apps = AppRegistry(config.app, config.apps, bridge_settings=config.bridge)
        self.app: App = self.apps.default
        self.sessions: dict[str, CallSession] = {}
        self._session_tasks: dict[str, asyncio.Task[None]] = {}
        self._lag_probe: asyncio.Task[None] | None = None
        self._stack = AsyncExitStack()
        self._stop = asyncio.Event()
        self._draining = False
        self._calls = asyncio.TaskGroup()
        self._side_tasks = asyncio.TaskGroup()
        self.health: HealthServer | None = None
        self._link: AmqpLink | None = None
        self._ownership: Ownership | None = None
        self._graph: GraphClient | None = None
        self._deps: SessionDeps | None = None
        self._dials: DialIntake | None = None

    # ---------------------------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> WorkerService:
        config, stack = self.config, self._stack
        restrict_host_addresses(config.ice_host_addresses)
        restrict_peer_networks(config.ice_peer_networks)
        try:
            self._link = await stack.enter_async_context(AmqpLink(config.amqp_url, name="worker"))
            self._graph = await stack.enter_async_context(
                GraphClient(
                    GraphSettings(
                        graph_url=config.graph_url,
                        graph_version=config.graph_version,
                        access_token=config.access_token,
                        timeout_seconds=config.graph_timeout_seconds,
                    ),
                    metrics=self.metrics,
                )
            )
            self._ownership = await stack.enter_async_context(
                Ownership(
                    self._link,
                    self,
                    self.metrics,
                    OwnershipSettings(
                        capacity=config.max_calls,
                        answer_deadline_seconds=config.answer_deadline_seconds,
                        tombstone_seconds=config.tombstone_seconds,
                    ),
                )
            )
            lifecycle = LifecyclePublisher(self._link, self.metrics)
            media_settings = MediaSettings(
                ice_servers=config.ice_servers,
                turn_username=config.turn_username,
                turn_credential=config.turn_credential,
                silence_timeout_seconds=config.media_silence_timeout_seconds,
            )
            hub = await stack.enter_async_context(HandoffHub(self._link, config.handoff))
            handoff = Handoff(hub, HandoffMetrics(self.registry), media_settings, lifecycle.call_event)
            self._deps = SessionDeps(
                graph=self._graph,
                metrics=self.metrics,
                lifecycle=lifecycle,
                claimer=self._ownership,
                media_settings=media_settings,
                handoff=handoff,
            )
            # The router gets a connection of its own: a broker that blocks publishers (memory alarm) must not
            # also stall claims and mailboxes.
            router_link = await stack.enter_async_context(AmqpLink(config.amqp_url, name="router"))
            await stack.enter_async_context(Router(router_link, self.metrics))
            self._dials = await stack.enter_async_context(
                DialIntake(self._link, self._ownership, self._take_dial, self.metrics)
            )
            archiver = None
            if config.archive_dir:
                archiver = Archiver(ArchiveSettings(Path(config.archive_dir)), self._graph, self.metrics)
            await stack.enter_async_context(MediaReadyConsumer(self._link, archiver, self.metrics))
            self.health = await stack.enter_async_context(
                HealthServer(config.metrics_host, config.metrics_port, self.registry, self.ready)
            )
            await stack.enter_async_context(self._side_tasks)
            self._lag_probe = self._side_tasks.create_task(watch_loop_lag(self.metrics), name="loop-lag")
            await stack.enter_async_context(self._calls)
        except BaseException:
            await stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()
        await self._drain()
        if self._lag_probe is not None:  # runs until cancelled
            self._lag_probe.cancel()
        await self._stack.aclose()

    def stop(self) -> None:
        """Begin draining (idempotent): no new calls; running calls end by themselves or at the timeout."""
        if not self._draining:
            self._draining = True
            self.metrics.draining.set(1)
            if self._ownership is not None:
                self._ownership.drain()
            log.info("draining", extra={"calls": len(self.sessions)})
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    def media_statistics(self) -> dict[str, MediaStatistics]:
        """Live media figures of every call this worker runs, by call id (an unplaced dial: ``dial:…``)."""
        out: dict[str, MediaStatistics] = {}
        for key, session in self.sessions.items():
            stats = session.media_statistics()
            if stats is not None:
                out[key] = stats
        return out

    def ready(self) -> bool:
        return (
            not self._draining
            and self._link is not None
            and self._link.current is not None
            and self._ownership is not None
            and self._ownership.statistics().connected
        )

    async def _drain(self) -> None:
        deadline = self.config.drain_timeout_seconds
        try:
            async with asyncio.timeout(deadline):
                await self._wait_no_calls()
        except TimeoutError:
            log.warning("drain timeout: hanging up the remaining calls", extra={"calls": len(self.sessions)})
            for session in list(self.sessions.values()):
                session.hang_up("worker shutting down")
        await self._wait_no_calls()

    async def _wait_no_calls(self) -> None:
        while self._session_tasks:
            await asyncio.wait(list(self._session_tasks.values()), return_when=asyncio.FIRST_COMPLETED)

    # ------------------------------------------------------------------------------- CallHandler
    async def on_incoming(self, claim: Claim, event: CallConnect, received_at: float) -> None:
        info = CallInfo.from_connect(event)
        session = self._session(info, claim=claim, received_at=received_at, capture=self.config.capture)
        self._start(session, machine.Offered(event.sdp))

    async def on_stale(self, event: CallConnect) -> None:
        self._reject_unowned(event, "stale: too old to answer in time")

    async def on_overflow(self, event: CallConnect) -> None:
        self._reject_unowned(event, "overflow: no worker had room in time")

    async def on_abandoned(self, event: CallConnect) -> None:
        # Its owner lost the broker after it may have answered: end it, a second answer would be worse.
        self._side_tasks.create_task(self._end_unowned(event, "terminate", "owner lost while answering"))

    async def on_orphan(self, event: CallEvent) -> None:
        if isinstance(event, CallConnect) and event.direction == "outgoing":
            # An answer to a call nobody owns (its worker died): end it, or the user hears silence.
            self._side_tasks.create_task(self._end_unowned(event, "terminate", "orphan answer"))

    # --------------------------------------------------------------------------------- sessions
    def _session(
        self,
        info: CallInfo,
        *,
        claim: Claim | None = None,
        reservation: Reservation | None = None,
        received_at: float = 0.0,
        app: App | None = None,
        request_id: str = "",
        before_connect: Callable[[], Awaitable[None]] | None = None,
        capture: Capture | None = None,
    ) -> CallSession:
        assert self._deps is not None
        settings = SessionSettings(
            answer_deadline_seconds=self.config.answer_deadline_seconds,
            media_connect_timeout_seconds=self.config.media_connect_timeout_seconds,
            request_id=request_id,
            capture=capture,
        )
        return CallSession(
            self._deps, settings, info, app or self.app,
            claim=claim, reservation=reservation, received_at=received_at, before_connect=before_connect,
        )  # fmt: skip

    def _start(self, session: CallSession, first: machine.Event) -> None:
        key = session.info.call_id or f"dial:{id(session)}"
        self.sessions[key] = session
        self._session_tasks[key] = self._calls.create_task(
            self._run_session(key, session, first), name=f"call:{key}"
        )

    async def _run_session(self, key: str, session: CallSession, first: machine.Event) -> None:
        try:
            await session.run(first)
        except Exception:  # a bug in one call must not end the others: count it, end the call, carry on
            log.exception("call session crashed", extra={"call_id": session.info.call_id})
            self.metrics.calls.labels(direction=session.info.direction, outcome="crashed").inc()
            await session.end_after_crash()
        finally:
            self.sessions.pop(key, None)
            self._session_tasks.pop(key, None)

    # ----------------------------------------------------------------------------------- dials
    def _take_dial(self, request: DialRequest, reservation: Reservation, ack: Ack) -> None:
        self._calls.create_task(self._dial(request, reservation, ack), name=f"dial:{request.request_id}")

    async def _dial(self, request: DialRequest, reservation: Reservation, ack: Ack) -> None:
        """Check what the dial asks to be checked, then place the call in a session of its own."""
        assert self._deps is not None
        capture: Capture | None = None
        refusal: tuple[str, str] | None = None
        try:
            capture = dial_capture(self.config, request)
        except CaptureError as exc:
            refusal = ("bad_request", str(exc))
        if not request.to and not request.recipient:
            refusal = ("bad_request", "the dial names no user: 'to' or 'recipient' is required")
        info = CallInfo(
            call_id="",
            phone_number_id=request.phone_number_id,
            direction="outgoing",
            user_number=request.to,
            user_id=request.recipient or None,
            biz_opaque_callback_data=request.biz_opaque_callback_data,
            capture=capture if capture is not None and (capture.record or capture.transcribe) else None,
        )
        app = self.app
        if refusal is None:
            try:
                app = self._app(request.app)
                refusal = await self._permission_refusal(request) if request.permission != "skip" else None
            except AppSpecError:
                refusal = ("bad_app", APP_REFUSED)  # never the loader's text: it may name paths or modules
            except GraphError as exc:
                refusal = (DIAL_REFUSALS.get(exc.code or 0, "failed"), f"permission check: {exc}")
        if refusal is not None:
            await ack()
            reservation.release()
            outcome, reason = refusal
            self.metrics.dials.labels(outcome=outcome).inc()
            log.info("dial not placed", extra={"request_id": request.request_id, "outcome": outcome})
            await self._deps.lifecycle.call_event(
                "ended", info, outcome=outcome, reason=reason, request_id=request.request_id
            )
            return
        session = self._session(
            info, reservation=reservation, app=app, request_id=request.request_id, before_connect=ack,
            capture=capture if info.capture is not None else None,
        )  # fmt: skip
        self._start(session, machine.Dialed())

    async def _permission_refusal(self, request: DialRequest) -> tuple[str, str] | None:
        """None when the user may be called now; else (outcome, reason). ``request`` mode asks the user."""
        assert self._graph is not None
        status = await self._graph.call_permissions(
            request.phone_number_id, request.to, recipient=request.recipient or ""
        )
        refusal = status.start_call_refusal()
        if refusal is None:
            return None
        if status.status in ("temporary", "permanent"):  # permitted, but a limit (100 per 24 h) is reached
            return ("call_limit", refusal)
        if request.permission == "request" and status.can_request_permission is not False:
            await self._graph.send_permission_request(
                request.phone_number_id, request.to, recipient=request.recipient or ""
            )
            return ("permission_requested", "no permission yet: a permission request was sent to the user")
        return ("no_permission", refusal)

    def _app(self, name: str | None) -> App:
        return self.apps.get(name)

    def _reject_unowned(self, event: CallConnect, reason: str) -> None:
        self._side_tasks.create_task(self._end_unowned(event, "reject", reason))

    async def _end_unowned(self, event: CallConnect, action: str, reason: str) -> None:
        assert self._graph is not None
        assert self._deps is not None
        token = call_id_var.set(event.call_id)
        deadline = time.monotonic() + 10.0
        try:
            if action == "reject":
                await self._graph.reject(event.phone_number_id, event.call_id, deadline=deadline)
            else:
                await self._graph.terminate(event.phone_number_id, event.call_id, deadline=deadline)
        except GraphError as exc:
            log.warning("could not %s an unowned call", action, extra={"error": str(exc), "reason": reason})
        outcome = "rejected" if action == "reject" else "failed"
        self.metrics.calls.labels(direction=event.direction, outcome=outcome).inc()
        await self._deps.lifecycle.call_event(
            "ended", CallInfo.from_connect(event), outcome=outcome, reason=reason
        )
        call_id_var.reset(token)


def dial_capture(config: WorkerConfig, request: DialRequest) -> Capture:
    """The worker's default opt-in with the dial's own objects (purpose and language default to the
    configured ones); CaptureError when Meta would refuse it."""
    defaults = [config.capture.record, config.capture.transcribe]
    fallback = next((c for c in defaults if c is not None), None)
    if fallback is None and (config.capture_purpose or config.capture_language):
        fallback = Consent("DISABLED", config.capture_purpose, config.capture_language)
    record = transcribe = None
    if request.recording is not None:
        r = request.recording
        record = consent(r.status, r.purpose, r.announcement_language, fallback)
    if request.transcription is not None:
        t = request.transcription
        transcribe = consent(t.status, t.purpose, t.announcement_language, fallback)
    return config.capture.overridden(record, transcribe).validated()


def run(config: WorkerConfig) -> int:
    """``callhook worker``: run until SIGTERM/SIGINT, drain, exit 0."""
    setup_logging("worker", config.log_level, config.log_format)
    return loop.run(_main(config), uvloop=config.uvloop)


async def _main(config: WorkerConfig) -> int:
    event_loop = asyncio.get_running_loop()
    async with WorkerService(config) as service:
        for sig in (signal.SIGTERM, signal.SIGINT):
            event_loop.add_signal_handler(sig, service.stop)
        assert service.health is not None
        log.info(
            "worker started",
            extra={
                "metrics_port": service.health.port,
                "max_calls": config.max_calls,
                "loop": loop_name(),
            },
        )
        await service.wait_stopped()
    with contextlib.suppress(NotImplementedError):
        for sig in (signal.SIGTERM, signal.SIGINT):
            event_loop.remove_signal_handler(sig)
    log.info("worker stopped")
    return 0
