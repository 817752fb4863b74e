"""The drill's load besides the calls: non-call webhooks through the simulator, and a side stream of junk.

- :func:`message_stream` submits ``messages`` webhooks (a user's text message) through the simulator's
  sender, at a rate: they are signed, retried, duplicated and batched like every other delivery. Each carries
  a marker (``drill-<run>-msg-<n>``) in its message id and text, which the router passes on byte for byte to
  ``callhook.events``, where the drill's audit queue sees it.
- :func:`junk_stream` POSTs straight to the ingress, bypassing the simulator: bodies that are signed but
  poison (not JSON, cut short, another ``object``), which the ingress must store (200) and the router must
  dead-letter, and bodies with a wrong or missing signature, which must get 401 and never reach the broker.
  Each carries a marker too. A poison body answered 503 (broker away) is retried like Meta would.
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
