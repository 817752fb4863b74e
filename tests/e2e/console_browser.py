"""Drive the agent console in a real headless Chromium (Debian's, at /usr/bin/chromium) with Playwright.

Nothing here downloads a browser: Playwright is only the driver, and the browser is the system's. Chromium
gets a fake microphone playing a WAV file (the agent's "voice", a steady tone) and grants the microphone
without asking; it is allowed loopback ICE candidates and shows real addresses instead of mDNS names, so
the agent's leg runs on 127.0.0.1 like every other media in the tests.
"""

from __future__ import annotations

import shutil
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
AGENT_TONE_HZ = 1750.0  # not a tone of the phone's test signal, the hold chime or the position pips


def chromium_available() -> bool:
    return shutil.which(CHROMIUM) is not None


def write_tone_wav(path: Path, frequency_hz: float = AGENT_TONE_HZ, seconds: float = 10.0) -> Path:
    rate = 48000
    t = np.arange(int(rate * seconds)) / rate
    samples = (0.3 * 32767 * np.sin(2 * np.pi * frequency_hz * t)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


@asynccontextmanager
async def chromium(fake_audio: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-audio-capture={fake_audio}",
                "--allow-loopback-in-peer-connection",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--autoplay-policy=no-user-gesture-required",
                "--no-sandbox",
                # Nothing leaves the machine: every name resolves nowhere but 127.0.0.1 (no DNS query to the
                # system's resolver), and Chromium's own background traffic (updates, pings, sync) is off.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-domain-reliability",
                "--disable-sync",
                "--no-pings",
                "--dns-prefetch-disable",
            ],
        )
        try:
            yield browser
        finally:
            await browser.close()


async def signed_in(browser: Browser, console_url: str, token: str) -> Page:
    """A new page of the console, signed in with ``token`` (the queue table is showing)."""
    # Playwright's wait_for_function evaluates its predicate with eval in the page, which the console's CSP
    # (script-src 'self') refuses; the CSP itself is checked by tests/integration/test_console_oidc.py.
    context = await browser.new_context(bypass_csp=True)
    page = await context.new_page()
    await page.goto(console_url)
    await page.get_by_label("Agent token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.locator("#queues:not([hidden])").wait_for()
    return page


def row(page: Page, call_id: str) -> str:
    return f'tr[data-call-id="{call_id}"]'
