"""One call's session: runs the commands of :mod:`worker.call` and feeds their outcomes back as events.

The session decides nothing (the state machine does). It owns the call's I/O for the call's whole life: the
aiortc media, the Graph API requests, the app's task and the mailbox reader, all inside one TaskGroup, so
when :meth:`CallSession.run` returns nothing of the call is left running. Every fact reaches the machine
through one queue, in arrival order; a mailbox event is acked only after the machine applied it.

Long commands (Graph requests, waiting for media, the app) run as tasks, so that a terminate webhook or a
hang-up can be applied while they are in flight; short ones (making an SDP, closing media) run in place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from callhook.logs import call_id_var
from worker import call as machine
from worker.apps.api import App, CallEnded, CallInfo, MediaCall
from worker.capture import Capture, CaptureError
from worker.crashpoints import crash_point
from worker.errors import CallhookError, GraphError
from worker.events import (
    CallConnect,
    CallEvent,
    CallStatus,
    CallTerminate,
    HangupRequest,
    TransferRequestEvent,
)
from worker.graph import GraphClient
from worker.handoff.transfer import Fallback, Handoff
from worker.handoff.wire import TransferRequest
from worker.lifecycle import MediaQuality
from worker.media import EndReason, MediaError, MediaSession, MediaSettings, MediaStatistics
from worker.media.dtmf import Digit
from worker.media.keypad import Keypad
from worker.meta_codes import describe
from worker.metrics import WorkerMetrics
from worker.ownership import Claim, ClaimLost, MailboxItem, Reservation

log = logging.getLogger(__name__)

Ack = Callable[[], Awaitable[None]]


# Meta's refusals of ``connect`` that an integrator must tell apart (README, "Outgoing calls").
DIAL_REFUSALS: dict[int, str] = {
    138001: "not_callable",
    138006: "no_permission",
    138009: "permission_request_limit",
    138012: "callee_limit",
    138013: "calling_unavailable",
}


class Claimer(Protocol):
    """The part of :class:`worker.ownership.Ownership` a session needs."""

    async def claim(self, call_id: str, *, reservation: Reservation | None = None) -> Claim | None: ...

    async def reclaim(self, lost: Claim) -> Claim | None: ...


class Prepared(Protocol):
    """What an app's ``prepare`` returns: the call's app, ready before the call is accepted."""

    async def run(self, call: MediaCall) -> None: ...

    async def aclose(self) -> None: ...


class Lifecycle(Protocol):
    """Where integrators hear about calls (``callhook.events``, routing keys ``call.*``)."""

    async def call_event(self, name: str, info: CallInfo, **fields: object) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionSettings:
    answer_deadline_seconds: float = 30.0
    media_connect_timeout_seconds: float = 10.0
    hangup_deadline_seconds: float = 10.0  # how long reject/terminate may keep retrying
    app_stop_timeout_seconds: float = 2.0
    # after the phone closed its media, wait this long for Meta's terminate
    remote_end_grace_seconds: float = 2.0
    # a ringing call's terminate waits this long for a REJECTED status it may have overtaken
    status_grace_seconds: float = 1.0
    request_id: str = ""  # the dial request an outgoing call came from
    # Meta's recording/transcription opt-in (worker/capture.py): sent on accept or connect, never pre_accept
    capture: Capture | None = None


@dataclass(frozen=True, slots=True)
class SessionDeps:
    graph: GraphClient
    metrics: WorkerMetrics
    lifecycle: Lifecycle
    claimer: Claimer
    media_settings: MediaSettings
    handoff: Handoff | None = None  # hands calls to people (worker/handoff); None: transfer is refused


class CallSession:
    """``await CallSession(...).run()`` carries one call from claim (or dial) to its end."""

    def __init__(
        self,
        deps: SessionDeps,
        settings: SessionSettings,
        info: CallInfo,
        app: App,
        *,
        claim: Claim | None = None,
        reservation: Reservation | None = None,
        received_at: float = 0.0,
        before_connect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if settings.capture is not None and info.capture is None:  # the app sees it from prepare on
            info = dataclasses.replace(info, capture=settings.capture)
        self.info = info
        self._before_connect = before_connect
        self._deps, self._settings, self._app = deps, settings, app
        self._claim, self._reservation = claim, reservation
        self._claim_changed = asyncio.Event()  # set when a lost claim was reclaimed or given up
        self._fenced = False  # an answer marker record was written for this call
        self._call = machine.incoming() if info.direction == "incoming" else machine.outgoing()
        self._inbox: asyncio.Queue[tuple[machine.Event, Ack | None]] = asyncio.Queue()
        self._received_at = received_at or time.time()
        # Answer deadline as a monotonic instant: Meta's window counts from when it sent the connect.
        remaining = self._received_at + settings.answer_deadline_seconds - time.time()
        self._answer_deadline = time.monotonic() + max(1.0, remaining)
        self._media: MediaSession | None = None
        self._keypad: Keypad | None = None  # the caller's key presses, for the app (made with the media)
        self._app_task: asyncio.Task[None] | None = None
        self._answered_at: float | None = None
        self._remote_error: int | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # An app may get ready before the call is accepted (``app.prepare(info)``, e.g. the voice-agent bridge
        # connecting to its agent): an app that cannot get ready has its call rejected rather than accepted.
        self._prepare: Callable[[CallInfo], Awaitable[Prepared]] | None = getattr(app, "prepare", None)
        self._preparing: asyncio.Task[None] | None = None
        self._prepared: Prepared | None = None
        self.outcome: machine.Outcome | None = None
        self._transfer: TransferRequest | None = None

    # ------------------------------------------------------------------------------------- public API
    @property
    def state(self) -> machine.CallState:
        return self._call.state

    def media_statistics(self) -> MediaStatistics | None:
        """The call's live media figures (None before its media exists)."""
        return None if self._media is None else self._media.statistics()

    def hang_up(self, reason: str) -> None:
        """Ask the call to end (drain, API, app). Safe at any time, any number of times."""
        self._post(machine.HangupRequested(reason))

    async def run(self, first: machine.Event) -> machine.Outcome:
        call_id_var.set(self.info.call_id or None)
        self._media = MediaSession(
            self._deps.media_settings, metrics=self._deps.metrics, on_ended=self._on_media_end
        )
        self._keypad = Keypad(on_digit=self._count_digit)
        self._media.on_telephone_event = self._keypad.feed
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                if self._claim is not None:
                    self._spawn("mailbox", self._read_mailbox(self._claim))
                if self.info.direction == "incoming":  # the app gets ready while the answer is made
                    self._start_preparing()
                self._post(first)
                await self._loop()
                # The call is over: helpers still waiting (mailbox, a watchdog) have no news left. Lifecycle
                # notifications are let finish (each is bounded by its publish timeout).
                for task in self._tasks:
                    if not task.get_name().startswith("notify"):
                        task.cancel()
        finally:
            try:
                await self._media.close()
                self._keypad.close()
                if self._prepared is not None:
                    await self._prepared.aclose()  # a no-op once it ran; else closes what it opened
            finally:  # whatever failed above, the capacity and the mailbox are given back
                if self._reservation is not None:
                    self._reservation.release()
                if self._claim is not None:
                    await self._claim.release()
        assert self.outcome is not None
        return self.outcome

    async def end_after_crash(self) -> None:
        """The session crashed (a bug): end the call at Meta, best effort and bounded, so a call this worker
        touched is never left to Meta's timers. Only what the call's state says was sent decides: a call
        answered (or an outgoing one placed) is terminated, an incoming one fenced but not answered is
        rejected; one never fenced was never ours to speak of."""
        call, info = self._call, self.info
        if call.state is machine.CallState.ENDED or not info.call_id:
            return
        if call.answered or info.direction == "outgoing":
            action = "terminate"
        elif self._fenced:
            action = "reject"
        else:
            return
        graph, deadline = self._deps.graph, self._hangup_deadline()
        try:
            if action == "terminate":
                await graph.terminate(info.phone_number_id, info.call_id, deadline=deadline)
            else:
                await graph.reject(info.phone_number_id, info.call_id, deadline=deadline)
        except GraphError as exc:
            log.warning("ending a crashed call failed", extra={"action": action, "error": str(exc)})
        else:
            log.info("crashed call ended at Meta", extra={"action": action})

    # ------------------------------------------------------------------------------------ the loop
    async def _loop(self) -> None:
        while True:
            event, ack = await self._inbox.get()
            self._call, commands = machine.step(self._call, event)
            for command in commands:
                await self._execute(command)
            if ack is not None:
                await ack()
            if self._call.state is machine.CallState.ENDED:
                return

    def _post(self, event: machine.Event, ack: Ack | None = None) -> None:
        self._inbox.put_nowait((event, ack))

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._tg is not None
        task = self._tg.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _execute(self, command: machine.Command) -> None:
        assert self._media is not None
        match command:
            case machine.CreateAnswer(offer_sdp=offer):
                await self._make_sdp(self._media.answer(offer))
            case machine.CreateOffer():
                await self._make_sdp(self._media.offer())
            case machine.ApplyAnswer(sdp=answer):
                try:
                    await self._media.apply_answer(answer)
                except MediaError as exc:
                    self._post(machine.MediaFailed(f"bad answer: {exc}"))
            case machine.GraphRequest():
                self._spawn(command.action, self._graph(command))
            case machine.WaitMedia():
                self._spawn("wait-media", self._wait_media())
            case machine.StartApp():
                self._start_app()
            case machine.StopApp():
                await self._stop_app()
            case machine.CloseMedia():
                await self._media.close()
            case machine.Notify(event=name):
                self._spawn(f"notify-{name}", self._notify(name))
            case machine.Finish(outcome=outcome, reason=reason):
                self._finish(outcome, reason)

    # ---------------------------------------------------------------------------------- commands
    async def _make_sdp(self, making: Awaitable[str]) -> None:
        try:
            self._post(machine.LocalSdpReady(await making))
        except MediaError as exc:
            self._post(machine.LocalSdpFailed(str(exc)))

    async def _graph(self, request: machine.GraphRequest) -> None:
        graph, pid, call_id = self._deps.graph, self.info.phone_number_id, self.info.call_id
        action = request.action
        if action == "connect":
            await self._connect(request.sdp or "")
            return
        if action in ("pre_accept", "reject") and not await self._fence():
            return
        try:
            self._observe_setup(action)
            if action == "pre_accept":
                await graph.pre_accept(pid, call_id, request.sdp or "", deadline=self._answer_deadline)
                crash_point("after_pre_accept")
            elif action == "accept":
                if not await self._app_ready(self._answer_deadline):
                    self._post(machine.GraphFailed("accept", "app not ready: accept not sent"))
                    return
                capture = self._call_capture()
                self.info = dataclasses.replace(self.info, capture=capture)
                await graph.accept(
                    pid,
                    call_id,
                    request.sdp or "",
                    deadline=self._answer_deadline,
                    biz_opaque_callback_data=self.info.biz_opaque_callback_data,
                    capture=capture,
                )
                crash_point("after_accept")
                if self._claim is not None:  # answered: the connect may leave its queue now
                    self._spawn("settle", self._claim.settle())
            elif action == "reject":
                await graph.reject(pid, call_id, deadline=self._hangup_deadline(self._answer_deadline))
            else:
                await graph.terminate(pid, call_id, deadline=self._hangup_deadline())
        except GraphError as exc:
            log.warning("graph %s failed", action, extra={"code": exc.code, "error": str(exc)})
            self._post(machine.GraphFailed(action, f"graph {action}: {exc}", code=exc.code))
        else:
            self._post(machine.GraphDone(action))

    async def _fence(self) -> bool:
        """Before the first Graph request that answers or refuses an incoming call: make sure no other worker
        will answer it (:meth:`Claim.fence`). A claim lost before that is reclaimed first (waiting, within the
        answer deadline, for the mailbox reader to do it); if the mailbox was taken over meanwhile, another
        worker has the call, and this one ends it without a word to Meta. False then."""
        if self.info.direction != "incoming" or self._fenced:
            return True  # once fenced, no other worker will answer: ending the call is always safe
        crash_point("after_answer_sdp")
        try:
            async with asyncio.timeout_at(self._answer_deadline):
                while (claim := self._claim) is not None:
                    try:
                        await claim.fence()
                        self._fenced = True
                    except ClaimLost:
                        self._claim_changed.clear()
                        if self._claim is claim:
                            await self._claim_changed.wait()
                    else:
                        return True
        except TimeoutError:
            pass
        log.warning("claim lost before answering: another worker may answer the call; sending Meta nothing")
        self._post(machine.RemoteTerminated("owner_lost"))
        return False

    async def _connect(self, offer: str) -> None:
        """Place the outgoing call, then own it: its events may already be waiting in the retry loop."""
        info, metrics = self.info, self._deps.metrics
        if self._before_connect is not None:
            await self._before_connect()  # the dial leaves its queue now: connect is never repeated
        try:
            call_id = await self._deps.graph.connect(
                info.phone_number_id, info.user_number, offer,
                biz_opaque_callback_data=info.biz_opaque_callback_data,
                recipient=info.user_id, capture=self._settings.capture,
            )  # fmt: skip
        except GraphError as exc:
            outcome = DIAL_REFUSALS.get(exc.code or 0, "failed")
            metrics.dials.labels(outcome=outcome).inc()
            log.warning("dial refused", extra={"outcome": outcome, "code": exc.code, "error": str(exc)})
            self._remote_error = exc.code
            self._post(machine.GraphFailed("connect", f"{outcome}: {exc}", code=exc.code))
            return
        metrics.dials.labels(outcome="placed").inc()
        self.info = info = dataclasses.replace(info, call_id=call_id)
        call_id_var.set(call_id)
        try:
            claim = await self._deps.claimer.claim(call_id, reservation=self._reservation)
        except CallhookError as exc:  # the call exists at Meta: it must be ended, not left ringing
            log.warning("could not claim a placed call", extra={"error": str(exc)})
            claim = None
        if self._reservation is not None:
            self._reservation.release()  # a no-op when the claim took its unit over
            self._reservation = None
        self._post(machine.GraphDone("connect", call_id=call_id))
        if claim is None:
            self._post(machine.HangupRequested("could not own the placed call"))
            return
        self._claim = claim
        self._spawn("mailbox", self._read_mailbox(claim))
        self._start_preparing()  # outgoing: the app gets ready while the callee's phone rings

    def _call_capture(self) -> Capture | None:
        """The worker's (or dial's) opt-in, unless the app's prepare step chose for this call (an attribute
        ``capture`` on what ``prepare`` returned: a Capture, or None for neither)."""
        capture = self._settings.capture
        if self._prepared is not None and hasattr(self._prepared, "capture"):
            chosen = self._prepared.capture
            try:
                capture = chosen.validated() if isinstance(chosen, Capture) else None
            except CaptureError as exc:
                log.warning("app's recording choice invalid: default used", extra={"error": str(exc)})
        return capture

    def _hangup_deadline(self, floor: float = 0.0) -> float:
        return max(floor, time.monotonic() + self._settings.hangup_deadline_seconds)

    async def _wait_media(self) -> None:
        assert self._media is not None
        try:
            await self._media.wait_connected(self._settings.media_connect_timeout_seconds)
        except MediaError as exc:
            self._post(machine.MediaFailed(str(exc)))
        else:
            self._observe_setup("media_connected")
            self._post(machine.MediaConnected())

    def _start_preparing(self) -> None:
        if self._prepare is not None and self._preparing is None:
            self._preparing = self._spawn("prepare-app", self._get_ready(self._prepare))

    async def _get_ready(self, prepare: Callable[[CallInfo], Awaitable[Prepared]]) -> None:
        try:
            self._prepared = await prepare(self.info)
        except Exception as exc:  # the app's own reason (agent unreachable, refused): the call cannot go on
            log.warning("app not ready", extra={"error": str(exc)})
            self._post(machine.HangupRequested(f"app not ready: {exc}"))

    async def _app_ready(self, deadline: float) -> bool:
        """True when the app can take the call: it has no prepare step, or got ready before ``deadline``."""
        task = self._preparing
        if task is None:
            return True
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await asyncio.shield(task)
        except TimeoutError:
            return False
        return self._prepared is not None

    def _start_app(self) -> None:
        assert self._media is not None
        self._media.start_sending()
        self._answered_at = time.monotonic()
        self._app_task = self._spawn("app", self._run_app(self._media_call()))

    def _media_call(self) -> MediaCall:
        assert self._media is not None
        return MediaCall(self.info, self._media, self._app_hangup, self._keypad, transfer=self._transferring)

    def _transferring(self, request: TransferRequest) -> None:
        self._transfer = request  # served when the app returns (worker/handoff: the call goes on)

    async def _run_app(self, call: MediaCall) -> None:
        if self._preparing is not None and not await self._app_ready(time.monotonic() + 30.0):
            return  # its failure already asked for the hang-up
        try:
            await (self._prepared.run(call) if self._prepared is not None else self._app(call))
        except asyncio.CancelledError:
            raise
        except CallEnded:
            pass  # the app spoke after the call's media ended (a hang-up): it finished, it did not fail
        except Exception as exc:  # the user's app failing must end its call, never the worker
            log.exception("app failed")
            self._post(machine.AppFinished(error=repr(exc)))
            return
        if self._transfer is not None and await self._handed_off(call):
            return
        finished = machine.AppFinished()
        if self._media is not None and self._media.ended_reason is EndReason.REMOTE_ENDED:
            # The app returned because the caller's audio ended with a hang-up: as in _on_media_end.
            grace = self._settings.remote_end_grace_seconds
            self._spawn("remote-end-grace", self._post_later(finished, grace))
        else:
            self._post(finished)

    def _transfer_from_api(self, event: TransferRequestEvent) -> None:
        """POST /v1/calls/{id}/transfer: the app stops where it is and the caller waits for a person."""
        task = self._app_task
        if task is None or task.done() or self._deps.handoff is None:
            log.warning("transfer request ignored: the call has no running app")
            return
        request = TransferRequest(queue=event.queue, reason=event.reason, context=dict(event.context))
        log.info("transfer requested through the API", extra={"queue": event.queue})
        self._app_task = self._spawn("app", self._serve_transfer(task, request))

    async def _serve_transfer(self, app: asyncio.Task[None], request: TransferRequest) -> None:
        app.cancel()
        await asyncio.wait({app})
        assert self._media is not None
        self._media.clear()
        self._transfer = request
        if not await self._handed_off(self._media_call()):
            self._post(machine.AppFinished())

    async def _handed_off(self, call: MediaCall) -> bool:
        """The app transferred the call: wait for an agent (worker/handoff). True when the app runs again."""
        request, self._transfer = self._transfer, None
        handoff = self._deps.handoff
        assert request is not None
        assert self._media is not None
        if handoff is None:
            return False
        if await handoff.serve(self.info, self._media, request) is Fallback.APP:
            self._app_task = self._spawn("app", self._run_app(self._media_call()))
            return True
        return False

    async def _app_hangup(self) -> None:
        self._post(machine.HangupRequested("app hung up"))

    async def _stop_app(self) -> None:
        task, self._app_task = self._app_task, None
        if task is None or task.done():
            return
        task.cancel()
        try:
            async with asyncio.timeout(self._settings.app_stop_timeout_seconds):
                await asyncio.wait({task})
        except TimeoutError:
            log.warning("app ignored cancellation; the call's task group waits for it")

    def _count_digit(self, digit: Digit) -> None:
        self._deps.metrics.dtmf_digits.inc()  # the digit itself is never exported nor logged: it may be a PIN

    def _on_media_end(self, reason: EndReason) -> None:
        if self._keypad is not None:
            self._keypad.close()  # the app's dtmf() ends with the media, as frames() does
        if reason is EndReason.CLOSED:
            return
        lost = machine.MediaLost(f"media ended: {reason.value}")
        if reason is EndReason.REMOTE_ENDED and self._tg is not None:
            # The phone closed its side (a hang-up): Meta's terminate webhook is on its way and ends the call
            # without a request of ours. Terminate only if it does not come (a terminate for a call Meta
            # already ended is refused with code 100 and would count as a Graph error).
            self._spawn("remote-end-grace", self._post_later(lost, self._settings.remote_end_grace_seconds))
        else:
            self._post(lost)

    async def _post_later(self, event: machine.Event, delay_seconds: float, ack: Ack | None = None) -> None:
        await asyncio.sleep(delay_seconds)  # a grace period, cancelled with the call's other helpers
        self._post(event, ack)

    async def _notify(self, name: str) -> None:
        fields: dict[str, object] = {"state": self._call.state.value}
        if name == "ended":
            fields.update(
                outcome=self._call.outcome.value if self._call.outcome else None,
                reason=self._call.end_reason,
                error_code=self._remote_error,
                duration_seconds=self._duration(),
            )
            quality = self._media_quality()
            if quality is not None:
                fields["media"] = msgspec.convert(quality, MediaQuality)
            if self._remote_error is not None:
                known = describe(self._remote_error)
                fields.update(error_name=known.name, error_action=known.action.value)
        if self._settings.request_id:
            fields["request_id"] = self._settings.request_id
        await self._deps.lifecycle.call_event(name, self.info, **fields)

    def _finish(self, outcome: machine.Outcome, reason: str) -> None:
        self.outcome = outcome
        metrics = self._deps.metrics
        metrics.calls.labels(direction=self.info.direction, outcome=outcome.value).inc()
        duration = self._duration()
        if duration is not None:
            metrics.call_duration.labels(direction=self.info.direction).observe(duration)
        extra: dict[str, object] = {"outcome": outcome.value, "reason": reason, "duration_seconds": duration}
        quality = self._media_quality()
        if quality is not None:
            extra["media"] = quality
        log.info("call ended", extra=extra)

    def _media_quality(self) -> dict[str, float | int | None] | None:
        return None if self._media is None else self._media.statistics().quality()

    def _duration(self) -> float | None:
        return None if self._answered_at is None else round(time.monotonic() - self._answered_at, 3)

    def _observe_setup(self, stage: str) -> None:
        if self.info.direction == "incoming" and stage in ("pre_accept", "media_connected", "accept"):
            self._deps.metrics.setup_seconds.labels(direction="incoming", stage=stage).observe(
                max(0.0, time.time() - self._received_at)
            )

    # --------------------------------------------------------------------------------- the mailbox
    async def _read_mailbox(self, claim: Claim) -> None:
        current: Claim | None = claim
        while current is not None:
            try:
                async for item in current:
                    self._apply_mailbox(item)
            except ClaimLost:
                current = await self._reclaim(current)
            else:
                return

    def _apply_mailbox(self, item: MailboxItem) -> None:
        if isinstance(item.event, TransferRequestEvent):  # not the state machine's: the app's part ends
            self._spawn("ack", item.ack())
            self._transfer_from_api(item.event)
            return
        event = _machine_event(item.event, self.info.direction)
        if event is None:
            self._spawn("ack", item.ack())
            return
        if isinstance(item.event, CallTerminate):
            self._remote_error = item.event.error_code
            if item.event.error_code is not None:  # 138019-138023 arrive here, not as request errors
                known = describe(item.event.error_code)
                self._deps.metrics.meta_errors.labels(name=known.name, action=known.action.value).inc()
            if self.info.direction == "outgoing" and self._call.state is machine.CallState.RINGING:
                # Meta sends REJECTED and then terminate FAILED, as two webhooks that may arrive in either
                # order; terminate FAILED alone means unanswered. Let a REJECTED sent before it arrive first.
                grace = self._settings.status_grace_seconds
                self._spawn("terminate-grace", self._post_later(event, grace, item.ack))
                return
        self._post(event, item.ack)

    async def _reclaim(self, lost: Claim) -> Claim | None:
        """The broker connection died under our claim; the mailbox outlives it. Consume it again on the next
        connection: the events that arrived meanwhile waited there.

        Refused means another worker took the mailbox over (this worker's connect was redelivered to it). An
        incoming call not yet fenced is that worker's now: end it here without a word to Meta. After the fence
        the other worker found our answer marker and ends the call at Meta; a call with media carries on
        until the media tells it is over, and only an outgoing call still ringing is ended from here."""
        try:
            while self._call.state is not machine.CallState.ENDED:
                try:
                    claim = await self._deps.claimer.reclaim(lost)
                except CallhookError:
                    continue  # no connection within the claim timeout: keep trying while the call lives
                self._claim = claim
                if claim is not None:
                    log.info("call reclaimed after a broker reconnect")
                    return claim
                if self.info.direction == "incoming" and not lost.fenced:
                    log.warning("call taken over by another worker before it was answered: leaving it")
                    self._post(machine.RemoteTerminated("owner_lost"))
                elif self._call.state is machine.CallState.RINGING:
                    self.hang_up("claim taken over while the broker connection was down")
                else:
                    log.warning(
                        "claim taken over while the broker connection was down: going on without a mailbox"
                    )
                return None
            return None
        finally:
            self._claim_changed.set()


def _machine_event(event: CallEvent, direction: str) -> machine.Event | None:
    """A mailbox event as the state machine's input; None when it carries nothing for this call."""
    match event:
        case CallTerminate(status=status, error_code=code):
            return machine.RemoteTerminated(status, error_code=code)
        case CallStatus(status=status):
            return machine.CalleeStatus(status) if direction == "outgoing" else None
        case CallConnect(direction="outgoing", sdp=sdp) if direction == "outgoing":
            return machine.AnswerReceived(sdp)
        case HangupRequest():
            return machine.HangupRequested("hangup requested through the API")
    return None  # an incoming call's connect was handled at claim time (duplicates are dropped by the claim)
