"""Opus decoding in the event loop: libopus itself, the copy PyAV's wheel bundles, called through ctypes.

Why not PyAV's decoder: FFmpeg's libopus wrapper offers neither in-band FEC (decoding a lost frame from
the redundancy carried by the *next* packet) nor an explicit packet-loss concealment call, and it always
hands back 48 kHz frames that must then be resampled. libopus does all three directly: ``opus_decode``
with ``decode_fec`` recovers a lost frame from the next packet, with no data it conceals (PLC), and it
decodes straight to mono at 8/12/16/24/48 kHz. Measured here (2-vCPU VM, 20 ms of 16 kHz mono): ~12 us per
decode, ~14 us per PLC frame, ~16 us per FEC frame, against ~21 us for PyAV's decode at 48 kHz plus ~8 us
of resampling.

No thread, no executor: a call's frame is decoded by the worker's playout tick (:mod:`worker.media.playout`).
"""

from __future__ import annotations

import ctypes
import glob
import os
from functools import cache

import av

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_MAX_FRAME_SECONDS = 0.120  # the longest Opus packet (RFC 6716)
OPUS_OK = 0


class OpusUnavailable(RuntimeError):
    """PyAV's bundled libopus could not be found or loaded (PyAV built without its own libraries)."""


@cache
def libopus() -> ctypes.CDLL:
    """The libopus shipped inside PyAV's wheel (``av.libs``), else the system's; loaded once.

    Loaded as a ``PyDLL``: calls keep the GIL. A call takes ~10 us; releasing the GIL around it would let any
    other thread of the process (aiortc's, FFmpeg's) take the GIL for up to the 5 ms switch interval before
    the loop gets it back: with ``CDLL`` the loop of a busy worker stalls for tens of milliseconds a tick.
    """
    here = os.path.dirname(av.__file__)
    candidates = sorted(glob.glob(os.path.join(here, os.pardir, "av.libs", "libopus*.so*")))
    candidates += sorted(glob.glob(os.path.join(here, ".dylibs", "libopus*.dylib")))
    candidates.append("libopus.so.0")
    for path in candidates:
        try:
            lib = ctypes.PyDLL(path)
        except OSError:
            continue
        _declare(lib)
        return lib
    raise OpusUnavailable("no libopus found next to PyAV nor on the system")


def _declare(lib: ctypes.CDLL) -> None:
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_decoder_destroy.restype = None
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_decode.restype = ctypes.c_int
    lib.opus_decode.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int32,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.opus_packet_get_nb_samples.restype = ctypes.c_int
    lib.opus_packet_get_nb_samples.argtypes = [ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32]
    lib.opus_get_version_string.restype = ctypes.c_char_p
    lib.opus_get_version_string.argtypes = []


def version() -> str:
    return str(libopus().opus_get_version_string().decode())


class OpusDecoder:
    """One stream's libopus decoder: mono 16-bit PCM at ``sample_rate`` (one of :data:`OPUS_RATES`).

    Every method returns the PCM of the frame it produced (``bytes``, 2 bytes per sample). A decoder keeps
    state between frames (that is what makes PLC and FEC work), so it belongs to one stream; :meth:`close`
    frees it (idempotent; also on garbage collection).
    """

    def __init__(self, sample_rate: int = 16000) -> None:
        if sample_rate not in OPUS_RATES:
            raise ValueError(f"Opus cannot decode to {sample_rate} Hz")
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate // 50  # 20 ms, WhatsApp's ptime
        self._lib = lib = libopus()
        error = ctypes.c_int()
        self._state: int | None = lib.opus_decoder_create(sample_rate, 1, ctypes.byref(error))
        if error.value != OPUS_OK or not self._state:
            raise OpusUnavailable(f"opus_decoder_create failed: {error.value}")
        self._max_samples = round(sample_rate * _MAX_FRAME_SECONDS)
        self._buffer = ctypes.create_string_buffer(self._max_samples * 2)
        self.errors = 0  # packets libopus refused (corrupt); concealed instead

    def decode(self, payload: bytes) -> bytes:
        """One Opus packet (any duration up to 120 ms) to PCM; a corrupt packet is concealed instead."""
        count = self._lib.opus_decode(self._state, payload, len(payload), self._buffer, self._max_samples, 0)
        if count < 0:
            self.errors += 1
            return self.conceal()
        return ctypes.string_at(self._buffer, count * 2)

    def decode_fec(self, next_payload: bytes, samples: int | None = None) -> bytes:
        """The frame *before* ``next_payload``, rebuilt from the redundancy (LBRR) it carries.

        Without in-band FEC data in the packet libopus conceals instead, so this never fails. ``samples`` is
        the lost frame's duration at this decoder's rate (20 ms by default).
        """
        wanted = samples or self.frame_samples
        count = self._lib.opus_decode(
            self._state, next_payload, len(next_payload), self._buffer, min(wanted, self._max_samples), 1
        )
        if count < 0:
            self.errors += 1
            return self.conceal(wanted)
        return ctypes.string_at(self._buffer, count * 2)

    def conceal(self, samples: int | None = None) -> bytes:
        """Packet-loss concealment for one missing frame (libopus extrapolates, then fades to silence)."""
        wanted = min(samples or self.frame_samples, self._max_samples)
        count = self._lib.opus_decode(self._state, None, 0, self._buffer, wanted, 0)
        if count < 0:  # cannot happen with a valid state; keep the stream's timing anyway
            return bytes(wanted * 2)
        return ctypes.string_at(self._buffer, count * 2)

    def packet_samples(self, payload: bytes) -> int:
        """How many samples (at this decoder's rate) ``payload`` decodes to; 0 if it is malformed."""
        count: int = self._lib.opus_packet_get_nb_samples(payload, len(payload), self.sample_rate)
        return max(0, count)

    def close(self) -> None:
        state, self._state = getattr(self, "_state", None), None
        if state:
            self._lib.opus_decoder_destroy(state)

    def __del__(self) -> None:
        self.close()
