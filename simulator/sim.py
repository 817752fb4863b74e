"""Meta's side of WhatsApp calls in one object: Graph API, signed webhooks, and the users' phones.

::

    async with Simulator(config, ingress_url="http://127.0.0.1:8080/webhook") as sim:
        # the worker is configured with CALLHOOK_GRAPH_URL = sim.graph_url
        call = await sim.place_call(from_="15551230001")          # a user calls the business
        await call.wait_state("accepted", timeout=10)
        await call.wait_heard(2.0, timeout=10)
        await call.hangup()
        report = call.audio_report()                              # did the echo come back intact?

        sim.set_permission("15551230002", "temporary")
        sim.set_callee("15551230002", CalleeBehaviour(action=CalleeAction.REJECT))
        outgoing = await sim.wait_for_call(user="15551230002")    # after the business's connect

Ownership: a :class:`~simulator.tasks.TaskOwner` (a TaskGroup in a runner task) owns every background task
(each call's supervisor, webhook deliveries, permission replies); ``close()`` (or leaving the ``async with``)
stops the Graph API, ends every live call without webhooks, cancels what is left and waits for it. A crash in
any of those tasks stops the simulator and is raised by ``close()``.

Every state change of a call goes through the pure table of :mod:`simulator.calls` and is re-checked at the
moment it is committed, so a Graph request that awaited something (the phone applying an SDP, media coming up)
cannot overwrite what a timer or the phone did meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from callhook.ice import restrict_host_addresses
from simulator import payloads, platform
from simulator.call_settings import CallSettingsBook
from simulator.calls import (
    LIVE_STATES,
    TERMINAL_STATES,
    CallFacts,
    CallState,
    Direction,
    EndCall,
    Event,
    IllegalTransition,
    SendAnswer,
    SendStatus,
    SendTerminate,
    StartTalking,
    Transition,
    check_graph_action,
    session_sdp,
    step,
)
from simulator.config import (
    AnswerWebhook,
    CalleeAction,
    CalleeBehaviour,
    PermissionReply,
    SimulatorConfig,
)
from simulator.errors import (
    CATALOG,
    CallEndedError,
    MetaError,
    SimulatorError,
    invalid_parameter,
    unknown_object,
)
from simulator.faults import FaultPlan
from simulator.graph_api import CALL_ACTIONS, GraphServer, Json
from simulator.journal import Changes, GraphRequest, Journal, StateChange
from simulator.net import NetProfile
from simulator.permissions import DAY, PermissionBook, PermissionStatus
from simulator.phone import MediaError, Phone, PhoneSettings
from simulator.signal import AudioReport
from simulator.tasks import TaskOwner
from simulator.webhooks import WebhookSender

log = logging.getLogger(__name__)

CALL_INITIATIONS_PER_DAY = 10_000
BIZ_OPAQUE_MAX_CHARS = 512


class SimulatedCall:
    """One call on Meta's side, in either direction; the handle tests and benches hold."""

    def __init__(
        self,
        sim: Simulator,
        *,
        direction: Direction,
        number: payloads.BusinessNumber,
        user: payloads.Contact,
        phone: Phone,
        offer_sdp: str,
        answer_sdp: str | None = None,
        biz_opaque_callback_data: str | None = None,
    ) -> None:
        self._sim = sim
        self.call_id = payloads.new_call_id()
        self.direction = direction
        self.number = number
        self.user = user
        self.phone = phone
        self.offer_sdp = offer_sdp
        self.answer_sdp = answer_sdp  # incoming: the first pre_accept's SDP; outgoing: the phone's answer
        self.biz_opaque_callback_data = biz_opaque_callback_data
        self.state = CallState.RINGING
        self.end_reason: str | None = None
        self.created_at = time.time()
        self.accepted_at: float | None = None
        self.ended_at: float | None = None
        self.answer_sent = False  # outgoing: the connect webhook with the phone's answer went out
        self.history: list[StateChange] = [StateChange(self.created_at, self.call_id, str(self.state))]
        self.lock = asyncio.Lock()  # one Graph request at a time per call
        self.capture: platform.CaptureChoice | None = None  # recording/transcription opt-in (2026)
        self._changes = Changes()
        self._report: AudioReport | None = None

    def __repr__(self) -> str:
        return f"<SimulatedCall {self.call_id} {self.direction} {self.user.wa_id} {self.state}>"

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def duration_seconds(self) -> float | None:
        if self.accepted_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.accepted_at

    def facts(self) -> CallFacts:
        answer = self.answer_sdp if self.direction is Direction.INCOMING else None
        return CallFacts(self.call_id, self.direction, self.state, answer)

    def _set_state(self, state: CallState, reason: str | None = None) -> None:
        self.state = state
        change = StateChange(time.time(), self.call_id, str(state), reason)
        self.history.append(change)
        self._sim.journal.record_state(change)
        self._changes.notify()

    async def wait_state(self, *states: CallState | str, timeout: float | None = 10.0) -> CallState:  # noqa: ASYNC109 - a bounded wait is the API
        """Wait until the call is in one of ``states``; :class:`CallEndedError` if it ends in another."""
        wanted = {CallState(s) for s in states}

        def reached() -> CallState | None:
            if self.state in wanted:
                return self.state
            if self.ended:
                raise CallEndedError(self.call_id, str(self.state), self.end_reason)
            return None

        return await self._changes.wait_for(reached, timeout)

    async def wait_ended(self, timeout: float | None = 10.0) -> CallState:  # noqa: ASYNC109 - a bounded wait is the API
        return await self._changes.wait_for(lambda: self.state if self.ended else None, timeout)

    async def wait_heard(self, seconds: float, timeout: float | None = 10.0) -> None:  # noqa: ASYNC109 - a bounded wait is the API
        """Wait until the phone has heard ``seconds`` of the business's audio."""
        await self.phone.wait_heard(seconds, timeout)

    async def hangup(self) -> None:
        """The user hangs up: terminate webhook (COMPLETED, with duration once connected)."""
        if not self._sim._apply_event(self, Event.PHONE_HANGUP):
            raise SimulatorError(f"call {self.call_id} cannot be hung up: it is {self.state}")

    def audio_report(self) -> AudioReport:
        """Compare what the phone heard with what it played (computed once the call ended, then cached)."""
        if self._report is not None:
            return self._report
        report = self.phone.audio_report()
        if self.ended:
            self._report = report
        return report


@dataclass(slots=True)
class SimulatorStatistics:
    calls_by_state: dict[str, int] = field(default_factory=dict)
    end_reasons: dict[str, int] = field(default_factory=dict)
    live_calls: int = 0
    graph_requests: dict[str, int] = field(default_factory=dict)  # "action status" -> count
    webhook_posts: int = 0
    webhook_attempts: int = 0
    webhook_failures: int = 0  # deliveries that gave up
    faults_fired: dict[str, int] = field(default_factory=dict)
    call_errors: int = 0


class Simulator:
    """See the module docstring. Construct, then ``async with`` (or ``start()`` / ``close()``)."""

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        ingress_url: str | None = None,
        graph_host: str | None = None,
        graph_port: int | None = None,
    ) -> None:
        self.config = config
        self.ingress_url = ingress_url or config.ingress_url
        self._graph_host = graph_host or config.graph_host
        self._graph_port = config.graph_port if graph_port is None else graph_port
        self._rng = random.Random(config.random_seed)
        self.journal = Journal()
        self.graph_faults = FaultPlan(self._rng)
        for rule in config.graph_faults:
            self.graph_faults.add(rule)
        self.permissions = PermissionBook(config.default_permission)
        for user, status in config.permissions:
            self.permissions.set(user, status, now=time.time())
        self._numbers = {n.phone_number_id: n for n in config.numbers}
        self._callees: dict[str, CalleeBehaviour] = {}
        self._permission_replies: dict[str, PermissionReply] = {}
        self._calls: dict[str, SimulatedCall] = {}
        self._initiations: dict[str, deque[float]] = {}
        self._call_errors = 0
        self._changes = Changes()
        self._phone_settings = PhoneSettings(
            start_silence_seconds=config.timing.start_silence_seconds,
            midcall_silence_seconds=config.timing.midcall_silence_seconds,
            record_seconds=config.record_seconds,
            signal_seed=config.signal_seed,
            net=config.net,
            net_seed=config.random_seed,
        )
        self._tasks = TaskOwner("simulator")
        self._closing = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()
        self._server: GraphServer | None = None
        self._webhooks: WebhookSender | None = None
        self._closed = False
        self.platform = platform.PlatformSettings()  # 2026 platform behaviour (simulator/platform.py)
        self.media = platform.MediaStore()
        self.call_settings = CallSettingsBook()

    # Lifecycle
    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self.config.ice_host_addresses:
            restrict_host_addresses(self.config.ice_host_addresses)
        await self._tasks.start()
        try:
            self._webhooks = await self._stack.enter_async_context(
                WebhookSender(
                    url=self.ingress_url,
                    app_secret=self.config.app_secret,
                    config=self.config.delivery,
                    switches=self.config.switches,
                    journal=self.journal,
                    spawn=self._tasks.spawn,
                    rng=self._rng,
                )
            )
            self._server = await self._stack.enter_async_context(
                GraphServer(
                    self,
                    journal=self.journal,
                    faults=self.graph_faults,
                    access_token=self.config.access_token,
                    host=self._graph_host,
                    port=self._graph_port,
                    closing=self._closing,
                )
            )
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop everything; idempotent. Raises what crashed a background task, if anything did.

        Order: no new Graph requests (held ones are released), every live call ended without webhooks (each
        supervisor closes its phone), pending deliveries and replies cancelled, then the HTTP session closed.
        """
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        try:
            if self._server is not None:
                await self._server.close()
            for call in list(self._calls.values()):
                self._apply_event(call, Event.SHUTDOWN)
            await self._tasks.close()
        finally:
            await self._stack.aclose()

    def _spawn(self, coroutine: Coroutine[Any, Any, None], *, cancel_on_close: bool = True) -> None:
        self._tasks.spawn(coroutine, cancel_on_close=cancel_on_close)

    @property
    def graph_url(self) -> str:
        """Base URL for the business's Graph API client (``CALLHOOK_GRAPH_URL``)."""
        if self._server is None:
            raise SimulatorError("the simulator is not started")
        return self._server.url

    @property
    def webhooks(self) -> WebhookSender:
        """The webhook sender; ``sim.webhooks.switches = DeliverySwitches(...)`` changes its misbehaviour."""
        if self._webhooks is None:
            raise SimulatorError("the simulator is not started")
        return self._webhooks

    # Users and their phones
    def set_permission(
        self, user: str, status: PermissionStatus | str, *, phone_number_id: str | None = None
    ) -> None:
        parsed = status if isinstance(status, PermissionStatus) else PermissionStatus.parse(status)
        self.permissions.set(user, parsed, now=time.time(), phone_number_id=phone_number_id)

    def set_permission_reply(self, user: str, reply: PermissionReply | str) -> None:
        self._permission_replies[user] = PermissionReply(reply)

    def set_callee(self, user: str, behaviour: CalleeBehaviour) -> None:
        """How ``user``'s phone reacts when the business calls it (default: ``config.callee``)."""
        self._callees[user] = behaviour

    def callee(self, user: str) -> CalleeBehaviour:
        return self._callees.get(user, self.config.callee)

    @property
    def calls(self) -> list[SimulatedCall]:
        return list(self._calls.values())

    def call(self, call_id: str) -> SimulatedCall:
        return self._calls[call_id]

    def forget(self, call_id: str) -> None:
        """Drop an ended call from memory (long scenarios)."""
        call = self._calls.get(call_id)
        if call is not None and call.ended:
            del self._calls[call_id]

    async def wait_for_call(
        self,
        *,
        user: str | None = None,
        direction: Direction | str | None = None,
        timeout: float | None = 10.0,  # noqa: ASYNC109 - a bounded wait is the API
    ) -> SimulatedCall:
        """The first call (existing or future) with this user and direction."""
        wanted = Direction(direction) if direction is not None else None

        def found() -> SimulatedCall | None:
            return next(
                (
                    c
                    for c in self._calls.values()
                    if (user is None or user in (c.user.wa_id, c.user.user_id))
                    and (wanted is None or c.direction is wanted)
                ),
                None,
            )

        return await self._changes.wait_for(found, timeout)

    async def wait_for_call_state(
        self,
        call_id: str,
        state: CallState | str,
        *,
        timeout: float | None = 10.0,  # noqa: ASYNC109 - a bounded wait is the API
    ) -> CallState:
        async with asyncio.timeout(timeout):
            await self._changes.wait_for(lambda: call_id in self._calls, None)
            return await self._calls[call_id].wait_state(state, timeout=None)

    async def place_call(
        self,
        from_: str,
        to_phone_number_id: str | None = None,
        *,
        name: str | None = "Test User",
        connects_media: bool = True,
        net: NetProfile | None = None,
        user_id: str | None = None,
        username: str | None = None,
    ) -> SimulatedCall:
        """A user calls the business: the phone makes its offer and the connect webhook goes out.

        ``connects_media=False``: the phone's network loses the media path; pre_accept succeeds, but ICE and
        DTLS never complete (the business should give up and reject). ``net``: this phone's network instead
        of the configured one (``call.phone.net.up`` / ``.down`` change it, or add an outage, mid-call)."""
        number = self._number(to_phone_number_id)
        if self._live_calls(number) >= self.config.max_concurrent_calls:
            raise SimulatorError(
                f"{self.config.max_concurrent_calls} concurrent calls on {number.phone_number_id}"
            )
        settings = self._phone_settings if net is None else replace(self._phone_settings, net=net)
        phone = Phone(settings, connects_media=connects_media)
        try:
            offer = await phone.create_offer()
        except BaseException:
            await phone.close()
            raise
        call = SimulatedCall(
            self,
            direction=Direction.INCOMING,
            number=number,
            user=payloads.Contact(from_, name, user_id, username),
            phone=phone,
            offer_sdp=offer,
        )
        self._register(call)
        self._send(
            payloads.call_connect(
                waba_id=self.config.waba_id,
                number=number,
                call_id=call.call_id,
                user=call.user,
                direction=payloads.USER_INITIATED,
                timestamp=self.webhooks.stamp("connect", time.time()),
                sdp_type="offer",
                sdp=offer,
            )
        )
        return call

    def _number(self, phone_number_id: str | None) -> payloads.BusinessNumber:
        if phone_number_id is None:
            return self.config.numbers[0]
        try:
            return self._numbers[phone_number_id]
        except KeyError:
            raise SimulatorError(f"unknown business phone number id {phone_number_id}") from None

    def _live_calls(self, number: payloads.BusinessNumber, user: str | None = None) -> int:
        return sum(
            1
            for c in self._calls.values()
            if c.number == number and c.state in LIVE_STATES and (user is None or c.user.ref == user)
        )

    def _register(self, call: SimulatedCall, behaviour: CalleeBehaviour | None = None) -> None:
        self._calls[call.call_id] = call
        self.journal.record_state(call.history[0])
        self._changes.notify()
        self._spawn(self._supervise(call, behaviour), cancel_on_close=False)

    # Graph API backend (GraphBackend protocol)
    def check_number(self, phone_number_id: str) -> None:
        if phone_number_id not in self._numbers:
            raise unknown_object(phone_number_id)

    async def calls_action(self, phone_number_id: str, body: Json, record: GraphRequest) -> Json:
        action = body.get("action")
        if action not in CALL_ACTIONS:
            raise invalid_parameter(f"action must be one of {', '.join(sorted(CALL_ACTIONS))}")
        if action == "connect":
            return await self._connect(self._numbers[phone_number_id], body, record)
        call_id = body.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise invalid_parameter("call_id is required")
        call = self._calls.get(call_id)
        if call is None or call.number.phone_number_id != phone_number_id:
            raise invalid_parameter(f"Invalid call_id: {call_id}")
        async with call.lock:
            await self._business_action(call, Event(action), body)
        return {"messaging_product": "whatsapp", "success": True}

    async def _business_action(self, call: SimulatedCall, action: Event, body: Json) -> None:
        session = body.get("session")
        capture = platform.capture_of(str(action), body)  # refuses the objects anywhere but accept
        check_graph_action(call.facts(), action, session)
        if action is Event.PRE_ACCEPT and call.answer_sdp is None:
            assert isinstance(session, dict)
            sdp = session["sdp"]
            try:
                await call.phone.accept_answer(sdp)
            except MediaError as exc:
                raise invalid_parameter(f"SDP Validation error: {exc}") from exc
            call.answer_sdp = sdp
        if action is Event.ACCEPT:
            opaque = _biz_opaque(body)
            timeout = self.config.timing.accept_media_timeout_seconds
            if not await call.phone.wait_connected(timeout):
                raise MetaError(138007, f"media (ICE+DTLS) did not connect within {timeout:g}s of accept")
            if opaque is not None:
                call.biz_opaque_callback_data = opaque
            if capture is not None:
                call.capture = capture
        # Re-checked now: a timer or the phone may have moved the call while this request awaited.
        self._commit(call, check_graph_action(call.facts(), action, session))

    async def _connect(self, number: payloads.BusinessNumber, body: Json, record: GraphRequest) -> Json:
        to, recipient = body.get("to"), body.get("recipient")
        if to is not None and (not isinstance(to, str) or not to.isdigit()):
            raise invalid_parameter("to must be the user's phone number (digits)")
        if to is None and (not isinstance(recipient, str) or not recipient):
            raise invalid_parameter("to (a phone number) or recipient (a user id) is required")
        user_id = recipient if isinstance(recipient, str) and recipient else None
        to = to or user_id
        assert isinstance(to, str)
        record.to = to
        capture = platform.capture_of("connect", body)
        offer = session_sdp(body.get("session"), "offer")
        opaque = _biz_opaque(body)
        behaviour = self.callee(to)
        self._check_can_connect(number, to, behaviour)
        phone = Phone(self._phone_settings)
        try:
            answer = await phone.answer(offer)
            self._check_can_connect(number, to, behaviour)  # again: other connects ran meanwhile
        except MediaError as exc:
            await phone.close()
            raise invalid_parameter(f"SDP Validation error: {exc}") from exc
        except BaseException:
            await phone.close()
            raise
        call = SimulatedCall(
            self,
            direction=Direction.OUTGOING,
            number=number,
            user=payloads.Contact(to if to != user_id else "", None, user_id),
            phone=phone,
            offer_sdp=offer,
            answer_sdp=answer,
            biz_opaque_callback_data=opaque,
        )
        call.capture = capture
        record.call_id = call.call_id
        self._initiations.setdefault(number.phone_number_id, deque()).append(time.time())
        self._register(call, behaviour)
        if behaviour.answer_webhook is AnswerWebhook.BEFORE_RESPONSE:
            await self._send_answer(call)
        return {"messaging_product": "whatsapp", "calls": [{"id": call.call_id}]}

    def _check_can_connect(
        self, number: payloads.BusinessNumber, to: str, behaviour: CalleeBehaviour
    ) -> None:
        now = time.time()
        self.permissions.check_can_call(number.phone_number_id, to, now)
        if behaviour.action is CalleeAction.UNCALLABLE:
            raise MetaError(138001, f"{to} cannot receive calls")
        if self._live_calls(number) >= self.config.max_concurrent_calls:
            raise MetaError(138002, f"{self.config.max_concurrent_calls} concurrent calls on this number")
        if self._live_calls(number, to):
            raise MetaError(138003, f"a call with {to} is already ongoing")
        initiations = self._initiations.setdefault(number.phone_number_id, deque())
        while initiations and initiations[0] <= now - DAY:
            initiations.popleft()
        if len(initiations) >= CALL_INITIATIONS_PER_DAY:
            raise MetaError(138005, f"{CALL_INITIATIONS_PER_DAY} call initiations per 24 h")

    async def send_message(self, phone_number_id: str, body: Json, record: GraphRequest) -> Json:
        to = body.get("to") or body.get("recipient")  # Meta: when both are given, ``to`` wins
        if not isinstance(to, str) or not to:
            raise invalid_parameter("to or recipient is required")
        record.to = to
        message_id = payloads.new_message_id()
        interactive = body.get("interactive")
        if isinstance(interactive, dict) and interactive.get("type") == "call_permission_request":
            if body.get("type") != "interactive":
                raise invalid_parameter("type must be 'interactive' for a call permission request")
            self.permissions.record_request(phone_number_id, to, time.time())
            number = self._numbers[phone_number_id]
            self._spawn(self._reply_to_permission_request(number, to, message_id))
        return {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": message_id}],
        }

    def call_permissions(self, phone_number_id: str, user: str) -> Json:
        return self.permissions.describe(phone_number_id, user, time.time())

    async def _reply_to_permission_request(
        self, number: payloads.BusinessNumber, user: str, request_id: str
    ) -> None:
        reply = self._permission_replies.get(user, self.config.permission_reply)
        if reply is PermissionReply.IGNORE:
            return
        await asyncio.sleep(self.config.timing.permission_reply_seconds)  # the user reads, then taps
        now = time.time()
        expires: float | None = None
        if reply is not PermissionReply.REJECT:
            permanent = reply is PermissionReply.ACCEPT_PERMANENT
            expires = self.permissions.grant(number.phone_number_id, user, permanent=permanent, now=now)
        self._send(
            payloads.permission_reply(
                waba_id=self.config.waba_id,
                number=number,
                user=payloads.Contact("", None, user) if not user.isdigit() else payloads.Contact(user, None),
                request_message_id=request_id,
                timestamp=int(now),
                response="reject" if reply is PermissionReply.REJECT else "accept",
                is_permanent=reply is PermissionReply.ACCEPT_PERMANENT,
                expiration_timestamp=int(expires) if expires is not None else None,
            )
        )

    # One call's life
    async def _supervise(self, call: SimulatedCall, behaviour: CalleeBehaviour | None) -> None:
        """Owns the call's timers, ringing and media; closes the phone when the call ends."""
        try:
            async with asyncio.TaskGroup() as tg:
                media = tg.create_task(call.phone.run_media())
                ended = tg.create_task(call.wait_ended(timeout=None))
                helpers = [tg.create_task(self._answer_window(call))]
                if behaviour is not None:
                    helpers.append(tg.create_task(self._ring(call, behaviour)))
                await asyncio.wait({media, ended}, return_when=asyncio.FIRST_COMPLETED)
                if media.done():
                    self._apply_event(call, Event(media.result()))
                for task in (media, ended, *helpers):
                    task.cancel()
        except Exception:
            self._call_errors += 1
            log.exception("call %s: simulator error", call.call_id)
            if not call.ended:
                self._commit(call, Transition(CallState.FAILED, (EndCall("simulator_error"),)))
        finally:
            await call.phone.close()

    async def _answer_window(self, call: SimulatedCall) -> None:
        remaining = call.created_at + self.config.timing.answer_window_seconds - time.time()
        try:
            await call.wait_state(CallState.ACCEPTED, timeout=max(0.0, remaining))
        except TimeoutError:
            self._apply_event(call, Event.ANSWER_TIMEOUT)
        except CallEndedError:
            pass

    async def _ring(self, call: SimulatedCall, behaviour: CalleeBehaviour) -> None:
        """The callee's phone: rings, then picks up, declines, or lets it ring out."""
        if behaviour.answer_webhook is AnswerWebhook.EARLY:
            self._send_answer(call)
        self._send_status(call, "RINGING")
        if behaviour.action is CalleeAction.NO_ANSWER:
            return
        await asyncio.sleep(behaviour.ring_seconds)  # the user looks at the phone
        event = Event.PHONE_ACCEPT if behaviour.action is CalleeAction.ANSWER else Event.PHONE_REJECT
        self._apply_event(call, event)

    def _apply_event(self, call: SimulatedCall, event: Event) -> bool:
        """Apply a phone or timer event if the call's current state allows it."""
        try:
            transition = step(call.direction, call.state, event)
        except IllegalTransition:
            return False
        self._commit(call, transition)
        return True

    def _commit(self, call: SimulatedCall, transition: Transition) -> None:
        reason = next((c.reason for c in transition.commands if isinstance(c, EndCall)), None)
        if transition.state is not call.state:
            log.debug("call %s: %s -> %s (%s)", call.call_id, call.state, transition.state, reason or "")
            call._set_state(transition.state, reason)
        for command in transition.commands:
            if isinstance(command, StartTalking):
                call.accepted_at = time.time()
                if call.capture is not None and call.capture.announced:
                    call.phone.mix_in(platform.Announcement(self.platform.announcement_seconds).render)
                call.phone.start_talking()
                if call.direction is Direction.OUTGOING:
                    self.permissions.record_connected_call(
                        call.number.phone_number_id, call.user.ref, time.time()
                    )
            elif isinstance(command, EndCall):
                call.end_reason = command.reason
                call.ended_at = time.time()
            elif isinstance(command, SendStatus):
                self._send_status(call, command.status)
            elif isinstance(command, SendAnswer):
                self._send_answer(call)
            elif isinstance(command, SendTerminate):
                self._send_terminate(call, command)
                if call.capture is not None and call.capture.announced and call.accepted_at is not None:
                    self._spawn(self._deliver_media(call))
        self._changes.notify()

    # Webhooks
    def _send(self, update: payloads.Update) -> asyncio.Future[None]:
        if self._closing.is_set():  # closing: Meta's side goes quiet
            dropped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            dropped.set_result(None)
            return dropped
        return self.webhooks.submit(update)

    def _send_status(self, call: SimulatedCall, status: str) -> None:
        self._send(
            payloads.call_status(
                waba_id=self.config.waba_id,
                number=call.number,
                call_id=call.call_id,
                user=call.user,
                status=status,
                timestamp=int(time.time()),
                biz_opaque_callback_data=call.biz_opaque_callback_data,
            )
        )

    def _send_answer(self, call: SimulatedCall) -> asyncio.Future[None]:
        """The outgoing call's connect webhook with the phone's answer, once."""
        if call.answer_sent:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        call.answer_sent = True
        assert call.answer_sdp is not None
        return self._send(
            payloads.call_connect(
                waba_id=self.config.waba_id,
                number=call.number,
                call_id=call.call_id,
                user=call.user,
                direction=payloads.BUSINESS_INITIATED,
                timestamp=int(time.time()),
                sdp_type="answer",
                sdp=call.answer_sdp,
                biz_opaque_callback_data=call.biz_opaque_callback_data,
            )
        )

    def _send_terminate(self, call: SimulatedCall, command: SendTerminate) -> None:
        now = time.time()
        error = None
        if command.error_code is not None:
            title = CATALOG[command.error_code].title if command.error_code in CATALOG else "Call failed"
            error = (command.error_code, title, call.end_reason or "")
        self._send(
            payloads.call_terminate(
                waba_id=self.config.waba_id,
                number=call.number,
                call_id=call.call_id,
                user=call.user,
                direction=payloads.USER_INITIATED
                if call.direction is Direction.INCOMING
                else payloads.BUSINESS_INITIATED,
                timestamp=int(now),
                status=command.status,
                start_time=int(call.accepted_at) if call.accepted_at is not None else None,
                end_time=int(call.ended_at or now) if call.accepted_at is not None else None,
                biz_opaque_callback_data=call.biz_opaque_callback_data,
                error=error,
            )
        )

    # 2026 platform: media, settings
    async def _deliver_media(self, call: SimulatedCall) -> None:
        """After the terminate: the call's recording and/or transcript, stored, announced by webhook."""
        await asyncio.sleep(self.platform.media_delay_seconds)  # Meta's post-processing
        capture = call.capture
        assert capture is not None
        self.media.url_lifetime_seconds = self.platform.url_lifetime_seconds
        updates = []
        heard = call.phone.recording().heard
        duration = max(0.5, len(heard) / platform.RECORDING_RATE)
        if capture.recording:
            announcement = platform.Announcement(self.platform.announcement_seconds)
            data = await asyncio.to_thread(
                platform.ogg_opus_recording, heard, self.config.signal_seed, announcement
            )
            updates.append(self._media_update(call, "recording", data, "audio/ogg; codecs=opus"))
        if capture.transcription:
            data = platform.transcript_document(duration)
            updates.append(self._media_update(call, "transcript", data, "application/json"))
        if self.platform.transcript_first:
            updates.reverse()
        for update in updates:
            for _ in range(self.platform.media_copies):
                self._send(update)

    def _media_update(self, call: SimulatedCall, kind: str, data: bytes, mime: str) -> payloads.Update:
        stored = self.media.put(data, mime)
        return payloads.call_media_available(
            waba_id=self.config.waba_id,
            number=call.number,
            call_id=call.call_id,
            user=call.user,
            direction=payloads.USER_INITIATED
            if call.direction is Direction.INCOMING
            else payloads.BUSINESS_INITIATED,
            kind=kind,
            media_id=stored.media_id,
            sha256=stored.sha256,
            mime_type=mime,
            url=self.media_url(self.media.token(stored.media_id, self.platform.webhook_url_lifetime_seconds)),
            timestamp=int(time.time()),
        )

    def media_url(self, token: str) -> str:
        return f"{self.graph_url}/media/{token}"

    def media_info(self, media_id: str) -> Json:
        return self.media.info(media_id, self.media_url)

    def media_fetch(self, token: str) -> platform.StoredMedia | None:
        return self.media.fetch(token)

    def restrict_account(
        self, restriction_type: str = "RESTRICTED_BUSINESS_INITIATED_CALLING", *, days: float = 7.0
    ) -> asyncio.Future[None]:
        """Meta's feedback-based pause: an ``account_update`` ACCOUNT_RESTRICTION webhook."""
        return self._send(
            payloads.account_restriction(
                waba_id=self.config.waba_id,
                number=self.config.numbers[0],
                restriction_type=restriction_type,
                expiration=int(time.time() + days * DAY),
            )
        )

    def settings(self, phone_number_id: str) -> Json:
        return self.call_settings.get(phone_number_id, time.time())

    def update_settings(self, phone_number_id: str, body: Json) -> Json:
        self.call_settings.post(phone_number_id, body, time.time())
        return {"success": True}

    # Reporting
    def statistics(self) -> SimulatorStatistics:
        calls = list(self._calls.values())
        requests = Counter(f"{r.action} {r.http_status}" for r in self.journal.requests)
        return SimulatorStatistics(
            calls_by_state=dict(Counter(str(c.state) for c in calls)),
            end_reasons=dict(Counter(c.end_reason for c in calls if c.end_reason)),
            live_calls=sum(1 for c in calls if not c.ended),
            graph_requests=dict(requests),
            webhook_posts=len(self.journal.deliveries),
            webhook_attempts=sum(len(d.attempts) for d in self.journal.deliveries),
            webhook_failures=sum(1 for d in self.journal.deliveries if d.gave_up),
            faults_fired=dict(self.graph_faults.fired),
            call_errors=self._call_errors,
        )


def _biz_opaque(body: Json) -> str | None:
    value = body.get("biz_opaque_callback_data")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > BIZ_OPAQUE_MAX_CHARS:
        raise invalid_parameter(
            f"biz_opaque_callback_data must be a string of at most {BIZ_OPAQUE_MAX_CHARS} chars"
        )
    return value
