"""The worker's settings: one frozen object parsed once from an environment mapping."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from callhook.env import BUILTIN_APPS, EnvReader
from worker.apps import bridge_config
from worker.apps.bridge_config import BridgeSettings
from worker.capture import ANNOUNCEMENT_LANGUAGES, NO_CAPTURE, Capture, Consent
from worker.handoff import config as handoff_config
from worker.handoff.config import HandoffSettings

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    amqp_url: str = DEFAULT_AMQP_URL
    log_level: str = "info"
    log_format: str = "json"
    # calls
    max_calls: int = 40
    app: str = "echo"
    answer_deadline_seconds: float = 30.0
    media_connect_timeout_seconds: float = 10.0
    media_silence_timeout_seconds: float = 10.0
    tombstone_seconds: float = 120.0
    drain_timeout_seconds: float = 120.0
    # Graph API
    graph_url: str = "https://graph.facebook.com"
    graph_version: str = "v23.0"
    access_token: str = field(default="", repr=False)
    graph_timeout_seconds: float = 5.0
    # media
    ice_servers: tuple[str, ...] = ()
    turn_username: str = ""
    turn_credential: str = field(default="", repr=False)
    ice_host_addresses: tuple[str, ...] = ()
    ice_peer_networks: tuple[str, ...] = ()  # empty: any peer
    # observability
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9100
    # the voice-agent bridge (CALLHOOK_APP=ws://...), CALLHOOK_BRIDGE_*
    bridge: BridgeSettings = field(default_factory=BridgeSettings)
    uvloop: bool = True  # CALLHOOK_UVLOOP: run on uvloop (callhook/loop.py)
    handoff: HandoffSettings = field(default_factory=HandoffSettings)  # CALLHOOK_HANDOFF_* (docs/handoff.md)
    # The apps a dial may name (CALLHOOK_APPS=name=spec,...; "echo" always): loaded at start-up, nothing else.
    apps: Mapping[str, str] = field(default_factory=lambda: dict(BUILTIN_APPS), repr=False)
    # Meta's recording/transcription opt-in, worker-wide default (worker/capture.py); a dial or an app's
    # prepare step may override it per call
    capture: Capture = NO_CAPTURE
    capture_language: str = "en"  # purpose and language a dial's opt-in falls back to
    capture_purpose: str = ""
    # Meta's recordings and transcripts, downloaded and kept here (worker/archive.py); "" = not archived
    archive_dir: str = ""


def load(env: Mapping[str, str]) -> WorkerConfig:
    """Parse the worker's settings; raises :class:`callhook.env.ConfigError` listing every problem."""
    r = EnvReader(env)
    config = WorkerConfig(
        amqp_url=r.url_list("CALLHOOK_AMQP_URL", DEFAULT_AMQP_URL, schemes=("amqp", "amqps")),
        log_level=r.choice("CALLHOOK_LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
        log_format=r.choice("CALLHOOK_LOG_FORMAT", "json", ("json", "console")),
        max_calls=r.int("CALLHOOK_MAX_CALLS", 40, minimum=1, maximum=10_000),
        app=r.str("CALLHOOK_APP", "echo"),
        answer_deadline_seconds=r.float("CALLHOOK_ANSWER_DEADLINE_SECONDS", 30.0, minimum=1, maximum=120),
        media_connect_timeout_seconds=r.float(
            "CALLHOOK_MEDIA_CONNECT_TIMEOUT_SECONDS", 10.0, minimum=0.1, maximum=60
        ),
        media_silence_timeout_seconds=r.float(
            "CALLHOOK_MEDIA_SILENCE_TIMEOUT_SECONDS", 10.0, minimum=0.5, maximum=600
        ),
        tombstone_seconds=r.float("CALLHOOK_TOMBSTONE_SECONDS", 120.0, minimum=1, maximum=3600),
        drain_timeout_seconds=r.float("CALLHOOK_DRAIN_TIMEOUT_SECONDS", 120.0, minimum=0, maximum=86_400),
        graph_url=r.url("CALLHOOK_GRAPH_URL", "https://graph.facebook.com", schemes=("http", "https")),
        graph_version=r.str("CALLHOOK_GRAPH_VERSION", "v23.0"),
        access_token=r.required_str("CALLHOOK_ACCESS_TOKEN", secret=True),
        graph_timeout_seconds=r.float("CALLHOOK_GRAPH_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=60),
        ice_servers=r.list("CALLHOOK_ICE_SERVERS"),
        turn_username=r.str("CALLHOOK_TURN_USERNAME", ""),
        turn_credential=r.str("CALLHOOK_TURN_CREDENTIAL", ""),
        ice_host_addresses=r.ip_list("CALLHOOK_ICE_HOST_ADDRESSES"),
        ice_peer_networks=r.network_list("CALLHOOK_ICE_PEER_NETWORKS"),
        metrics_host=r.str("CALLHOOK_METRICS_HOST", "0.0.0.0"),
        metrics_port=r.int("CALLHOOK_METRICS_PORT", 9100, minimum=0, maximum=65535),
        bridge=bridge_config.read(r),
        uvloop=r.bool("CALLHOOK_UVLOOP", True),
        handoff=handoff_config.read(r),
        apps=r.app_map("CALLHOOK_APPS"),
        capture=_capture(r),
        capture_language=r.str("CALLHOOK_ANNOUNCEMENT_LANGUAGE", "en"),
        capture_purpose=r.str("CALLHOOK_CAPTURE_PURPOSE", ""),
        archive_dir=r.str("CALLHOOK_ARCHIVE_DIR", ""),
    )
    r.min_length("CALLHOOK_ACCESS_TOKEN", (config.access_token,) if config.access_token else (), 16)
    for server in config.ice_servers:
        if not server.startswith(("stun:", "turn:", "turns:")):
            r.problems.append(f"CALLHOOK_ICE_SERVERS: {server!r} must start with stun:, turn: or turns:")
    if config.archive_dir and not config.archive_dir.startswith("/"):
        r.problems.append(f"CALLHOOK_ARCHIVE_DIR: {config.archive_dir!r} must be an absolute path")
    if config.capture_language not in ANNOUNCEMENT_LANGUAGES:
        r.problems.append(
            f"CALLHOOK_ANNOUNCEMENT_LANGUAGE: {config.capture_language!r} is not a language Meta speaks "
            f"({', '.join(sorted(ANNOUNCEMENT_LANGUAGES))})"
        )
    r.finish()
    return config


def _capture(r: EnvReader) -> Capture:
    """CALLHOOK_RECORDING / CALLHOOK_TRANSCRIPTION (enabled|disabled|omit), one purpose and language."""
    purpose = r.str("CALLHOOK_CAPTURE_PURPOSE", "")
    language = r.str("CALLHOOK_ANNOUNCEMENT_LANGUAGE", "en")
    choices = ("omit", "enabled", "disabled")
    record = r.choice("CALLHOOK_RECORDING", "omit", choices)
    transcribe = r.choice("CALLHOOK_TRANSCRIPTION", "omit", choices)

    def consent(choice: str) -> Consent | None:
        if choice == "omit":
            return None
        return Consent("ENABLED" if choice == "enabled" else "DISABLED", purpose, language)

    capture = Capture(consent(record), consent(transcribe))
    for problem in capture.problems():
        if "purpose" in problem:
            r.problems.append(f"CALLHOOK_CAPTURE_PURPOSE: {problem}")
        elif "announcement_language" not in problem:  # reported once, below, for the setting itself
            r.problems.append(problem)
    return capture
