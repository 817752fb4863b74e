"""SDP text rules and edits on Meta's side of a call. Pure: no aiortc, no I/O.

Three jobs:

* :func:`validate` refuses what Meta's Graph API refuses (code 100, the reason in ``error_data.details``):
  CRLF line endings, exactly one ``m=audio`` line, Opus offered, ICE credentials, SHA-256 fingerprints only,
  and ``a=setup:active`` in an answer.
* :func:`meta_offer` / :func:`meta_answer` turn what the phone's aiortc peer produced into what Meta's relay
  sends: ICE-lite, Opus as payload type 111 with Meta's 16 kHz fmtp cap, ``126 telephone-event/8000``,
  one SHA-256 fingerprint, CRLF.
* :func:`business_answer` / :func:`business_offer` are the edits a business must make to aiortc's own SDP
  before handing it to Meta (used by the reference business in :mod:`simulator.business`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from simulator.errors import MetaError

OPUS_PT = 111
DTMF_PT = 126
META_OPUS_FMTP = (
    "minptime=10;useinbandfec=1;maxplaybackrate=16000;sprop-maxcapturerate=16000;maxaveragebitrate=20000"
)
_PT_ATTRIBUTE = re.compile(r"^a=(rtpmap|fmtp|rtcp-fb):(\d+)[ ]")
_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([^/]+)/(\d+)(?:/(\d+))?$")

Role = Literal["offer", "answer"]


def split_lines(sdp: str) -> list[str]:
    """The SDP's lines, tolerant of LF-only input, without the trailing empty line."""
    return [line for line in sdp.replace("\r\n", "\n").split("\n") if line]


def join_lines(lines: Iterable[str]) -> str:
    return "".join(f"{line}\r\n" for line in lines)


def to_crlf(sdp: str) -> str:
    return join_lines(split_lines(sdp))


def validate(sdp: object, *, role: Role) -> None:
    """Raise :class:`MetaError` (100) naming the first rule ``sdp`` breaks, as Meta's validator does."""
    problem = first_problem(sdp, role=role)
    if problem is not None:
        raise MetaError(100, f"SDP Validation error: {problem}")


def first_problem(sdp: object, *, role: Role) -> str | None:
    if not isinstance(sdp, str) or not sdp.strip():
        return "SDP is missing"
    if "\n" in sdp.replace("\r\n", "") or not sdp.endswith("\r\n"):
        return "SDP lines must end with CRLF"
    lines = split_lines(sdp)
    if lines[0] != "v=0":
        return "SDP must start with v=0"
    media = [line for line in lines if line.startswith("m=")]
    if len(media) != 1:
        return f"SDP must have exactly one media section, found {len(media)}"
    if not media[0].startswith("m=audio "):
        return "the media section must be audio"
    return _transport_problem(lines, role) or _codec_problem(lines, media[0])


def _transport_problem(lines: list[str], role: Role) -> str | None:
    attributes = _attributes(lines)
    if "ice-ufrag" not in attributes or "ice-pwd" not in attributes:
        return "ICE credentials (ice-ufrag, ice-pwd) are missing"
    fingerprints = attributes.get("fingerprint", [])
    if not fingerprints:
        return "DTLS fingerprint is missing"
    if any(value.split(" ", 1)[0].lower() != "sha-256" for value in fingerprints):
        return "Fingerprint algo is not SHA256"
    setups = attributes.get("setup", [])
    if role == "answer" and setups != ["active"]:
        return "DTLS setup must be 'active' in an answer (a=setup:active)"
    if role == "offer" and (len(setups) != 1 or setups[0] not in ("actpass", "active", "passive")):
        return "DTLS setup attribute (a=setup) is missing or invalid"
    return None


def _codec_problem(lines: list[str], media_line: str) -> str | None:
    formats = media_line.split(" ")[3:]
    opus = opus_payload_type(lines)
    if opus is None or str(opus) not in formats:
        return "Opus codec (opus/48000/2) is not offered"
    return None


def _attributes(lines: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in lines:
        if line.startswith("a="):
            name, _, value = line[2:].partition(":")
            found.setdefault(name, []).append(value)
    return found


def opus_payload_type(sdp: str | list[str]) -> int | None:
    lines = split_lines(sdp) if isinstance(sdp, str) else sdp
    for line in lines:
        match = _RTPMAP.match(line)
        if match and match.group(2).lower() == "opus" and match.group(3) == "48000":
            return int(match.group(1))
    return None


def keep_sha256_fingerprint(lines: list[str]) -> list[str]:
    return [
        line
        for line in lines
        if not line.startswith("a=fingerprint:")
        or line[len("a=fingerprint:") :].lower().startswith("sha-256 ")
    ]


def set_setup(lines: list[str], value: str) -> list[str]:
    return [f"a=setup:{value}" if line.startswith("a=setup:") else line for line in lines]


def add_ice_lite(lines: list[str]) -> list[str]:
    """``a=ice-lite`` as a session attribute (right after ``t=``), once."""
    out: list[str] = []
    for line in lines:
        if line == "a=ice-lite":
            continue
        out.append(line)
        if line.startswith("t="):
            out.append("a=ice-lite")
    return out


def meta_offer(aiortc_offer: str) -> str:
    """The phone's offer as Meta sends it: Opus renumbered to 111 with Meta's fmtp, DTMF 126, ICE-lite."""
    return _meta_audio(aiortc_offer, payload_type=OPUS_PT, dtmf_pt=DTMF_PT)


def meta_answer(aiortc_answer: str, *, dtmf_pt: int | None = None) -> str:
    """The phone's answer to a business offer: only Opus (the offer's payload type) with Meta's fmtp cap, and
    ``telephone-event/8000`` as ``dtmf_pt`` when the business offered it (aiortc's own answer drops it)."""
    return _meta_audio(aiortc_answer, payload_type=None, dtmf_pt=dtmf_pt)


def _meta_audio(sdp: str, *, payload_type: int | None, dtmf_pt: int | None) -> str:
    """Keep Opus only (as ``payload_type``, default its own), with Meta's fmtp; ICE-lite; one fingerprint."""
    lines = split_lines(sdp)
    opus = opus_payload_type(lines)
    if opus is None:
        raise ValueError("the SDP has no Opus codec")
    pt = opus if payload_type is None else payload_type
    formats = [str(pt), str(dtmf_pt)] if dtmf_pt is not None else [str(pt)]
    out: list[str] = []
    for line in lines:
        match = _PT_ATTRIBUTE.match(line)
        if line.startswith("m="):
            out.append(" ".join([*line.split(" ")[:3], *formats]))
        elif match is None:
            out.append(line)
        elif int(match.group(2)) == opus and match.group(1) == "rtpmap":
            out += [f"a=rtpmap:{pt} opus/48000/2", f"a=fmtp:{pt} {META_OPUS_FMTP}"]
            if dtmf_pt is not None:
                out.append(f"a=rtpmap:{dtmf_pt} telephone-event/8000")
        elif int(match.group(2)) == opus and match.group(1) == "rtcp-fb":
            out.append(f"a=rtcp-fb:{pt} {line.split(' ', 1)[1]}")
        # other codecs' lines, and the Opus fmtp Meta's replaces, are dropped
    return join_lines(add_ice_lite(keep_sha256_fingerprint(out)))


def business_answer(aiortc_answer: str) -> str:
    """What a business must do to aiortc's answer before pre_accept/accept: SHA-256 only, setup:active."""
    return join_lines(set_setup(keep_sha256_fingerprint(split_lines(aiortc_answer)), "active"))


def business_offer(aiortc_offer: str) -> str:
    """What a business must do to aiortc's offer before ``connect``: SHA-256 fingerprint only, CRLF."""
    return join_lines(keep_sha256_fingerprint(split_lines(aiortc_offer)))
