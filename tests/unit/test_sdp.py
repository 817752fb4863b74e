"""SDP edits and facts on real-looking SDPs: aiortc's own output and a Meta-like offer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from worker import sdp

# Produced by aiortc 1.16 (createAnswer + setLocalDescription) answering an aiortc offer, host candidates
# restricted to 127.0.0.1: what MediaSession starts from before editing.
AIORTC_ANSWER = (
    "v=0\r\no=- 4004281036 4004281036 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "a=msid-semantic:WMS *\r\nm=audio 51340 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=sendrecv\r\n"
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=mid:0\r\n"
    "a=msid:56e3cb9e-5655-4295-909a-90d505826eeb 0526c283-042f-40ff-9286-b6a8fad6c855\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\na=rtcp-mux\r\n"
    "a=ssrc:1851657214 cname:de48f49e-47a8-4e86-a3f6-c484dfec9b2a\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "a=candidate:16572de626da4e5384a0ce2d0d93678a 1 udp 2130706431 127.0.0.1 51340 typ host\r\n"
    "a=end-of-candidates\r\na=ice-ufrag:Y7r8\r\na=ice-pwd:5V3D1PPerX9NsdR0fymI0x\r\n"
    "a=fingerprint:sha-256 FD:AB:F9:43:37:5A:C2:4A:54:05:F1:06:67:92:36:AB:AE:65:59:8F:FB:FE:FE:A0:2D:6D:"
    "74:5B:B7:92:D8:82\r\n"
    "a=fingerprint:sha-384 60:D4:31:8B:63:AF:E4:6E:C3:82:C8:29:29:E3:57:81:36:BE:4C:D8:94:B4:E5:07:25:DC:"
    "17:77:97:6C:7B:96:E3:FA:3B:46:3B:05:BB:E7:94:EA:4E:E9:3F:F1:47:B1\r\n"
    "a=fingerprint:sha-512 18:1E:70:31:55:0F:91:20:66:6A:10:AB:1D:5E:B1:5F:6B:17:34:B8:F5:77:86:96:44:D0:"
    "5C:CC:71:AD:D4:EB:51:64:FC:ED:D9:92:33:8F:35:D3:4F:E9:5A:84:CD:0E:20:3D:75:5F:42:75:DC:38:B2:CE:DB:F2:3C:1F:FF:A2\r\n"
    "a=setup:passive\r\n"
)

# Shaped like Meta's offers: ICE-lite, actpass, one sha-256 fingerprint, Opus 111 + telephone-event 126,
# one IPv4 and one IPv6 host candidate, CRLF.
META_OFFER = (
    "v=0\r\no=- 1733396543 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE audio\r\n"
    "a=msid-semantic: WMS 3c2e3f5a\r\na=ice-lite\r\n"
    "m=audio 3480 UDP/TLS/RTP/SAVPF 111 126\r\nc=IN IP4 157.240.19.130\r\na=rtcp:9 IN IP4 0.0.0.0\r\n"
    "a=candidate:1 1 udp 2122260223 157.240.19.130 3480 typ host generation 0 network-cost 50\r\n"
    "a=candidate:2 1 udp 2122262783 2a03:2880:f23d:c5:face:b00c:0:699c 3480 typ host generation 0\r\n"
    "a=ice-ufrag:Kk6c\r\na=ice-pwd:gv0Ojm8GY1kg3Ml9g2ruKD\r\na=ice-options:trickle\r\n"
    "a=fingerprint:sha-256 8A:77:3C:1B:B9:4E:5E:AF:22:51:0C:3B:95:1E:0A:93:B0:E5:7C:55:23:DF:A6:7F:37:11:"
    "2B:BE:4E:28:65:2F\r\n"
    "a=setup:actpass\r\na=mid:audio\r\na=sendrecv\r\na=msid:3c2e3f5a audio0\r\na=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\n"
    "a=fmtp:111 minptime=10;useinbandfec=1;maxaveragebitrate=20000;maxplaybackrate=16000\r\n"
    "a=rtpmap:126 telephone-event/8000\r\na=ssrc:2743542133 cname:WhatsAppAudioStream\r\n"
)


def test_answer_keeps_only_sha256_and_becomes_active_with_crlf() -> None:
    answer = sdp.prepare_answer(AIORTC_ANSWER.replace("\r\n", "\n"), META_OFFER)
    facts = sdp.read_facts(answer)
    assert facts.fingerprint_algorithms == {"sha-256"}
    assert facts.setups() == {"active"}
    assert facts.crlf
    assert sdp.answer_problems(answer) == ()
    # Nothing else was lost: same lines minus two fingerprints plus telephone-event, setup rewritten in place.
    assert len(sdp.lines_of(answer)) == len(sdp.lines_of(AIORTC_ANSWER)) - 2 + 1
    assert "a=fingerprint:sha-256 FD:AB:F9" in answer


def test_answer_to_metas_offer_keeps_telephone_event_with_metas_payload_type() -> None:
    answer = sdp.prepare_answer(AIORTC_ANSWER, META_OFFER)
    audio = sdp.read_facts(answer).audio[0]
    assert audio.payload_types == (111, 126)
    assert audio.codecs == (sdp.Codec(111, "opus", 48000, 2), sdp.Codec(126, "telephone-event", 8000, 1))
    assert "m=audio 51340 UDP/TLS/RTP/SAVPF 111 126\r\n" in answer
    assert "a=rtpmap:111 opus/48000/2\r\na=rtpmap:126 telephone-event/8000\r\na=candidate:" in answer
    assert sdp.telephone_event_payload_type(answer) == 126
    assert sdp.answer_problems(answer) == ()  # WhatsApp's other rules still hold


def test_answer_to_the_offer_in_metas_documentation_keeps_126() -> None:
    # The connect webhook of Meta's documentation (tests/corpus/connect_real_sdp.json), its offer verbatim.
    body = json.loads((Path(__file__).parents[1] / "corpus" / "connect_real_sdp.json").read_bytes())
    offer = body["entry"][0]["changes"][0]["value"]["calls"][0]["session"]["sdp"]
    assert "a=rtpmap:126 telephone-event/8000\r\n" in offer
    answer = sdp.prepare_answer(AIORTC_ANSWER, offer)
    assert sdp.telephone_event_payload_type(answer) == 126
    assert sdp.read_facts(answer).audio[0].payload_types == (111, 126)
    assert sdp.answer_problems(answer) == ()


def test_answer_uses_whatever_payload_type_and_events_the_offer_gives() -> None:
    offer = META_OFFER.replace("111 126\r\n", "111 101\r\n").replace(
        "a=rtpmap:126 telephone-event/8000\r\n", "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"
    )
    answer = sdp.prepare_answer(AIORTC_ANSWER, offer)
    assert sdp.telephone_event_payload_type(answer) == 101
    assert sdp.read_facts(answer).audio[0].fmtp_of(101) == "0-15"


def test_answer_has_no_telephone_event_when_none_was_offered() -> None:
    offer = META_OFFER.replace(" 111 126\r\n", " 111\r\n").replace(
        "a=rtpmap:126 telephone-event/8000\r\n", ""
    )
    answer = sdp.prepare_answer(AIORTC_ANSWER, offer)
    assert sdp.telephone_event_payload_type(answer) is None
    assert sdp.read_facts(answer).audio[0].payload_types == (111,)


def test_telephone_event_at_another_clock_rate_is_not_kept() -> None:
    offer = META_OFFER.replace("telephone-event/8000", "telephone-event/48000")
    assert sdp.telephone_event_payload_type(sdp.prepare_answer(AIORTC_ANSWER, offer)) is None


def test_telephone_event_is_added_once() -> None:
    once = sdp.prepare_answer(AIORTC_ANSWER, META_OFFER)
    assert sdp.prepare_answer(once, META_OFFER) == once


def test_outgoing_offer_offers_telephone_event_126() -> None:
    aiortc_offer = AIORTC_ANSWER.replace("a=setup:passive", "a=setup:actpass")
    offer = sdp.prepare_offer(aiortc_offer)
    audio = sdp.read_facts(offer).audio[0]
    assert audio.payload_types == (111, 126)
    assert audio.telephone_event == sdp.Codec(126, "telephone-event", 8000, 1)
    assert audio.fmtp_of(126) == "0-16"
    taken = aiortc_offer.replace(" 111\r\n", " 111 126\r\n").replace(
        "a=rtpmap:111 opus/48000/2\r\n", "a=rtpmap:111 opus/48000/2\r\na=rtpmap:126 PCMA/8000\r\n"
    )
    assert sdp.telephone_event_payload_type(sdp.prepare_offer(taken)) == 127


def test_setup_is_left_alone_when_offer_is_not_actpass() -> None:
    offer = META_OFFER.replace("a=setup:actpass", "a=setup:active")
    answer = sdp.prepare_answer(AIORTC_ANSWER, offer)
    assert sdp.read_facts(answer).setups() == {"passive"}
    assert "setup must be active" in " ".join(sdp.answer_problems(answer))


def test_unedited_aiortc_answer_is_refused() -> None:
    problems = sdp.answer_problems(AIORTC_ANSWER.replace("\r\n", "\n"))
    text = " ".join(problems)
    assert "sha-256" in text
    assert "setup must be active" in text
    assert "CRLF" in text


def test_offer_edit_keeps_actpass() -> None:
    offer = sdp.prepare_offer(AIORTC_ANSWER.replace("a=setup:passive", "a=setup:actpass"))
    facts = sdp.read_facts(offer)
    assert facts.fingerprint_algorithms == {"sha-256"}
    assert facts.setups() == {"actpass"}


def test_facts_of_meta_offer() -> None:
    facts = sdp.read_facts(META_OFFER)
    assert facts.ice_lite
    assert facts.crlf
    assert len(facts.audio) == 1
    audio = facts.audio[0]
    assert audio.payload_types == (111, 126)
    assert audio.codecs == (
        sdp.Codec(111, "opus", 48000, 2),
        sdp.Codec(126, "telephone-event", 8000, 1),
    )
    assert audio.setup == "actpass"
    assert audio.direction == "sendrecv"
    assert audio.rtcp_mux
    assert audio.connection_address == "157.240.19.130"
    assert audio.candidate_addresses == ("157.240.19.130", "2a03:2880:f23d:c5:face:b00c:0:699c")
    assert facts.fingerprint_algorithms == {"sha-256"}
    assert sdp.offer_problems(META_OFFER) == ()


def test_facts_of_aiortc_answer() -> None:
    facts = sdp.read_facts(AIORTC_ANSWER)
    assert not facts.ice_lite
    assert facts.fingerprint_algorithms == {"sha-256", "sha-384", "sha-512"}
    assert facts.audio[0].candidate_addresses == ("127.0.0.1",)
    assert facts.audio[0].port == 51340


@pytest.mark.parametrize(
    ("offer", "problem"),
    [
        (META_OFFER.replace("a=rtpmap:111 opus/48000/2\r\n", ""), "no Opus"),
        (META_OFFER.replace("a=fingerprint:sha-256", "a=fingerprint:sha-1"), "no sha-256"),
        (META_OFFER + "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n", "one audio section"),
        ("v=0\r\n", "one audio section"),
    ],
)
def test_offer_problems(offer: str, problem: str) -> None:
    assert any(problem in p for p in sdp.offer_problems(offer))


def test_session_level_fingerprint_and_setup_are_edited_too() -> None:
    text = (
        "v=0\na=fingerprint:SHA-1 AA:BB\na=fingerprint:sha-256 CC:DD\na=setup:passive\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\na=rtpmap:111 opus/48000/2\n"
    )
    edited = sdp.prepare_answer(text, META_OFFER)
    facts = sdp.read_facts(edited)
    assert facts.session_fingerprints == (("sha-256", "CC:DD"),)
    assert facts.session_setup == "active"
    assert sdp.answer_problems(edited) == ()


def test_garbage_lines_do_not_raise() -> None:
    facts = sdp.read_facts(
        "m=\r\na=rtpmap:x\r\na=rtpmap:96 opus\r\na=fingerprint:\r\nc=IN\r\na=candidate:1\r\n"
    )
    assert facts.media[0].kind == ""
    assert facts.media[0].codecs == ()


def test_force_setup_rejects_unknown_role() -> None:
    with pytest.raises(ValueError, match="setup role"):
        sdp.force_setup(META_OFFER, "client")


def test_sdp_module_stays_pure() -> None:
    code = (
        "import sys, worker.sdp; "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('aiortc', 'av', 'aiohttp', 'asyncio')]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    # S603: runs this interpreter on a constant snippet, in a fresh process so earlier imports do not count.
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
