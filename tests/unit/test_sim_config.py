"""The simulator's settings parse from the environment and every problem is reported at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from callhook.env import ConfigError
from simulator.config import AnswerWebhook, CalleeAction, PermissionReply, load
from simulator.errors import MetaError, unknown_object
from simulator.faults import FaultKind
from simulator.net import LinkProfile, NetProfile, Outage
from simulator.payloads import BusinessNumber
from simulator.permissions import PermissionStatus

MINIMAL = {"CALLHOOK_APP_SECRETS": "first,second", "CALLHOOK_ACCESS_TOKEN": "token"}


def test_minimal_environment_gives_metas_defaults() -> None:
    config = load(MINIMAL)
    assert config.app_secret == "first"
    assert config.access_token == "token"
    assert "token" not in repr(config)
    assert "first" not in repr(config)
    assert config.max_concurrent_calls == 1000
    assert config.timing.answer_window_seconds == 30.0
    assert config.timing.start_silence_seconds == 20.0
    assert config.timing.midcall_silence_seconds == 30.0
    assert config.default_permission is PermissionStatus.NONE
    assert config.delivery.escape_slashes is True
    assert config.switches.batch_size == 1
    assert config.graph_faults == ()


def test_every_setting_is_read() -> None:
    config = load(
        {
            **MINIMAL,
            "CALLHOOK_SIM_INGRESS_URL": "https://ingress.example/webhook",
            "CALLHOOK_SIM_GRAPH_PORT": "0",
            "CALLHOOK_GRAPH_VERSION": "v24.0",
            "CALLHOOK_SIM_NUMBERS": "111:15550001111, 222:15550002222",
            "CALLHOOK_SIM_PERMISSIONS": "15551230001:permanent,15551230002:none",
            "CALLHOOK_SIM_DEFAULT_PERMISSION": "temporary",
            "CALLHOOK_SIM_PERMISSION_REPLY": "reject",
            "CALLHOOK_SIM_CALLEE": "no_answer",
            "CALLHOOK_SIM_ANSWER_WEBHOOK": "before_response",
            "CALLHOOK_SIM_ANSWER_WINDOW_SECONDS": "2.5",
            "CALLHOOK_SIM_START_SILENCE_SECONDS": "1",
            "CALLHOOK_SIM_MIDCALL_SILENCE_SECONDS": "2",
            "CALLHOOK_SIM_DUPLICATES": "0.5",
            "CALLHOOK_SIM_REORDER": "1",
            "CALLHOOK_SIM_BATCH": "10",
            "CALLHOOK_SIM_STALE": "0.1",
            "CALLHOOK_SIM_DELAY_SECONDS": "0.2",
            "CALLHOOK_SIM_GRAPH_FAULTS": "pre_accept:503:next=2,accept:delay=0.1",
            "CALLHOOK_ICE_HOST_ADDRESSES": "127.0.0.1",
            "CALLHOOK_SIM_RANDOM_SEED": "7",
            "CALLHOOK_SIM_ESCAPE_SLASHES": "false",
        }
    )
    assert config.ingress_url == "https://ingress.example/webhook"
    assert config.graph_port == 0
    assert config.graph_version == "v24.0"
    assert config.numbers == (BusinessNumber("111", "15550001111"), BusinessNumber("222", "15550002222"))
    assert config.permissions == (
        ("15551230001", PermissionStatus.PERMANENT),
        ("15551230002", PermissionStatus.NONE),
    )
    assert config.default_permission is PermissionStatus.TEMPORARY
    assert config.permission_reply is PermissionReply.REJECT
    assert config.callee.action is CalleeAction.NO_ANSWER
    assert config.callee.answer_webhook is AnswerWebhook.BEFORE_RESPONSE
    assert config.timing.answer_window_seconds == 2.5
    assert config.switches.reorder_fraction == 1.0
    assert config.switches.batch_size == 10
    assert [rule.kind for rule in config.graph_faults] == [FaultKind.SERVER_ERROR, FaultKind.DELAY]
    assert config.ice_host_addresses == ("127.0.0.1",)
    assert config.random_seed == 7
    assert config.delivery.escape_slashes is False


def test_the_phones_network_is_read_per_direction() -> None:
    config = load(
        {
            **MINIMAL,
            "CALLHOOK_SIM_NET": "loss=3%,jitter=30ms",
            "CALLHOOK_SIM_NET_UP": "loss=5%",
            "CALLHOOK_SIM_NET_DOWN": "outage=2s:120ms",
        }
    )
    assert config.net == NetProfile(
        up=LinkProfile(loss=0.05, jitter_seconds=0.03),
        down=LinkProfile(loss=0.03, jitter_seconds=0.03, outages=(Outage(2.0, 0.12),)),
    )
    assert load(MINIMAL).net == NetProfile()
    with pytest.raises(ConfigError, match="CALLHOOK_SIM_NET"):
        load({**MINIMAL, "CALLHOOK_SIM_NET_UP": "loss=lots"})


def test_all_problems_are_listed_together() -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            {
                "CALLHOOK_SIM_NUMBERS": "abc",
                "CALLHOOK_SIM_PERMISSIONS": "15551230001:maybe",
                "CALLHOOK_SIM_CALLEE": "shout",
                "CALLHOOK_SIM_DUPLICATES": "2",
                "CALLHOOK_SIM_GRAPH_FAULTS": "accept:418",
                "CALLHOOK_ICE_HOST_ADDRESSES": "localhost",
            }
        )
    text = "\n".join(caught.value.problems)
    for name in (
        "CALLHOOK_APP_SECRETS",
        "CALLHOOK_ACCESS_TOKEN",
        "CALLHOOK_SIM_NUMBERS",
        "CALLHOOK_SIM_PERMISSIONS",
        "CALLHOOK_SIM_CALLEE",
        "CALLHOOK_SIM_DUPLICATES",
        "CALLHOOK_SIM_GRAPH_FAULTS",
        "CALLHOOK_ICE_HOST_ADDRESSES",
    ):
        assert name in text
    assert len(caught.value.problems) == 8


def test_meta_error_envelopes() -> None:
    envelope = MetaError(138006, "no permission").envelope("Atrace")
    assert envelope == {
        "error": {
            "message": "(#138006) No approved call permission from the recipient",
            "type": "OAuthException",
            "code": 138006,
            "error_data": {"messaging_product": "whatsapp", "details": "no permission"},
            "fbtrace_id": "Atrace",
        }
    }
    assert MetaError(138006).http_status == 401
    assert MetaError(190).http_status == 401
    assert MetaError(190).message.startswith("Invalid OAuth access token")
    throttled = MetaError(130429).envelope()["error"]
    assert throttled["is_transient"] is True
    assert MetaError(130429).http_status == 429
    missing = unknown_object("999").envelope()["error"]
    assert missing["error_subcode"] == 33
    assert missing["type"] == "GraphMethodException"
    assert missing["message"].startswith("Unsupported post request. Object with ID '999'")
    assert len(MetaError(1).envelope()["error"]["fbtrace_id"]) == 23


PURE = [
    "simulator.sdp",
    "simulator.payloads",
    "simulator.calls",
    "simulator.faults",
    "simulator.permissions",
    "simulator.errors",
    "simulator.signal",
    "simulator.config",
]


def test_the_pure_modules_import_no_io_library() -> None:
    probe = (
        "import importlib, json, sys\n"
        "for m in sys.argv[1:]: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *PURE],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = set(json.loads(result.stdout))
    assert set(PURE) <= loaded
    io = sorted(m for m in loaded if m.split(".")[0] in {"aiohttp", "aiortc", "av", "asyncio", "aio_pika"})
    assert io == []
