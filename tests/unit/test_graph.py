"""The Graph API client against a real aiohttp server on 127.0.0.1 that answers like Meta.

Assertions are on what reached the server (bodies, headers, number of attempts) and on exception types,
never on wall-clock time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from worker.config import load as load_config
from worker.errors import GraphAuthError, GraphRefused, GraphRetryable, GraphUnknownOutcome
from worker.graph import ERROR_CODES, ActionLimit, GraphClient, GraphSettings, PermissionStatus
from worker.metrics import WorkerMetrics

TOKEN = "EAAG-secret-token-value-1234567890"
PNID = "106540352242922"
CALL_ID = "wacid.HBgLMTIxNTU1MDgyMDUVAgASGCAyODUwNkY2OEFBRjgyNDE0QzU2"
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=lambda: {"success": True})
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # never answer (until the test ends)
    raw: bytes | None = None  # exact body bytes instead of JSON


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    authorization: str | None
    content_type: str | None
    json: Any


class FakeMeta:
    """Answers each request with the next scripted reply (success when the script is empty)."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.seen: list[Seen] = []
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                request.headers.get("Authorization"),
                request.headers.get("Content-Type"),
                body,
            )
        )
        reply = self.script.pop(0) if self.script else Reply()
        if reply.hang:
            await self.release.wait()
        if reply.raw is not None:
            return web.Response(status=reply.status, body=reply.raw, headers=reply.headers)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)


@pytest.fixture
async def meta() -> AsyncIterator[tuple[FakeMeta, str]]:
    fake = FakeMeta()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield fake, str(server.make_url("")).rstrip("/")
    finally:
        fake.release.set()
        await server.close()


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics(CollectorRegistry())


def settings(url: str, **overrides: Any) -> GraphSettings:
    values: dict[str, Any] = {
        "graph_url": url,
        "graph_version": "v23.0",
        "access_token": TOKEN,
        "timeout_seconds": 2.0,
        "max_attempts": 4,
        "backoff_base_seconds": 0.001,
        "backoff_max_seconds": 0.002,
    }
    values.update(overrides)
    return GraphSettings(**values)


def error(code: int, status: int = 400, message: str = "no") -> Reply:
    body = {"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "Az1"}}
    return Reply(status=status, body=body)


def later(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


def sample(metrics: WorkerMetrics, name: str, labels: dict[str, str]) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# ------------------------------------------------------------------------------------------------ bodies
async def test_pre_accept_sends_meta_body_and_token(
    meta: tuple[FakeMeta, str], metrics: WorkerMetrics
) -> None:
    fake, url = meta
    async with GraphClient(settings(url), metrics=metrics) as graph:
        await graph.pre_accept(PNID, CALL_ID, SDP, deadline=later())
    [seen] = fake.seen
    assert (seen.method, seen.path) == ("POST", f"/v23.0/{PNID}/calls")
    assert seen.authorization == f"Bearer {TOKEN}"
    assert seen.content_type == "application/json"
    assert seen.json == {
        "messaging_product": "whatsapp",
        "call_id": CALL_ID,
        "action": "pre_accept",
        "session": {"sdp_type": "answer", "sdp": SDP},
    }
    labels = {"action": "pre_accept", "outcome": "ok"}
    assert sample(metrics, "callhook_graph_request_duration_seconds_count", labels) == 1


async def test_accept_reject_terminate_bodies(meta: tuple[FakeMeta, str]) -> None:
    fake, url = meta
    async with GraphClient(settings(url)) as graph:
        await graph.accept(PNID, CALL_ID, SDP, deadline=later(), biz_opaque_callback_data="ticket-7")
        await graph.accept(PNID, CALL_ID, SDP, deadline=later())
        await graph.reject(PNID, CALL_ID, deadline=later())
        await graph.terminate(PNID, CALL_ID, deadline=later())
    session = {"sdp_type": "answer", "sdp": SDP}
    base = {"messaging_product": "whatsapp", "call_id": CALL_ID}
    assert [s.json for s in fake.seen] == [
        {**base, "action": "accept", "session": session, "biz_opaque_callback_data": "ticket-7"},
        {**base, "action": "accept", "session": session},
        {**base, "action": "reject"},
        {**base, "action": "terminate"},
    ]


async def test_connect_returns_call_id(meta: tuple[FakeMeta, str]) -> None:
    fake, url = meta
    fake.script = [Reply(body={"messaging_product": "whatsapp", "calls": [{"id": CALL_ID}]})]
    async with GraphClient(settings(url)) as graph:
        call_id = await graph.connect(PNID, "+15551234567", SDP, biz_opaque_callback_data="order-42")
    assert call_id == CALL_ID
    assert fake.seen[0].json == {
        "messaging_product": "whatsapp",
        "to": "+15551234567",
        "action": "connect",
        "session": {"sdp_type": "offer", "sdp": SDP},
        "biz_opaque_callback_data": "order-42",
    }


async def test_call_permissions(meta: tuple[FakeMeta, str]) -> None:
    fake, url = meta
    fake.script = [
        Reply(
            body={
                "messaging_product": "whatsapp",
                "permission": {"status": "Temporary", "expiration_time": 1745343479},
                "actions": [
                    {
                        "action_name": "send_call_permission_request",
                        "can_perform_action": False,
                        "limits": [{"time_period": "PT24H", "max_allowed": 1, "current_usage": 1}],
                    },
                    {"action_name": "start_call", "can_perform_action": True, "limits": []},
                ],
            }
        )
    ]
    async with GraphClient(settings(url)) as graph:
        status = await graph.call_permissions(PNID, "15551234567")
    assert status == PermissionStatus(
        status="temporary",
        expiration_time=1745343479,
        can_start_call=True,
        can_request_permission=False,
        limits=(ActionLimit("send_call_permission_request", "PT24H", 1, 1, None),),
    )
    assert status.blocking_limits("send_call_permission_request") == list(status.limits)
    assert status.start_call_refusal() is None
    [seen] = fake.seen
    assert (seen.method, seen.path, seen.query) == (
        "GET",
        f"/v23.0/{PNID}/call_permissions",
        {"user_wa_id": "15551234567"},
    )
    assert seen.authorization == f"Bearer {TOKEN}"


async def test_send_permission_request(meta: tuple[FakeMeta, str]) -> None:
    fake, url = meta
    fake.script = [
        Reply(
            body={
                "messaging_product": "whatsapp",
                "contacts": [{"input": "15551234567", "wa_id": "15551234567"}],
                "messages": [{"id": "wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI"}],
            }
        )
    ]
    async with GraphClient(settings(url)) as graph:
        message_id = await graph.send_permission_request(PNID, "15551234567", "May we call you back?")
    assert message_id == "wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI"
    [seen] = fake.seen
    assert seen.path == f"/v23.0/{PNID}/messages"
    assert seen.json == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15551234567",
        "type": "interactive",
        "interactive": {
            "type": "call_permission_request",
            "action": {"name": "call_permission_request"},
            "body": {"text": "May we call you back?"},
        },
    }


# ----------------------------------------------------------------------------------- error families
@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        (100, 400, GraphRefused),
        (131055, 400, GraphRefused),
        (138000, 401, GraphRefused),  # arrives as 401 but is configuration, not the token
        (138001, 400, GraphRefused),
        (138003, 400, GraphRefused),
        (138005, 400, GraphRefused),
        (138006, 401, GraphRefused),  # arrives as 401: no permission from the user
        (138007, 400, GraphRefused),
        (138009, 400, GraphRefused),
        (138012, 400, GraphRefused),
        (138013, 400, GraphRefused),
        (138014, 400, GraphRefused),
        (138017, 400, GraphRefused),
        (190, 401, GraphAuthError),
        (99999, 400, GraphRefused),  # unknown code on a 4xx: a definite no
    ],
)
async def test_definite_errors_are_raised_at_once(
    meta: tuple[FakeMeta, str], metrics: WorkerMetrics, code: int, status: int, expected: type[Exception]
) -> None:
    fake, url = meta
    fake.script = [error(code, status)]
    async with GraphClient(settings(url), metrics=metrics) as graph:
        with pytest.raises(expected) as caught:
            await graph.terminate(PNID, CALL_ID, deadline=later())
    assert type(caught.value) is expected
    assert caught.value.code == code
    assert caught.value.http_status == status
    assert len(fake.seen) == 1
    assert sample(metrics, "callhook_graph_errors_total", {"action": "terminate", "code": str(code)}) == 1


@pytest.mark.parametrize("code", [4, 613, 80007, 130429, 138002, 138004])
async def test_retryable_codes_are_retried(meta: tuple[FakeMeta, str], code: int) -> None:
    fake, url = meta
    fake.script = [error(code, 400), error(code, 429)]
    async with GraphClient(settings(url)) as graph:
        await graph.accept(PNID, CALL_ID, SDP, deadline=later())
    assert len(fake.seen) == 3


def test_every_documented_code_is_classified() -> None:
    documented = {100, 190, 4, 80007, 130429, 613, 131055}
    documented |= {138000, 138001, 138002, 138003, 138004, 138005, 138006, 138007, 138009}
    documented |= {138012, 138013, 138014, 138017}
    assert documented <= ERROR_CODES.keys()


async def test_server_error_then_success(meta: tuple[FakeMeta, str], metrics: WorkerMetrics) -> None:
    fake, url = meta
    fake.script = [Reply(status=502, raw=b"<html>Bad Gateway</html>"), Reply(status=500, body={})]
    async with GraphClient(settings(url), metrics=metrics) as graph:
        await graph.pre_accept(PNID, CALL_ID, SDP, deadline=later())
    assert len(fake.seen) == 3
    assert sample(metrics, "callhook_graph_errors_total", {"action": "pre_accept", "code": "http_502"}) == 1
    retryable = {"action": "pre_accept", "outcome": "retryable"}
    assert sample(metrics, "callhook_graph_request_duration_seconds_count", retryable) == 2


async def test_attempts_are_bounded(meta: tuple[FakeMeta, str]) -> None:
    fake, url = meta
    fake.script = [Reply(status=503, body={}) for _ in range(10)]
    async with GraphClient(settings(url, max_attempts=3)) as graph:
        with pytest.raises(GraphRetryable) as caught:
            await graph.reject(PNID, CALL_ID, deadline=later())
    assert caught.value.http_status == 503
    assert len(fake.seen) == 3


async def test_retry_after_hint_is_honoured_within_the_deadline(meta: tuple[FakeMeta, str]) -> None:
    fake, url = meta
    fake.script = [Reply(status=429, body=error(130429).body, headers={"Retry-After": "0.01"})]
    async with GraphClient(settings(url)) as graph:
        await graph.accept(PNID, CALL_ID, SDP, deadline=later())
    assert len(fake.seen) == 2


async def test_retry_after_hint_beyond_the_deadline_raises_at_once(meta: tuple[FakeMeta, str]) -> None:
    fake, url = meta
    fake.script = [Reply(status=429, body=error(130429).body, headers={"Retry-After": "30"})]
    async with GraphClient(settings(url)) as graph:
        with pytest.raises(GraphRetryable) as caught:
            await graph.accept(PNID, CALL_ID, SDP, deadline=later(5))
    assert caught.value.retry_after_seconds == 30
    assert caught.value.code == 130429
    assert len(fake.seen) == 1


async def test_business_use_case_header_is_a_hint(meta: tuple[FakeMeta, str]) -> None:
    fake, url = meta
    usage = '{"1234": [{"type": "whatsapp", "call_count": 100, "estimated_time_to_regain_access": 2}]}'
    fake.script = [Reply(status=400, body=error(80007).body, headers={"X-Business-Use-Case-Usage": usage})]
    async with GraphClient(settings(url)) as graph:
        with pytest.raises(GraphRetryable) as caught:
            await graph.accept(PNID, CALL_ID, SDP, deadline=later(5))
    assert caught.value.retry_after_seconds == 120
    assert len(fake.seen) == 1


# ------------------------------------------------------------------------------- deadlines, unknowns
async def test_slow_answer_beyond_the_deadline_is_an_unknown_outcome(meta: tuple[FakeMeta, str]) -> None:
    fake, url = meta
    fake.script = [Reply(hang=True)]
    async with GraphClient(settings(url, timeout_seconds=30)) as graph:
        with pytest.raises(GraphUnknownOutcome):
            await graph.pre_accept(PNID, CALL_ID, SDP, deadline=later(0.3))
    # The attempt's timeout was clipped to the deadline, and nothing was tried after it.
    assert len(fake.seen) == 1


async def test_timed_out_repeatable_action_is_tried_again(meta: tuple[FakeMeta, str]) -> None:
    fake, url = meta
    fake.script = [Reply(hang=True)]
    async with GraphClient(settings(url, timeout_seconds=0.2)) as graph:
        await graph.terminate(PNID, CALL_ID, deadline=later())
    assert len(fake.seen) == 2


async def test_timed_out_connect_is_never_repeated(
    meta: tuple[FakeMeta, str], metrics: WorkerMetrics
) -> None:
    fake, url = meta
    fake.script = [Reply(hang=True)]
    async with GraphClient(settings(url, timeout_seconds=0.2), metrics=metrics) as graph:
        with pytest.raises(GraphUnknownOutcome):
            await graph.connect(PNID, "+15551234567", SDP, deadline=later())
    assert len(fake.seen) == 1
    assert sample(metrics, "callhook_graph_errors_total", {"action": "connect", "code": "timeout"}) == 1


async def test_connect_server_error_is_unknown_and_not_repeated(meta: tuple[FakeMeta, str]) -> None:
    fake, url = meta
    fake.script = [Reply(status=500, body={})]
    async with GraphClient(settings(url)) as graph:
        with pytest.raises(GraphUnknownOutcome):
            await graph.connect(PNID, "+15551234567", SDP)
    assert len(fake.seen) == 1


async def test_throttled_connect_is_retried(meta: tuple[FakeMeta, str]) -> None:
    fake, url = meta
    fake.script = [error(4, 400), Reply(body={"calls": [{"id": CALL_ID}]})]
    async with GraphClient(settings(url)) as graph:
        assert await graph.connect(PNID, "+15551234567", SDP) == CALL_ID
    assert len(fake.seen) == 2


async def test_refused_connection_is_retried_even_for_connect(metrics: WorkerMetrics) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with GraphClient(settings(f"http://127.0.0.1:{port}", max_attempts=3), metrics=metrics) as graph:
        with pytest.raises(GraphRetryable) as caught:
            await graph.connect(PNID, "+15551234567", SDP)
    assert caught.value.code is None
    assert sample(metrics, "callhook_graph_errors_total", {"action": "connect", "code": "connection"}) == 3


async def test_deadline_already_passed_sends_nothing(meta: tuple[FakeMeta, str]) -> None:
    fake, url = meta
    async with GraphClient(settings(url)) as graph:
        with pytest.raises(GraphRetryable, match="deadline"):
            await graph.accept(PNID, CALL_ID, SDP, deadline=time.monotonic() - 1)
    assert fake.seen == []


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body={"success": False}),
        Reply(body={"succes": True}),
        Reply(raw=b"<html>ok</html>"),
        Reply(body={"success": "yes"}),
    ],
)
async def test_malformed_success_is_an_error_not_retried(
    meta: tuple[FakeMeta, str], metrics: WorkerMetrics, reply: Reply
) -> None:
    fake, url = meta
    fake.script = [reply]
    async with GraphClient(settings(url), metrics=metrics) as graph:
        with pytest.raises(GraphUnknownOutcome):
            await graph.accept(PNID, CALL_ID, SDP, deadline=later())
    assert len(fake.seen) == 1
    assert sample(metrics, "callhook_graph_errors_total", {"action": "accept", "code": "malformed"}) == 1


@pytest.mark.parametrize("body", [{"calls": []}, {"calls": [{"id": ""}]}, {"success": True}])
async def test_connect_without_call_id_is_an_error(meta: tuple[FakeMeta, str], body: Any) -> None:
    fake, url = meta
    fake.script = [Reply(body=body)]
    async with GraphClient(settings(url)) as graph:
        with pytest.raises(GraphUnknownOutcome):
            await graph.connect(PNID, "+15551234567", SDP)
    assert len(fake.seen) == 1


# ------------------------------------------------------------------------------------ secrets, lifecycle
async def test_token_never_logged_or_shown(
    meta: tuple[FakeMeta, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = meta
    fake.script = [Reply(status=503, body={}), error(190, 401, "Invalid OAuth access token.")]
    caplog.set_level(logging.DEBUG)
    s = settings(url)
    async with GraphClient(s) as graph:
        with pytest.raises(GraphAuthError) as caught:
            await graph.terminate(PNID, CALL_ID, deadline=later())
        shown = [repr(graph), str(graph), repr(s), str(caught.value), repr(caught.value)]
    assert len(fake.seen) == 2
    assert all(seen.authorization == f"Bearer {TOKEN}" for seen in fake.seen)
    assert caplog.records  # the retry was logged...
    assert TOKEN not in caplog.text  # ...without the token
    for text in shown:
        assert TOKEN not in text


async def test_close_is_idempotent_and_leaves_a_passed_session_open(meta: tuple[FakeMeta, str]) -> None:
    _, url = meta
    async with aiohttp.ClientSession() as session:
        graph = GraphClient(settings(url), session=session)
        await graph.terminate(PNID, CALL_ID, deadline=later())
        await graph.close()
        await graph.close()
        assert not session.closed
        with pytest.raises(RuntimeError, match="closed"):
            await graph.terminate(PNID, CALL_ID, deadline=later())

    owned = GraphClient(settings(url))
    async with owned:
        await owned.terminate(PNID, CALL_ID, deadline=later())
    await owned.close()


def test_settings_from_worker_config() -> None:
    config = load_config(
        {
            "CALLHOOK_ACCESS_TOKEN": TOKEN,
            "CALLHOOK_GRAPH_URL": "http://127.0.0.1:9",
            "CALLHOOK_GRAPH_VERSION": "v99.0",
            "CALLHOOK_GRAPH_TIMEOUT_SECONDS": "1.5",
        }
    )
    s = GraphSettings.from_config(config)
    assert (s.graph_url, s.graph_version, s.access_token, s.timeout_seconds) == (
        "http://127.0.0.1:9",
        "v99.0",
        TOKEN,
        1.5,
    )
    assert TOKEN not in repr(s)


async def test_media_download_is_streamed_with_the_token_and_refusals_are_told_apart(
    meta: tuple[FakeMeta, str],
) -> None:
    fake, url = meta
    audio = b"OggS" + bytes(range(256)) * 64
    expired = {"error": {"code": 100, "message": "URL signature expired", "type": "OAuthException"}}
    fake.script = [
        Reply(body={"url": f"{url}/media/fresh", "id": "1410", "sha256": "abc", "mime_type": "audio/ogg"}),
        Reply(raw=audio),
        Reply(status=404, body=expired),
        Reply(raw=audio),
    ]
    async with GraphClient(settings(url)) as graph:
        info = await graph.media("1410")
        assert (info.url, info.sha256) == (f"{url}/media/fresh", "abc")
        assert await graph.download(info.url) == audio
        with pytest.raises(GraphRefused):  # the archiver then asks for a fresh URL by media id
            await graph.download(f"{url}/media/stale")
        with pytest.raises(GraphRefused, match="over 100 bytes"):
            await graph.download(info.url, max_bytes=100)
    assert [s.path for s in fake.seen] == ["/v23.0/1410", "/media/fresh", "/media/stale", "/media/fresh"]
    assert all(s.authorization == f"Bearer {TOKEN}" for s in fake.seen)
