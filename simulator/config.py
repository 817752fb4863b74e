"""The simulator's settings: one frozen object, parsed once from an environment mapping.

Shared names: ``CALLHOOK_APP_SECRETS`` (the first secret signs webhooks), ``CALLHOOK_ACCESS_TOKEN`` (the
bearer token the simulated Graph API expects), ``CALLHOOK_GRAPH_VERSION``, ``CALLHOOK_ICE_HOST_ADDRESSES``,
``CALLHOOK_LOG_LEVEL``/``CALLHOOK_LOG_FORMAT``. Everything else is ``CALLHOOK_SIM_*`` (see docs/simulator.md).
Pure: dataclasses and the env reader only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from callhook.env import EnvReader
from simulator.faults import FaultRule, parse_fault
from simulator.net import NetProfile, parse_net
from simulator.payloads import BusinessNumber
from simulator.permissions import PermissionStatus


class CalleeAction(StrEnum):
    """What the user's phone does when the business calls it."""

    ANSWER = "answer"
    REJECT = "reject"
    NO_ANSWER = "no_answer"
    UNCALLABLE = "uncallable"  # connect fails with 138001


class AnswerWebhook(StrEnum):
    """When the ``connect`` webhook with the phone's SDP answer goes out for a business-initiated call."""

    WITH_ACCEPT = "with_accept"  # when the user picks up, just before the ACCEPTED status
    EARLY = "early"  # right after the connect response, before RINGING (Meta's relay answers at once)
    BEFORE_RESPONSE = "before_response"  # delivered before the HTTP response of connect


class PermissionReply(StrEnum):
    """How the user answers an interactive call permission request."""

    ACCEPT = "accept"  # temporary permission (7 days)
    ACCEPT_PERMANENT = "accept_permanent"
    REJECT = "reject"
    IGNORE = "ignore"  # no reply webhook at all


@dataclass(frozen=True, slots=True)
class CalleeBehaviour:
    action: CalleeAction = CalleeAction.ANSWER
    ring_seconds: float = 1.0  # RINGING status -> the user's decision
    answer_webhook: AnswerWebhook = AnswerWebhook.WITH_ACCEPT


@dataclass(frozen=True, slots=True)
class CallTiming:
    answer_window_seconds: float = 30.0  # connect webhook sent -> unanswered (terminate FAILED)
    accept_media_timeout_seconds: float = 10.0  # accept waits this long for ICE+DTLS, then 138007
    start_silence_seconds: float = 20.0  # accepted, no audio heard yet -> the phone hangs up
    midcall_silence_seconds: float = 30.0  # no audio heard for this long mid-call -> the phone hangs up
    permission_reply_seconds: float = 0.2  # permission request -> the user's reply webhook


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    timeout_seconds: float = 20.0  # Meta gives up on a request after about 20 s
    max_attempts: int = 6
    retry_initial_seconds: float = 0.5
    retry_max_seconds: float = 30.0
    concurrency: int = 100
    escape_slashes: bool = True


@dataclass(frozen=True, slots=True)
class DeliverySwitches:
    """Webhook delivery misbehaviour, as Meta shows it. Replace the whole object to change it live."""

    duplicate_fraction: float = 0.0  # deliveries sent a second time (same bytes) after the first succeeded
    duplicate_delay_seconds: float = 0.0
    reorder_fraction: float = 0.0  # connect webhooks held back, so later events of the call overtake them
    reorder_seconds: float = 1.0
    batch_size: int = 1  # > 1: up to this many updates per POST
    batch_window_seconds: float = 0.05
    stale_fraction: float = 0.0  # connect webhooks stamped ``stale_seconds`` in the past
    stale_seconds: float = 600.0
    delay_seconds: float = 0.0  # every delivery waits this long first


DEFAULT_NUMBER = BusinessNumber("100000000000002", "15550001000")
DEFAULT_INGRESS_URL = "http://127.0.0.1:8080/webhook"
DEFAULT_WABA_ID = "100000000000001"


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    app_secret: str = field(default="", repr=False)
    access_token: str = field(default="", repr=False)
    ingress_url: str = DEFAULT_INGRESS_URL
    graph_host: str = "127.0.0.1"
    graph_port: int = 8090
    graph_version: str = "v23.0"
    waba_id: str = DEFAULT_WABA_ID
    numbers: tuple[BusinessNumber, ...] = (DEFAULT_NUMBER,)
    max_concurrent_calls: int = 1000
    default_permission: PermissionStatus = PermissionStatus.NONE
    permissions: tuple[tuple[str, PermissionStatus], ...] = ()
    permission_reply: PermissionReply = PermissionReply.ACCEPT
    callee: CalleeBehaviour = CalleeBehaviour()
    timing: CallTiming = CallTiming()
    delivery: DeliveryConfig = DeliveryConfig()
    switches: DeliverySwitches = DeliverySwitches()
    graph_faults: tuple[FaultRule, ...] = ()
    ice_host_addresses: tuple[str, ...] = ()
    record_seconds: float = 10.0  # audio the phone keeps for analysis, from the first frame heard
    signal_seed: int = 1
    random_seed: int | None = None
    log_level: str = "info"
    log_format: str = "json"
    net: NetProfile = field(default_factory=NetProfile)  # every phone's network (simulator.net)


def load(env: Mapping[str, str]) -> SimulatorConfig:
    """Parse the simulator's settings; raises :class:`callhook.env.ConfigError` listing every problem."""
    r = EnvReader(env)
    secrets = r.required_list("CALLHOOK_APP_SECRETS")
    config = SimulatorConfig(
        app_secret=secrets[0] if secrets else "",
        access_token=r.required_str("CALLHOOK_ACCESS_TOKEN", secret=True),
        ingress_url=r.url("CALLHOOK_SIM_INGRESS_URL", DEFAULT_INGRESS_URL, schemes=("http", "https")),
        graph_host=r.str("CALLHOOK_SIM_GRAPH_HOST", "127.0.0.1"),
        graph_port=r.int("CALLHOOK_SIM_GRAPH_PORT", 8090, minimum=0, maximum=65535),
        graph_version=r.str("CALLHOOK_GRAPH_VERSION", "v23.0"),
        waba_id=r.str("CALLHOOK_SIM_WABA_ID", DEFAULT_WABA_ID),
        numbers=_numbers(r),
        max_concurrent_calls=r.int("CALLHOOK_SIM_MAX_CONCURRENT_CALLS", 1000, minimum=1),
        default_permission=PermissionStatus.parse(
            r.choice("CALLHOOK_SIM_DEFAULT_PERMISSION", "none", _PERMISSIONS)
        ),
        permissions=_permissions(r),
        permission_reply=PermissionReply(
            r.choice("CALLHOOK_SIM_PERMISSION_REPLY", "accept", tuple(PermissionReply))
        ),
        callee=CalleeBehaviour(
            action=CalleeAction(r.choice("CALLHOOK_SIM_CALLEE", "answer", tuple(CalleeAction))),
            ring_seconds=r.float("CALLHOOK_SIM_RING_SECONDS", 1.0, minimum=0, maximum=600),
            answer_webhook=AnswerWebhook(
                r.choice("CALLHOOK_SIM_ANSWER_WEBHOOK", "with_accept", tuple(AnswerWebhook))
            ),
        ),
        timing=_timing(r),
        delivery=_delivery(r),
        switches=_switches(r),
        graph_faults=_faults(r),
        ice_host_addresses=r.ip_list("CALLHOOK_ICE_HOST_ADDRESSES"),
        record_seconds=r.float("CALLHOOK_SIM_RECORD_SECONDS", 10.0, minimum=0, maximum=3600),
        signal_seed=r.int("CALLHOOK_SIM_SIGNAL_SEED", 1, minimum=0),
        random_seed=_optional_seed(r.int("CALLHOOK_SIM_RANDOM_SEED", -1, minimum=-1)),
        log_level=r.choice("CALLHOOK_LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
        log_format=r.choice("CALLHOOK_LOG_FORMAT", "json", ("json", "console")),
        net=_net(r),
    )
    r.finish()
    return config


_PERMISSIONS = ("none", "no_permission", "temporary", "permanent")


def _optional_seed(seed: int) -> int | None:
    """-1 (the default) means: seed from the OS, a different run every time."""
    return None if seed < 0 else seed


def _numbers(r: EnvReader) -> tuple[BusinessNumber, ...]:
    name = "CALLHOOK_SIM_NUMBERS"
    numbers: list[BusinessNumber] = []
    for item in r.list(name):
        phone_number_id, sep, display = item.partition(":")
        if not sep or not phone_number_id.isdigit() or not display.isdigit():
            r.problems.append(
                f"{name}: {item!r} must be <phone_number_id>:<display phone number>, digits only"
            )
            continue
        numbers.append(BusinessNumber(phone_number_id, display))
    return tuple(numbers) or (DEFAULT_NUMBER,)


def _permissions(r: EnvReader) -> tuple[tuple[str, PermissionStatus], ...]:
    name = "CALLHOOK_SIM_PERMISSIONS"
    out: list[tuple[str, PermissionStatus]] = []
    for item in r.list(name):
        user, sep, status = item.partition(":")
        if not sep or not user.isdigit() or status.lower() not in _PERMISSIONS:
            r.problems.append(f"{name}: {item!r} must be <user wa_id>:<none|temporary|permanent>")
            continue
        out.append((user, PermissionStatus.parse(status)))
    return tuple(out)


def _timing(r: EnvReader) -> CallTiming:
    return CallTiming(
        answer_window_seconds=r.float("CALLHOOK_SIM_ANSWER_WINDOW_SECONDS", 30.0, minimum=0.1, maximum=600),
        accept_media_timeout_seconds=r.float(
            "CALLHOOK_SIM_ACCEPT_MEDIA_TIMEOUT_SECONDS", 10.0, minimum=0.0, maximum=120
        ),
        start_silence_seconds=r.float("CALLHOOK_SIM_START_SILENCE_SECONDS", 20.0, minimum=0.1, maximum=3600),
        midcall_silence_seconds=r.float(
            "CALLHOOK_SIM_MIDCALL_SILENCE_SECONDS", 30.0, minimum=0.1, maximum=3600
        ),
        permission_reply_seconds=r.float(
            "CALLHOOK_SIM_PERMISSION_REPLY_SECONDS", 0.2, minimum=0, maximum=3600
        ),
    )


def _delivery(r: EnvReader) -> DeliveryConfig:
    return DeliveryConfig(
        timeout_seconds=r.float("CALLHOOK_SIM_WEBHOOK_TIMEOUT_SECONDS", 20.0, minimum=0.1, maximum=600),
        max_attempts=r.int("CALLHOOK_SIM_WEBHOOK_MAX_ATTEMPTS", 6, minimum=1, maximum=100),
        retry_initial_seconds=r.float("CALLHOOK_SIM_WEBHOOK_RETRY_SECONDS", 0.5, minimum=0.0, maximum=600),
        retry_max_seconds=r.float("CALLHOOK_SIM_WEBHOOK_RETRY_MAX_SECONDS", 30.0, minimum=0.0, maximum=3600),
        concurrency=r.int("CALLHOOK_SIM_WEBHOOK_CONCURRENCY", 100, minimum=1, maximum=10_000),
        escape_slashes=r.bool("CALLHOOK_SIM_ESCAPE_SLASHES", True),
    )


def _switches(r: EnvReader) -> DeliverySwitches:
    return DeliverySwitches(
        duplicate_fraction=r.float("CALLHOOK_SIM_DUPLICATES", 0.0, minimum=0, maximum=1),
        duplicate_delay_seconds=r.float("CALLHOOK_SIM_DUPLICATE_DELAY_SECONDS", 0.0, minimum=0, maximum=3600),
        reorder_fraction=r.float("CALLHOOK_SIM_REORDER", 0.0, minimum=0, maximum=1),
        reorder_seconds=r.float("CALLHOOK_SIM_REORDER_SECONDS", 1.0, minimum=0, maximum=600),
        batch_size=r.int("CALLHOOK_SIM_BATCH", 1, minimum=1, maximum=1000),
        batch_window_seconds=r.float("CALLHOOK_SIM_BATCH_WINDOW_SECONDS", 0.05, minimum=0, maximum=60),
        stale_fraction=r.float("CALLHOOK_SIM_STALE", 0.0, minimum=0, maximum=1),
        stale_seconds=r.float("CALLHOOK_SIM_STALE_SECONDS", 600.0, minimum=0, maximum=30 * 86400),
        delay_seconds=r.float("CALLHOOK_SIM_DELAY_SECONDS", 0.0, minimum=0, maximum=3600),
    )


def _faults(r: EnvReader) -> tuple[FaultRule, ...]:
    rules: list[FaultRule] = []
    for spec in r.list("CALLHOOK_SIM_GRAPH_FAULTS"):
        try:
            rules.append(parse_fault(spec))
        except ValueError as exc:
            r.problems.append(f"CALLHOOK_SIM_GRAPH_FAULTS: {exc}")
    return tuple(rules)


def _net(r: EnvReader) -> NetProfile:
    try:
        return parse_net(
            r.str("CALLHOOK_SIM_NET", ""),
            up=r.str("CALLHOOK_SIM_NET_UP", ""),
            down=r.str("CALLHOOK_SIM_NET_DOWN", ""),
        )
    except ValueError as exc:
        r.problems.append(f"CALLHOOK_SIM_NET[_UP|_DOWN]: {exc}")
        return NetProfile()
