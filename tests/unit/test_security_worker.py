"""Issue 17 on the worker's side (each test names its finding): only the operator's apps, dials re-checked at
intake, Graph answers and SDPs capped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_graph import PNID, SDP, FakeMeta, Reply, meta, settings  # noqa: F401  (fixture)
from worker.apps.echo import echo
from worker.apps.loader import APP_REFUSED, AppRegistry, AppSpecError, UnknownApp
from worker.config import load as load_worker
from worker.decode import MAX_SDP_CHARS, decode_webhook
from worker.dials import dial_problem
from worker.errors import GraphUnknownOutcome
from worker.events import DialRequest, Skipped
from worker.graph import MAX_RESPONSE_BYTES, GraphClient


def test_only_configured_apps_exist_and_unknown_names_say_nothing_about_the_host(tmp_path: Path) -> None:
    """Finding 1: any spec a dial named was loaded (import any module, write into any directory, probe files
    through play: errors) and cached forever; now the registry holds the operator's apps only."""
    registry = AppRegistry("echo", {"rec": f"record:{tmp_path}"})
    assert registry.get(None) is echo
    assert registry.names == {"rec"}
    for spec in ("os:system", f"record:{tmp_path}", "play:/etc/passwd", "ws://10.0.0.1/agent", "echo2"):
        with pytest.raises(UnknownApp) as caught:
            registry.get(spec)
        assert str(caught.value) == APP_REFUSED
        assert "passwd" not in str(caught.value)
    with pytest.raises(AppSpecError, match="CALLHOOK_APPS bad"):
        AppRegistry("echo", {"bad": "play:/nonexistent.wav"})  # a bad operator setting fails at start-up


def test_worker_reads_its_apps_and_refuses_a_short_access_token() -> None:
    """Findings 1 and 7."""
    config = load_worker({"CALLHOOK_ACCESS_TOKEN": "EAAG0123456789abcdef", "CALLHOOK_APPS": "greet=echo"})
    assert dict(config.apps) == {"echo": "echo", "greet": "echo"}
    with pytest.raises(Exception, match="CALLHOOK_ACCESS_TOKEN"):
        load_worker({"CALLHOOK_ACCESS_TOKEN": "short"})


def _dial(**fields: str) -> DialRequest:
    values = {"request_id": "dial-1", "to": "15551234567", "phone_number_id": "1234567890", **fields}
    return DialRequest(**values)  # type: ignore[arg-type]


def test_the_worker_rechecks_a_dial_from_the_queue() -> None:
    """Findings 1 and 7, defence in depth: a dial put on the queue by anything but the ingress is checked the
    same way (ASCII digits for Graph URL paths, no control characters, an app *name*)."""
    assert dial_problem(_dial()) is None
    assert dial_problem(_dial(to="US.13491208655302741918", app="agent")) is None
    for bad in (
        _dial(phone_number_id="١٢٣"),
        _dial(phone_number_id="123/../me"),
        _dial(to="15551234567\n"),
        _dial(biz_opaque_callback_data="a\x00b"),
        _dial(biz_opaque_callback_data="é" * 300),
        _dial(app="ws://evil.example/"),
        _dial(app="os:system"),
    ):
        assert dial_problem(bad) is not None


async def test_a_graph_answer_over_the_cap_is_not_read(meta: tuple[FakeMeta, str]) -> None:  # noqa: F811
    """Finding 7: Graph answers were read whole, whatever their size."""
    fake, url = meta
    padding = "x" * (MAX_RESPONSE_BYTES + 10)
    fake.script = [Reply(raw=json.dumps({"calls": [{"id": "wacid.X"}], "pad": padding}).encode())]
    async with GraphClient(settings(url, max_attempts=1)) as graph:
        with pytest.raises(GraphUnknownOutcome, match="too large"):
            await graph.connect(PNID, "15551234567", SDP)


def _connect_webhook(sdp: str) -> bytes:
    call = {
        "id": "wacid.ABC",
        "from": "15551234567",
        "to": "15550001111",
        "event": "connect",
        "direction": "USER_INITIATED",
        "timestamp": "1700000000",
        "session": {"sdp_type": "offer", "sdp": sdp},
    }
    value = {"messaging_product": "whatsapp", "metadata": {"phone_number_id": "1234567890"}, "calls": [call]}
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "calls", "value": value}]}],
    }
    return json.dumps(body).encode()


def test_a_huge_sdp_is_skipped_not_handed_to_the_media_stack() -> None:
    """Finding 7: SDP size was not capped."""
    (small,) = decode_webhook(_connect_webhook(SDP))
    assert not isinstance(small, Skipped)
    (huge,) = decode_webhook(_connect_webhook(SDP + "a=x-pad:" + "y" * MAX_SDP_CHARS + "\r\n"))
    assert isinstance(huge, Skipped)
    assert huge.kind == "sdp_too_large"
