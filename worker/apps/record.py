"""``record:<directory>``: the caller's audio to ``<directory>/<call id>.wav`` (16 kHz mono), one per call.

The business side stays silent (the media session sends silence while nothing is queued). The file is
written as ``<name>.wav.part`` and renamed when the call ends, so a finished ``.wav`` is always complete.
File I/O runs on one thread per recording, in order, so a write still running when the app is cancelled
finishes before the file is closed; writes are batched to one a second.
"""

from __future__ import annotations

import asyncio
import os
import re
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from worker import audio
from worker.apps.api import Call

SAMPLE_RATE = 16000
FLUSH_BYTES = audio.frame_bytes(SAMPLE_RATE, 1.0)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def file_name(call_id: str) -> str:
    """A file name from a call id: Meta's ids are base64-like and may hold "/", "+" or "="."""
    return _UNSAFE.sub("_", call_id).lstrip(".") or "call"


class _WavFile:
    def __init__(self, final: Path) -> None:
        self.final = final
        self.partial = final.with_name(final.name + ".part")
        self._writer: wave.Wave_write | None = None

    def open(self) -> None:
        writer = wave.open(str(self.partial), "wb")  # noqa: SIM115  # kept open until finish()
        writer.setnchannels(1)
        writer.setsampwidth(audio.SAMPLE_WIDTH_BYTES)
        writer.setframerate(SAMPLE_RATE)
        self._writer = writer

    def write(self, pcm: bytes) -> None:
        if self._writer is not None:
            self._writer.writeframes(pcm)

    def finish(self, pcm: bytes) -> None:
        if self._writer is None:
            return
        self._writer.writeframes(pcm)
        self._writer.close()
        self._writer = None
        os.replace(self.partial, self.final)


async def record(call: Call, directory: Path) -> None:
    wav = _WavFile(directory / f"{file_name(call.info.call_id)}.wav")
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="record") as files:
        await loop.run_in_executor(files, wav.open)
        pending = bytearray()
        try:
            async for pcm in call.frames(SAMPLE_RATE):
                pending += pcm
                if len(pending) >= FLUSH_BYTES:
                    chunk = bytes(pending)
                    pending.clear()
                    await loop.run_in_executor(files, wav.write, chunk)
        finally:
            # Runs after any write still in flight (one thread, in order), even when the app was cancelled.
            await asyncio.wrap_future(files.submit(wav.finish, bytes(pending)))
