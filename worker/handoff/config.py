"""The worker's handoff settings, ``CALLHOOK_HANDOFF_*`` (pure).

* ``CALLHOOK_HANDOFF_HOLD_WAV``: what a waiting caller hears, looped (16-bit PCM WAV); empty: a generated
  chime.
* ``CALLHOOK_HANDOFF_MAX_WAIT_SECONDS``: how long a call may wait (0: for ever); then the fallback runs.
* ``CALLHOOK_HANDOFF_FALLBACK``: ``hangup`` (a goodbye tone, then the call ends), ``message`` (the
  ``CALLHOOK_HANDOFF_FALLBACK_WAV`` or a generated tone, then the call ends) or ``app`` (back to the app
  that transferred, from its start).
* ``CALLHOOK_HANDOFF_ANNOUNCE_POSITION``: every ``CALLHOOK_HANDOFF_ANNOUNCE_EVERY_SECONDS`` the caller hears
  their place in the queue as that many short pips (1-9) before the hold audio goes on.
* ``CALLHOOK_HANDOFF_FORWARD_OPUS``: relay the caller's and the agent's Opus packets as they are when both
  legs negotiated Opus/48000 (true), or always decode and re-encode (false: the PCM relay).
* ``CALLHOOK_HANDOFF_HEARTBEAT_SECONDS``: how often an owner repeats its waiting calls on the board; an
  entry expires after three heartbeats without a mention.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from callhook.env import EnvReader

FALLBACKS = ("hangup", "message", "app")


@dataclass(frozen=True, slots=True)
class HandoffSettings:
    hold_wav: Path | None = None
    max_wait_seconds: float = 300.0
    fallback: str = "hangup"
    fallback_wav: Path | None = None
    announce_position: bool = True
    announce_every_seconds: float = 30.0
    heartbeat_seconds: float = 2.0
    forward_opus: bool = True

    @property
    def ttl_seconds(self) -> float:
        return 3 * self.heartbeat_seconds


def read(r: EnvReader) -> HandoffSettings:
    """The handoff settings from ``r``'s environment; problems are added to ``r.problems``."""
    hold = r.str("CALLHOOK_HANDOFF_HOLD_WAV", "")
    fallback_wav = r.str("CALLHOOK_HANDOFF_FALLBACK_WAV", "")
    settings = HandoffSettings(
        hold_wav=Path(hold) if hold else None,
        max_wait_seconds=r.float("CALLHOOK_HANDOFF_MAX_WAIT_SECONDS", 300.0, minimum=0, maximum=86_400),
        fallback=r.choice("CALLHOOK_HANDOFF_FALLBACK", "hangup", FALLBACKS),
        fallback_wav=Path(fallback_wav) if fallback_wav else None,
        announce_position=r.bool("CALLHOOK_HANDOFF_ANNOUNCE_POSITION", True),
        announce_every_seconds=r.float(
            "CALLHOOK_HANDOFF_ANNOUNCE_EVERY_SECONDS", 30.0, minimum=1, maximum=3600
        ),
        heartbeat_seconds=r.float("CALLHOOK_HANDOFF_HEARTBEAT_SECONDS", 2.0, minimum=0.1, maximum=60),
        forward_opus=r.bool("CALLHOOK_HANDOFF_FORWARD_OPUS", True),
    )
    for name, path in (("HOLD_WAV", settings.hold_wav), ("FALLBACK_WAV", settings.fallback_wav)):
        if path is not None and not path.is_file():
            r.problems.append(f"CALLHOOK_HANDOFF_{name}: {path} is not a file")
    return settings
