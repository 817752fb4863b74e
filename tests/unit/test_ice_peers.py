"""``CALLHOOK_ICE_PEER_NETWORKS`` (callhook/ice.py): ICE talks only with peers in the configured networks.

A browser offers candidates on every interface of the machine and checks from all of them; the worker must
neither check those candidates nor answer checks coming from them, or its packets leave loopback.
"""

from __future__ import annotations

from collections.abc import Iterator

import aioice
import pytest
from aioice import stun
from aioice.candidate import Candidate

from callhook.env import EnvReader
from callhook.ice import restrict_peer_networks


class Protocol:
    """Records what aioice sends through it."""

    def __init__(self) -> None:
        self.sent: list[tuple[stun.Message, tuple[str, int]]] = []

    def send_stun(self, message: stun.Message, addr: tuple[str, int]) -> None:
        self.sent.append((message, addr))


def host(address: str) -> Candidate:
    return Candidate(
        foundation="1", component=1, transport="udp", priority=1, host=address, port=50000, type="host"
    )


def binding_request() -> stun.Message:
    return stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)


@pytest.fixture
def loopback_only() -> Iterator[None]:
    restrict_peer_networks(["127.0.0.0/8", "::1"])
    try:
        yield
    finally:
        restrict_peer_networks([])


@pytest.mark.usefixtures("loopback_only")
async def test_candidates_outside_the_peer_networks_are_never_added() -> None:
    connection = aioice.Connection(ice_controlling=False)
    for address in ("192.0.2.2", "fd00::2", "127.0.0.1", "::1", "abcd.local"):
        await connection.add_remote_candidate(host(address))
    assert [c.host for c in connection.remote_candidates] == ["127.0.0.1", "::1"]
    await connection.add_remote_candidate(None)  # end-of-candidates still gets through


@pytest.mark.usefixtures("loopback_only")
def test_checks_from_outside_the_peer_networks_get_no_answer() -> None:
    connection = aioice.Connection(ice_controlling=False)
    protocol = Protocol()
    connection.request_received(binding_request(), ("192.0.2.2", 50000), protocol)  # type: ignore[arg-type]
    assert protocol.sent == []
    # From loopback the request is handled (this one lacks credentials: answered 400 Bad Request).
    connection.request_received(binding_request(), ("127.0.0.1", 50000), protocol)  # type: ignore[arg-type]
    assert [addr for _, addr in protocol.sent] == [("127.0.0.1", 50000)]


async def test_no_networks_means_any_peer() -> None:
    restrict_peer_networks([])
    connection = aioice.Connection(ice_controlling=False)
    await connection.add_remote_candidate(host("192.0.2.2"))
    assert [c.host for c in connection.remote_candidates] == ["192.0.2.2"]
    protocol = Protocol()
    connection.request_received(binding_request(), ("192.0.2.2", 50000), protocol)  # type: ignore[arg-type]
    assert len(protocol.sent) == 1  # answered (400): nothing was sent over a network, only recorded


def test_the_setting_takes_networks_and_addresses() -> None:
    reader = EnvReader({"CALLHOOK_ICE_PEER_NETWORKS": "127.0.0.0/8, ::1, 10.1.2.3"})
    assert reader.network_list("CALLHOOK_ICE_PEER_NETWORKS") == ("127.0.0.0/8", "::1", "10.1.2.3")
    assert reader.problems == []
    reader = EnvReader({"CALLHOOK_ICE_PEER_NETWORKS": "127.0.0.0/8,nope"})
    reader.network_list("CALLHOOK_ICE_PEER_NETWORKS")
    assert reader.problems == ["CALLHOOK_ICE_PEER_NETWORKS: 'nope' is not an IP network or address"]
