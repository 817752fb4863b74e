"""The audio path of a call: WebRTC media (aiortc for ICE, DTLS, SRTP, RTCP) and what callhook does after it.

``session`` is the per-call media (:class:`MediaSession`); the rest of the package holds the parts of the
audio path that callhook owns. Pure modules import neither asyncio nor aiortc and are tested without a loop.
"""

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
