"""An incoming call's app decides from the caller, in its prepare step, whether Meta records the call.

Its own module, so its own virtual host: the worker here runs tests/support/capture_app.py over a worker-wide
default of no recording, and must be the only worker that can claim these calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from simulator.config import SimulatorConfig
from simulator.sim import Simulator
from tests.e2e.test_platform import UID, talk
from tests.support.system import ACCESS_TOKEN, APP_SECRET, System, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deciding(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Simulator]:
    """A worker whose app decides per caller (tests/support/capture_app.py), over a worker default of none."""
    graph_port = free_port()
    system = System(
        amqp_url=amqp_url,
        graph_url=f"http://127.0.0.1:{graph_port}",
        log_dir=tmp_path_factory.mktemp("deciding-logs"),
        workers=1,
        worker_env={"CALLHOOK_APP": "tests.support.capture_app:app", "CALLHOOK_DRAIN_TIMEOUT_SECONDS": "5"},
    )
    config = SimulatorConfig(
        app_secret=APP_SECRET, access_token=ACCESS_TOKEN, ice_host_addresses=("127.0.0.1",)
    )
    async with system, Simulator(config, ingress_url=system.webhook_url, graph_port=graph_port) as sim:
        yield sim


async def test_an_app_decides_from_the_caller_whether_meta_records(deciding: Simulator) -> None:
    brazil = await deciding.place_call(from_="5511987654321", name="Rui")
    other = await deciding.place_call(from_="", name="Ana", user_id=UID)
    for call in (brazil, other):
        await talk(call)
    assert brazil.capture is not None
    assert (brazil.capture.recording, brazil.capture.transcription, brazil.capture.language) == (
        True,
        True,
        "pt",
    )
    assert other.capture is None  # nothing sent: neither recorded nor transcribed
    for call in (brazil, other):
        assert [r.http_status for r in deciding.journal.graph_requests("pre_accept", call.call_id)] == [200]
