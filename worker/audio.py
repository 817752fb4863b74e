"""PCM helpers: 16-bit signed little-endian mono audio as ``bytes``, the currency of the call's app.

Sample-rate conversion goes through PyAV's resampler (libswresample, in C); levels and tones through numpy.
Nothing here loops over samples in Python: a worker runs dozens of calls at 50 frames per second each.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import av
import numpy as np

SAMPLE_WIDTH_BYTES = 2
FRAME_SECONDS = 0.020  # WhatsApp's ptime: one RTP packet of Opus per 20 ms


def frame_samples(sample_rate: int, seconds: float = FRAME_SECONDS) -> int:
    return round(sample_rate * seconds)


def frame_bytes(sample_rate: int, seconds: float = FRAME_SECONDS) -> int:
    return frame_samples(sample_rate, seconds) * SAMPLE_WIDTH_BYTES


def silence(sample_rate: int, seconds: float = FRAME_SECONDS) -> bytes:
    return bytes(frame_bytes(sample_rate, seconds))


def duration_seconds(pcm_or_size: bytes | bytearray | int, sample_rate: int) -> float:
    size = pcm_or_size if isinstance(pcm_or_size, int) else len(pcm_or_size)
    return size / (SAMPLE_WIDTH_BYTES * sample_rate)


def frame_pcm(frame: av.AudioFrame) -> bytes:
    """The samples of a packed s16 frame (a plane's buffer may be padded past the last sample)."""
    used = frame.samples * SAMPLE_WIDTH_BYTES * len(frame.layout.channels)
    return bytes(memoryview(frame.planes[0])[:used])


def pcm_frame(pcm: bytes | bytearray, sample_rate: int) -> av.AudioFrame:
    """A mono s16 frame holding ``pcm``."""
    frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // SAMPLE_WIDTH_BYTES)
    frame.planes[0].update(bytes(pcm))
    frame.sample_rate = sample_rate
    return frame


class Resampler:
    """Converts a stream of audio to mono s16 PCM at ``rate``. Stateful: one per stream."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        self._primed = False

    def frame(self, frame: av.AudioFrame) -> bytes:
        """Any decoded frame (aiortc gives 48 kHz stereo) to mono PCM at ``rate``."""
        if frame.sample_rate == self.rate and frame.format.name == "s16" and frame.layout.name == "mono":
            return frame_pcm(frame)
        out = b"".join(frame_pcm(o) for o in self._resampler.resample(frame))
        return self._prime(out, frame.samples, frame.sample_rate)

    def pcm(self, pcm: bytes | bytearray, sample_rate: int) -> bytes:
        """Mono PCM at ``sample_rate`` to mono PCM at ``rate``."""
        if sample_rate == self.rate or not pcm:
            return bytes(pcm)
        out = b"".join(frame_pcm(o) for o in self._resampler.resample(pcm_frame(pcm, sample_rate)))
        return self._prime(out, len(pcm) // 2, sample_rate)

    def _prime(self, out: bytes, samples_in: int, rate_in: int) -> bytes:
        """The resampler holds back its filter delay (~16 samples) from its first output. Left as is, every
        later 20 ms cut would wait for the next frame: ~19 ms of added latency for the whole call. Leading
        silence of the same length keeps the stream aligned to the input's frames."""
        if self._primed:
            return out
        self._primed = True
        missing = samples_in * self.rate // rate_in - len(out) // 2
        return bytes(2 * missing) + out if missing > 0 else out


class Chunker:
    """Cuts a byte stream into chunks of exactly ``size`` bytes (resamplers emit uneven frames)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        if not self._pending and len(data) == self.size:
            return [data]  # the steady state: no copy
        self._pending += data
        count = len(self._pending) // self.size
        if count == 0:
            return []
        cut = count * self.size
        chunks = [bytes(self._pending[i : i + self.size]) for i in range(0, cut, self.size)]
        del self._pending[:cut]
        return chunks


def samples_of(pcm: bytes | bytearray) -> np.ndarray[tuple[int], np.dtype[np.int16]]:
    return np.frombuffer(pcm, dtype="<i2")


def level_dbfs(pcm: bytes | bytearray) -> float:
    """RMS level relative to full scale; -inf for digital silence or no samples."""
    samples = samples_of(pcm).astype(np.float64)
    if samples.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(samples * samples)))
    return 20.0 * float(np.log10(rms / 32768.0)) if rms > 0 else float("-inf")


def tone(frequency_hz: float, seconds: float, sample_rate: int, amplitude: float = 0.3) -> bytes:
    """A sine wave as mono PCM (test signals, prompts)."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    wave = amplitude * 32767.0 * np.sin(2.0 * np.pi * frequency_hz * t)
    return wave.astype("<i2").tobytes()


def dominant_frequency(pcm: bytes | bytearray, sample_rate: int) -> float:
    """The frequency with the most energy (Hz), by FFT; 0.0 for no samples."""
    samples = samples_of(pcm).astype(np.float64)
    if samples.size == 0:
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    spectrum[0] = 0.0
    return float(np.fft.rfftfreq(samples.size, 1.0 / sample_rate)[int(np.argmax(spectrum))])


OPUS_CLOCK_RATE = 48000  # RTP timestamps of Opus always count at 48 kHz, whatever the input rate
_OPUS_TIME_BASE = Fraction(1, OPUS_CLOCK_RATE)
# Consecutive digital-silence frames after which the last silence packet is sent again instead of encoding:
# the encoder's state has settled by then, and an idle call then costs no encoding at all.
_SILENCE_SETTLE_FRAMES = 5


class OpusEncoder:
    """Mono PCM frames of 20 ms to Opus packets stamped for RTP, with the settings WhatsApp asks for.

    aiortc's own encoder is fixed at 48 kHz stereo 96 kb/s, computes an audio level in Python and encodes in a
    thread pool (aiortc-notes.md, traps 4 and 8). Handing aiortc ready packets skips all three: its sender
    then only packetizes. Meta's offer caps Opus near 16 kHz audio and ~20 kb/s, so a 16 kHz mono voip
    encoder at 24 kb/s loses nothing the phone would play.
    """

    def __init__(self, sample_rate: int = 16000, bitrate: int = 24000, complexity: int = 1) -> None:
        if sample_rate not in (8000, 12000, 16000, 24000, 48000):
            raise ValueError(f"Opus cannot encode at {sample_rate} Hz")
        self.sample_rate = sample_rate
        self.frame_bytes = frame_bytes(sample_rate)
        self._silence = bytes(self.frame_bytes)
        self._rtp_step = frame_samples(OPUS_CLOCK_RATE)
        codec = av.CodecContext.create("libopus", "w")
        codec.sample_rate = sample_rate
        codec.layout = "mono"
        codec.format = "s16"
        codec.bit_rate = bitrate
        codec.time_base = Fraction(1, sample_rate)
        codec.thread_count = 1
        codec.options = {"application": "voip", "compression_level": str(complexity), "fec": "1"}
        self._codec = codec
        self._pts = 0
        self._rtp_timestamp = 0
        self._silent_run = 0
        self._last_silence: bytes | None = None

    def encode(self, pcm: bytes) -> av.Packet[Any]:
        """One 20 ms frame (exactly :attr:`frame_bytes`) to one packet with ``pts`` in RTP units."""
        if pcm == self._silence:
            payload = self._encode_silence()
        else:
            self._silent_run = 0
            payload = self._encode(pcm)
        packet = av.Packet(payload)
        packet.pts = self._rtp_timestamp
        packet.time_base = _OPUS_TIME_BASE
        self._rtp_timestamp += self._rtp_step
        return packet

    def _encode_silence(self) -> bytes:
        self._silent_run += 1
        if self._silent_run > _SILENCE_SETTLE_FRAMES and self._last_silence is not None:
            return self._last_silence
        self._last_silence = self._encode(self._silence)
        return self._last_silence

    def _encode(self, pcm: bytes) -> bytes:
        frame = pcm_frame(pcm, self.sample_rate)
        frame.pts = self._pts
        self._pts += len(pcm) // SAMPLE_WIDTH_BYTES
        packets = self._codec.encode(frame)
        # libopus returns exactly one packet per 20 ms frame; join defensively rather than drop audio.
        return b"".join(bytes(p) for p in packets)
