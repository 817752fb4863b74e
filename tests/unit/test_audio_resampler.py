"""The resampler keeps a stream aligned to its input: 20 ms in gives 20 ms out, from the first frame on."""

from __future__ import annotations

import av
import numpy as np
import pytest

from worker.audio import Chunker, Resampler, frame_bytes


def stereo_48k_frame() -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 2 * 960), dtype="<i2"), format="s16", layout="stereo")
    frame.sample_rate = 48000
    return frame


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_every_decoded_frame_gives_one_whole_frame_at_once(rate: int) -> None:
    resampler, chunker = Resampler(rate), Chunker(frame_bytes(rate))
    # Without priming, the first output is short by the filter delay and every chunk waits a frame longer.
    assert [len(chunker.feed(resampler.frame(stereo_48k_frame()))) for _ in range(5)] == [1] * 5


def test_pcm_conversion_is_aligned_from_the_first_call() -> None:
    resampler = Resampler(16000)
    assert [len(resampler.pcm(bytes(320), 8000)) for _ in range(3)] == [640] * 3
