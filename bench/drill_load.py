"""The drill's load besides the calls: non-call webhooks through the simulator, and a side stream of junk.

- :func:`message_stream` submits ``messages`` webhooks (a user's text message) through the simulator's
  sender, at a rate: they are signed, retried, duplicated and batched like every other delivery. Each carries
  a marker (``drill-<run>-msg-<n>``) in its message id and text, which the router passes on byte for byte to
  ``callhook.events``, where the drill's audit queue sees it.
- :func:`junk_stream` POSTs straight to the ingress, bypassing the simulator: bodies that are signed but
  poison (not JSON, cut short, another ``object``), which the ingress must store (200) and the router must
  dead-letter, and bodies with a wrong or missing signature, which must get 401 and never reach the broker.
  Each carries a marker too. A poison body answered 503 (broker away) is retried like Meta would.
- :func:`api_abuse_stream` (issue 17) abuses the integrator API: bad inputs, keyed dials sent twice and the
  key reused with another body, waves of slow clients; :class:`AbuseResult` lists what must not happen.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from simulator import payloads
from simulator.sim import Simulator

JUNK_KINDS = ("not_json", "bad_signature", "truncated", "no_signature", "wrong_object", "wrong_secret")
SIGNED_JUNK = frozenset({"not_json", "truncated", "wrong_object"})
JUNK_ATTEMPTS = 6


@dataclass
class JunkPost:
    kind: str
    marker: str
    body: bytes
    statuses: list[int] = field(default_factory=list)  # one per attempt; 0 = no answer

    @property
    def signed(self) -> bool:
        return self.kind in SIGNED_JUNK

    @property
    def message_id(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    @property
    def stored(self) -> bool:
        return 200 in self.statuses


@dataclass
class SentMessage:
    marker: str
    submitted_at: float


async def paced(rate_per_second: float, seconds: float, send: Callable[[int], None]) -> None:
    """Call ``send(n)`` ``rate_per_second`` times a second for ``seconds`` (the pacing is the load)."""
    started = time.monotonic()
    count = int(rate_per_second * seconds)
    for index in range(count):
        await asyncio.sleep(max(0.0, started + index / rate_per_second - time.monotonic()))
        send(index)


async def message_stream(
    sim: Simulator, run_id: str, rate_per_second: float, seconds: float
) -> list[SentMessage]:
    sent: list[SentMessage] = []
    if rate_per_second <= 0:
        return sent
    number = sim.config.numbers[0]

    def send(index: int) -> None:
        marker = f"drill-{run_id}-msg-{index}"
        user = f"1555900{index % 1000:04d}"
        item = {
            "from": user,
            "id": f"wamid.{marker}",
            "timestamp": str(int(time.time())),
            "type": "text",
            "text": {"body": f"hello {marker}"},
        }
        update = payloads.Update(
            "message", sim.config.waba_id, number, "messages", "messages", item,
            contact=payloads.Contact(user, "Drill"),
        )  # fmt: skip
        sim.webhooks.submit(update)
        sent.append(SentMessage(marker, time.time()))

    await paced(rate_per_second, seconds, send)
    return sent


def junk_body(kind: str, marker: str, waba_id: str) -> bytes:
    text = {"object": payloads.OBJECT, "entry": [{"id": waba_id, "changes": []}], "drill": marker}
    if kind == "not_json":
        return f"not json at all {marker}".encode()
    if kind == "truncated":
        return payloads.encode(text)[:-7]
    if kind == "wrong_object":
        return payloads.encode({**text, "object": "page"})
    return payloads.encode(text)  # a well-formed body: only its signature is wrong or missing


def junk_headers(kind: str, body: bytes, secret: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": "facebookexternalua"}
    if kind in SIGNED_JUNK:
        headers["X-Hub-Signature-256"] = payloads.signature(body, secret)
    elif kind == "bad_signature":
        headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
    elif kind == "wrong_secret":
        headers["X-Hub-Signature-256"] = payloads.signature(body, secret + "-not-ours")
    return headers


async def junk_stream(
    url: Callable[[], str],
    secret: str,
    waba_id: str,
    run_id: str,
    rate_per_second: float,
    seconds: float,
) -> list[JunkPost]:
    posts: list[JunkPost] = []
    if rate_per_second <= 0:
        return posts
    async with aiohttp.ClientSession() as http, asyncio.TaskGroup() as tg:

        def send(index: int) -> None:
            kind = JUNK_KINDS[index % len(JUNK_KINDS)]
            marker = f"drill-{run_id}-junk-{index}"
            post = JunkPost(kind, marker, junk_body(kind, marker, waba_id))
            posts.append(post)
            tg.create_task(_post(http, url, post, junk_headers(kind, post.body, secret)))

        await paced(rate_per_second, seconds, send)
    return posts


async def _post(
    http: aiohttp.ClientSession, url: Callable[[], str], post: JunkPost, headers: dict[str, str]
) -> None:
    attempts = JUNK_ATTEMPTS if post.signed else 1
    for attempt in range(attempts):
        try:
            async with http.post(
                url(), data=post.body, headers=headers, timeout=aiohttp.ClientTimeout(total=20)
            ) as response:
                await response.read()
                post.statuses.append(response.status)
        except (aiohttp.ClientError, TimeoutError):
            post.statuses.append(0)
        if post.statuses[-1] == 200 or not post.signed or post.statuses[-1] in (400, 401, 413):
            return
        await asyncio.sleep(min(8.0, 0.5 * 2**attempt))  # Meta's retry schedule, shortened


# --- API abuse (issue 17): bad inputs, duplicate keys, slow clients -----------------------------------------

ABUSE_BAD_INPUTS: tuple[tuple[str, bytes], ...] = (
    ("not_json", b"{not json"),
    ("app_spec", b'{"to": "15551234567", "app": "ws://10.0.0.1/agent"}'),
    ("module_app", b'{"to": "15551234567", "app": "os:system"}'),
    ("newline_number", b'{"to": "15551234567\\n"}'),
    ("arabic_digits", '{"to": "١٥٥٥١٢٣٤٥٦٧"}'.encode()),
    ("control_data", b'{"to": "15551234567", "biz_opaque_callback_data": "a\\u0000b"}'),
    ("surrogate", b'{"to": "15551234567", "biz_opaque_callback_data": "\\ud800"}'),
    ("deep", b"[" * 5000 + b"]" * 5000),
    ("too_big", b'{"to": "' + b"1" * 70_000 + b'"}'),
)
SLOW_CLIENTS_PER_WAVE = 20


@dataclass
class AbuseResult:
    """What the API answered to abuse; ``violations`` must stay empty (the drill's ``api_abuse``)."""

    answers: dict[str, list[int]] = field(default_factory=dict)  # kind -> statuses (0 = no answer)
    violations: list[str] = field(default_factory=list)
    keyed_dials: int = 0
    slow_clients: int = 0


async def api_abuse_stream(
    base_url: Callable[[], str], token: str, run_id: str, rate_per_second: float, seconds: float,
    header_timeout_seconds: float = 10.0,
) -> AbuseResult:  # fmt: skip
    """Bad inputs (each must get a 4xx, never a 5xx but a 503 while the broker is away), keyed dial pairs
    (both answers carry one request id, the same key with another body is a 422; the workers start at most
    one call per key), and waves of slow clients (each must be closed by the ingress's header deadline)."""
    result = AbuseResult()
    if rate_per_second <= 0:
        return result
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http, asyncio.TaskGroup() as tg:

        def send(index: int) -> None:
            if index % 10 == 9:
                tg.create_task(_keyed_pair(http, base_url, auth, f"drill-{run_id}-key-{index}", result))
            elif index % 10 == 4:
                tg.create_task(_slow_wave(base_url, header_timeout_seconds, result))
            else:
                kind, body = ABUSE_BAD_INPUTS[index % len(ABUSE_BAD_INPUTS)]
                tg.create_task(_bad_input(http, base_url, auth, kind, body, result))

        await paced(rate_per_second, seconds, send)
    return result


async def _api_post(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, object]]:
    try:
        async with http.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=20)) as r:
            answer = await r.json(content_type=None) if r.status != 413 else {}
            return r.status, answer if isinstance(answer, dict) else {}
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return 0, {}


async def _bad_input(
    http: aiohttp.ClientSession, base_url: Callable[[], str], auth: dict[str, str], kind: str, body: bytes,
    result: AbuseResult,
) -> None:  # fmt: skip
    status, _ = await _api_post(http, base_url() + "/v1/calls", body, auth)
    result.answers.setdefault(kind, []).append(status)
    if status not in (400, 413, 503, 0):
        result.violations.append(f"bad input {kind} answered {status}")


async def _keyed_pair(
    http: aiohttp.ClientSession, base_url: Callable[[], str], auth: dict[str, str], key: str,
    result: AbuseResult,
) -> None:  # fmt: skip
    """A dial sent twice with one key (a retry), then the key with another body. ``permission: check``: a
    drill user has no call permission, so the worker asks the Graph API and places no call."""
    url = base_url() + "/v1/calls"
    headers = {**auth, "Idempotency-Key": key}
    body = b'{"to": "15559990001", "permission": "check"}'
    ids = set()
    for _ in range(2):
        for _attempt in range(6):  # a 503 (broker away) is retried with the same key, as a client would
            status, answer = await _api_post(http, url, body, headers)
            if status not in (503, 0):
                break
            await asyncio.sleep(1.0)
        result.answers.setdefault("keyed_dial", []).append(status)
        if status != 202:
            result.violations.append(f"keyed dial {key} answered {status}")
            return
        ids.add(answer.get("request_id"))
    result.keyed_dials += 1
    if len(ids) != 1:
        result.violations.append(f"keyed dial {key} got request ids {sorted(map(str, ids))}")
    status, _ = await _api_post(http, url, b'{"to": "15559990002", "permission": "check"}', headers)
    result.answers.setdefault("key_reused", []).append(status)
    if status not in (422, 503, 0):
        result.violations.append(f"key {key} reused with another body answered {status}")


async def _slow_wave(base_url: Callable[[], str], header_timeout_seconds: float, result: AbuseResult) -> None:
    """Connections that never finish their headers: the ingress must close every one of them itself."""
    from yarl import URL

    url = URL(base_url())
    opened = []
    for index in range(SLOW_CLIENTS_PER_WAVE):
        try:
            reader, writer = await asyncio.open_connection(url.host, url.port)
        except OSError:
            continue  # the ingress may be restarting: nothing to hold
        writer.write(b"POST /v1/calls HTTP/1.1\r\nHost: drill\r\nX-Slow-" + str(index).encode())
        opened.append((reader, writer))
    result.slow_clients += len(opened)
    for reader, writer in opened:
        try:
            async with asyncio.timeout(header_timeout_seconds + 15):
                await reader.read()  # b"" once the ingress closed it
        except TimeoutError:
            result.violations.append("a slow client was still connected after the header deadline")
        except OSError:
            pass  # reset: closed
        finally:
            writer.close()
