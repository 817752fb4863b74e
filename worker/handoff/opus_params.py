"""The agent's answer asks the browser for what the caller's leg asks for: Opus receive limits carried over.

When the relay forwards Opus, the browser's packets go to Meta as they are. Meta's description says what it
wants to receive (``maxplaybackrate=16000``, ``maxaveragebitrate=20000``); a browser answered with aiortc's
plain Opus parameters would encode fullband at its default ~32 kb/s. These are RFC 7587 receiver preferences
that libwebrtc's encoder reads, so writing the caller leg's values into the answer to the browser asks the
browser to encode what Meta asked for. Pure: text in, text out.
"""

from __future__ import annotations

from worker import sdp

CARRIED = ("maxplaybackrate", "maxaveragebitrate")


def _params(text: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in text.split(";") if "=" in item)
    return {key.strip().lower(): value.strip() for key, value in pairs}


def _opus_payload_type(media: sdp.MediaFacts) -> int | None:
    return next((c.payload_type for c in media.codecs if c.name.lower() == "opus"), None)


def opus_limits(description: str) -> dict[str, str]:
    """The :data:`CARRIED` Opus parameters of ``description``'s first audio section."""
    try:
        facts = sdp.read_facts(description)
    except ValueError:
        return {}
    for media in facts.audio[:1]:
        payload_type = _opus_payload_type(media)
        fmtp = media.fmtp_of(payload_type) if payload_type is not None else None
        if fmtp:
            params = _params(fmtp)
            return {key: params[key] for key in CARRIED if key in params}
    return {}


def carry_opus_limits(answer: str, limits: dict[str, str]) -> str:
    """``answer`` with ``limits`` set on its Opus ``a=fmtp`` line (added after the rtpmap when missing)."""
    if not limits:
        return answer
    facts = sdp.read_facts(answer)
    payload_type = next((pt for m in facts.audio[:1] if (pt := _opus_payload_type(m)) is not None), None)
    if payload_type is None:
        return answer
    newline = "\r\n" if "\r\n" in answer else "\n"
    lines = answer.split(newline)
    fmtp_prefix, rtpmap_prefix = f"a=fmtp:{payload_type} ", f"a=rtpmap:{payload_type} "
    for n, line in enumerate(lines):
        if line.startswith(fmtp_prefix):
            params = _params(line[len(fmtp_prefix) :]) | limits
            lines[n] = fmtp_prefix + ";".join(f"{k}={v}" for k, v in params.items())
            return newline.join(lines)
    for n, line in enumerate(lines):
        if line.startswith(rtpmap_prefix):
            lines.insert(n + 1, fmtp_prefix + ";".join(f"{k}={v}" for k, v in limits.items()))
            return newline.join(lines)
    return answer
