"""The answer to the agent's browser carries the caller leg's Opus receive limits (handoff/opus_params.py)."""

from __future__ import annotations

from tests.unit.test_sdp import AIORTC_ANSWER, META_OFFER
from worker import sdp
from worker.handoff.opus_params import carry_opus_limits, opus_limits


def opus_fmtp(description: str) -> str | None:
    audio = sdp.read_facts(description).audio[0]
    opus = next(c for c in audio.codecs if c.name == "opus")
    return audio.fmtp_of(opus.payload_type)


def test_metas_limits_are_read_from_its_offer() -> None:
    assert opus_limits(META_OFFER) == {"maxplaybackrate": "16000", "maxaveragebitrate": "20000"}
    assert opus_limits("not sdp") == {}


def test_the_limits_are_merged_into_the_answers_opus_fmtp() -> None:
    answer = sdp.prepare_answer(AIORTC_ANSWER, META_OFFER)
    before = opus_fmtp(answer) or ""
    carried = carry_opus_limits(answer, {"maxplaybackrate": "16000", "maxaveragebitrate": "20000"})
    after = opus_fmtp(carried)
    assert after is not None
    assert "maxplaybackrate=16000" in after
    assert "maxaveragebitrate=20000" in after
    for param in filter(None, before.split(";")):  # what the answer said stays
        assert param.strip() in after
    assert sdp.answer_problems(carried) == ()
    assert len(sdp.lines_of(carried)) == len(sdp.lines_of(answer)) + (0 if before else 1)
    assert sdp.read_facts(carried).crlf


def test_no_limits_leave_the_answer_alone() -> None:
    answer = sdp.prepare_answer(AIORTC_ANSWER, META_OFFER)
    assert carry_opus_limits(answer, {}) == answer
