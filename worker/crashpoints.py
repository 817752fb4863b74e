"""Test-only fault injection: ``CALLHOOK_TEST_CRASH_AT=<point>`` makes a worker die (``os._exit``, as abruptly
as SIGKILL: no cleanup, no goodbye to the broker) the first time it reaches that point of an incoming call's
setup. The points: ``after_claim``, ``after_answer_sdp``, ``after_pre_accept``, ``after_accept``. Used by
tests/e2e/test_crash_points.py to show that no point leaves a call answered twice or ringing out. Unset in
production: reaching a point is then one dictionary lookup. Pure (no asyncio).
"""

from __future__ import annotations

import os

ENV = "CALLHOOK_TEST_CRASH_AT"
POINTS = frozenset({"after_claim", "after_answer_sdp", "after_pre_accept", "after_accept"})
EXIT_CODE = 137  # what a shell reports for SIGKILL


def crash_point(point: str) -> None:
    """Exit the process at once if ``CALLHOOK_TEST_CRASH_AT`` names ``point``."""
    if os.environ.get(ENV) == point:
        os._exit(EXIT_CODE)
