"""Edits of SDP text and facts read from it: pure, no aiortc.

WhatsApp is strict where aiortc is generous (whatsapp-calling.md, "Media rules"; aiortc-notes.md, trap 2):

* only ``a=fingerprint:sha-256`` is accepted ("Fingerprint algo is not SHA256"); aiortc also writes
  sha-384 and sha-512 lines, so they are removed from everything we send;
* an answer to Meta's ``a=setup:actpass`` offer must say ``a=setup:active`` (we are the DTLS client);
* lines end with CRLF;
* keypad digits come as RFC 4733 ``telephone-event/8000`` packets (payload type 126 in Meta's offer). aiortc
  knows no telephone-event (aiortc-notes.md, trap 11) and its codec preferences cannot name one, so it
  answers and offers Opus alone; :func:`prepare_answer` and :func:`prepare_offer` add telephone-event back
  in the text, with the payload type the peer offered (126 in our own offer). aiortc itself never learns of
  the payload type: its RTP router drops such packets, and the media's seam reads them before it does.

The reading side (:func:`read_facts`, :func:`offer_problems`, :func:`answer_problems`) lets the session refuse
an offer it cannot answer before spending anything on it, and lets tests assert what went on the wire. Parsing
is line-oriented and lenient: unknown lines are kept as they are, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass

CRLF = "\r\n"
ACCEPTED_FINGERPRINT = "sha-256"
TELEPHONE_EVENT = "telephone-event"
TELEPHONE_EVENT_CLOCK_RATE = 8000
OFFERED_TELEPHONE_EVENT_PT = 126  # what our own offer uses, as Meta's offers do
OFFERED_TELEPHONE_EVENTS = "0-16"  # the keys 0-9 * # A-D and flash


@dataclass(frozen=True, slots=True)
class Codec:
    """One ``a=rtpmap`` entry of a media section."""

    payload_type: int
    name: str  # as written, e.g. "opus", "telephone-event"
    clock_rate: int
    channels: int = 1


@dataclass(frozen=True, slots=True)
class MediaFacts:
    kind: str  # "audio", "video", "application"
    port: int
    payload_types: tuple[int, ...]
    codecs: tuple[Codec, ...]
    direction: str | None  # sendrecv, sendonly, recvonly, inactive; None when not written
    setup: str | None
    fingerprints: tuple[tuple[str, str], ...]  # (algorithm lower case, value)
    connection_address: str | None
    candidate_addresses: tuple[str, ...]
    rtcp_mux: bool
    fmtp: tuple[tuple[int, str], ...] = ()  # (payload type, parameters) of each a=fmtp line

    @property
    def telephone_event(self) -> Codec | None:
        """The ``telephone-event/8000`` codec of this section (the one keypad digits use), if any."""
        return next((c for c in self.codecs if _is_telephone_event(c)), None)

    def fmtp_of(self, payload_type: int) -> str | None:
        return next((params for pt, params in self.fmtp if pt == payload_type), None)


@dataclass(frozen=True, slots=True)
class SdpFacts:
    ice_lite: bool
    session_fingerprints: tuple[tuple[str, str], ...]
    session_setup: str | None
    session_connection_address: str | None
    media: tuple[MediaFacts, ...]
    crlf: bool  # every line ended with CRLF

    @property
    def audio(self) -> tuple[MediaFacts, ...]:
        return tuple(m for m in self.media if m.kind == "audio")

    @property
    def fingerprint_algorithms(self) -> frozenset[str]:
        algorithms = {a for a, _ in self.session_fingerprints}
        for m in self.media:
            algorithms.update(a for a, _ in m.fingerprints)
        return frozenset(algorithms)

    def setups(self) -> frozenset[str]:
        """Every DTLS role written, session-level and per media section."""
        found = {m.setup for m in self.media if m.setup is not None}
        if self.session_setup is not None:
            found.add(self.session_setup)
        return frozenset(found)


# ------------------------------------------------------------------------------------------------- editing
def lines_of(sdp: str) -> list[str]:
    """The lines of ``sdp`` whatever their endings, without the empty tail after the last newline."""
    return [line for line in sdp.replace("\r\n", "\n").replace("\r", "\n").split("\n") if line != ""]


def join_crlf(lines: list[str]) -> str:
    return CRLF.join(lines) + CRLF


def keep_only_sha256(sdp: str) -> str:
    """Drop every ``a=fingerprint`` line whose algorithm is not sha-256 (and normalize to CRLF)."""
    kept = [line for line in lines_of(sdp) if not _is_rejected_fingerprint(line)]
    return join_crlf(kept)


def force_setup(sdp: str, role: str) -> str:
    """Rewrite every ``a=setup:`` line to ``role`` (and normalize to CRLF)."""
    if role not in ("active", "passive", "actpass"):
        raise ValueError(f"not a DTLS setup role: {role!r}")
    return join_crlf([f"a=setup:{role}" if line.startswith("a=setup:") else line for line in lines_of(sdp)])


def prepare_answer(answer_sdp: str, offer_sdp: str) -> str:
    """What goes to Meta in pre_accept/accept: sha-256 only, ``setup:active`` to actpass, CRLF, and
    ``telephone-event/8000`` with the offered payload type when the offer has it."""
    offer = read_facts(offer_sdp)
    edited = keep_only_sha256(answer_sdp)
    if "actpass" in offer.setups():
        edited = force_setup(edited, "active")
    audio = offer.audio[0] if len(offer.audio) == 1 else None
    offered = audio.telephone_event if audio is not None else None
    if audio is not None and offered is not None:
        edited = add_telephone_event(edited, offered.payload_type, audio.fmtp_of(offered.payload_type))
    return edited


def prepare_offer(offer_sdp: str) -> str:
    """What goes to Meta in ``connect``: sha-256 only, CRLF (the offer keeps ``setup:actpass``), and
    ``telephone-event/8000`` (payload type 126 unless aiortc took it) for the callee's keypad."""
    edited = keep_only_sha256(offer_sdp)
    facts = read_facts(edited)
    if len(facts.audio) != 1 or facts.audio[0].telephone_event is not None:
        return edited
    used = set(facts.audio[0].payload_types)
    free = [pt for pt in (OFFERED_TELEPHONE_EVENT_PT, *range(127, 95, -1)) if pt not in used]
    if not free:
        return edited
    return add_telephone_event(edited, free[0], OFFERED_TELEPHONE_EVENTS)


def add_telephone_event(sdp: str, payload_type: int, fmtp: str | None = None) -> str:
    """``sdp`` with ``telephone-event/8000`` as ``payload_type`` in its audio section: listed last on the
    ``m=audio`` line, its ``a=rtpmap`` (and ``a=fmtp`` when given) after the section's last codec line.
    Unchanged when the section already has a telephone-event, or the payload type is taken."""
    lines = lines_of(sdp)
    start = next((i for i, line in enumerate(lines) if line.startswith("m=audio ")), None)
    if start is None:
        return join_crlf(lines)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    section = read_facts(join_crlf(lines[start:end])).audio[0]
    if section.telephone_event is not None or payload_type in section.payload_types:
        return join_crlf(lines)
    added = [f"a=rtpmap:{payload_type} {TELEPHONE_EVENT}/{TELEPHONE_EVENT_CLOCK_RATE}"]
    if fmtp:
        added.append(f"a=fmtp:{payload_type} {fmtp}")
    codec_lines = [i for i in range(start + 1, end) if lines[i].startswith(_CODEC_ATTRIBUTES)]
    at = (codec_lines[-1] + 1) if codec_lines else end
    m_line = f"{lines[start]} {payload_type}"
    return join_crlf([*lines[:start], m_line, *lines[start + 1 : at], *added, *lines[at:]])


def telephone_event_payload_type(sdp: str) -> int | None:
    """The payload type of ``telephone-event/8000`` in the (single) audio section of ``sdp``, if any."""
    facts = read_facts(sdp)
    codec = facts.audio[0].telephone_event if len(facts.audio) == 1 else None
    return codec.payload_type if codec is not None else None


_CODEC_ATTRIBUTES = ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")


def _is_telephone_event(codec: Codec) -> bool:
    return codec.name.lower() == TELEPHONE_EVENT and codec.clock_rate == TELEPHONE_EVENT_CLOCK_RATE


def _is_rejected_fingerprint(line: str) -> bool:
    if not line.startswith("a=fingerprint:"):
        return False
    algorithm = line[len("a=fingerprint:") :].split(" ", 1)[0].strip().lower()
    return algorithm != ACCEPTED_FINGERPRINT


# ------------------------------------------------------------------------------------------------- reading
def read_facts(sdp: str) -> SdpFacts:
    """Facts of an SDP that callhook cares about. Never raises on unusual lines; skips what it cannot read."""
    ice_lite = False
    session_fingerprints: list[tuple[str, str]] = []
    session_setup: str | None = None
    session_connection: str | None = None
    media: list[_MediaBuilder] = []
    for line in lines_of(sdp):
        if line.startswith("m="):
            media.append(_MediaBuilder.from_m_line(line))
            continue
        current = media[-1] if media else None
        if line == "a=ice-lite":
            ice_lite = True
        elif line.startswith("a=fingerprint:"):
            target = current.fingerprints if current else session_fingerprints
            fingerprint = _read_fingerprint(line)
            if fingerprint is not None:
                target.append(fingerprint)
        elif line.startswith("a=setup:"):
            role = line[len("a=setup:") :].strip()
            if current:
                current.setup = role
            else:
                session_setup = role
        elif line.startswith("c="):
            address = _read_connection_address(line)
            if current:
                current.connection_address = address
            else:
                session_connection = address
        elif current is not None:
            current.read_attribute(line)
    return SdpFacts(
        ice_lite=ice_lite,
        session_fingerprints=tuple(session_fingerprints),
        session_setup=session_setup,
        session_connection_address=session_connection,
        media=tuple(m.build() for m in media),
        crlf=_all_crlf(sdp),
    )


def offer_problems(offer_sdp: str) -> tuple[str, ...]:
    """Why an incoming offer cannot be answered (empty when it can): one audio section with Opus, sha-256."""
    facts = read_facts(offer_sdp)
    problems: list[str] = []
    if len(facts.audio) != 1:
        problems.append(f"expected one audio section, found {len(facts.audio)}")
    if facts.audio and not any(c.name.lower() == "opus" for c in facts.audio[0].codecs):
        problems.append("no Opus codec offered")
    if ACCEPTED_FINGERPRINT not in facts.fingerprint_algorithms:
        problems.append("no sha-256 fingerprint")
    return tuple(problems)


def answer_problems(answer_sdp: str) -> tuple[str, ...]:
    """Why Meta would refuse this answer (empty when it would not): the rules of whatsapp-calling.md."""
    facts = read_facts(answer_sdp)
    problems: list[str] = []
    if len(facts.audio) != 1:
        problems.append(f"expected one audio section, found {len(facts.audio)}")
    algorithms = facts.fingerprint_algorithms
    if algorithms != {ACCEPTED_FINGERPRINT}:
        problems.append(f"fingerprint algorithms must be exactly sha-256, found {sorted(algorithms)}")
    if facts.setups() != {"active"}:
        problems.append(f"setup must be active, found {sorted(facts.setups())}")
    if facts.audio and not any(c.name.lower() == "opus" for c in facts.audio[0].codecs):
        problems.append("no Opus codec in the answer")
    if not facts.crlf:
        problems.append("lines must end with CRLF")
    return tuple(problems)


class _MediaBuilder:
    __slots__ = (
        "candidate_addresses",
        "codecs",
        "connection_address",
        "direction",
        "fingerprints",
        "fmtp",
        "kind",
        "payload_types",
        "port",
        "rtcp_mux",
        "setup",
    )

    def __init__(self, kind: str, port: int, payload_types: tuple[int, ...]) -> None:
        self.kind = kind
        self.port = port
        self.payload_types = payload_types
        self.codecs: list[Codec] = []
        self.direction: str | None = None
        self.setup: str | None = None
        self.fingerprints: list[tuple[str, str]] = []
        self.connection_address: str | None = None
        self.candidate_addresses: list[str] = []
        self.rtcp_mux = False
        self.fmtp: list[tuple[int, str]] = []

    @classmethod
    def from_m_line(cls, line: str) -> _MediaBuilder:
        # m=<media> <port> <proto> <fmt> ...
        parts = line[2:].split()
        kind = parts[0] if parts else ""
        port = _int_or(parts[1].split("/")[0], 0) if len(parts) > 1 else 0
        payload_types = tuple(int(p) for p in parts[3:] if p.isdigit())
        return cls(kind, port, payload_types)

    def read_attribute(self, line: str) -> None:
        if line.startswith("a=rtpmap:"):
            codec = _read_rtpmap(line)
            if codec is not None:
                self.codecs.append(codec)
        elif line.startswith("a=fmtp:"):
            head, _, params = line[len("a=fmtp:") :].partition(" ")
            if head.isdigit():
                self.fmtp.append((int(head), params.strip()))
        elif line.startswith("a=candidate:"):
            fields = line.split()
            # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type>
            if len(fields) >= 6:
                self.candidate_addresses.append(fields[4])
        elif line == "a=rtcp-mux":
            self.rtcp_mux = True
        elif line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            self.direction = line[2:]

    def build(self) -> MediaFacts:
        return MediaFacts(
            kind=self.kind,
            port=self.port,
            payload_types=self.payload_types,
            codecs=tuple(self.codecs),
            direction=self.direction,
            setup=self.setup,
            fingerprints=tuple(self.fingerprints),
            connection_address=self.connection_address,
            candidate_addresses=tuple(self.candidate_addresses),
            rtcp_mux=self.rtcp_mux,
            fmtp=tuple(self.fmtp),
        )


def _read_fingerprint(line: str) -> tuple[str, str] | None:
    parts = line[len("a=fingerprint:") :].split()
    if len(parts) != 2:
        return None
    return parts[0].lower(), parts[1]


def _read_rtpmap(line: str) -> Codec | None:
    # a=rtpmap:<payload type> <encoding name>/<clock rate>[/<channels>]
    head, _, encoding = line[len("a=rtpmap:") :].partition(" ")
    pieces = encoding.strip().split("/")
    if not head.isdigit() or len(pieces) < 2 or not pieces[1].isdigit():
        return None
    channels = _int_or(pieces[2], 1) if len(pieces) > 2 else 1
    return Codec(payload_type=int(head), name=pieces[0], clock_rate=int(pieces[1]), channels=channels)


def _read_connection_address(line: str) -> str | None:
    # c=IN IP4 <address>[/ttl]
    parts = line[2:].split()
    return parts[2].split("/")[0] if len(parts) >= 3 else None


def _int_or(text: str, default: int) -> int:
    return int(text) if text.isdigit() else default


def _all_crlf(sdp: str) -> bool:
    if not sdp.endswith(CRLF):
        return False
    body = sdp.replace(CRLF, "")
    return "\n" not in body and "\r" not in body
