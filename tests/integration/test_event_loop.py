"""callhook/loop.py: uvloop by default, asyncio's own loop with CALLHOOK_UVLOOP=false."""

from __future__ import annotations

import asyncio

import pytest

from callhook import loop
from worker.config import load as load_worker_config


async def _kind() -> str:
    return loop.loop_name()


def test_runs_on_uvloop_unless_told_not_to() -> None:
    assert loop.run(_kind()) == "uvloop"
    assert loop.run(_kind(), uvloop=False) == "asyncio"
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # nothing left running


@pytest.mark.parametrize(
    ("value", "wanted"), [(None, True), ("true", True), ("false", False), ("0", False), ("no", False)]
)
def test_the_setting(value: str | None, wanted: bool) -> None:
    env = {} if value is None else {"CALLHOOK_UVLOOP": value}
    assert loop.uvloop_wanted(env) is wanted


def test_the_worker_reads_the_setting() -> None:
    base = {"CALLHOOK_ACCESS_TOKEN": "test-access-token-0123456789"}
    assert load_worker_config(base).uvloop is True
    assert load_worker_config(base | {"CALLHOOK_UVLOOP": "false"}).uvloop is False
