"""One transferred call: the queue, the hold audio, the agent's WebRTC leg and the relay between the legs.

:meth:`TransferredCall.run` runs in the call's app task, after the app asked for the transfer and returned,
so the call's state machine still sees "the app is running": a terminate from Meta cancels it like any app,
and its return hangs the call up (terminate), exactly as an app's return does.

    waiting --take (first come: the owner decides)--> with agent --either side hangs up--> over
       |--caller hangs up (terminate, media ended) --> abandoned (``left`` on the board)
       '--maximum wait --> the fallback (hang up, a message, back to the app)

The relay (worker/handoff/relay.py) forwards each leg's Opus packets to the other leg as they arrive when
both legs negotiated Opus/48000, and otherwise decodes each leg on the playout tick and encodes its PCM for
the other; on hold both legs encode again (the caller hears the hold audio).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from worker import audio
from worker.apps.api import CallInfo
from worker.apps.play import open_wav, to_mono
from worker.handoff import wire
from worker.handoff.hub import HandoffHub
from worker.handoff.metrics import HandoffMetrics
from worker.handoff.opus_params import carry_opus_limits, opus_limits
from worker.handoff.relay import Relay, choose_mode
from worker.media import EndReason, MediaError, MediaSession, MediaSettings

log = logging.getLogger(__name__)

RATE = 16000
QUALITY_EVERY_SECONDS = 2.0
AGENT_CONNECT_SECONDS = 15.0


class Fallback(enum.Enum):
    HANG_UP = "hangup"  # the call ends (the session terminates it)
    APP = "app"  # run the app again


def generated_hold() -> bytes:
    """A soft two-note chime and a pause, 4 s: what a caller hears when no hold WAV is configured."""
    notes = [(523.0, 0.4), (659.0, 0.4), (784.0, 0.6)]
    body = b"".join(audio.tone(hz, s, RATE, amplitude=0.12) + audio.silence(RATE, 0.1) for hz, s in notes)
    return body + audio.silence(RATE, 4.0 - audio.duration_seconds(body, RATE))


def pips(count: int) -> bytes:
    """The caller's position: ``count`` short high pips (1-9)."""
    one = audio.tone(1320.0, 0.08, RATE, amplitude=0.2) + audio.silence(RATE, 0.17)
    return audio.silence(RATE, 0.3) + one * max(1, min(9, count)) + audio.silence(RATE, 0.5)


def goodbye() -> bytes:
    return b"".join(audio.tone(hz, 0.2, RATE, amplitude=0.2) for hz in (660.0, 550.0, 440.0))


def load_wav(path: Path) -> bytes:
    """Mono PCM at :data:`RATE` from a 16-bit WAV (read once, when the worker starts)."""
    reader, fmt = open_wav(path)
    try:
        pcm = to_mono(reader.readframes(fmt.frames), fmt.channels)
    finally:
        reader.close()
    return pcm if fmt.sample_rate == RATE else audio.Resampler(RATE).pcm(pcm, fmt.sample_rate)


class Handoff:
    """What a worker needs to hand its calls to agents: one per worker (``SessionDeps.handoff``)."""

    def __init__(
        self,
        hub: HandoffHub,
        metrics: HandoffMetrics,
        media_settings: MediaSettings,
        publish_event: Callable[..., Awaitable[None]],
    ) -> None:
        self.hub = hub
        self.metrics = metrics
        self.media_settings = media_settings
        self.publish_event = publish_event  # Lifecycle.call_event
        self.notifying: set[asyncio.Future[None]] = set()  # events published after their call's task ended
        settings = hub.settings
        self.hold = load_wav(settings.hold_wav) if settings.hold_wav is not None else generated_hold()
        self.fallback_message = (
            load_wav(settings.fallback_wav) if settings.fallback_wav is not None else goodbye()
        )

    async def serve(self, info: CallInfo, caller: MediaSession, request: wire.TransferRequest) -> Fallback:
        return await TransferredCall(self, info, caller, request).run()


class TransferredCall:
    def __init__(
        self, handoff: Handoff, info: CallInfo, caller: MediaSession, request: wire.TransferRequest
    ) -> None:
        self._h = handoff
        self._info = info
        self._caller = caller
        self._request = request
        settings = handoff.hub.settings
        now = time.time()
        self._max_wait = settings.max_wait_seconds
        self.entry = wire.Waiting(
            call_id=info.call_id,
            queue=request.queue,
            worker=handoff.hub.worker_id,
            enqueued_at=now,
            user=info.user_number,
            user_name=info.user_name,
            reason=request.reason,
            context=dict(request.context),
            digits=request.digits,
            deadline=now + self._max_wait if self._max_wait > 0 else 0.0,
        )
        self._state = "waiting"  # waiting | connecting | with_agent | over
        self._agent = ""
        self._reply_to = ""
        self._agent_media: MediaSession | None = None
        self._taken = asyncio.Event()
        self._agent_done = asyncio.Event()
        self._agent_end_reason = ""
        self._on_hold = False
        self._relay_audio: Relay | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = time.monotonic()

    # -------------------------------------------------------------------------------------- the hub
    def presence(self) -> wire.Waiting | None:
        return self.entry if self._state == "waiting" else None

    def on_command(self, command: wire.Command, reply_to: str) -> None:
        call_id = self._info.call_id
        match command:
            case wire.Take(agent=agent, offer_sdp=offer):
                if self._state != "waiting":
                    self._h.metrics.takes_refused.labels(reason="taken").inc()
                    self._h.hub.reply(reply_to, wire.Refused(call_id=call_id, reason="taken", agent=agent))
                    return
                self._state, self._agent, self._reply_to = "connecting", agent, reply_to
                self._spawn(self._connect_agent(offer))
            case wire.Hangup(agent=agent) if agent == self._agent and self._state != "waiting":
                self._end_agent("agent hung up")
            case wire.Hold(agent=agent, on=on) if agent == self._agent:
                self._on_hold = on
                if self._relay_audio is not None:
                    self._relay_audio.set_hold(on)
            case wire.Take() | wire.Hangup() | wire.Hold():
                self._h.hub.reply(
                    reply_to, wire.Refused(call_id=call_id, reason="not_yours", agent=command.agent)
                )

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------------------------- the call
    async def run(self) -> Fallback:
        h, info, queue = self._h, self._info, self._request.queue
        h.metrics.transfers.labels(queue=queue).inc()
        h.metrics.waiting.labels(queue=queue).inc()
        outcome = "abandoned"
        await h.hub.register(info.call_id, self)
        try:
            h.hub.announce(wire.Queued(entry=self.entry, ttl_seconds=h.hub.settings.ttl_seconds))
            await h.publish_event("transferred", info, queue=queue, reason=self._request.reason or None)
            await h.publish_event("queued", info, queue=queue)
            outcome = await self._wait_for_agent()
            if outcome == "timeout":
                return await self._fall_back()
            if outcome == "answered":
                await self._relay()
            return Fallback.HANG_UP
        finally:
            was_waiting = self._state in ("waiting", "connecting", "timeout")
            self._state = "over"
            for task in list(self._tasks):
                task.cancel()
            if was_waiting:
                h.metrics.waiting.labels(queue=queue).dec()
                h.metrics.wait_seconds.labels(queue=queue, outcome=outcome).observe(self._waited())
                h.hub.announce(wire.Left(call_id=info.call_id, queue=queue, why=outcome))
                if outcome == "abandoned":
                    ended = wire.Ended(call_id=info.call_id, reason="caller hung up", agent=self._agent)
                    h.hub.reply(self._reply_to, ended)
                    self._spawn_notify("abandoned_in_queue", queue=queue, wait_seconds=self._waited())
            else:
                ended = wire.Ended(call_id=info.call_id, reason=self._end_reason_text(), agent=self._agent)
                h.hub.reply(self._reply_to, ended)
            if self._agent_media is not None:
                await self._agent_media.close()
            await asyncio.shield(h.hub.unregister(info.call_id))

    def _spawn_notify(self, name: str, **fields: object) -> None:
        # Runs on after the call's task was cancelled (a hang-up while queued): bounded by its own timeout.
        task = asyncio.ensure_future(self._h.publish_event(name, self._info, **fields))
        self._h.notifying.add(task)
        task.add_done_callback(self._h.notifying.discard)

    def _waited(self) -> float:
        return round(time.monotonic() - self._started, 3)

    def _end_reason_text(self) -> str:
        if self._agent_end_reason:
            return self._agent_end_reason
        return "caller hung up" if self._caller.ended_reason is not None else "call ended"

    async def _wait_for_agent(self) -> str:
        """answered | timeout | abandoned (the caller's media ended)."""
        hold = asyncio.ensure_future(self._play_hold())
        try:
            async with asyncio.TaskGroup() as tg:
                taken = tg.create_task(self._taken.wait())
                ended = tg.create_task(self._caller.wait_ended())
                waits: set[asyncio.Task[object]] = {taken, ended}
                timeout = self._max_wait if self._max_wait > 0 else None
                done, pending = await asyncio.wait(waits, timeout=timeout, return_when="FIRST_COMPLETED")
                for task in pending:
                    task.cancel()
        finally:
            hold.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hold
            self._caller.clear()
        if taken in done:
            return "answered"
        if ended in done:
            return "abandoned"
        self._state = "timeout"
        return "timeout"

    async def _play_hold(self) -> None:
        settings = self._h.hub.settings
        announce = settings.announce_position
        last_announced = -1e9
        # send() and wait_played() return at once once the media ended: stop then, or this never yields.
        while self._caller.ended_reason is None:
            now = time.monotonic()
            if announce and now - last_announced >= settings.announce_every_seconds:
                position = self._h.hub.position(self._info.call_id)
                if position is not None:
                    last_announced = now
                    await self._caller.send(pips(position), RATE)
            await self._caller.send(self._h.hold, RATE)
            await self._caller.wait_played()

    async def _fall_back(self) -> Fallback:
        h, info = self._h, self._info
        fallback = h.hub.settings.fallback
        log.info("queue wait over: fallback", extra={"queue": self._request.queue, "fallback": fallback})
        if fallback == "app":
            return Fallback.APP
        if fallback == "message":
            await self._caller.send(h.fallback_message, RATE)
        else:
            await self._caller.send(goodbye(), RATE)
        await self._caller.wait_played()
        del info
        return Fallback.HANG_UP

    # ---------------------------------------------------------------------------------- the agent
    async def _connect_agent(self, offer: str) -> None:
        h, call_id = self._h, self._info.call_id
        media = MediaSession(h.media_settings, on_ended=self._on_agent_media_end)
        try:
            answer = await media.answer(offer)
            caller_sdp = self._caller.remote_sdp
            if h.hub.settings.forward_opus and caller_sdp is not None:
                # Forwarded packets reach Meta as the browser made them: ask it for what Meta asks for.
                answer = carry_opus_limits(answer, opus_limits(caller_sdp))
        except MediaError as exc:
            await media.close()
            log.warning("agent offer refused", extra={"error": str(exc)})
            h.metrics.takes_refused.labels(reason="bad_offer").inc()
            h.hub.reply(self._reply_to, wire.Refused(call_id=call_id, reason="bad_offer", agent=self._agent))
            self._state, self._agent, self._reply_to = "waiting", "", ""
            return
        self._agent_media = media
        media.start_sending()
        h.hub.reply(self._reply_to, wire.Answer(call_id=call_id, sdp=answer, agent=self._agent))
        h.hub.announce(wire.Taken(call_id=call_id, queue=self._request.queue, agent=self._agent))
        self._taken.set()

    def _on_agent_media_end(self, reason: EndReason) -> None:
        if reason is not EndReason.CLOSED:
            self._end_agent(f"agent's media ended: {reason.value}")

    def _end_agent(self, reason: str) -> None:
        if not self._agent_end_reason:
            self._agent_end_reason = reason
        self._agent_done.set()

    async def _relay(self) -> None:
        h, queue, info = self._h, self._request.queue, self._info
        agent = self._agent_media
        assert agent is not None
        self._state = "with_agent"
        h.metrics.waiting.labels(queue=queue).dec()
        h.metrics.wait_seconds.labels(queue=queue, outcome="answered").observe(self._waited())
        h.metrics.with_agent.inc()
        try:
            try:
                await agent.wait_connected(AGENT_CONNECT_SECONDS)
            except MediaError as exc:
                self._end_agent(f"agent's media did not connect: {exc}")
                return
            h.metrics.time_to_answer.labels(queue=queue).observe(self._waited())
            await h.publish_event("agent_answered", info, queue=queue, agent=self._agent,
                                  wait_seconds=self._waited())  # fmt: skip
            mode = choose_mode(self._caller, agent, forward_opus=h.hub.settings.forward_opus)
            relay = self._relay_audio = Relay(self._caller, agent, mode, h.hold)
            relay.set_hold(self._on_hold)
            h.metrics.relays.labels(mode=mode.value).inc()
            log.info("relay started", extra={"queue": queue, "relay_mode": mode.value})
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(relay.run()),
                    tg.create_task(self._report_quality(agent)),
                ]
                caller_gone = tg.create_task(self._caller.wait_ended())
                agent_gone = tg.create_task(self._agent_done.wait())
                await asyncio.wait({caller_gone, agent_gone}, return_when="FIRST_COMPLETED")
                for task in [*tasks, caller_gone, agent_gone]:
                    task.cancel()
        finally:
            h.metrics.with_agent.dec()

    async def _report_quality(self, agent: MediaSession) -> None:
        while True:
            await asyncio.sleep(QUALITY_EVERY_SECONDS)  # a report's period, not a poll
            self._h.hub.reply(
                self._reply_to,
                wire.Quality(
                    call_id=self._info.call_id,
                    caller=self._caller.statistics().quality() or {},
                    agent_leg=agent.statistics().quality() or {},
                    on_hold=self._on_hold,
                    agent=self._agent,
                    relay_mode=self._relay_audio.mode.value if self._relay_audio is not None else "",
                ),
            )
