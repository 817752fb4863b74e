"""A scripted agent of the console: what a person in a browser does, as an aiortc peer (demo, bench, tests).

It signs in on ``callhook console``'s WebSocket with a token exactly as the page does, follows the board,
takes a call by sending a complete offer (aiortc gathers its candidates before the offer is set), plays a
steady tone as its "voice" and keeps what it hears with each frame's arrival time, so a test can tell it
heard the caller and a bench can time the relay (:meth:`ScriptedAgent.recording` lines up with the phone's
sent frames like the phone's own echo recording).
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import aiohttp
import numpy as np
import numpy.typing as npt
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from simulator.errors import SimulatorError
from simulator.signal import FRAME_SECONDS, SEND_RATE, Recording, downsample_48k_to_16k

SAMPLES = round(SEND_RATE * FRAME_SECONDS)


class TakeRefused(SimulatorError):
    """The call's owner (or the console) refused the take: ``reason`` says why (taken, gone, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"take refused: {reason}")
        self.reason = reason


class ToneTrack(MediaStreamTrack):
    """A microphone that says one steady tone, paced in real time."""

    kind = "audio"

    def __init__(self, frequency_hz: float) -> None:
        super().__init__()
        self._hz = frequency_hz
        self._sample = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._sample / SEND_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # a microphone's pace
        t = (self._sample + np.arange(SAMPLES)) / SEND_RATE
        pcm = (0.25 * 32767 * np.sin(2 * np.pi * self._hz * t)).astype(np.int16).reshape(1, -1)
        frame = AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = SEND_RATE
        frame.pts = self._sample
        frame.time_base = fractions.Fraction(1, SEND_RATE)
        self._sample += SAMPLES
        return frame


class ScriptedAgent:
    """``async with ScriptedAgent(console_url, token) as agent:`` then :meth:`wait_for_call`, :meth:`take`."""

    def __init__(self, console_url: str, token: str, *, tone_hz: float = 1750.0) -> None:
        self._url = console_url.rstrip("/")
        self._token = token
        self._tone_hz = tone_hz
        self.board: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pc: RTCPeerConnection | None = None
        self._listening: asyncio.Task[None] | None = None
        self.call_id: str | None = None
        self.heard: list[npt.NDArray[np.int16]] = []  # 16 kHz mono, per frame
        self.heard_times: list[float] = []

    async def __aenter__(self) -> Self:
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(f"{self._url}/ws")
        await self._ws.send_json({"type": "hello", "token": self._token})
        self._reader = asyncio.get_running_loop().create_task(self._read(self._ws))
        await self._wait(lambda: any(r["type"] == "welcome" for r in self.replies))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._pc is not None:
            await self._pc.close()
        for task in (self._reader, self._listening):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = message.json()
            async with self._changed:
                if data["type"] == "board":
                    self.board = data["calls"]
                else:
                    self.replies.append(data)
                self._changed.notify_all()

    async def _wait(self, reached: Callable[[], bool], timeout_seconds: float = 20.0) -> None:
        async with asyncio.timeout(timeout_seconds), self._changed:
            await self._changed.wait_for(reached)

    async def wait_for_call(self, call_id: str | None = None) -> dict[str, Any]:
        """The board's entry of ``call_id`` (or the oldest waiting call) once it is there."""

        def found() -> dict[str, Any] | None:
            return next((c for c in self.board if call_id is None or c["call_id"] == call_id), None)

        await self._wait(lambda: found() is not None)
        entry = found()
        assert entry is not None
        return entry

    async def wait_gone(self, call_id: str) -> None:
        await self._wait(lambda: all(c["call_id"] != call_id for c in self.board))

    async def take(self, call_id: str) -> None:
        """Take the call and connect the audio; :class:`TakeRefused` if the owner says no."""
        assert self._ws is not None
        pc = self._pc = RTCPeerConnection()
        pc.addTrack(ToneTrack(self._tone_hz))
        pc.on("track", lambda track: self._listen(track))
        await pc.setLocalDescription(await pc.createOffer())
        seen = len(self.replies)
        await self._ws.send_json({"type": "take", "call_id": call_id, "sdp": pc.localDescription.sdp})

        def replied() -> bool:
            return any(r["type"] in ("answer", "refused") for r in self.replies[seen:])

        await self._wait(replied)
        reply = next(r for r in self.replies[seen:] if r["type"] in ("answer", "refused"))
        if reply["type"] == "refused":
            raise TakeRefused(reply["reason"])
        self.call_id = call_id
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))

    def _listen(self, track: MediaStreamTrack) -> None:
        self._listening = asyncio.get_running_loop().create_task(self._record(track))

    async def _record(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            assert isinstance(frame, AudioFrame)
            channels = len(frame.layout.channels)
            pcm = frame.to_ndarray().reshape(-1, channels).mean(axis=1)
            self.heard.append(np.round(downsample_48k_to_16k(pcm)).astype(np.int16))
            self.heard_times.append(now)

    def dominant_frequency(self, seconds: float = 0.4) -> float:
        """What the agent hears right now: the strongest frequency of its last ``seconds`` (0: silence)."""
        frames = max(1, int(seconds / FRAME_SECONDS))
        if len(self.heard) < frames:
            return 0.0
        tail = np.concatenate(self.heard[-frames:]).astype(np.float64) / 32768.0
        if float(np.sqrt(np.mean(tail**2))) < 0.01:
            return 0.0
        spectrum = np.abs(np.fft.rfft(tail * np.hanning(len(tail))))
        return float(np.fft.rfftfreq(len(tail), 1 / 16000)[int(np.argmax(spectrum))])

    def recording(self, sent_times: npt.NDArray[np.float64]) -> Recording:
        """What the agent heard, lined up with the caller's sent frames (``Phone.recording().sent_times``)."""
        heard = np.concatenate(self.heard) if self.heard else np.zeros(0, dtype=np.int16)
        return Recording(
            sent_times=sent_times,
            heard=(heard / 32768.0).astype(np.float32),
            heard_ends=np.cumsum([len(c) for c in self.heard], dtype=np.int64),
            heard_times=np.asarray(self.heard_times, dtype=np.float64),
        )

    async def hang_up(self) -> None:
        assert self._ws is not None
        if self.call_id is not None:
            await self._ws.send_json({"type": "hangup", "call_id": self.call_id})

    async def wait_ended(self) -> str:
        """The reason the console gave when the call ended."""
        await self._wait(lambda: any(r["type"] == "ended" for r in self.replies))
        return str(next(r for r in self.replies if r["type"] == "ended")["reason"])
