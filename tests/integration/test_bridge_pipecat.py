"""Twilio compatibility against a consumer nobody here wrote: Pipecat's Twilio Media Streams code.

Pipecat (pipecat-ai, a dev dependency) ships ``TwilioFrameSerializer``, which its bots use to talk to Twilio,
and ``parse_telephony_websocket``, which its runner uses to recognise a Twilio stream from the first messages.
Both directions run over a real call: the phone, a ``MediaSession``, the bridge on a ``MediaCall``, a real
WebSocket. What the bridge sends is fed to Pipecat verbatim; what Pipecat serializes is sent to the bridge
verbatim.

Warnings: Pipecat imports the standard library's ``audioop`` (deprecated in Python 3.11-3.12), whose
``DeprecationWarning`` is the one warning ignored, and only around that import (pytest turns warnings into
errors). Pipecat also logs through loguru at import and when building a pipeline; that goes to stderr.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from callhook.ice import restrict_host_addresses
from tests.integration.test_bridge import (
    INFO,
    PHONE_RATE,
    bridge_of,
    phone_call,
    running,
    tone_seconds,
    wait_phone_quiet,
)
from tests.support.dtmf_packets import press
from tests.support.voice_agent import VoiceAgent
from worker import audio
from worker.media.keypad import Keypad

PIPELINE_RATE = 16000  # the bot's own audio rate; Twilio's side is 8 kHz µ-law


@pytest.fixture(autouse=True, scope="module")
def _loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])


@pytest.fixture(scope="module")
def pipecat() -> SimpleNamespace:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'audioop' is deprecated", category=DeprecationWarning)
        from pipecat.audio.dtmf.types import KeypadEntry
        from pipecat.clocks.system_clock import SystemClock
        from pipecat.frames.frames import (
            InputAudioRawFrame,
            InputDTMFFrame,
            InterruptionFrame,
            OutputAudioRawFrame,
        )
        from pipecat.pipeline.pipeline import Pipeline
        from pipecat.pipeline.worker import PipelineWorker
        from pipecat.processors.frame_processor import FrameProcessorSetup
        from pipecat.runner.utils import parse_telephony_websocket
        from pipecat.serializers.twilio import TwilioFrameSerializer
        from pipecat.utils.asyncio.task_manager import TaskManager
    return SimpleNamespace(
        SystemClock=SystemClock,
        InputAudioRawFrame=InputAudioRawFrame,
        InputDTMFFrame=InputDTMFFrame,
        KeypadEntry=KeypadEntry,
        InterruptionFrame=InterruptionFrame,
        OutputAudioRawFrame=OutputAudioRawFrame,
        Pipeline=Pipeline,
        PipelineWorker=PipelineWorker,
        FrameProcessorSetup=FrameProcessorSetup,
        parse_telephony_websocket=parse_telephony_websocket,
        TwilioFrameSerializer=TwilioFrameSerializer,
        TaskManager=TaskManager,
    )


async def serializer_for(pipecat: SimpleNamespace, stream_sid: str) -> Any:
    """A TwilioFrameSerializer set up as a pipeline sets it up (auto hang-up would need Twilio's REST API)."""
    serializer = pipecat.TwilioFrameSerializer(
        stream_sid,
        call_sid=INFO.call_id,
        params=pipecat.TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )
    setup = pipecat.FrameProcessorSetup(
        clock=pipecat.SystemClock(),
        task_manager=pipecat.TaskManager(),
        pipeline_worker=pipecat.PipelineWorker(pipecat.Pipeline([])),
        audio_in_sample_rate=PIPELINE_RATE,
    )
    await serializer.setup(setup)
    return serializer


class RecordedSocket:
    """What ``parse_telephony_websocket`` reads (a Starlette WebSocket's ``iter_text``), from a recording."""

    def __init__(self, texts: list[str]) -> None:
        self._texts = texts

    async def iter_text(self) -> AsyncIterator[str]:
        for text in self._texts:
            yield text


async def test_pipecat_reads_the_bridges_stream(pipecat: SimpleNamespace) -> None:
    async with VoiceAgent("twilio") as agent, phone_call(tone_hz=440.0) as pc:
        async with running(bridge_of(agent)(pc.call)):
            session = await agent.next_session()
            await session.wait_heard(440.0)
            await session.wait_for(lambda: len(session.texts) > 60)  # over a second of the caller
        texts = list(session.texts)

    transport, call_data = await pipecat.parse_telephony_websocket(RecordedSocket(texts))
    assert transport == "twilio"
    assert call_data.stream_id == session.stream_sid
    assert call_data.call_id == INFO.call_id
    assert call_data.body["direction"] == "incoming"
    assert call_data.body["user_name"] == "Ada"
    assert (call_data.from_number, call_data.to_number) == (INFO.user_number, INFO.business_number)

    serializer = await serializer_for(pipecat, call_data.stream_id)
    decoded = bytearray()
    for text in texts[2:]:
        frame = await serializer.deserialize(text)
        if frame is None:
            continue  # the resampler's start-up latency
        assert isinstance(frame, pipecat.InputAudioRawFrame)
        assert (frame.sample_rate, frame.num_channels) == (PIPELINE_RATE, 1)
        decoded += frame.audio
    assert audio.duration_seconds(decoded, PIPELINE_RATE) > 1.0
    last_second = decoded[-audio.frame_bytes(PIPELINE_RATE, 1.0) :]
    assert audio.dominant_frequency(last_second, PIPELINE_RATE) == pytest.approx(440, abs=10)


async def test_pipecat_reads_the_callers_key_presses(pipecat: SimpleNamespace) -> None:
    keypad = Keypad()
    async with VoiceAgent("twilio") as agent, phone_call(tone_hz=440.0, keypad=keypad) as pc:
        async with running(bridge_of(agent)(pc.call)):
            session = await agent.next_session()
            await session.wait_heard(440.0)
            now = asyncio.get_running_loop().time()
            for n, code in enumerate((1, 11, 10, 0)):  # 1 # * 0
                for packet in press(code, 8000 * (n + 1), at=now):
                    keypad.feed(packet)
            await session.wait_for(lambda: len(session.digits()) == 4)
        texts = list(session.texts)

    serializer = await serializer_for(pipecat, session.stream_sid)
    frames = [await serializer.deserialize(text) for text in texts if '"dtmf"' in text]
    assert all(isinstance(frame, pipecat.InputDTMFFrame) for frame in frames)
    entry = pipecat.KeypadEntry
    assert [frame.button for frame in frames] == [entry.ONE, entry.POUND, entry.STAR, entry.ZERO]


async def test_the_bridge_plays_and_clears_what_pipecat_sends(pipecat: SimpleNamespace) -> None:
    async with (
        VoiceAgent("twilio") as agent,
        phone_call(tone_hz=None) as pc,
        running(bridge_of(agent)(pc.call)) as app,
    ):
        session = await agent.next_session()
        await session.wait_for(lambda: bool(session.stream_sid))
        serializer = await serializer_for(pipecat, session.stream_sid)

        # A bot's TTS: 6 s of 900 Hz at the pipeline's rate, in 20 ms frames, sent as fast as made.
        tone = audio.tone(900.0, 6.0, PIPELINE_RATE)
        step = audio.frame_bytes(PIPELINE_RATE)
        for start in range(0, len(tone), step):
            frame = pipecat.OutputAudioRawFrame(
                audio=tone[start : start + step], sample_rate=PIPELINE_RATE, num_channels=1
            )
            message = await serializer.serialize(frame)
            if message is not None:
                await session.ws.send_str(message)
        await pc.phone.wait_heard(900.0)

        # The caller barges in: the bot's pipeline emits an InterruptionFrame.
        clear = await serializer.serialize(pipecat.InterruptionFrame())
        assert clear is not None
        await session.ws.send_str(clear)
        await wait_phone_quiet(pc.phone)
        assert 0.2 < tone_seconds(pc.phone.heard, PHONE_RATE, 900.0) < 4.0  # of 6 s sent
        assert not app.done()
