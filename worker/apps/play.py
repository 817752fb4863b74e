"""``play:<path>``: play a WAV file to the caller, wait until it has been heard, then hang up.

The file is read half a second at a time in a worker thread (file I/O stays off the event loop) and handed
to ``call.send`` at its own rate; ``send`` waits while a couple of seconds are queued, so memory stays flat
whatever the file's length. 16-bit PCM WAV, mono or stereo (mixed down), any sample rate.
"""

from __future__ import annotations

import asyncio
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.apps.api import Call

CHUNK_SECONDS = 0.5


class UnplayableFile(ValueError):
    """Not a WAV file play can use; the message says why."""


@dataclass(frozen=True, slots=True)
class WavFormat:
    sample_rate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def open_wav(path: Path) -> tuple[wave.Wave_read, WavFormat]:
    """Open ``path`` for reading and check it is 16-bit PCM, mono or stereo (blocking: call in a thread)."""
    try:
        reader = wave.open(str(path), "rb")  # noqa: SIM115  # returned open; the caller closes it
    except (OSError, EOFError, wave.Error) as exc:
        raise UnplayableFile(f"{path}: not a readable WAV file ({exc})") from exc
    fmt = WavFormat(reader.getframerate(), reader.getnchannels(), reader.getnframes())
    problem = None
    if reader.getsampwidth() != 2:
        problem = f"{8 * reader.getsampwidth()}-bit samples (16-bit PCM needed)"
    elif fmt.channels not in (1, 2):
        problem = f"{fmt.channels} channels (mono or stereo needed)"
    if problem is not None:
        reader.close()
        raise UnplayableFile(f"{path}: {problem}")
    return reader, fmt


def check_wav(path: Path) -> WavFormat:
    reader, fmt = open_wav(path)
    reader.close()
    return fmt


def to_mono(pcm: bytes, channels: int) -> bytes:
    if channels == 1:
        return pcm
    stereo = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels).astype(np.int32)
    return bytes((stereo.sum(axis=1) // channels).astype("<i2").tobytes())


async def play(call: Call, path: Path) -> None:
    reader, fmt = await asyncio.to_thread(open_wav, path)
    try:
        chunk_frames = max(1, round(fmt.sample_rate * CHUNK_SECONDS))
        while chunk := await asyncio.to_thread(reader.readframes, chunk_frames):
            await call.send(to_mono(chunk, fmt.channels), fmt.sample_rate)
    finally:
        reader.close()
    await call.wait_played()
    await call.hangup()
