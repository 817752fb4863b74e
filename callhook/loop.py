"""The event loop of a ``callhook`` process: uvloop by default, asyncio's own with ``CALLHOOK_UVLOOP=false``.

uvloop (libuv, in C) makes the loop's own bookkeeping cheaper: timers, callbacks, sockets. A worker spends
most of its loop time on exactly that (aioice datagrams, the DTLS receive task, aiortc's sender tasks, the
playout tick), so it carries more calls per core on uvloop (README, "Capacity"; ``bench/capacity.py
--no-uvloop`` measures the difference). The switch exists to rule the loop out when chasing a problem.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
SETTING = "CALLHOOK_UVLOOP"


def uvloop_wanted(env: Mapping[str, str]) -> bool:
    """``CALLHOOK_UVLOOP``: true (default) or false; anything else is left to the config's validation."""
    return env.get(SETTING, "true").strip().lower() not in ("false", "0", "no", "off")


def run(main: Coroutine[Any, Any, T], *, uvloop: bool = True) -> T:
    """``asyncio.run(main)``, on a uvloop loop when ``uvloop`` and the package is installed."""
    if uvloop:
        try:
            import uvloop as uv
        except ImportError:
            log.warning("uvloop is not installed: running on asyncio's own loop")
        else:
            with asyncio.Runner(loop_factory=uv.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


def loop_name() -> str:
    """The running loop's kind, for the start-up log line: "uvloop" or "asyncio"."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
