"""Which local addresses aiortc offers as ICE host candidates (``CALLHOOK_ICE_HOST_ADDRESSES``).

aioice gathers host candidates from every interface of the machine and leaves 127.0.0.1 out. Production wants
the default; tests, benchmarks and the demo must keep all media on loopback. aioice has no option for it, so
this module replaces its module-level ``get_host_addresses`` with one returning the configured list: the one
documented seam (aiortc-notes.md, trap 3). Process-wide by nature, so it is applied once at start-up by the
worker and the simulator, from their configuration.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import aioice.ice

_original = aioice.ice.get_host_addresses


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Offer exactly ``addresses`` as host candidates; an empty sequence restores aioice's own choice."""
    if not addresses:
        aioice.ice.get_host_addresses = _original
        return
    parsed = [ipaddress.ip_address(a) for a in addresses]

    def configured(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [str(ip) for ip in parsed if (ip.version == 4 and use_ipv4) or (ip.version == 6 and use_ipv6)]

    aioice.ice.get_host_addresses = configured
