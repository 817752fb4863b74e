"""Hand a call to a person, through the agent console in a real headless Chromium.

A real ingress, a real worker whose app transfers every call to ``support`` after echoing half a second,
``callhook console`` as a process, the simulator as Meta, and Chromium as the agent (a fake microphone
playing a 1750 Hz tone). Conditions are awaited in the DOM and at the phone, never timed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page
from playwright.async_api import TimeoutError as PlaywrightTimeout

from simulator.local import Process
from tests.e2e.console_browser import (
    AGENT_TONE_HZ,
    chromium,
    chromium_available,
    row,
    signed_in,
    write_tone_wav,
)
from tests.e2e.console_deploy import (
    CONNECTED,
    HEARS_THE_PHONE_JS,
    console_deployment,
    heard_frequency,
    queued_call,
)
from tests.e2e.harness import WAIT_SECONDS, Deployment, poll

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not chromium_available(), reason="needs Debian's chromium (scripts/install-chromium)"),
]


@dataclass
class Setup:
    dep: Deployment
    console: Process
    browser: Browser

    @property
    def url(self) -> str:
        return self.console.url + "/"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    logs = tmp_path_factory.mktemp("handoff-logs")
    voice = write_tone_wav(tmp_path_factory.mktemp("agent") / "agent.wav")
    async with console_deployment(amqp_url, logs) as (dep, console), chromium(voice) as browser:
        yield Setup(dep, console, browser)


async def test_agent_answers_talks_both_ways_and_hangs_up(setup: Setup, tmp_path: Path) -> None:
    page = await signed_in(setup.browser, setup.url, "alice-token")
    call = await queued_call(setup.dep)
    answer = page.locator(row(page, call.call_id)).get_by_role("button", name="Answer")
    await answer.wait_for()
    await page.locator(row(page, call.call_id)).get_by_text("order: A-42").wait_for()  # what the bot passed
    await answer.click()
    await page.get_by_text(CONNECTED).wait_for(timeout=WAIT_SECONDS * 1000)
    # The page hears the caller: the phone's test tones, measured by a WebAudio AnalyserNode in the page.
    await page.wait_for_function(HEARS_THE_PHONE_JS, timeout=WAIT_SECONDS * 1000)
    # The caller hears the agent: the fake microphone's 1750 Hz at the phone's ears.
    await poll(lambda: heard_frequency(call), lambda hz: abs(hz - AGENT_TONE_HZ) < 30)
    await page.get_by_text("Caller MOS").wait_for(timeout=WAIT_SECONDS * 1000)  # the live quality arrived
    # Chromium's leg and the phone's both negotiated Opus/48000: what was heard both ways was forwarded.
    (forwarded,) = await setup.dep.values("callhook_handoff_relays_total", mode="forwarded")
    assert forwarded >= 1
    if (shots := _screenshots()) is not None:
        await page.screenshot(path=str(shots / "handoff-console-call.png"), full_page=True)
    await page.get_by_role("button", name="Hang up the call").click()
    await call.wait_ended(timeout=WAIT_SECONDS)
    terminates = setup.dep.sim.journal.graph_requests("terminate", call.call_id)
    assert [r.http_status for r in terminates] == [200]
    await page.context.close()


async def test_a_second_agent_never_gets_a_taken_call(setup: Setup) -> None:
    alice = await signed_in(setup.browser, setup.url, "alice-token")
    bob = await signed_in(setup.browser, setup.url, "bob-token")
    call = await queued_call(setup.dep)
    for page in (alice, bob):
        await page.locator(row(page, call.call_id)).wait_for()
    if (shots := _screenshots()) is not None:
        await bob.screenshot(path=str(shots / "handoff-console-queue.png"), full_page=True)
    selector = f"{row(alice, call.call_id)} button.answer"
    # Both click at once; the call's owner decides: the first take wins, the other is refused.
    await alice.evaluate(f"document.querySelector('{selector}').click()")
    await bob.evaluate(f"document.querySelector('{selector}').click()")
    refused = re.compile("Another agent took this call|Could not take the call")
    winner = await _first_to_show(CONNECTED, alice, bob)
    loser = bob if winner is alice else alice
    # Refused by the owner ("taken"), or by the console once the board showed the call taken (or gone).
    try:
        await loser.get_by_text(refused).wait_for(timeout=WAIT_SECONDS * 1000)
    except PlaywrightTimeout:
        events = await loser.evaluate("window.callhook.events")
        raise AssertionError(f"the second agent was not refused: {events}") from None
    await loser.locator(row(loser, call.call_id)).wait_for(state="detached")
    assert CONNECTED not in await loser.evaluate("window.callhook.events")
    await call.hangup()  # the caller hangs up: the agent's page is told
    await winner.get_by_text("Call ended").wait_for(timeout=WAIT_SECONDS * 1000)
    for page in (alice, bob):
        await page.context.close()


async def test_caller_hanging_up_while_queued_leaves_every_console(setup: Setup) -> None:
    alice = await signed_in(setup.browser, setup.url, "alice-token")
    bob = await signed_in(setup.browser, setup.url, "bob-token")
    carol = await signed_in(setup.browser, setup.url, "carol-token")  # sales only: never sees support
    call = await queued_call(setup.dep)
    for page in (alice, bob):
        await page.locator(row(page, call.call_id)).wait_for()
    assert await carol.locator(row(carol, call.call_id)).count() == 0
    await call.hangup()
    for page in (alice, bob):
        await page.locator(row(page, call.call_id)).wait_for(state="detached")
    for page in (alice, bob, carol):
        await page.context.close()


async def _first_to_show(text: str, *pages: Page) -> Page:
    """The page on which ``text`` appears first (the others keep waiting, then are cancelled)."""
    waits = {
        asyncio.ensure_future(p.get_by_text(text).wait_for(timeout=WAIT_SECONDS * 1000)): p for p in pages
    }
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    first = done.pop()
    first.result()
    return waits[first]


def _screenshots() -> Path | None:
    """``CALLHOOK_TEST_SCREENSHOTS=<dir>``: the tests save the console's screenshots there (docs/)."""
    import os

    target = os.environ.get("CALLHOOK_TEST_SCREENSHOTS")
    return Path(target) if target else None
