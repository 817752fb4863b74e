"""The audio path of a call: WebRTC media (aiortc for ICE, DTLS, SRTP, RTCP) and what callhook does after it.

``session`` is the per-call media (:class:`MediaSession`); the rest of the package holds the parts of the
audio path that callhook owns. Pure modules import neither asyncio nor aiortc and are tested without a loop.

The names below are loaded on first use (PEP 562), so importing a pure module of the package
(``worker.media.dtmf``) does not drag aiortc in through this file.
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
