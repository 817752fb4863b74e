"""Agents sign in to the console through their company's identity provider, in a real headless Chromium.

The same stack as tests/e2e/test_handoff_console.py (ingress, a worker transferring every call to
``support``, ``callhook console`` as a process, the simulator as Meta), with the console trusting a small
OpenID Connect provider (tests/support/oidc_provider.py) on 127.0.0.1 beside one static agent token: each
agent clicks "Continue with your company account", types their user name on the provider's page, comes back
with a code that the page exchanges (PKCE) for an ID token, and sees only the queues their groups grant.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page

from simulator.calls import CallState
from simulator.local import Process, free_port, wait_ready
from simulator.sim import SimulatedCall
from tests.e2e.console_browser import chromium, chromium_available, row, signed_in, write_tone_wav
from tests.e2e.console_deploy import WORKER_ENV
from tests.e2e.harness import WAIT_SECONDS, Deployment, deploy
from tests.support.oidc_provider import CLIENT_ID, TestIdentityProvider

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not chromium_available(), reason="needs Debian's chromium (scripts/install-chromium)"),
]

USERS = {
    "dana": {"groups": ["callhook-support"], "email": "dana@example.com"},
    "erin": {"groups": ["callhook-sales"], "email": "erin@example.com"},
    "frank": {"groups": ["staff"]},  # in the company, but no group of the console's
}


@dataclass
class Setup:
    dep: Deployment
    console: Process
    browser: Browser
    idp: TestIdentityProvider

    @property
    def url(self) -> str:
        return self.console.url + "/"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    logs = tmp_path_factory.mktemp("handoff-oidc-logs")
    voice = write_tone_wav(tmp_path_factory.mktemp("agent") / "agent.wav")
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    idp = TestIdentityProvider(users=USERS, redirect_uris=(origin + "/",), allowed_origins=(origin,))
    async with idp, deploy(amqp_url, logs, workers=1, worker_env=WORKER_ENV) as dep:
        env = dep.system.base_env() | {
            "CALLHOOK_CONSOLE_AGENTS": "carol:carol-static-token-0123:sales",
            "CALLHOOK_CONSOLE_OIDC_ISSUER": idp.issuer,
            "CALLHOOK_CONSOLE_OIDC_CLIENT_ID": CLIENT_ID,
            "CALLHOOK_CONSOLE_OIDC_QUEUE_MAP": "callhook-support=support;callhook-sales=sales",
            "CALLHOOK_CONSOLE_HOST": "127.0.0.1",
            "CALLHOOK_CONSOLE_PORT": str(port),
        }
        console = dep.system._spawn("console", "console", env, port)
        try:
            await wait_ready(dep.http, console)
            async with chromium(voice) as browser:
                yield Setup(dep, console, browser, idp)
        finally:
            console.popen.terminate()
            console.popen.wait(10)


async def queued_call(setup: Setup) -> SimulatedCall:
    call = await setup.dep.place_calls(1)
    await call[0].wait_state(CallState.ACCEPTED, timeout=WAIT_SECONDS)
    return call[0]


async def through_the_idp(setup: Setup, user: str) -> Page:
    """A new page of the console; the agent signs in on the identity provider's page (keyboard only)."""
    context = await setup.browser.new_context()
    page = await context.new_page()
    await page.goto(setup.url)
    sso = page.get_by_role("button", name="Continue with your company account")
    await sso.focus()
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{setup.idp.issuer}/authorize?**")
    await page.get_by_label("Username").fill(user)
    await page.keyboard.press("Enter")
    await page.wait_for_url(setup.url)  # back, and the code and state are gone from the address bar
    return page


async def test_agents_sign_in_through_the_idp_see_their_queues_only_and_take_a_call(setup: Setup) -> None:
    dana = await through_the_idp(setup, "dana")
    await dana.locator("#queues:not([hidden])").wait_for()
    await dana.get_by_text(re.compile(r"Signed in as dana \(queues: support\) until \d")).wait_for()
    assert "code=" not in dana.url
    erin = await through_the_idp(setup, "erin")
    await erin.get_by_text("Signed in as erin (queues: sales)").wait_for()
    carol = await signed_in(setup.browser, setup.url, "carol-static-token-0123")  # the token form, beside
    await carol.get_by_text("Signed in as carol (queues: sales)").wait_for()
    call = await queued_call(setup)  # a call for support
    await dana.locator(row(dana, call.call_id)).wait_for()
    for other in (erin, carol):
        assert await other.locator(row(other, call.call_id)).count() == 0
    await dana.locator(row(dana, call.call_id)).get_by_role("button", name="Answer").click()
    await dana.get_by_text("Connected: you are talking to the caller.").wait_for(timeout=WAIT_SECONDS * 1000)
    await dana.get_by_role("button", name="Hang up the call").click()
    await call.wait_ended(timeout=WAIT_SECONDS)
    assert setup.idp.token_refusals == []
    for page in (dana, erin, carol):
        await page.context.close()


async def test_an_agent_without_a_queue_is_told_and_stays_signed_out(setup: Setup) -> None:
    frank = await through_the_idp(setup, "frank")
    await frank.get_by_role("alert").get_by_text("Sign-in refused: no queues for this agent.").wait_for()
    assert await frank.locator("#queues").is_hidden()
    await frank.context.close()


async def test_a_forged_return_to_the_page_is_refused(setup: Setup) -> None:
    """A link to the console carrying someone's code and a state this tab never made: nothing is exchanged."""
    context = await setup.browser.new_context()
    page = await context.new_page()
    await page.goto(setup.url + "?code=stolen-code&state=made-up")
    await page.get_by_text("That sign-in was not started on this page").wait_for()
    assert "code=" not in page.url
    assert await page.locator("#queues").is_hidden()
    await context.close()
