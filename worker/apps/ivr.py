"""``ivr:``: a keypad menu, "press 1 for ..., 2 for ..., 9 to hang up". Short on purpose: copy it.

The caller hears the menu (a WAV file, or three rising beeps) and presses a key, even while the menu plays
(the menu stops at the key: barge-in). The key's route runs:

* ``echo``: the caller hears themself until they hang up (the echo app);
* ``play:<wav file>`` (or ``play`` alone: a short generated melody): the file is played, then the menu again;
* ``hangup``: a falling goodbye tone, then the call ends;
* ``transfer:<queue>``: the caller waits in ``queue`` for a person (worker/handoff, docs/handoff.md).

A key with no route, or no key within ``NO_INPUT_SECONDS`` after the menu, gets a low buzz and the menu
again; after ``ATTEMPTS`` menus without a route the call ends.

Spec (``CALLHOOK_APP``): ``ivr`` alone is ``1=echo,2=play,9=hangup`` with the generated menu. Otherwise
``ivr:`` and comma-separated ``key=route`` pairs, keys ``0-9 * #``, plus ``menu=<wav file>``, e.g.
``ivr:menu=/prompts/main.wav,1=echo,2=play:/prompts/hours.wav,0=hangup``; with no key given (``ivr:menu=…``)
the keys are the default ones. Paths cannot contain commas.
WAV files are 16-bit PCM, mono or stereo, any rate (as for ``play:``), checked when the app loads.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from worker import audio
from worker.apps.api import Call, CallEnded
from worker.apps.echo import echo
from worker.apps.play import check_wav, open_wav, to_mono

ATTEMPTS = 3
NO_INPUT_SECONDS = 5.0
RATE = 16000
KEYS = frozenset("0123456789*#")


class IvrSpecError(ValueError):
    """The ``ivr:`` spec cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Sound:
    """Mono 16-bit PCM at ``sample_rate``."""

    pcm: bytes
    sample_rate: int = RATE

    @property
    def seconds(self) -> float:
        return audio.duration_seconds(self.pcm, self.sample_rate)

    @classmethod
    def from_wav(cls, path: Path) -> Sound:
        reader, fmt = open_wav(path)  # blocking: read once, when the app is loaded
        try:
            return cls(to_mono(reader.readframes(fmt.frames), fmt.channels), fmt.sample_rate)
        finally:
            reader.close()

    @classmethod
    def beeps(cls, *frequencies_hz: float, seconds: float = 0.15, gap: float = 0.1) -> Sound:
        gap_pcm = audio.silence(RATE, gap)
        return cls(b"".join(audio.tone(hz, seconds, RATE, amplitude=0.2) + gap_pcm for hz in frequencies_hz))


MENU = Sound.beeps(660.0, 880.0, 1100.0)  # "make your choice"
INVALID = Sound.beeps(300.0, seconds=0.4)
GOODBYE = Sound.beeps(880.0, 660.0, 440.0)
MELODY = Sound.beeps(523.0, 659.0, 784.0, 1047.0, 784.0, 659.0, 523.0, seconds=0.2, gap=0.05)


@dataclass(frozen=True, slots=True)
class Route:
    action: str  # "echo" | "play" | "hangup" | "transfer"
    sound: Sound | None = None  # what "play" plays
    queue: str = ""  # where "transfer" sends the caller (worker/handoff)


DEFAULT_ROUTES = {"1": Route("echo"), "2": Route("play", MELODY), "9": Route("hangup")}


@dataclass(frozen=True, slots=True)
class Menu:
    routes: dict[str, Route] = field(default_factory=dict)
    prompt: Sound = MENU
    no_input_seconds: float = NO_INPUT_SECONDS

    @classmethod
    def parse(cls, spec: str) -> Menu:
        """A menu from ``key=route`` pairs (see the module docstring); IvrSpecError names what is wrong."""
        routes: dict[str, Route] = {}
        prompt = MENU
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, route = (piece.strip() for piece in item.partition("="))
            if not sep or not route:
                raise IvrSpecError(f"ivr: {item!r} is not key=route")
            if key == "menu":
                prompt = _sound(route)
            elif key not in KEYS:
                raise IvrSpecError(f"ivr: {key!r} is not a key (0-9 * #) or menu")
            else:
                routes[key] = _route(route)
        return cls(routes or dict(DEFAULT_ROUTES), prompt)


def _route(text: str) -> Route:
    action, _, argument = text.partition(":")
    if action == "play":
        return Route("play", _sound(argument) if argument else MELODY)
    if action in ("echo", "hangup") and not argument:
        return Route(action)
    if action == "transfer" and argument:
        return Route("transfer", queue=argument)
    raise IvrSpecError(f"ivr: route {text!r} is not echo, play, play:<wav file>, transfer:<queue> or hangup")


def _sound(path: str) -> Sound:
    try:
        check_wav(Path(path))
        return Sound.from_wav(Path(path))
    except ValueError as exc:  # UnplayableFile
        raise IvrSpecError(f"ivr: {exc}") from exc


async def ivr(call: Call, menu: Menu) -> None:
    """The app: ``functools.partial(ivr, menu=Menu.parse(spec))`` (the loader does it)."""
    with contextlib.suppress(CallEnded):
        for _ in range(ATTEMPTS):
            key = await ask(call, menu.prompt, menu.no_input_seconds)
            route = menu.routes.get(key)
            if route is None:
                await play(call, INVALID)
            elif route.action == "echo":
                await echo(call)
                return
            elif route.action == "play" and route.sound is not None:
                await play(call, route.sound)
            elif route.action == "transfer":
                await call.transfer(route.queue, reason="pressed " + key, context={"menu": "ivr"})
                return
            else:
                break
        await play(call, GOODBYE)
    await call.hangup()


async def ask(call: Call, prompt: Sound, no_input_seconds: float) -> str:
    """Play ``prompt``; the first key pressed during it or up to ``no_input_seconds`` after, or ""."""
    speaking = asyncio.create_task(play(call, prompt))
    try:
        return await call.collect_digits(max=1, end=None, timeout=prompt.seconds + no_input_seconds)
    finally:
        speaking.cancel()
        call.clear()  # barge-in: the key stops the menu
        await asyncio.gather(speaking, return_exceptions=True)  # its CallEnded shows in the next send


async def play(call: Call, sound: Sound) -> None:
    await call.send(sound.pcm, sound.sample_rate)
    await call.wait_played()
