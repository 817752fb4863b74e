"""The audio path of a call: WebRTC media (aiortc for ICE, DTLS, SRTP, RTCP) and what callhook does after it.

``session`` is the per-call media (:class:`MediaSession`); ``seam`` is the one module touching aiortc's
receive internals; ``jitter`` (the jitter buffer), ``quality`` (MOS) and ``forward`` (a sending leg's
timeline for forwarded and encoded packets) are pure; ``codec`` is libopus in the loop; ``playout`` is the
worker's one 20 ms clock. See docs/architecture.md, "Audio path".

The session's names are imported lazily (PEP 562), so importing a pure submodule such as
``worker.media.jitter`` does not drag aiortc and asyncio in with the package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.media.session import (
        EndReason,
        MediaConnectFailed,
        MediaConnectTimeout,
        MediaError,
        MediaSession,
        MediaSettings,
        MediaStatistics,
        UnusableSdp,
        ice_servers,
    )

__all__ = [
    "EndReason",
    "MediaConnectFailed",
    "MediaConnectTimeout",
    "MediaError",
    "MediaSession",
    "MediaSettings",
    "MediaStatistics",
    "UnusableSdp",
    "ice_servers",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("worker.media.session"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
