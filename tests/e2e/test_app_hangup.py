"""The app ends the call: a worker running ``play:<wav>`` plays the file to the caller, then hangs up.

Its own deployment (ingress, one worker whose ``CALLHOOK_APP`` is ``play:`` a generated WAV, the simulator),
because an app is a worker-wide setting and every call must reach that worker.
"""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from simulator.calls import CallState
from simulator.signal import ANALYSIS_RATE
from tests.e2e.harness import WAIT_SECONDS, Deployment, deploy

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

TONE_HZ = 1000.0
TONE_SECONDS = 1.0
WAV_RATE = 16_000


def write_tone(path: Path) -> Path:
    t = np.arange(round(TONE_SECONDS * WAV_RATE)) / WAV_RATE
    pcm = np.round(0.3 * 32767 * np.sin(2 * np.pi * TONE_HZ * t)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(WAV_RATE)
        out.writeframes(pcm.tobytes())
    return path


def dominant_hz(samples: np.ndarray) -> float:
    """The strongest frequency in what was heard (16 kHz float samples; silence adds nothing)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * ANALYSIS_RATE / len(samples))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dep(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    wav = write_tone(tmp_path_factory.mktemp("wav") / "tone.wav")
    logs = tmp_path_factory.mktemp("app-logs")
    async with deploy(amqp_url, logs, workers=1, worker_env={"CALLHOOK_APP": f"play:{wav}"}) as deployment:
        yield deployment


async def test_play_app_plays_the_file_then_hangs_up_through_the_graph_api(dep: Deployment) -> None:
    [call] = await dep.place_calls(1)

    assert await call.wait_ended(timeout=WAIT_SECONDS) is CallState.COMPLETED

    assert call.end_reason == "business_hangup"  # the business's terminate ended it, not the phone
    terminates = dep.sim.journal.graph_requests("terminate", call.call_id)
    assert [r.http_status for r in terminates] == [200]
    assert [r.http_status for r in dep.sim.journal.graph_requests("accept", call.call_id)] == [200]
    heard = call.phone.recording().heard
    assert len(heard) / ANALYSIS_RATE >= 0.8 * TONE_SECONDS, "the caller heard (nearly) the whole file"
    assert abs(dominant_hz(heard) - TONE_HZ) < 20.0
    [worker] = dep.workers
    completed = await dep.wait_values(
        "callhook_calls_total", lambda now: now == [1.0], [worker], outcome="completed"
    )
    assert completed == [1.0]
    [ended] = dep.log_records(call.call_id, msg="call ended")
    assert ended["reason"] == "app hung up"
