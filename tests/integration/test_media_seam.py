"""The seam into aiortc's receiver (worker/media/seam.py): fails loudly when aiortc's internals move.

The first tests check, against the installed aiortc, every private name and signature the seam relies on
(``seam.PRIVATE_API``); the others run the seam over real aiortc media on 127.0.0.1: packets arrive before
aiortc's jitter buffer, no decoder thread starts, aiortc's RTCP statistics stay right, telephone-event packets
are routed apart, and a BYE or a closed transport is reported once.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Iterator

import aiortc
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtpPacket

from callhook.ice import restrict_host_addresses
from tests.fixtures.meta_peer import MetaPhone
from worker.media.seam import PRIVATE_API, MarkerSeam, ReceiveSeam, round_trip_seconds

CONNECT_TIMEOUT = 10.0


@pytest.fixture(autouse=True, scope="module")
def _loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2])


def test_aiortc_is_the_release_the_seam_was_written_for() -> None:
    # Moving past 1.16 means reading aiortc's receiver again and updating seam.py, PRIVATE_API and pyproject.
    assert _version(aiortc.__version__) == (1, 16), aiortc.__version__


def test_the_methods_the_seam_replaces_keep_their_signatures() -> None:
    expected = {
        RTCRtpReceiver.receive: ["self", "parameters"],
        RTCRtpReceiver.stop: ["self"],
        RTCRtpReceiver._handle_rtp_packet: ["self", "packet", "arrival_time_ms"],
        RTCRtpReceiver._handle_rtcp_packet: ["self", "packet"],
        RTCRtpReceiver._handle_disconnect: ["self"],
        RTCRtpReceiver._run_rtcp: ["self"],
        RTCDtlsTransport._register_rtp_receiver: ["self", "receiver", "parameters"],
        RTCDtlsTransport._send_rtp: ["self", "data"],
        StreamStatistics.add: ["self", "packet"],
    }
    for method, parameters in expected.items():
        assert list(inspect.signature(method).parameters) == parameters, method.__qualname__
    assert inspect.iscoroutinefunction(RTCDtlsTransport._send_rtp)
    for name, kind in PRIVATE_API["RTCRtpReceiver"]:
        if kind == "async":
            assert inspect.iscoroutinefunction(getattr(RTCRtpReceiver, name)), name
        elif kind == "method":
            assert callable(getattr(RTCRtpReceiver, name)), name


async def test_the_private_attributes_the_seam_reads_exist() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver("audio")
    try:
        for owner, objects in (
            ("RTCRtpReceiver", transceiver.receiver),
            ("RTCRtpSender", transceiver.sender),
            ("RTCDtlsTransport", transceiver.receiver.transport),
        ):
            for name, _ in PRIVATE_API[owner]:
                assert hasattr(objects, name), f"aiortc {owner} has no {name} any more"
        assert transceiver.receiver._RTCRtpReceiver__decoder_thread is None  # type: ignore[attr-defined]
        assert round_trip_seconds(transceiver.sender) is None
        stats = StreamStatistics(48000)
        stats.add(RtpPacket(payload_type=111, sequence_number=1, timestamp=960))
        for name, _ in PRIVATE_API["StreamStatistics"]:
            assert hasattr(stats, name), f"aiortc StreamStatistics has no {name} any more"
        assert (stats.packets_received, stats.packets_expected, stats.packets_lost) == (1, 1, 0)
    finally:
        await pc.close()


async def test_packets_reach_the_seam_before_aiortcs_jitter_buffer_and_no_decoder_thread_starts() -> None:
    phone = MetaPhone()
    phone.microphone.tone_hz = 440.0
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver("audio", direction="sendrecv")
    transceiver.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/opus"]
    )
    packets: list[tuple[RtpPacket, float]] = []
    arrived = asyncio.Event()
    ended: list[str] = []
    ending = asyncio.Event()

    def on_end() -> None:
        ended.append("end")
        ending.set()

    def on_packet(packet: RtpPacket, arrival: float) -> None:
        packets.append((packet, arrival))
        if len(packets) >= 25:
            arrived.set()

    seam = ReceiveSeam(transceiver.receiver, on_packet, on_end)
    try:
        await pc.setRemoteDescription(aiortc.RTCSessionDescription(sdp=await phone.offer(), type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await phone.accept_answer(pc.localDescription.sdp)
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await arrived.wait()
        assert seam.started
        assert not seam.decoder_thread_started
        # One decoder thread in this process: the phone's (a stock aiortc peer), not ours.
        assert [t.name for t in threading.enumerate() if t.name.endswith("-decoder")] == ["audio-decoder"]
        # Opus as it came off the wire, in order, timestamps 20 ms apart, arrival times on the loop's clock.
        first, second = packets[0][0], packets[1][0]
        assert first.payload_type == 111
        assert first.payload
        assert (second.sequence_number - first.sequence_number) % 65536 == 1
        assert (second.timestamp - first.timestamp) % 2**32 == 960
        assert packets[0][1] <= packets[-1][1] <= time.monotonic()
        # aiortc's RTCP receiver statistics are still fed (receiver reports, getStats).
        figures = seam.rtcp_statistics()
        assert figures.received >= 25
        assert figures.expected >= figures.received
        stats = await transceiver.receiver.getStats()
        inbound = [s for s in stats.values() if getattr(s, "type", "") == "inbound-rtp"]
        assert inbound
        assert inbound[0].packetsReceived >= 25
        # aiortc's own remote track never gets a frame: nothing went to its jitter buffer or decoder.
        assert transceiver.receiver.track._queue.qsize() == 0  # type: ignore[attr-defined]
        assert ended == []
        await phone.close()  # sends RTCP BYE, then closes DTLS
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await ending.wait()
        assert ended == ["end"]
    finally:
        await phone.close()
        await pc.close()
    assert ended == ["end"]  # closing our side afterwards does not report again


def test_the_marker_seam_marks_where_the_timeline_does_not_continue() -> None:
    pc_sender = RTCRtpSender.__new__(RTCRtpSender)  # mark() needs no sender state
    seam = MarkerSeam(pc_sender)
    opus_20ms = bytes([0x78, 1, 2, 3])

    def rtp(timestamp: int, marker: int, *, extension: bool = False) -> bytes:
        packet = RtpPacket(payload_type=111, marker=marker, sequence_number=1, timestamp=timestamp)
        packet.payload = opus_20ms
        data = packet.serialize()
        if extension:  # a one-word header extension, as aiortc adds (mid, abs-send-time)
            data = bytes([data[0] | 0x10]) + data[1:12] + b"\xbe\xde\x00\x01\x10\xaa\x00\x00" + data[12:]
        return data

    stream = [(0, 1), (960, 1), (1920, 0), (1920 + 960 * 10, 0), (1920 + 960 * 11, 1)]
    marked = [RtpPacket.parse(seam.mark(rtp(ts, m, extension=True))).marker for ts, m in stream]
    assert marked == [1, 0, 0, 1, 0]
    assert RtpPacket.parse(seam.mark(rtp(1920 + 960 * 12, 1))).marker == 0  # no extension: same rule
    assert seam.talkspurts == 2
