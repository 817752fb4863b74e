"""Meta's 2026 platform end to end: usernames, recording/transcription opt-in, their webhooks and archive.

Real processes (ingress, one worker: the media queue has a single active consumer anyway), the real broker,
real media; the simulator plays Meta, including the consent announcement, an Ogg/Opus recording of the call,
a transcript, expiring media URLs and duplicated webhooks. Each test follows its call through the lifecycle
events an integrator consumes on ``callhook.events`` (bound ``call.#``: the media events have two words).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import av
import pytest
import pytest_asyncio

from ingress import contract
from ingress.commands import Consent, Dial
from simulator.calls import CallState
from simulator.config import SimulatorConfig
from simulator.permissions import PermissionStatus
from simulator.platform import PlatformSettings
from simulator.sim import Simulator
from tests.e2e.harness import WAIT_SECONDS, poll
from tests.support.system import ACCESS_TOKEN, APP_SECRET, System, free_port, scrape

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

PNID = SimulatorConfig().numbers[0].phone_number_id
UID = "US.13491208655302741918"
SENTINEL = "call.test.sentinel"


class Events:
    """Every ``call.#`` event, by call id (or dial request id) and routing key."""

    def __init__(self) -> None:
        self.by_key: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        self.sentinels: set[str] = set()
        self._changed = asyncio.Condition()

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        event = json.loads(message.body)
        async with self._changed:
            if message.routing_key == SENTINEL:
                self.sentinels.add(event["id"])
            else:
                key = event.get("request_id") or event["call_id"]
                self.by_key[key].append((message.routing_key or "", event))
                if event.get("request_id") and event.get("call_id"):
                    self.by_key[event["call_id"]].append((message.routing_key or "", event))
            self._changed.notify_all()
        await message.ack()

    async def wait(self, key: str, routing_key: str, timeout: float = WAIT_SECONDS) -> dict[str, Any]:  # noqa: ASYNC109
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: any(rk == routing_key for rk, _ in self.by_key[key]))
        return next(e for rk, e in self.by_key[key] if rk == routing_key)

    async def wait_sentinel(self, sentinel: str) -> None:
        async with asyncio.timeout(WAIT_SECONDS), self._changed:
            await self._changed.wait_for(lambda: sentinel in self.sentinels)

    def count(self, key: str, routing_key: str) -> int:
        return sum(1 for rk, _ in self.by_key[key] if rk == routing_key)


@dataclass
class Env:
    system: System
    sim: Simulator
    events: Events
    channel: aio_pika.abc.AbstractChannel
    archive: Path
    http: aiohttp.ClientSession

    async def metric(self, name: str, **labels: str) -> float:
        worker = self.system.worker_processes[0]
        samples = await scrape(self.http, worker)
        return sum(v for k, v in samples.items() if _matches(k, name, labels))

    async def flush_events(self) -> None:
        """Every event published so far has reached ``events`` (a sentinel queued behind them came back)."""
        sentinel = base64.b16encode(hashlib.sha256(str(id(object())).encode()).digest()[:6]).decode()
        message = aio_pika.Message(json.dumps({"id": sentinel}).encode())
        exchange = await self.channel.get_exchange(contract.EVENTS_EXCHANGE, ensure=False)
        await exchange.publish(message, SENTINEL)
        await self.events.wait_sentinel(sentinel)

    async def dial(self, **kwargs: Any) -> str:
        command = Dial(phone_number_id=PNID, **kwargs).validated()
        message = aio_pika.Message(command.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await self.channel.default_exchange.publish(message, contract.DIALS_QUEUE, mandatory=True)
        return command.request_id


def _matches(key: str, name: str, labels: dict[str, str]) -> bool:
    sample, _, label_text = key.partition("{")
    return sample == name and all(f'{k}="{v}"' in label_text for k, v in labels.items())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    graph_port = free_port()
    archive = tmp_path_factory.mktemp("archive")
    system = System(
        amqp_url=amqp_url,
        graph_url=f"http://127.0.0.1:{graph_port}",
        log_dir=tmp_path_factory.mktemp("platform-logs"),
        workers=1,
        worker_env={
            "CALLHOOK_RECORDING": "enabled",
            "CALLHOOK_TRANSCRIPTION": "enabled",
            "CALLHOOK_CAPTURE_PURPOSE": "quality assurance",
            "CALLHOOK_ANNOUNCEMENT_LANGUAGE": "en_US",
            "CALLHOOK_ARCHIVE_DIR": str(archive),
            "CALLHOOK_DRAIN_TIMEOUT_SECONDS": "5",
        },
    )
    config = SimulatorConfig(
        app_secret=APP_SECRET,
        access_token=ACCESS_TOKEN,
        ice_host_addresses=("127.0.0.1",),
        default_permission=PermissionStatus.TEMPORARY,
    )
    events = Events()
    async with system, aiohttp.ClientSession() as http:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            queue = await channel.declare_queue(exclusive=True)
            await queue.bind(contract.EVENTS_EXCHANGE, routing_key="call.#")
            await queue.consume(events.on_message)
            async with Simulator(config, ingress_url=system.webhook_url, graph_port=graph_port) as sim:
                try:
                    yield Env(system, sim, events, channel, archive, http)
                except BaseException:
                    for path in sorted(system.log_dir.glob("*.log")):
                        print(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
                    raise


def check_archived(event: dict[str, Any], meta_bytes: bytes, call_id: str, archive: Path) -> None:
    """The archived file is Meta's, byte for byte and by hash, beside its metadata, under the archive."""
    data = Path(event["path"]).read_bytes()
    assert data == meta_bytes
    assert base64.b64encode(hashlib.sha256(data).digest()).decode() == event["sha256"]
    metadata = json.loads(Path(event["metadata_path"]).read_text())
    assert (metadata["call_id"], metadata["media_id"]) == (call_id, event["media_id"])
    assert Path(event["path"]).parent.is_relative_to(archive)


def recording_channels(path: Path) -> tuple[str, int]:
    with av.open(io.BytesIO(path.read_bytes())) as container:
        stream = container.streams.audio[0]
        assert sum(frame.samples for frame in container.decode(stream)) > 0
        return stream.codec_context.name, stream.codec_context.channels


def leftovers(archive: Path) -> list[Path]:
    return list(archive.rglob(".*.tmp-*"))


async def talk(call: Any, seconds: float = 1.0) -> None:
    await call.wait_state(CallState.ACCEPTED, timeout=WAIT_SECONDS)
    await call.wait_heard(seconds, timeout=WAIT_SECONDS)
    await call.hangup()
    await call.wait_ended(timeout=WAIT_SECONDS)


def statuses(env: Env, action: str, call_id: str) -> list[int]:
    return [r.http_status for r in env.sim.journal.graph_requests(action, call_id)]


async def test_a_username_only_caller_reaches_the_app_with_their_user_id(env: Env) -> None:
    call = await env.sim.place_call(from_="", name="Ana", user_id=UID, username="@ana.calls")
    answered = await env.events.wait(call.call_id, "call.answered")
    assert (answered["user"], answered["user_id"], answered["username"]) == ("", UID, "@ana.calls")
    assert answered["caller_id"] == UID
    assert (answered["recording"], answered["transcription"]) == (True, True)
    await talk(call)
    ended = await env.events.wait(call.call_id, "call.ended")
    assert ended["user_id"] == UID
    # the opt-in went with accept, never with pre_accept (the simulator refuses it there, as Meta does)
    assert statuses(env, "pre_accept", call.call_id) == [200]
    assert statuses(env, "accept", call.call_id) == [200]
    assert call.capture is not None
    assert call.capture.recording
    assert call.capture.transcription
    assert call.capture.purpose == "quality assurance"
    await env.events.wait(call.call_id, "call.recording.ready")  # its media: leave nothing for the next test


async def test_recorded_call_is_archived_verified_and_announced_once_despite_duplicates(env: Env) -> None:
    env.sim.platform = PlatformSettings(media_copies=2, transcript_first=True)
    duplicates_before = await env.metric("callhook_media_ready_total", outcome="duplicate")
    call = await env.sim.place_call(from_="15550001234", name="Bo")
    await talk(call, seconds=2.0)
    recording = await env.events.wait(call.call_id, "call.recording.ready")
    transcript = await env.events.wait(call.call_id, "call.transcript.ready")
    # each webhook came twice: the second copy of each was judged a duplicate, then nothing more was published
    await poll(
        lambda: env.metric("callhook_media_ready_total", outcome="duplicate"),
        lambda value: value >= duplicates_before + 2,
    )
    await env.flush_events()
    assert env.events.count(call.call_id, "call.recording.ready") == 1
    assert env.events.count(call.call_id, "call.transcript.ready") == 1

    for event, mime in ((recording, "audio/ogg; codecs=opus"), (transcript, "application/json")):
        assert event["archived"] is True
        assert event["sha256_verified"] is True
        assert event["mime_type"] == mime
        check_archived(event, env.sim.media.media[event["media_id"]].data, call.call_id, env.archive)
    assert recording_channels(Path(recording["path"])) == ("opus", 2)
    segments = transcript["transcript"]["segments"]
    assert [s["speaker"] for s in segments[:2]] == ["Business", "Customer"]
    assert all(s["end"] > s["start"] for s in segments)
    assert not leftovers(env.archive)  # nothing half-written left behind


async def test_a_media_url_expired_before_the_download_is_refreshed_by_media_id(env: Env) -> None:
    env.sim.platform = PlatformSettings(webhook_url_lifetime_seconds=0.0)
    refreshes_before = await env.metric("callhook_archive_url_refreshes_total", kind="recording")
    call = await env.sim.place_call(from_="15550001235", name="Cy")
    await talk(call)
    recording = await env.events.wait(call.call_id, "call.recording.ready")
    assert recording["archived"] is True
    assert recording["url_refreshed"] is True
    served = [ok for media_id, ok in env.sim.media.downloads if media_id == recording["media_id"]]
    assert served == [False, True]  # the webhook's URL was refused, the fresh one served
    assert env.sim.journal.graph_requests("media")  # GET /<MEDIA_ID> was asked for a fresh URL
    after = await env.metric("callhook_archive_url_refreshes_total", kind="recording")
    assert after >= refreshes_before + 1
    await env.events.wait(call.call_id, "call.transcript.ready")


async def test_a_dial_by_user_id_with_its_own_opt_in_is_placed_and_recorded(env: Env) -> None:
    env.sim.platform = PlatformSettings()
    request_id = await env.dial(
        to="",
        recipient=UID,
        permission="check",
        recording=Consent("ENABLED", "order follow-up", "pt"),
        transcription=Consent("DISABLED"),
    )
    answered = await env.events.wait(request_id, "call.answered")
    assert answered["user_id"] == UID
    call = env.sim.call(answered["call_id"])
    assert (call.user.wa_id, call.user.user_id) == ("", UID)
    assert call.capture is not None
    assert (call.capture.recording, call.capture.transcription) == (True, False)
    assert call.capture.language == "pt"
    permission_lookups = [r for r in env.sim.journal.graph_requests("call_permissions") if r.to == UID]
    assert permission_lookups
    await call.wait_heard(1.0, timeout=WAIT_SECONDS)
    await call.hangup()
    ready = await env.events.wait(call.call_id, "call.recording.ready")
    assert ready["archived"] is True


async def test_a_dial_past_the_daily_call_limit_is_refused_early_with_the_reason(env: Env) -> None:
    user = "15550009999"
    env.sim.set_permission(user, "temporary")
    for _ in range(100):  # Meta's 100 connected business-initiated calls per user per 24 h
        env.sim.permissions.record_connected_call(PNID, user, time.time())
    connects = len(env.sim.journal.graph_requests("connect"))
    request_id = await env.dial(to=user, permission="check")
    ended = await env.events.wait(request_id, "call.ended")
    assert ended["outcome"] == "call_limit"
    assert "100/100 calls per PT24H" in ended["reason"]
    assert len(env.sim.journal.graph_requests("connect")) == connects  # refused before any connect


async def test_a_calling_restriction_is_counted_and_published(env: Env) -> None:
    before = await env.metric(
        "callhook_account_restrictions_total", restriction_type="RESTRICTED_BUSINESS_INITIATED_CALLING"
    )
    await env.sim.restrict_account()
    await poll(
        lambda: env.metric(
            "callhook_account_restrictions_total", restriction_type="RESTRICTED_BUSINESS_INITIATED_CALLING"
        ),
        lambda value: value == before + 1,
    )
