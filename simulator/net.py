"""The simulated phone's network: loss, burst loss, jitter, reordering and delay, per direction. Pure.

A :class:`LinkProfile` describes one direction of the phone's path (phone -> business is *up*, business ->
phone is *down*); a :class:`Link` applies it to the datagrams the phone's ICE transport sends or receives,
one at a time: :meth:`Link.admit` says whether a datagram is lost and, if not, at what time (on the injected
clock) it leaves the simulated network. The random draws come from an injected :class:`random.Random`, so a
seed gives the same losses and delays every time; the clock is injected too, so the model runs without a loop.

The model, per datagram, in this order:

* **outage**: scheduled windows (``outage=5s:120ms``, or :meth:`Link.outage` at run time) lose every
  datagram sent inside them: "a 120 ms loss burst";
* **burst loss** (Gilbert-Elliott): a two-state Markov chain stepped once per datagram; in the *bad* state
  every datagram is lost. ``burst_loss`` is the long-run fraction of datagrams in the bad state and
  ``burst_length`` its mean length in datagrams (so p(good -> bad) = r * b / (1 - b) with r = 1 / length);
* **loss**: independent (Bernoulli) loss of each remaining datagram;
* **delay + jitter**: every datagram is delayed by ``delay`` plus a uniform draw in ``0 .. jitter``. Packets
  keep their order (a datagram never leaves before the one sent before it: queueing delay, as on a real
  access link), unless it is **reordered**: ``reorder`` is the fraction of datagrams held back a further
  ``reorder_delay`` and let overtaken by the ones behind them.

What is protected: STUN (ICE checks and consent) never reaches this model (aioice handles it below the data
path the hook wraps), and by default DTLS records (first byte 20-63, RFC 7983) are delayed but never lost, so
a call on a lossy link still connects as fast as on a clean one (real DTLS retransmits; aiortc's handshake
timer would only make the setup slow and the test flaky). ``protect_dtls=False`` loses them too. RTP and RTCP
(SRTP/SRTCP) get everything.

A datagram is never duplicated or invented: each admitted datagram leaves exactly once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

Clock = Callable[[], float]
_ORDER_EPSILON = 1e-6  # seconds: keeps departures strictly increasing, so timers fire in order


@dataclass(frozen=True, slots=True)
class Outage:
    """Every datagram sent during ``[at, at + seconds)`` (seconds after the link's first datagram) is lost."""

    at: float
    seconds: float


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """One direction of the phone's path. The default is a perfect link."""

    loss: float = 0.0  # independent loss probability per datagram, 0..1
    burst_loss: float = 0.0  # Gilbert-Elliott: long-run fraction of datagrams in the bad (all-lost) state
    burst_length: float = 3.0  # mean bad-state run, in datagrams (>= 1)
    delay_seconds: float = 0.0  # fixed one-way delay
    jitter_seconds: float = 0.0  # each datagram gets a further uniform 0..jitter
    reorder: float = 0.0  # fraction of datagrams held back and overtaken
    reorder_delay_seconds: float = 0.04  # how far a reordered datagram is held back
    outages: tuple[Outage, ...] = ()
    protect_dtls: bool = True  # DTLS records delayed, never lost

    def __post_init__(self) -> None:
        for name in ("loss", "burst_loss", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        if self.burst_loss >= 1.0:
            raise ValueError("burst_loss must be below 1")
        if self.burst_length < 1.0:
            raise ValueError(f"burst_length must be at least 1 datagram, not {self.burst_length}")
        for name in ("delay_seconds", "jitter_seconds", "reorder_delay_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for outage in self.outages:
            if outage.at < 0 or outage.seconds <= 0:
                raise ValueError(f"outage {outage} must start at >= 0 and last > 0")

    @property
    def impaired(self) -> bool:
        return self != LinkProfile(protect_dtls=self.protect_dtls)


@dataclass(frozen=True, slots=True)
class NetProfile:
    """Both directions: ``up`` is phone -> business, ``down`` is business -> phone."""

    up: LinkProfile = LinkProfile()
    down: LinkProfile = LinkProfile()

    @property
    def impaired(self) -> bool:
        return self.up.impaired or self.down.impaired


@dataclass(slots=True)
class LinkStats:
    datagrams: int = 0  # offered to the link
    lost: int = 0  # of those, lost (outage + burst + random)
    lost_in_bursts: int = 0  # lost in the Gilbert-Elliott bad state
    lost_in_outages: int = 0
    reordered: int = 0
    burst_runs: list[int] = field(default_factory=list)  # lengths of finished bad-state runs, in datagrams


def is_dtls(datagram: bytes) -> bool:
    """RFC 7983 demultiplexing: a first byte of 20-63 is DTLS."""
    return bool(datagram) and 20 <= datagram[0] <= 63


class Link:
    """One direction of the path, applied datagram by datagram (see the module doc)."""

    def __init__(self, profile: LinkProfile, rng: random.Random, clock: Clock) -> None:
        self._profile = profile
        self._rng = rng
        self._clock = clock
        self._started: float | None = None
        self._outages: list[tuple[float, float]] = []  # absolute [start, end) on the clock, set at run time
        self._bad = False
        self._run = 0
        self._last_departure = float("-inf")
        self.stats = LinkStats()

    @property
    def profile(self) -> LinkProfile:
        return self._profile

    def set_profile(self, profile: LinkProfile) -> None:
        """Change the link's behaviour from the next datagram on (scheduled outages restart from now)."""
        self._profile = profile
        self._started = None

    def outage(self, seconds: float, *, start: float | None = None) -> None:
        """Lose everything sent during ``seconds`` from ``start`` (the clock's time; default now)."""
        begin = self._clock() if start is None else start
        self._outages.append((begin, begin + seconds))

    def admit(self, datagram: bytes) -> float | None:
        """None if ``datagram`` is lost, else the clock time at which it leaves the network."""
        now = self._clock()
        profile = self._profile
        if self._started is None:
            self._started = now
        self.stats.datagrams += 1
        protected = profile.protect_dtls and is_dtls(datagram)
        lost = self._step_burst(profile)  # the chain steps for every datagram, protected or not
        if lost:
            self.stats.lost_in_bursts += 0 if protected else 1
        elif self._in_outage(now, profile):
            lost = True
            self.stats.lost_in_outages += 0 if protected else 1
        elif profile.loss > 0 and self._rng.random() < profile.loss:
            lost = True
        if lost and not protected:
            self.stats.lost += 1
            return None
        departure = now + profile.delay_seconds
        if profile.jitter_seconds > 0:
            departure += self._rng.uniform(0.0, profile.jitter_seconds)
        if profile.reorder > 0 and self._rng.random() < profile.reorder:
            self.stats.reordered += 1
            return departure + profile.reorder_delay_seconds  # overtaken; does not hold the ones behind
        departure = max(departure, self._last_departure + _ORDER_EPSILON)  # strictly after the one before
        self._last_departure = departure
        return departure

    def _in_outage(self, now: float, profile: LinkProfile) -> bool:
        assert self._started is not None
        since = now - self._started
        if any(o.at <= since < o.at + o.seconds for o in profile.outages):
            return True
        return any(start <= now < end for start, end in self._outages)

    def _step_burst(self, profile: LinkProfile) -> bool:
        """Step the Gilbert-Elliott chain; True when this datagram falls in the bad state."""
        if profile.burst_loss <= 0:
            if self._bad:
                self._end_run()
            return False
        leave = 1.0 / profile.burst_length
        enter = leave * profile.burst_loss / (1.0 - profile.burst_loss)
        if self._bad:
            if self._rng.random() < leave:
                self._end_run()
        elif self._rng.random() < enter:
            self._bad = True
        if self._bad:
            self._run += 1
        return self._bad

    def _end_run(self) -> None:
        self._bad = False
        self.stats.burst_runs.append(self._run)
        self._run = 0


# --------------------------------------------------------------------------------------------- the spec
_KEYS = {
    "loss": "loss",
    "burst": "burst_loss",
    "burst_loss": "burst_loss",
    "burst_len": "burst_length",
    "burst_length": "burst_length",
    "delay": "delay_seconds",
    "jitter": "jitter_seconds",
    "reorder": "reorder",
    "reorder_delay": "reorder_delay_seconds",
    "outage": "outages",
    "protect_dtls": "protect_dtls",
}
_FRACTIONS = {"loss", "burst_loss", "reorder"}
_SECONDS = {"delay_seconds", "jitter_seconds", "reorder_delay_seconds"}


def parse_link(spec: str, base: LinkProfile | None = None) -> LinkProfile:
    """``loss=3%,jitter=30ms,delay=20ms,burst=2%,burst_len=4,reorder=1%,reorder_delay=40ms,outage=5s:120ms``.

    Fractions as ``3%`` or ``0.03``; times as ``30ms``, ``0.03s`` or ``0.03`` (seconds); ``outage`` repeats;
    ``protect_dtls=false`` lets DTLS be lost too. An empty spec (or ``none``/``clean``) is a perfect link.
    Keys not given keep ``base``'s values. Raises ValueError naming the bad item.
    """
    profile = base or LinkProfile()
    text = spec.strip()
    if text.lower() in ("", "none", "clean"):
        return profile
    values: dict[str, object] = {}
    outages: list[Outage] = list(profile.outages)
    for item in text.split(","):
        key, sep, raw = item.strip().partition("=")
        field_name = _KEYS.get(key.strip().lower())
        if not sep or field_name is None:
            known = ", ".join(sorted(k for k in _KEYS if k not in ("burst_loss", "burst_length")))
            raise ValueError(f"network item {item.strip()!r}: expected KEY=VALUE with KEY one of {known}")
        raw = raw.strip()
        try:
            if field_name in _FRACTIONS:
                values[field_name] = _fraction(raw)
            elif field_name in _SECONDS:
                values[field_name] = _seconds(raw)
            elif field_name == "burst_length":
                values[field_name] = float(raw)
            elif field_name == "protect_dtls":
                values[field_name] = _bool(raw)
            else:
                outages.append(_outage(raw))
        except ValueError as exc:
            raise ValueError(f"network item {item.strip()!r}: {exc}") from None
    try:
        return replace(profile, **values, outages=tuple(outages))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"network {spec!r}: {exc}") from None


def parse_net(both: str = "", *, up: str = "", down: str = "") -> NetProfile:
    """``both`` applies to each direction, then ``up`` / ``down`` override key by key."""
    common = parse_link(both)
    return NetProfile(up=parse_link(up, common), down=parse_link(down, common))


def describe(profile: LinkProfile) -> str:
    """The spec that gives ``profile`` back (``clean`` for a perfect link)."""
    parts: list[str] = []
    if profile.loss:
        parts.append(f"loss={profile.loss * 100:g}%")
    if profile.burst_loss:
        parts.append(f"burst={profile.burst_loss * 100:g}%,burst_len={profile.burst_length:g}")
    if profile.delay_seconds:
        parts.append(f"delay={profile.delay_seconds * 1000:g}ms")
    if profile.jitter_seconds:
        parts.append(f"jitter={profile.jitter_seconds * 1000:g}ms")
    if profile.reorder:
        reorder_ms = profile.reorder_delay_seconds * 1000
        parts.append(f"reorder={profile.reorder * 100:g}%,reorder_delay={reorder_ms:g}ms")
    parts += [f"outage={o.at:g}s:{o.seconds * 1000:g}ms" for o in profile.outages]
    if not profile.protect_dtls:
        parts.append("protect_dtls=false")
    return ",".join(parts) or "clean"


def _outage(raw: str) -> Outage:
    at, colon, length = raw.partition(":")
    if not colon:
        raise ValueError("an outage is AT:LENGTH, e.g. 5s:120ms")
    return Outage(_seconds(at), _seconds(length))


def _fraction(raw: str) -> float:
    value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{raw} is not a fraction between 0 and 100 %")
    return value


def _seconds(raw: str) -> float:
    text = raw.lower()
    if text.endswith("ms"):
        value = float(text[:-2]) / 1000.0
    elif text.endswith("s"):
        value = float(text[:-1])
    else:
        value = float(text)
    if value < 0:
        raise ValueError(f"{raw} is negative")
    return value


def _bool(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw} is not true or false")
