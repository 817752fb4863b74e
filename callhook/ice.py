"""Which addresses ICE uses: local host candidates (``CALLHOOK_ICE_HOST_ADDRESSES``) and the peers' addresses
it talks to (``CALLHOOK_ICE_PEER_NETWORKS``).

aioice gathers host candidates from every interface of the machine and leaves 127.0.0.1 out. Production wants
the default; tests, benchmarks and the demo must keep all media on loopback. aioice has no option for it, so
this module replaces its module-level ``get_host_addresses`` with one returning the configured list: the one
documented seam (aiortc-notes.md, trap 3). Process-wide by nature, so it is applied once at start-up by the
worker and the simulator, from their configuration.

Restricting host candidates is not enough to keep media on loopback: a browser offers candidates on every
interface of the machine (Chromium's 127.0.0.1 beside its 192.0.2.x and IPv6 ones) and sends connectivity
checks from all of them, and aioice answers each check at its source and checks every candidate it was
given. With peer networks configured, a remote candidate outside them is never added, and a check from outside
them is dropped unanswered (as a firewall would): no packet of ours ever goes elsewhere. Production can use
it to pin media to known networks (a TURN relay, a session border controller); empty (the default) allows any.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import aioice.ice
from aioice.candidate import Candidate

_original = aioice.ice.get_host_addresses
_original_add_remote = aioice.ice.Connection.add_remote_candidate
_original_request_received = aioice.ice.Connection.request_received


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Offer exactly ``addresses`` as host candidates; an empty sequence restores aioice's own choice."""
    if not addresses:
        aioice.ice.get_host_addresses = _original
        return
    parsed = [ipaddress.ip_address(a) for a in addresses]

    def configured(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [str(ip) for ip in parsed if (ip.version == 4 and use_ipv4) or (ip.version == 6 and use_ipv6)]

    aioice.ice.get_host_addresses = configured


def restrict_peer_networks(networks: Sequence[str]) -> None:
    """Talk ICE only with peers in ``networks`` (addresses or CIDR networks); empty restores "any peer"."""
    Connection = aioice.ice.Connection
    if not networks:
        Connection.add_remote_candidate = _original_add_remote  # type: ignore[method-assign]
        Connection.request_received = _original_request_received  # type: ignore[method-assign]
        return
    allowed = [ipaddress.ip_network(n, strict=False) for n in networks]

    def permitted(host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:  # a name (mDNS ``.local``) would resolve to who knows where
            return False
        return any(address in network for network in allowed)

    async def add_remote_candidate(self: aioice.ice.Connection, remote_candidate: Candidate | None) -> None:
        if remote_candidate is not None and not permitted(remote_candidate.host):
            return
        await _original_add_remote(self, remote_candidate)

    def request_received(
        self: aioice.ice.Connection, message: Any, addr: tuple[str, int], protocol: Any
    ) -> None:
        if not permitted(addr[0]):
            return
        _original_request_received(self, message, addr, protocol)

    Connection.add_remote_candidate = add_remote_candidate  # type: ignore[method-assign]
    Connection.request_received = request_received  # type: ignore[method-assign]
