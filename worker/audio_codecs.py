"""G.711 µ-law, the telephone codec of Twilio Media Streams, as numpy table lookups built by FFmpeg.

The two tables come from libavcodec's own ``pcm_mulaw`` codec (through PyAV), run once at import over
every possible input: all 65,536 16-bit samples for the encoder, all 256 codes for the decoder. Converting a
frame is then one vectorised lookup, with no Python loop over samples and no codec object to keep per call,
and the results are FFmpeg's bit for bit (the unit tests check the tables against the codec on real audio).

µ-law is stateless, so any chunk size works and chunks can be converted independently.
"""

from __future__ import annotations

from fractions import Fraction
from typing import cast

import av
import numpy as np

MULAW_SAMPLE_RATE = 8000  # what Twilio Media Streams carry, both ways


def _codec_frame(samples: np.ndarray[tuple[int], np.dtype[np.int16]]) -> av.AudioFrame:
    frame = av.AudioFrame(format="s16", layout="mono", samples=samples.size)
    frame.planes[0].update(samples.astype("<i2").tobytes())
    frame.sample_rate = MULAW_SAMPLE_RATE
    frame.pts = 0
    return frame


def _encode_table() -> np.ndarray[tuple[int], np.dtype[np.uint8]]:
    """``table[sample viewed as uint16]`` is the µ-law code of that sample."""
    codec = av.CodecContext.create("pcm_mulaw", "w")
    codec.sample_rate = MULAW_SAMPLE_RATE
    codec.layout = "mono"
    codec.format = "s16"
    codec.time_base = Fraction(1, MULAW_SAMPLE_RATE)
    every_sample = np.arange(65536, dtype=np.uint16).view(np.int16)
    codes = b"".join(bytes(p) for p in codec.encode(_codec_frame(every_sample)))
    codes += b"".join(bytes(p) for p in codec.encode(None))
    if len(codes) != 65536:
        raise RuntimeError(f"pcm_mulaw encoded 65536 samples into {len(codes)} bytes")
    return np.frombuffer(codes, dtype=np.uint8).copy()


def _decode_table() -> np.ndarray[tuple[int], np.dtype[np.int16]]:
    """``table[code]`` is the 16-bit sample µ-law ``code`` stands for."""
    codec = av.CodecContext.create("pcm_mulaw", "r")
    codec.sample_rate = MULAW_SAMPLE_RATE
    codec.layout = "mono"
    frames = codec.decode(av.Packet(bytes(range(256))))
    pcm = b"".join(bytes(memoryview(f.planes[0])[: f.samples * 2]) for f in frames)
    if len(pcm) != 512:
        raise RuntimeError(f"pcm_mulaw decoded 256 codes into {len(pcm)} bytes")
    return np.frombuffer(pcm, dtype="<i2").copy()


_ENCODE = _encode_table()
_DECODE = _decode_table()


def pcm_to_mulaw(pcm: bytes | bytearray | memoryview) -> bytes:
    """Mono 16-bit little-endian PCM to µ-law, one byte per sample (a trailing odd byte is ignored)."""
    samples = np.frombuffer(pcm, dtype="<u2", count=len(pcm) // 2)
    return cast(bytes, _ENCODE[samples].tobytes())


def mulaw_to_pcm(codes: bytes | bytearray | memoryview) -> bytes:
    """µ-law bytes to mono 16-bit little-endian PCM, two bytes per code."""
    return _DECODE[np.frombuffer(codes, dtype=np.uint8)].astype("<i2", copy=False).tobytes()
