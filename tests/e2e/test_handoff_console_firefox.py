"""Hand a call to a person, through the agent console in Debian's headless Firefox ESR.

The deployment of test_handoff_console.py (tests/e2e/console_deploy.py), with Firefox as the agent, driven
over WebDriver BiDi (tests/e2e/firefox_bidi.py): one Firefox for the module, each agent in a window and
user context of its own, real clicks and key presses. Firefox's fake microphone is its generated sine
tone at 1750 Hz. Conditions are awaited in the page and at the phone, never timed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from simulator.local import Process
from tests.e2e.console_deploy import (
    CONNECTED,
    HEARS_THE_PHONE_JS,
    console_deployment,
    heard_frequency,
    queued_call,
)
from tests.e2e.firefox_bidi import AGENT_TONE_HZ, Firefox, Page, firefox, firefox_available
from tests.e2e.harness import WAIT_SECONDS, Deployment, poll

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        not firefox_available(), reason="needs Debian's firefox-esr and cc (scripts/install-firefox)"
    ),
]


@dataclass
class Setup:
    dep: Deployment
    console: Process
    browser: Firefox

    @property
    def url(self) -> str:
        return self.console.url + "/"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    logs = tmp_path_factory.mktemp("handoff-firefox-logs")
    profile = tmp_path_factory.mktemp("firefox-profile")
    async with console_deployment(amqp_url, logs) as (dep, console), firefox(profile) as browser:
        yield Setup(dep, console, browser)


async def signed_in(setup: Setup, token: str) -> Page:
    """A new window of the console, signed in with ``token`` (the queue table is showing)."""
    page = await setup.browser.new_page()
    await page.goto(setup.url)
    await page.type("#token", token, WAIT_SECONDS)
    await page.click("#signin-button", WAIT_SECONDS)
    await page.wait_for("!document.getElementById('queues').hidden", WAIT_SECONDS)
    return page


# Every address of the call's ICE as the page knows it: each candidate in its getStats (local and remote),
# both ends of each candidate pair it checked, each candidate line of both descriptions. "<what> <address>".
ICE_ADDRESSES_JS = """(async () => {
  const pc = state.pc;
  const stats = [...(await pc.getStats()).values()];
  const byId = new Map(stats.map((s) => [s.id, s]));
  const address = (s) => s?.address ?? s?.ipAddress;
  const candidates = stats.filter((s) => s.type.endsWith('-candidate')).map((s) => `${s.type} ${address(s)}`);
  const pairs = stats.filter((s) => s.type === 'candidate-pair').flatMap((s) => [
    `pair-local ${address(byId.get(s.localCandidateId))}`,
    `pair-remote ${address(byId.get(s.remoteCandidateId))}`]);
  const lines = `${pc.localDescription.sdp}\\n${pc.remoteDescription.sdp}`.split(/\\r?\\n/);
  const sdp = lines.filter((l) => l.startsWith('a=candidate:')).map((l) => `sdp ${l.split(' ')[4]}`);
  return [...candidates, ...pairs, ...sdp];
})()"""


def row(call_id: str) -> str:
    return f'tr[data-call-id="{call_id}"]'


async def test_agent_answers_talks_both_ways_and_hangs_up(setup: Setup) -> None:
    page = await signed_in(setup, "alice-token")
    call = await queued_call(setup.dep)
    await page.wait_for(
        f"document.querySelector('{row(call.call_id)}')?.textContent.includes('order: A-42')", WAIT_SECONDS
    )  # what the bot passed
    await page.click(f"{row(call.call_id)} button.answer", WAIT_SECONDS)
    await page.wait_for_text(CONNECTED, WAIT_SECONDS)
    # The page hears the caller: the phone's test tones, measured by a WebAudio AnalyserNode in the page.
    await page.wait_for(HEARS_THE_PHONE_JS, WAIT_SECONDS)
    # The caller hears the agent: Firefox's fake microphone at the phone's ears.
    await poll(lambda: heard_frequency(call), lambda hz: abs(hz - AGENT_TONE_HZ) < 30)
    await page.wait_for_text("Caller MOS", WAIT_SECONDS)  # the live quality arrived
    # The agent's leg ran on 127.0.0.1 alone (firefox_bidi.py, firefox_loopback.c), at both ends.
    used = await page.evaluate(ICE_ADDRESSES_JS)
    kinds = {"local-candidate", "remote-candidate", "pair-local", "pair-remote", "sdp"}
    assert {u.split()[0] for u in used} >= kinds
    assert [u for u in used if u.split()[1] != "127.0.0.1"] == []
    await page.click("#hangup", WAIT_SECONDS)
    await call.wait_ended(timeout=WAIT_SECONDS)
    terminates = setup.dep.sim.journal.graph_requests("terminate", call.call_id)
    assert [r.http_status for r in terminates] == [200]
    assert "You hung up." in await page.evaluate("window.callhook.events")
    assert [m for m in page.console() if m.startswith("error")] == []  # nothing the page did failed
    await page.close()


async def test_caller_hanging_up_while_queued_leaves_the_console(setup: Setup) -> None:
    alice = await signed_in(setup, "alice-token")
    carol = await signed_in(setup, "carol-token")  # sales only: never sees support
    call = await queued_call(setup.dep)
    await alice.wait_for(f"document.querySelector('{row(call.call_id)}')", WAIT_SECONDS)
    assert await carol.evaluate(f"document.querySelector('{row(call.call_id)}') === null")
    await call.hangup()
    await alice.wait_for(f"document.querySelector('{row(call.call_id)}') === null", WAIT_SECONDS)
    for page in (alice, carol):
        await page.close()
