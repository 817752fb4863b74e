"""libopus in the loop (worker/media/codec.py): decode, in-band FEC and concealment, at the app's rate."""

from __future__ import annotations

from fractions import Fraction

import av
import pytest

from worker import audio
from worker.media.codec import OPUS_RATES, OpusDecoder, version


def opus_packets(tone_hz: float, seconds: float, *, fec: bool = False) -> list[bytes]:
    """A tone encoded the way a phone would (16 kHz mono voip); with ``fec`` each packet carries LBRR."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 16000
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = 32000
    codec.time_base = Fraction(1, 16000)
    options = {"application": "voip"}
    if fec:
        options |= {"fec": "1", "packet_loss": "20"}
    codec.options = options
    pcm = audio.tone(tone_hz, seconds, 16000)
    step = audio.frame_bytes(16000)
    out = []
    for index, start in enumerate(range(0, len(pcm) - step + 1, step)):
        frame = audio.pcm_frame(pcm[start : start + step], 16000)
        frame.pts = index * (step // 2)
        out += [bytes(p) for p in codec.encode(frame)]
    return out


def test_the_bundled_libopus_is_loaded() -> None:
    assert version().startswith("libopus")


@pytest.mark.parametrize("rate", OPUS_RATES)
def test_decodes_straight_to_the_apps_rate(rate: int) -> None:
    decoder = OpusDecoder(rate)
    pcm = b"".join(decoder.decode(p) for p in opus_packets(440.0, 0.5))
    assert len(pcm) == 25 * audio.frame_bytes(rate)  # 20 ms per packet, mono 16-bit
    tail = pcm[-audio.frame_bytes(rate, 0.2) :]
    assert abs(audio.dominant_frequency(tail, rate) - 440.0) < 20
    assert decoder.errors == 0
    decoder.close()
    decoder.close()  # idempotent


def test_fec_rebuilds_a_lost_frame_from_the_next_packet() -> None:
    packets = opus_packets(440.0, 1.0, fec=True)
    decoder = OpusDecoder(16000)
    for packet in packets[:30]:
        decoder.decode(packet)
    # packets[30] is lost; packets[31] carries its redundancy.
    rebuilt = decoder.decode_fec(packets[31])
    assert len(rebuilt) == audio.frame_bytes(16000)
    assert abs(audio.dominant_frequency(rebuilt, 16000) - 440.0) < 30
    assert audio.level_dbfs(rebuilt) > -20  # audio, not a faded-out concealment
    assert len(decoder.decode(packets[31])) == audio.frame_bytes(16000)


def test_concealment_keeps_time_and_fades_out() -> None:
    decoder = OpusDecoder(16000)
    for packet in opus_packets(440.0, 0.6):
        decoder.decode(packet)
    concealed = [decoder.conceal() for _ in range(30)]
    assert all(len(frame) == audio.frame_bytes(16000) for frame in concealed)
    assert audio.level_dbfs(concealed[0]) > audio.level_dbfs(concealed[-1])  # extrapolates, then fades
    assert len(decoder.conceal(640)) == 1280  # a 40 ms gap at 16 kHz


def test_a_corrupt_packet_is_concealed_and_counted() -> None:
    decoder = OpusDecoder(16000)
    for packet in opus_packets(440.0, 0.2):
        decoder.decode(packet)
    assert len(decoder.decode(b"\xff\xff\xff")) == audio.frame_bytes(16000)
    assert decoder.errors == 1
    assert decoder.packet_samples(opus_packets(440.0, 0.04)[0]) == 320


def test_refuses_rates_opus_cannot_produce() -> None:
    with pytest.raises(ValueError, match="44100"):
        OpusDecoder(44100)
