"""The voice-agent bridge's settings (``CALLHOOK_BRIDGE_*``): one frozen object, parsed from an env mapping.

``read(reader)`` adds the bridge's problems to a reader the worker's own settings use (one error listing
everything); ``load(env)`` is the standalone form. Defaults are what a Twilio-style agent expects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from callhook.env import EnvReader
from worker.apps.play import UnplayableFile, check_wav

ProtocolName = Literal["twilio", "pcm"]
PROTOCOLS: tuple[ProtocolName, ...] = ("twilio", "pcm")
PCM_SAMPLE_RATES = (16000, 24000)
APOLOGY_MAX_SECONDS = 30.0

# RFC 9110 token characters; a header the agent should get must be a plain name=value.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Headers the WebSocket handshake itself owns: setting them would break it.
_HANDSHAKE_HEADERS = frozenset({"host", "upgrade", "connection", "content-length", "transfer-encoding"})


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    protocol: ProtocolName = "twilio"
    # Sent with the WebSocket handshake (an auth token, a tenant id): secrets, so kept out of repr.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    sample_rate: int = 16000  # protocol pcm only; twilio is always 8 kHz µ-law
    connect_timeout_seconds: float = 5.0  # TCP + TLS + WebSocket handshake
    send_timeout_seconds: float = 5.0  # one message to the agent blocked longer: the agent is stuck
    playout_buffer_seconds: float = 30.0  # agent audio held ahead of playback before its socket is not read
    heartbeat_seconds: float = (
        10.0  # WebSocket ping interval; no pong within half of it ends the call; 0: off
    )
    apology_wav: Path | None = None  # played when the agent fails after accept; None: a generated tone

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {self.protocol!r}")
        if self.protocol == "pcm" and self.sample_rate not in PCM_SAMPLE_RATES:
            raise ValueError(f"pcm sample_rate must be one of {PCM_SAMPLE_RATES}, not {self.sample_rate}")

    @property
    def agent_sample_rate(self) -> int:
        """The rate of the audio on the wire, both ways."""
        return 8000 if self.protocol == "twilio" else self.sample_rate


def read(r: EnvReader) -> BridgeSettings:
    """The bridge's settings from ``r``'s environment; problems are added to ``r.problems``."""
    protocol = r.choice("CALLHOOK_BRIDGE_PROTOCOL", "twilio", PROTOCOLS)
    sample_rate = r.int("CALLHOOK_BRIDGE_SAMPLE_RATE", 16000)
    if sample_rate not in PCM_SAMPLE_RATES:
        r.problems.append(f"CALLHOOK_BRIDGE_SAMPLE_RATE={sample_rate} must be 16000 or 24000")
        sample_rate = 16000
    heartbeat = r.float("CALLHOOK_BRIDGE_HEARTBEAT_SECONDS", 10.0, minimum=0, maximum=300)
    if 0 < heartbeat < 1:
        r.problems.append(f"CALLHOOK_BRIDGE_HEARTBEAT_SECONDS={heartbeat} must be 0 (off) or >= 1")
    return BridgeSettings(
        protocol="pcm" if protocol == "pcm" else "twilio",
        headers=parse_headers(r, "CALLHOOK_BRIDGE_HEADERS"),
        sample_rate=sample_rate,
        connect_timeout_seconds=r.float(
            "CALLHOOK_BRIDGE_CONNECT_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=30
        ),
        send_timeout_seconds=r.float("CALLHOOK_BRIDGE_SEND_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=60),
        playout_buffer_seconds=r.float(
            "CALLHOOK_BRIDGE_PLAYOUT_BUFFER_SECONDS", 30.0, minimum=1, maximum=600
        ),
        heartbeat_seconds=heartbeat,
        apology_wav=_apology(r, "CALLHOOK_BRIDGE_APOLOGY_WAV"),
    )


def load(env: Mapping[str, str]) -> BridgeSettings:
    """Parse the bridge's settings alone; raises :class:`callhook.env.ConfigError` listing every problem."""
    r = EnvReader(env)
    settings = read(r)
    r.finish()
    return settings


def parse_headers(r: EnvReader, name: str) -> tuple[tuple[str, str], ...]:
    """``Name=value,Other=value``: split on the first ``=`` (values may contain ``=``, not ``,``)."""
    headers: list[tuple[str, str]] = []
    for item in r.list(name):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _TOKEN.match(key):
            r.problems.append(f"{name}: {key or item!r} is not Name=value with a valid header name")
        elif key.lower() in _HANDSHAKE_HEADERS or key.lower().startswith("sec-websocket-"):
            r.problems.append(f"{name}: {key} belongs to the WebSocket handshake and cannot be set")
        elif any(c in value for c in "\r\n\0"):
            r.problems.append(f"{name}: the value of {key} contains a line break or NUL")
        else:
            headers.append((key, value))
    return tuple(headers)


def _apology(r: EnvReader, name: str) -> Path | None:
    raw = r.str(name, "")
    if not raw:
        return None
    path = Path(raw)
    try:
        fmt = check_wav(path)
    except UnplayableFile as exc:
        r.problems.append(f"{name}: {exc}")
        return None
    if fmt.seconds > APOLOGY_MAX_SECONDS:
        r.problems.append(f"{name}: {path} lasts {fmt.seconds:.1f} s (at most {APOLOGY_MAX_SECONDS:.0f} s)")
        return None
    return path
