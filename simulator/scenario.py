"""Scenarios: many users calling the business at a rate, talking, hanging up; and what came of it.

:func:`run_scenario` places ``calls`` incoming calls at ``rate_per_second`` through a running
:class:`~simulator.sim.Simulator`, holds each answered call for ``hold_seconds`` while the phone plays its
test signal, then ends it from the side the scenario names (``phone``, ``business`` or ``random``). For the
business side, a ``business_hangup(call_id)`` hook asks the business to end the call (e.g. through its API);
without one the runner waits ``business_grace_seconds`` for the business to terminate on its own, and counts
``business_did_not_hang_up`` if it does not (the phone then hangs up).

The :class:`ScenarioSummary` says how many calls were answered, why the others failed, the setup latency
measured from the moment the connect webhook was first sent to the moment the Graph API received the
business's ``pre_accept`` and ``accept``, and the audio round trip measured on the test signal (meaningful
when the business echoes audio).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from simulator.calls import CallState
from simulator.errors import CallEndedError, ScenarioError, SimulatorError
from simulator.heard import HeardReport
from simulator.signal import AudioReport
from simulator.sim import SimulatedCall, Simulator

HangupSide = Literal["phone", "business", "random"]
BusinessHangup = Callable[[str], Awaitable[None]]
NOT_HUNG_UP = "business_did_not_hang_up"


@dataclass(frozen=True, slots=True)
class Scenario:
    calls: int = 1
    rate_per_second: float = 1.0
    hold_seconds: float = 5.0
    hangup: HangupSide = "phone"
    business_grace_seconds: float = 10.0
    phone_number_id: str | None = None
    first_caller: int = 15557000001  # callers are numbered from here
    dtmf: str = ""  # digits each caller presses, 1 s into the call (RFC 4733, simulator.dtmf)

    def __post_init__(self) -> None:
        if self.calls < 0 or self.rate_per_second <= 0 or self.hold_seconds < 0:
            raise ScenarioError("calls >= 0, rate_per_second > 0 and hold_seconds >= 0 are required")
        if self.hangup not in ("phone", "business", "random"):
            raise ScenarioError(f"hangup must be phone, business or random, not {self.hangup!r}")


@dataclass(frozen=True, slots=True)
class CallOutcome:
    call_id: str
    state: str
    end_reason: str | None
    answered: bool
    setup_pre_accept_seconds: float | None  # connect webhook first sent -> pre_accept received
    setup_accept_seconds: float | None  # connect webhook first sent -> accept received
    audio: AudioReport | None
    heard: HeardReport | None = None  # at the phone's socket: echo delay per burst, gaps, MOS
    dtmf_error: str | None = None  # the phone could not press its digits (no telephone-event negotiated)
    dtmf_pressed: str = ""  # the digits the phone sent


@dataclass(slots=True)
class ScenarioSummary:
    outcomes: list[CallOutcome] = field(default_factory=list)
    wall_seconds: float = 0.0
    statistics: dict[str, Any] = field(default_factory=dict)
    dtmf_received: int | None = None  # calls whose business got exactly the keys pressed (when it can tell)

    @property
    def placed(self) -> int:
        return len(self.outcomes)

    @property
    def answered(self) -> int:
        return sum(1 for o in self.outcomes if o.answered)

    @property
    def failed_by_reason(self) -> dict[str, int]:
        """Calls that did not end as a normal hang-up after being answered, by reason."""
        normal = {"phone_hangup", "business_hangup"}
        return dict(Counter(o.end_reason or o.state for o in self.outcomes if o.end_reason not in normal))

    @property
    def audio_matched(self) -> int:
        return sum(1 for o in self.outcomes if o.audio is not None and o.audio.matched)

    def setup_pre_accept(self) -> list[float]:
        return [o.setup_pre_accept_seconds for o in self.outcomes if o.setup_pre_accept_seconds is not None]

    def setup_accept(self) -> list[float]:
        return [o.setup_accept_seconds for o in self.outcomes if o.setup_accept_seconds is not None]

    def heard(self) -> list[HeardReport]:
        return [o.heard for o in self.outcomes if o.heard is not None]

    def round_trips(self) -> list[float]:
        return [
            o.audio.round_trip_seconds
            for o in self.outcomes
            if o.audio is not None and o.audio.matched and o.audio.round_trip_seconds is not None
        ]

    @property
    def ok(self) -> bool:
        return self.answered == self.placed and not self.failed_by_reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "placed": self.placed,
            "answered": self.answered,
            "failed_by_reason": self.failed_by_reason,
            "setup_pre_accept_ms": _percentiles_ms(self.setup_pre_accept()),
            "setup_accept_ms": _percentiles_ms(self.setup_accept()),
            "audio_round_trip_ms": _percentiles_ms(self.round_trips()),
            "audio_matched": self.audio_matched,
            "heard_at_socket": _heard_summary(self.heard()),
            "dtmf_errors": [o.dtmf_error for o in self.outcomes if o.dtmf_error],
            "dtmf_pressed_calls": sum(1 for o in self.outcomes if o.dtmf_pressed),
            "dtmf_received_calls": self.dtmf_received,
            "calls": [_call_dict(o) for o in self.outcomes],
            "wall_seconds": round(self.wall_seconds, 3),
            "simulator": self.statistics,
        }

    def format(self) -> str:
        data = self.as_dict()
        failed = ", ".join(f"{k} {v}" for k, v in sorted(data["failed_by_reason"].items())) or "none"
        lines = [
            f"calls placed {self.placed}, answered {self.answered}, failed: {failed}",
            "setup, connect webhook sent -> pre_accept received: " + _format_ms(data["setup_pre_accept_ms"]),
            "setup, connect webhook sent -> accept received:     " + _format_ms(data["setup_accept_ms"]),
            f"audio round trip (echo of the phone's test signal): {_format_ms(data['audio_round_trip_ms'])}"
            f"; audio matched in {self.audio_matched} of {self.answered} answered calls",
            "heard at the phone's socket (echo delay of the tone bursts, per packet as it arrived): "
            + _format_heard(data["heard_at_socket"]),
            f"wall time {self.wall_seconds:.1f} s",
        ]
        pressed = sorted({o.dtmf_pressed for o in self.outcomes if o.dtmf_pressed})
        if pressed:
            received = "" if self.dtmf_received is None else f", received intact in {self.dtmf_received}"
            lines.append(
                f"keys pressed ({', '.join(pressed)}) in {data['dtmf_pressed_calls']} calls{received}"
            )
        lines += [f"dtmf not sent: {error}" for error in data["dtmf_errors"]]
        return "\n".join(lines)


def _call_dict(outcome: CallOutcome) -> dict[str, Any]:
    """One call's outcome, with what its caller heard at the phone's socket."""
    heard = outcome.heard
    return {
        "call_id": outcome.call_id,
        "state": outcome.state,
        "end_reason": outcome.end_reason,
        "audio_matched": outcome.audio.matched if outcome.audio is not None else None,
        "heard_at_socket": None
        if heard is None
        else {
            "delay_median_ms": _ms(heard.delay_median_seconds),
            "delay_p90_ms": _ms(heard.delay_p90_seconds),
            "bursts_sent": heard.bursts_sent,
            "bursts_heard": heard.bursts_heard,
            "packets_expected": heard.packets_expected,
            "packets_lost": heard.packets_lost,
            "packets_late": heard.packets_late,
            "gaps": heard.gaps,
            "longest_gap_ms": _ms(heard.longest_gap_seconds),
            "mos": round(heard.mos, 2) if heard.mos is not None else None,
        },
        "dtmf_pressed": outcome.dtmf_pressed,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _heard_summary(reports: list[HeardReport]) -> dict[str, Any] | None:
    if not reports:
        return None
    medians = [r.delay_median_seconds for r in reports if r.delay_median_seconds is not None]
    p90s = [r.delay_p90_seconds for r in reports if r.delay_p90_seconds is not None]
    moses = [r.mos for r in reports if r.mos is not None]
    expected = sum(r.packets_expected for r in reports)
    return {
        "calls": len(reports),
        "delay_median_ms": round(percentile(medians, 0.5) * 1000, 1) if medians else None,
        "delay_p90_ms": round(percentile(p90s, 0.5) * 1000, 1) if p90s else None,
        "bursts_sent": sum(r.bursts_sent for r in reports),
        "bursts_heard": sum(r.bursts_heard for r in reports),
        "packets_lost": sum(r.packets_lost for r in reports),
        "packets_expected": expected,
        "gaps": sum(r.gaps for r in reports),
        "longest_gap_ms": round(max(r.longest_gap_seconds for r in reports) * 1000, 1),
        "mos_median": round(percentile(moses, 0.5), 2) if moses else None,
        "mos_min": round(min(moses), 2) if moses else None,
    }


def _format_heard(data: dict[str, Any] | None) -> str:
    if data is None:
        return "no data"
    delay = (
        "no burst heard"
        if data["delay_median_ms"] is None
        else (
            f"delay p50 {data['delay_median_ms']:.0f} ms, p90 {data['delay_p90_ms']:.0f} ms (median of calls)"
        )
    )
    mos = "-" if data["mos_median"] is None else f"{data['mos_median']:.2f} (lowest {data['mos_min']:.2f})"
    return (
        f"{delay}; bursts heard {data['bursts_heard']}/{data['bursts_sent']}; packets lost "
        f"{data['packets_lost']}/{data['packets_expected']} in {data['gaps']} gaps (longest "
        f"{data['longest_gap_ms']:.0f} ms); MOS {mos}"
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


def _percentiles_ms(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "p50": round(percentile(values, 0.5) * 1000, 1),
        "p99": round(percentile(values, 0.99) * 1000, 1),
        "n": len(values),
    }


def _format_ms(stats: dict[str, float] | None) -> str:
    if stats is None:
        return "no data"
    return f"p50 {stats['p50']:.1f} ms, p99 {stats['p99']:.1f} ms (n={int(stats['n'])})"


async def run_scenario(
    sim: Simulator,
    scenario: Scenario,
    *,
    business_hangup: BusinessHangup | None = None,
    rng: random.Random | None = None,
    keep_calls: bool = False,
) -> ScenarioSummary:
    """Run ``scenario`` against the business behind ``sim``'s ingress URL; returns when every call ended.

    Each call's outcome (with its audio report) is kept in the summary; the call itself and its recording are
    dropped from the simulator unless ``keep_calls``, so long scenarios run in bounded memory.
    """
    rng = rng or random.Random()
    summary = ScenarioSummary()
    started = time.monotonic()
    runner = _CallRunner(sim, scenario, business_hangup, keep_calls=keep_calls)
    async with asyncio.TaskGroup() as tg:
        for index in range(scenario.calls):
            # Pace call starts at the scenario's rate: this sleep *is* the load profile.
            await asyncio.sleep(max(0.0, started + index / scenario.rate_per_second - time.monotonic()))
            side = rng.choice(("phone", "business")) if scenario.hangup == "random" else scenario.hangup
            tg.create_task(runner.run(str(scenario.first_caller + index), side, summary))
    summary.wall_seconds = time.monotonic() - started
    summary.statistics = _statistics(sim)
    return summary


class _CallRunner:
    def __init__(
        self, sim: Simulator, scenario: Scenario, business_hangup: BusinessHangup | None, *, keep_calls: bool
    ) -> None:
        self._sim = sim
        self._keep_calls = keep_calls
        self._scenario = scenario
        self._business_hangup = business_hangup
        timing = sim.config.timing
        self._answer_wait = timing.answer_window_seconds + timing.accept_media_timeout_seconds + 5.0

    async def run(self, caller: str, side: str, summary: ScenarioSummary) -> None:
        call = await self._sim.place_call(caller, self._scenario.phone_number_id)
        not_hung_up = False
        dtmf_error: str | None = None
        pressed = False
        try:
            await call.wait_state(CallState.ACCEPTED, timeout=self._answer_wait)
            held = time.monotonic()
            if self._scenario.dtmf:
                dtmf_error = await self._press(call)
                pressed = dtmf_error is None
            # The conversation itself: the hold counts from the accept, digits included.
            await asyncio.sleep(max(0.0, held + self._scenario.hold_seconds - time.monotonic()))
            not_hung_up = await self._end(call, side)
        except CallEndedError:
            pass
        except TimeoutError:
            await self._hang_up_if_live(call)
        summary.outcomes.append(self._outcome(call, not_hung_up, dtmf_error, pressed=pressed))
        if not self._keep_calls:
            call.phone.forget_audio()
            self._sim.forget(call.call_id)

    async def _press(self, call: SimulatedCall) -> str | None:
        """The caller presses the scenario's digits 1 s into the call; why not, if it could not."""
        await asyncio.sleep(min(1.0, self._scenario.hold_seconds))  # the phone first hears the business
        try:
            await call.phone.press(self._scenario.dtmf)
        except (SimulatorError, ConnectionError) as exc:
            return f"{call.call_id}: {exc}"
        return None

    async def _end(self, call: SimulatedCall, side: str) -> bool:
        """End the call from ``side``; True when the business was asked to and did not."""
        if call.ended:
            return False
        if side == "phone":
            await call.hangup()
            return False
        if self._business_hangup is not None:
            await self._business_hangup(call.call_id)
        try:
            await call.wait_ended(timeout=self._scenario.business_grace_seconds)
        except TimeoutError:
            await self._hang_up_if_live(call)
            return True
        return False

    @staticmethod
    async def _hang_up_if_live(call: SimulatedCall) -> None:
        if not call.ended:
            await call.hangup()

    def _outcome(
        self, call: SimulatedCall, not_hung_up: bool, dtmf_error: str | None = None, *, pressed: bool = False
    ) -> CallOutcome:
        journal = self._sim.journal
        sent = journal.connect_sent_at(call.call_id)
        pre_accept = journal.first_request(call.call_id, "pre_accept")
        accept = journal.first_request(call.call_id, "accept")
        answered = call.accepted_at is not None
        return CallOutcome(
            call_id=call.call_id,
            state=str(call.state),
            end_reason=NOT_HUNG_UP if not_hung_up else call.end_reason,
            answered=answered,
            setup_pre_accept_seconds=pre_accept.received_at - sent if pre_accept and sent else None,
            setup_accept_seconds=accept.received_at - sent if accept and sent else None,
            audio=call.audio_report() if answered else None,
            heard=call.phone.heard_report() if answered else None,
            dtmf_error=dtmf_error,
            dtmf_pressed=self._scenario.dtmf if pressed else "",
        )


def _statistics(sim: Simulator) -> dict[str, Any]:
    stats = sim.statistics()
    return {
        "graph_requests": stats.graph_requests,
        "webhook_posts": stats.webhook_posts,
        "webhook_attempts": stats.webhook_attempts,
        "webhook_failures": stats.webhook_failures,
        "faults_fired": stats.faults_fired,
        "call_errors": stats.call_errors,
    }
