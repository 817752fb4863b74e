"""The simulator's SDP rules refuse what Meta refuses, and its edits produce what Meta's side sends."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from simulator import sdp
from simulator.errors import MetaError

# aiortc 1.16's offer and answer, as produced on this machine (loopback candidates).
AIORTC_OFFER = (
    "v=0\r\no=- 4004281243 4004281243 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "a=msid-semantic:WMS *\r\nm=audio 51609 UDP/TLS/RTP/SAVPF 96 9 0 8\r\nc=IN IP4 127.0.0.1\r\n"
    "a=sendrecv\r\na=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
    "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=mid:0\r\n"
    "a=msid:66222920-3c2c-45cc-904c-16a926bef72e 114e87d0-07fc-4312-bcdb-b536ee8ce79e\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\na=rtcp-mux\r\n"
    "a=ssrc:2103750784 cname:d51cab8d-3342-4115-a86e-330f1ad0de4a\r\n"
    "a=rtpmap:96 opus/48000/2\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=candidate:16572de626da4e5384a0ce2d0d93678a 1 udp 2130706431 127.0.0.1 51609 typ host\r\n"
    "a=end-of-candidates\r\na=ice-ufrag:ghw4\r\na=ice-pwd:QZJuzDtoY6vemksgWj9vuJ\r\n"
    "a=fingerprint:sha-256 B7:5D:18:78:5A:21:F1:97:56:54:13:32:D2:BA:30:42:0A:2A:97:86:2E:C1:08:32:AE:AD"
    ":14:38:95:AA:4A:E9\r\n"
    "a=fingerprint:sha-384 0F:32:53:83:0E:E2:35:DC:DF:13:F4:A0:E3:E0:56:D5:D5:3A:13:71:83:57:72:47:70:5A"
    ":C5:94:4B:17:D7:B4:39:F7:7F:27:82:81:3D:0A:8D:B5:7B:66:47:06:60:CD\r\n"
    "a=fingerprint:sha-512 3E:F2:66:DF:E4:49:08:6E\r\n"
    "a=setup:actpass\r\n"
)
AIORTC_ANSWER = AIORTC_OFFER.replace("a=setup:actpass", "a=setup:active").replace("51609", "45154")


def _problem(text: str, role: sdp.Role) -> str:
    with pytest.raises(MetaError) as caught:
        sdp.validate(text, role=role)
    assert caught.value.code == 100
    assert caught.value.http_status == 400
    assert caught.value.details is not None
    return caught.value.details


def test_a_business_answer_made_from_aiortc_passes_meta_validation() -> None:
    answer = sdp.business_answer(AIORTC_ANSWER)
    sdp.validate(answer, role="answer")
    assert answer.count("a=fingerprint:") == 1
    assert "a=fingerprint:sha-256 " in answer


def test_aiortc_answer_as_is_is_refused_for_its_extra_fingerprints() -> None:
    assert "Fingerprint algo is not SHA256" in _problem(AIORTC_ANSWER, "answer")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s.replace("\r\n", "\n"), "CRLF"),
        (lambda s: s.replace("a=setup:active", "a=setup:actpass"), "a=setup:active"),
        (lambda s: s.replace("a=setup:active\r\n", ""), "a=setup:active"),
        (lambda s: s + "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\n", "exactly one media section"),
        (lambda s: s.replace("m=audio", "m=video"), "must be audio"),
        (lambda s: s.replace("opus/48000/2", "telephone-event/8000"), "Opus"),
        (lambda s: s.replace("a=fingerprint:sha-256", "a=fingerprint:sha-1"), "SHA256"),
        (lambda s: s.replace("a=ice-ufrag:ghw4\r\n", ""), "ICE credentials"),
        (
            lambda s: "\r\n".join(line for line in s.split("\r\n") if not line.startswith("a=fingerprint")),
            "DTLS",
        ),
        (lambda s: "", "missing"),
    ],
)
def test_each_answer_rule_is_enforced(edit: Callable[[str], str], expected: str) -> None:
    valid = sdp.business_answer(AIORTC_ANSWER)
    assert expected in _problem(edit(valid), "answer")


def test_offers_need_a_setup_attribute_but_any_role() -> None:
    offer = sdp.business_offer(AIORTC_OFFER)
    sdp.validate(offer, role="offer")
    sdp.validate(offer.replace("a=setup:actpass", "a=setup:passive"), role="offer")
    assert "a=setup" in _problem(offer.replace("a=setup:actpass\r\n", ""), "offer")


def test_meta_offer_looks_like_meta() -> None:
    offer = sdp.meta_offer(AIORTC_OFFER)
    lines = offer.split("\r\n")
    assert offer.endswith("\r\n")
    assert "\n" not in offer.replace("\r\n", "")
    assert lines[lines.index("t=0 0") + 1] == "a=ice-lite"
    assert [line for line in lines if line.startswith("m=")] == ["m=audio 51609 UDP/TLS/RTP/SAVPF 111 126"]
    assert "a=rtpmap:111 opus/48000/2" in lines
    assert f"a=fmtp:111 {sdp.META_OPUS_FMTP}" in lines
    assert "maxplaybackrate=16000" in sdp.META_OPUS_FMTP
    assert "useinbandfec=1" in sdp.META_OPUS_FMTP
    assert "a=rtpmap:126 telephone-event/8000" in lines
    assert not any(
        line.startswith(("a=rtpmap:96", "a=rtpmap:0 ", "a=rtpmap:8 ", "a=rtpmap:9 ")) for line in lines
    )
    assert [line.split(" ")[0] for line in lines if line.startswith("a=fingerprint")] == [
        "a=fingerprint:sha-256"
    ]
    assert "a=setup:actpass" in lines
    assert "a=rtcp-mux" in lines
    assert "a=group:BUNDLE 0" in lines
    sdp.validate(offer, role="offer")


def test_meta_answer_keeps_the_offerers_opus_payload_type_only() -> None:
    answer = sdp.meta_answer(AIORTC_ANSWER)
    lines = answer.split("\r\n")
    assert [line for line in lines if line.startswith("m=")] == ["m=audio 45154 UDP/TLS/RTP/SAVPF 96"]
    assert "a=rtpmap:96 opus/48000/2" in lines
    assert f"a=fmtp:96 {sdp.META_OPUS_FMTP}" in lines
    assert "a=ice-lite" in lines
    sdp.validate(answer, role="answer")


def test_meta_answer_keeps_the_telephone_event_the_business_offered() -> None:
    lines = sdp.meta_answer(AIORTC_ANSWER, dtmf_pt=101).split("\r\n")
    assert [line for line in lines if line.startswith("m=")] == ["m=audio 45154 UDP/TLS/RTP/SAVPF 96 101"]
    assert "a=rtpmap:101 telephone-event/8000" in lines


def test_edits_refuse_sdp_without_opus() -> None:
    without_opus = AIORTC_OFFER.replace("opus/48000/2", "speex/16000")
    with pytest.raises(ValueError, match="Opus"):
        sdp.meta_offer(without_opus)
    with pytest.raises(ValueError, match="Opus"):
        sdp.meta_answer(without_opus)


def test_to_crlf_normalises_lf_input() -> None:
    assert sdp.to_crlf("v=0\no=-\n") == "v=0\r\no=-\r\n"
