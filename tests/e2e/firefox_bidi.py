"""Drive the agent console in Debian's headless Firefox ESR (/usr/bin/firefox-esr) over WebDriver BiDi.

Playwright 1.65 drives stock Firefox only through BiDi, and its first command on a new page
(``emulation.setMediaFeaturesOverride``) is unknown to Firefox 153 ESR, so the tests speak the standard
protocol themselves: this module is a small BiDi client (one WebSocket, commands answered by id, the
page's console kept for failure messages) plus the few page operations the console's tests need.

Firefox runs on a throwaway profile whose ``user.js`` gives it a fake microphone (Firefox's generated sine
tone, at ``AGENT_TONE_HZ``), the microphone without a prompt, ICE on UDP and on one host address per family
(``media.peerconnection.ice.default_address_only``; loopback allowed, not obfuscated), and a mock audio
output. Which address that is, Firefox 153 learns by connecting a UDP socket to 8.8.8.8 (and to Google's
IPv6 resolver) and reading its own address back, which would be the machine's own interface address:
``firefox_loopback.c``, compiled here at start into the profile and preloaded into every Firefox process,
points that probe at 127.0.0.1 and fails the IPv6 probe and IPv6 binds, so the agent's only candidate is
127.0.0.1 (the prefs alone cannot do it: see docs/handoff.md). Nothing else leaves 127.0.0.1: every
name resolves to localhost without a DNS query, every outside request goes to a proxy on 127.0.0.1:9,
where nothing listens, and the remote agent's own recommended preferences (applied because BiDi is on)
turn telemetry, updates and remote settings off.

Input is real input (``input.performActions``: the pointer clicks the element's centre, keys are typed),
so a button a person could not press cannot be pressed here either.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp

FIREFOX = "/usr/bin/firefox-esr"
CC = "cc"
LOOPBACK_SHIM = Path(__file__).with_name("firefox_loopback.c")
AGENT_TONE_HZ = 1750  # Firefox's fake microphone; not a tone of the phone's test signal, the chime or pips
PROBE_MS = 50  # how often an in-page wait re-reads its condition
COMMAND_SECONDS = 30.0  # the bound of a BiDi command that does not wait on the page
_LISTENING = re.compile(r"WebDriver BiDi listening on (ws://127\.0\.0\.1:\d+)")

PREFS: dict[str, bool | int | str] = {
    # the agent's microphone and leg
    "media.navigator.streams.fake": True,
    "media.navigator.audio.fake_frequency": AGENT_TONE_HZ,
    "media.navigator.permission.disabled": True,
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.peerconnection.ice.default_address_only": True,  # 127.0.0.1, through firefox_loopback.c
    "media.peerconnection.ice.tcp": False,
    # No sound server on a test machine: Firefox's mock audio backend keeps WebAudio's clock running (with
    # no backend at all an AudioContext stays "suspended"). Autoplay keeps Firefox's defaults: the page
    # must start its audio under the real policy, after the agent's clicks.
    "media.cubeb.force_mock_context": True,
    # nothing beyond 127.0.0.1: a dead proxy for everything else, no prefetching, no plugin downloads
    "network.proxy.type": 1,
    "network.proxy.http": "127.0.0.1",
    "network.proxy.http_port": 9,
    "network.proxy.ssl": "127.0.0.1",
    "network.proxy.ssl_port": 9,
    "network.proxy.no_proxies_on": "127.0.0.1,localhost",
    "network.proxy.allow_hijacking_localhost": False,
    "network.trr.mode": 5,
    # Firefox still resolves names of its own (firefox.settings.services.mozilla.com) with the system's DNS
    # server, off this machine: every name is localhost instead, and no query is sent.
    "network.dns.native-is-localhost": True,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.http.speculative-parallel-limit": 0,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "services.settings.server": "data:,#remote-settings-dummy/v1",
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "media.gmp-manager.updateEnabled": False,
    "media.gmp-gmpopenh264.enabled": False,
    "media.gmp-widevinecdm.enabled": False,
    "app.normandy.enabled": False,
    "app.update.disabledForTesting": True,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    # no first-run pages
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.aboutwelcome.enabled": False,
    "startup.homepage_welcome_url": "about:blank",
    "browser.startup.page": 0,
}


def firefox_available() -> bool:
    """Firefox, and a C compiler for ``firefox_loopback.c``."""
    return shutil.which(FIREFOX) is not None and shutil.which(CC) is not None


class BiDiError(Exception):
    """A command Firefox refused, or a script that threw in the page."""


class LoopbackShimError(Exception):
    """``firefox_loopback.c`` did not compile: Firefox is not started without it."""


class BiDi:
    """One WebDriver BiDi connection: commands matched to their answers by id, log entries kept by context."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.logs: dict[str, list[str]] = {}

    async def command(
        self,
        method: str,
        params: dict[str, Any],
        timeout_seconds: float = COMMAND_SECONDS,
    ) -> dict[str, Any]:
        command_id = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._pending[command_id] = answer
        try:
            await self._ws.send_json({"id": command_id, "method": method, "params": params})
            async with asyncio.timeout(timeout_seconds):
                return await answer
        finally:
            del self._pending[command_id]

    async def read(self) -> None:
        """Dispatch every message until the socket closes (then every waiting command fails)."""
        try:
            async for message in self._ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    self._dispatch(json.loads(message.data))
        finally:
            for answer in self._pending.values():
                if not answer.done():
                    answer.set_exception(BiDiError("the BiDi connection to Firefox is closed"))

    def _dispatch(self, data: dict[str, Any]) -> None:
        if data.get("type") == "event":
            self._event(data)
        elif (answer := self._pending.get(data.get("id", -1))) is not None and not answer.done():
            if data.get("type") == "error":
                answer.set_exception(BiDiError(f"{data['error']}: {data.get('message', '')}"))
            else:
                answer.set_result(data["result"])

    def _event(self, data: dict[str, Any]) -> None:
        if data["method"] == "log.entryAdded":
            entry = data["params"]
            context = entry.get("source", {}).get("context", "")
            self.logs.setdefault(context, []).append(f"{entry.get('level')}: {entry.get('text')}")


class Page:
    """One top-level window in a user context of its own (its own storage, like a separate browser)."""

    def __init__(self, bidi: BiDi, context: str, user_context: str) -> None:
        self._bidi = bidi
        self.context = context
        self._user_context = user_context

    async def goto(self, url: str) -> None:
        await self._bidi.command(
            "browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"}
        )

    async def evaluate(self, expression: str) -> Any:
        """``expression``'s value (awaited when it is a promise), as JSON-like Python."""
        result = await self._bidi.command(
            "script.evaluate",
            {"expression": expression, "target": {"context": self.context}, "awaitPromise": True},
        )
        return _value(self._checked(result))

    async def wait_for(self, condition: str, timeout_seconds: float) -> None:
        """Until the JavaScript expression ``condition`` is truthy in the page, re-read every PROBE_MS."""
        function = f"""(timeoutMs) => new Promise((resolve, reject) => {{
            const started = performance.now();
            let thrown = "";  // a condition that throws is not met (and never an error of the page's)
            const met = () => {{
                try {{ return {condition}; }} catch (e) {{ thrown = String(e); return false; }}
            }};
            const probe = () => {{
                if (met()) {{ clearInterval(timer); resolve(true); }}
                else if (performance.now() - started > timeoutMs) {{
                    clearInterval(timer);
                    const shown = document.body.innerText.slice(-400);
                    const why = `; last thrown: ${{thrown}}; the page shows: ${{shown}}`;
                    reject(new Error("not reached: " + {json.dumps(condition)} + why));
                }}
            }};
            const timer = setInterval(probe, {PROBE_MS});
            probe();
        }})"""
        result = await self._bidi.command(
            "script.callFunction",
            {
                "functionDeclaration": function,
                "arguments": [{"type": "number", "value": timeout_seconds * 1000}],
                "target": {"context": self.context},
                "awaitPromise": True,
            },
            timeout_seconds + COMMAND_SECONDS,  # the page's own bound answers first
        )
        self._checked(result)

    async def wait_for_text(self, text: str, timeout_seconds: float) -> None:
        await self.wait_for(f"document.body.innerText.includes({json.dumps(text)})", timeout_seconds)

    async def click(self, selector: str, timeout_seconds: float) -> None:
        """Wait until ``selector`` is shown and enabled, then click its centre with the mouse."""
        found = f"document.querySelector({json.dumps(selector)})"
        await self.wait_for(f"{found} && {found}.checkVisibility() && !{found}.disabled", timeout_seconds)
        result = await self._bidi.command(
            "script.evaluate",
            {
                "expression": f"{found}.scrollIntoView({{block: 'center'}}) || {found}",
                "target": {"context": self.context},
                "awaitPromise": False,
            },
        )
        element = {"sharedId": self._checked(result)["sharedId"]}
        pointer = [
            {"type": "pointerMove", "x": 0, "y": 0, "origin": {"type": "element", "element": element}},
            {"type": "pointerDown", "button": 0},
            {"type": "pointerUp", "button": 0},
        ]
        await self._actions({"type": "pointer", "id": "mouse", "actions": pointer})

    async def type(self, selector: str, text: str, timeout_seconds: float) -> None:
        """Focus ``selector`` by clicking it, then type ``text`` key by key."""
        await self.click(selector, timeout_seconds)
        keys = [{"type": kind, "value": char} for char in text for kind in ("keyDown", "keyUp")]
        await self._actions({"type": "key", "id": "keyboard", "actions": keys})

    def console(self) -> list[str]:
        """What the page logged (errors included): a failing test shows it."""
        return self._bidi.logs.get(self.context, [])

    async def close(self) -> None:
        await self._bidi.command("browser.removeUserContext", {"userContext": self._user_context})

    async def _actions(self, source: dict[str, Any]) -> None:
        await self._bidi.command("input.performActions", {"context": self.context, "actions": [source]})
        await self._bidi.command("input.releaseActions", {"context": self.context})

    def _checked(self, result: dict[str, Any]) -> dict[str, Any]:
        if result["type"] == "exception":
            details = result["exceptionDetails"]
            raise BiDiError(f"{details.get('text')} (page console: {self.console()})")
        return result["result"]  # type: ignore[no-any-return]


class Firefox:
    def __init__(self, bidi: BiDi) -> None:
        self._bidi = bidi

    async def new_page(self) -> Page:
        user_context = (await self._bidi.command("browser.createUserContext", {}))["userContext"]
        created = await self._bidi.command(
            "browsingContext.create", {"type": "window", "userContext": user_context}
        )
        return Page(self._bidi, created["context"], user_context)


@asynccontextmanager
async def firefox(profile: Path) -> AsyncIterator[Firefox]:
    """A headless Firefox on a fresh profile in ``profile`` (an empty directory; Firefox's stderr ends up in
    its ``stderr.log``), with a BiDi session."""
    (profile / "user.js").write_text(
        "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items())
    )
    shim = await _build_loopback_shim(profile)
    process = await asyncio.create_subprocess_exec(
        FIREFOX,
        "--headless",
        "--no-remote",
        "--remote-debugging-port=0",  # Firefox picks a free port and says which on stderr
        "--profile",
        str(profile),
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LD_PRELOAD": str(shim)},  # inherited by Firefox's content and socket processes
    )
    # Owned here rather than by a TaskGroup: a module fixture enters and leaves this in different tasks.
    tasks: list[asyncio.Task[None]] = []
    try:
        assert process.stderr is not None
        async with asyncio.timeout(COMMAND_SECONDS):
            endpoint = await _endpoint(process.stderr)
        tasks.append(asyncio.create_task(_drain(process.stderr, profile / "stderr.log")))
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{endpoint}/session") as ws:
            bidi = BiDi(ws)
            tasks.append(asyncio.create_task(bidi.read()))
            await bidi.command("session.new", {"capabilities": {}})
            await bidi.command("session.subscribe", {"events": ["log.entryAdded"]})
            try:
                yield Firefox(bidi)
            finally:
                with suppress(BiDiError, TimeoutError):
                    await bidi.command("browser.close", {})
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _stop(process)


async def _build_loopback_shim(directory: Path) -> Path:
    """``firefox_loopback.c`` compiled into ``directory``: the library Firefox is started with."""
    library = directory / "libfirefox-loopback.so"
    compiler = await asyncio.create_subprocess_exec(
        CC,
        "-shared",
        "-fPIC",
        "-O2",
        "-o",
        str(library),
        str(LOOPBACK_SHIM),
        "-ldl",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await compiler.communicate()
    if compiler.returncode != 0:
        said = output.decode(errors="replace")
        raise LoopbackShimError(f"{CC} could not build {LOOPBACK_SHIM.name}: {said}")
    return library


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Firefox gone: it usually quits on ``browser.close``; else SIGTERM, and SIGKILL if that is ignored."""
    with suppress(ProcessLookupError):  # it exited in between
        process.terminate()
    try:
        async with asyncio.timeout(COMMAND_SECONDS):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()


async def _endpoint(stderr: asyncio.StreamReader) -> str:
    seen = []
    while line := (await stderr.readline()).decode(errors="replace"):
        if match := _LISTENING.search(line):
            return match.group(1)
        seen.append(line)
    raise BiDiError(f"Firefox exited before listening for BiDi: {''.join(seen)}")


async def _drain(stderr: asyncio.StreamReader, log: Path) -> None:
    """Firefox's later stderr, read so that its pipe never fills and blocks it, kept in ``log``."""
    with log.open("ab") as out:
        while chunk := await stderr.read(65536):
            out.write(chunk)


def _value(remote: dict[str, Any]) -> Any:
    """A BiDi RemoteValue as Python: primitives, arrays and plain objects (anything else as its type name)."""
    kind = remote["type"]
    if kind in ("undefined", "null"):
        return None
    if kind in ("string", "number", "boolean"):
        return remote["value"]
    if kind == "array":
        return [_value(v) for v in remote.get("value", [])]
    if kind == "object":
        return {k: _value(v) for k, v in remote.get("value", [])}
    return kind
