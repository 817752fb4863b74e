"""The Graph API client: the calling actions, call permissions, and what to do when Meta says no.

Every error is classified by Meta's error ``code`` (:data:`ERROR_CODES`), never by HTTP status alone:
138000 and 138006 arrive as 401 without being token problems. Retries follow two rules:

* only :class:`GraphRetryable` errors are retried, with exponential backoff and jitter (or Meta's hint),
  and never past the caller's ``deadline`` (a :func:`time.monotonic` instant): the last attempt's timeout
  is clipped to the time left, and a wait that would end after the deadline is not started;
* a request whose outcome is unknown (timed out or cut off after it was sent) is retried only when
  repeating it is harmless: ``pre_accept``/``accept``/``reject``/``terminate`` name the call they act on
  and ``call_permissions`` only reads; ``connect`` places a new call and the permission request sends a
  message, so those are retried only when they certainly did not happen (refused connection, throttled).
  A 5xx answer to ``connect`` counts as unknown: Meta may have placed the call before failing.

The access token is sent in the ``Authorization`` header and appears nowhere else: not in logs, errors
or repr.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import aiohttp
import msgspec

from worker.capture import Capture
from worker.config import WorkerConfig
from worker.errors import (
    GraphAuthError,
    GraphError,
    GraphRefused,
    GraphRetryable,
    GraphUnknownOutcome,
)
from worker.meta_codes import describe
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S")

# Meta error code -> (class, short reason). Codes not listed: 5xx -> retryable, anything else -> refused.
ERROR_CODES: dict[int, tuple[type[GraphError], str]] = {
    4: (GraphRetryable, "throttled: app request limit"),
    613: (GraphRetryable, "throttled: rate limit"),
    80007: (GraphRetryable, "throttled: WABA rate limit"),
    130429: (GraphRetryable, "throttled: Cloud API throughput"),
    138002: (GraphRetryable, "1,000 concurrent calls per number reached"),
    138004: (GraphRetryable, "connection error at Meta"),
    190: (GraphAuthError, "access token invalid or expired"),
    100: (GraphRefused, "invalid parameter"),
    131055: (GraphRefused, "calling API refused: number uses SIP"),
    138000: (GraphRefused, "calling not enabled for the number"),
    138001: (GraphRefused, "receiver cannot be called"),
    # 138003: retrying while the other call lasts would hold the caller's deadline for nothing.
    138003: (GraphRefused, "a call with this user is already ongoing"),
    # 138005: the 24 h initiation limit does not reset within any deadline we hold.
    138005: (GraphRefused, "call rate limit reached"),
    138006: (GraphRefused, "no call permission from the user"),
    138007: (GraphRefused, "connect timeout: offer/answer not applied in time"),
    138009: (GraphRefused, "permission request limit reached"),
    138012: (GraphRefused, "business-initiated calls per user limit reached"),
    138013: (GraphRefused, "business-initiated calling unavailable for this number"),
    138014: (GraphRefused, "calling temporarily disabled for low quality"),
    138017: (GraphRefused, "permanent permission exists already"),
    # 2026 reference: the rest of the calling codes (worker/meta_codes.py names them and says what to do)
    131009: (GraphRefused, "interactive voice_call not supported"),
    131026: (GraphRefused, "recipient's app is too old"),
    131030: (GraphRefused, "recipient not on the test number's allowed list"),
    131044: (GraphRefused, "no valid payment method"),
    138015: (GraphRefused, "calling cannot be enabled: messaging limit under 2000"),
    138018: (GraphRefused, "technical prerequisites not met (SIP, or calls subscription)"),
}

Action = Literal[
    "pre_accept",
    "accept",
    "reject",
    "terminate",
    "connect",
    "call_permissions",
    "permission_request",
    "media",
    "media_download",
    "settings",
    "settings_update",
]
# Actions that may be repeated when an attempt's outcome is unknown (see the module docstring). A settings
# update writes the same whole object again: repeating it is harmless.
REPEATABLE: frozenset[str] = frozenset(
    {"pre_accept", "accept", "reject", "terminate", "call_permissions", "media", "media_download"}
    | {"settings", "settings_update"}
)


@dataclass(frozen=True, slots=True)
class GraphSettings:
    graph_url: str = "https://graph.facebook.com"
    graph_version: str = "v23.0"
    access_token: str = field(default="", repr=False)
    timeout_seconds: float = 5.0
    max_attempts: int = 5
    backoff_base_seconds: float = 0.25
    backoff_max_seconds: float = 4.0
    # Deadline of the calls that take none (connect, permissions), from the moment they are made.
    default_deadline_seconds: float = 15.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.timeout_seconds <= 0:
            raise ValueError("max_attempts must be >= 1 and timeout_seconds > 0")

    @classmethod
    def from_config(cls, config: WorkerConfig) -> GraphSettings:
        return cls(
            graph_url=config.graph_url,
            graph_version=config.graph_version,
            access_token=config.access_token,
            timeout_seconds=config.graph_timeout_seconds,
        )


# ------------------------------------------------------------------------------------------------ wire types
class _Session(msgspec.Struct, frozen=True, kw_only=True):
    sdp_type: str
    sdp: str


# ``omit_defaults`` leaves out only the optional fields (None); constants are passed explicitly so they are
# always written.
class _Consent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Meta's ``recording`` / ``transcription`` opt-in object (worker/capture.py)."""

    status: str
    purpose: str | None = None
    announcement_language: str | None = None


class _CallAction(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    messaging_product: str
    call_id: str
    action: str
    session: _Session | None = None
    biz_opaque_callback_data: str | None = None
    # only ever set on accept: Meta refuses the opt-in anywhere else, and never on pre_accept
    recording: _Consent | None = None
    transcription: _Consent | None = None


class _ConnectBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    messaging_product: str
    action: str
    session: _Session
    to: str | None = None  # the user's phone number, and/or
    recipient: str | None = None  # their business-scoped user id (BSUID): a username-only user has no number
    biz_opaque_callback_data: str | None = None
    recording: _Consent | None = None
    transcription: _Consent | None = None


class _Text(msgspec.Struct, frozen=True):
    text: str


class _Name(msgspec.Struct, frozen=True):
    name: str


class _PermissionInteractive(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    type: str
    action: _Name
    body: _Text | None = None


class _PermissionMessage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    messaging_product: str
    recipient_type: str
    type: str
    interactive: _PermissionInteractive
    to: str | None = None
    recipient: str | None = None  # a username-only user's id (Meta: when both are given, ``to`` wins)


WHATSAPP = "whatsapp"
MAX_MEDIA_BYTES = 512 * 1024 * 1024  # a recording or transcript; Meta's media limit is far below


class _Success(msgspec.Struct, frozen=True):
    success: bool


class _Id(msgspec.Struct, frozen=True):
    id: str


class _Calls(msgspec.Struct, frozen=True):
    calls: list[_Id]


class _Messages(msgspec.Struct, frozen=True):
    messages: list[_Id]


class _Permission(msgspec.Struct, frozen=True):
    status: str
    expiration_time: int | None = None
    expiration: int | None = None  # the field table's name for expiration_time


class _Limit(msgspec.Struct, frozen=True):
    time_period: str = ""
    max_allowed: int | None = None
    current_usage: int | None = None
    limit_expiration_time: int | None = None


class _PermissionActionStatus(msgspec.Struct, frozen=True):
    action_name: str
    can_perform_action: bool
    limits: list[_Limit] = []


class _Permissions(msgspec.Struct, frozen=True):
    permission: _Permission
    actions: list[_PermissionActionStatus] = []


class _MediaInfo(msgspec.Struct, frozen=True):
    url: str
    id: str = ""
    mime_type: str | None = None
    sha256: str | None = None
    file_size: int | None = None


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """``GET /<MEDIA_ID>``: a fresh short-lived URL for a media id (a recording, a transcript)."""

    url: str
    mime_type: str | None
    sha256: str | None  # base64, as in the webhook
    file_size: int | None


class _ErrorData(msgspec.Struct, frozen=True):
    details: str | None = None


class _ErrorBody(msgspec.Struct, frozen=True):
    message: str = ""
    code: int | None = None
    error_subcode: int | None = None
    type: str = ""
    error_data: _ErrorData | None = None


class _ErrorEnvelope(msgspec.Struct, frozen=True):
    error: _ErrorBody


class _UsageEntry(msgspec.Struct, frozen=True):
    estimated_time_to_regain_access: int = 0  # minutes


_encoder = msgspec.json.Encoder()
_error_decoder = msgspec.json.Decoder(_ErrorEnvelope)
_success_decoder = msgspec.json.Decoder(_Success)
_calls_decoder = msgspec.json.Decoder(_Calls)
_messages_decoder = msgspec.json.Decoder(_Messages)
_permissions_decoder = msgspec.json.Decoder(_Permissions)
_media_decoder = msgspec.json.Decoder(_MediaInfo)
_object_decoder = msgspec.json.Decoder(dict[str, Any])
_usage_decoder = msgspec.json.Decoder(dict[str, list[_UsageEntry]])


@dataclass(frozen=True, slots=True)
class ActionLimit:
    """One ``actions[].limits[]`` entry: ``max_allowed`` per ``time_period`` (ISO 8601, e.g. PT24H)."""

    action: str
    time_period: str
    max_allowed: int | None
    current_usage: int | None
    limit_expiration_time: int | None  # when the limit frees again (only while it is reached)


@dataclass(frozen=True, slots=True)
class PermissionStatus:
    """``GET call_permissions``: may the business call this user, and may it ask."""

    status: str  # "no_permission" | "temporary" | "permanent" | whatever Meta adds (lower case)
    expiration_time: int | None
    can_start_call: bool | None  # None when Meta did not say
    can_request_permission: bool | None
    limits: tuple[ActionLimit, ...] = ()

    def blocking_limits(self, action: str) -> list[ActionLimit]:
        """The limits of ``action`` that are reached (why Meta says it cannot be performed)."""
        return [
            limit
            for limit in self.limits
            if limit.action == action
            and limit.max_allowed is not None
            and limit.current_usage is not None
            and limit.current_usage >= limit.max_allowed
        ]

    def start_call_refusal(self) -> str | None:
        """None when a call may be placed now, else why not (status, reached limits and when they free)."""
        if self.status not in ("temporary", "permanent"):
            return f"call permission is {self.status}"
        if self.can_start_call is not False:
            return None
        reached = self.blocking_limits("start_call")
        if not reached:
            return "Meta says start_call cannot be performed now"
        parts = [
            f"{limit.current_usage}/{limit.max_allowed} calls per {limit.time_period}"
            + (f" until {limit.limit_expiration_time}" if limit.limit_expiration_time else "")
            for limit in reached
        ]
        return "start_call limit reached: " + ", ".join(parts)


class _TransportUnknown(GraphUnknownOutcome):
    """Timed out or cut off after sending: repeatable actions may try again."""


class _Malformed(GraphUnknownOutcome):
    """A 2xx answer that does not say what Meta promises: raised, never retried."""


# ----------------------------------------------------------------------------------------------- the client
class GraphClient:
    """One per worker process, sharing one aiohttp session (passed in, or owned and closed by close())."""

    def __init__(
        self,
        settings: GraphSettings,
        *,
        metrics: WorkerMetrics | None = None,
        session: aiohttp.ClientSession | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._session = session
        self._owns_session = session is None
        self._jitter = jitter
        self._closed = False
        self._base = f"{settings.graph_url.rstrip('/')}/{settings.graph_version}"

    def __repr__(self) -> str:
        return f"GraphClient(base={self._base!r}, closed={self._closed})"

    async def __aenter__(self) -> Self:
        self._http()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()

    # ---------------------------------------------------------------------------------- calling actions
    async def pre_accept(self, phone_number_id: str, call_id: str, sdp: str, *, deadline: float) -> None:
        body = _CallAction(
            messaging_product=WHATSAPP,
            call_id=call_id,
            action="pre_accept",
            session=_Session(sdp_type="answer", sdp=sdp),
        )
        await self._calls_action("pre_accept", phone_number_id, body, deadline)

    async def accept(
        self,
        phone_number_id: str,
        call_id: str,
        sdp: str,
        *,
        deadline: float,
        biz_opaque_callback_data: str | None = None,
        capture: Capture | None = None,
    ) -> None:
        recording, transcription = _consents(capture)
        body = _CallAction(
            messaging_product=WHATSAPP,
            call_id=call_id,
            action="accept",
            session=_Session(sdp_type="answer", sdp=sdp),
            biz_opaque_callback_data=biz_opaque_callback_data,
            recording=recording,
            transcription=transcription,
        )
        await self._calls_action("accept", phone_number_id, body, deadline)

    async def reject(self, phone_number_id: str, call_id: str, *, deadline: float) -> None:
        body = _CallAction(messaging_product=WHATSAPP, call_id=call_id, action="reject")
        await self._calls_action("reject", phone_number_id, body, deadline)

    async def terminate(self, phone_number_id: str, call_id: str, *, deadline: float) -> None:
        body = _CallAction(messaging_product=WHATSAPP, call_id=call_id, action="terminate")
        await self._calls_action("terminate", phone_number_id, body, deadline)

    async def connect(
        self,
        phone_number_id: str,
        to: str,
        sdp: str,
        *,
        biz_opaque_callback_data: str | None = None,
        deadline: float | None = None,
        recipient: str | None = None,
        capture: Capture | None = None,
    ) -> str:
        """Place a call to ``to`` (phone number) and/or ``recipient`` (user id); returns Meta's call id.
        Never repeated once it may have reached Meta."""
        if not to and not recipient:
            raise ValueError("connect needs a phone number (to) or a user id (recipient)")
        recording, transcription = _consents(capture)
        body = _ConnectBody(
            messaging_product=WHATSAPP,
            action="connect",
            to=to or None,
            recipient=recipient or None,
            session=_Session(sdp_type="offer", sdp=sdp),
            biz_opaque_callback_data=biz_opaque_callback_data,
            recording=recording,
            transcription=transcription,
        )
        url = f"{self._base}/{phone_number_id}/calls"
        return await self._with_retries(
            "connect", "POST", url, _encoder.encode(body), self._deadline(deadline), _call_id
        )

    # -------------------------------------------------------------------------------------- permissions
    async def call_permissions(
        self, phone_number_id: str, user_wa_id: str, *, deadline: float | None = None, recipient: str = ""
    ) -> PermissionStatus:
        """``user_wa_id`` (a phone number) or, for a user known only by user id, ``recipient``."""
        url = f"{self._base}/{phone_number_id}/call_permissions"
        params = {"user_wa_id": user_wa_id} if user_wa_id else {"recipient": recipient}
        return await self._with_retries(
            "call_permissions",
            "GET",
            url,
            None,
            self._deadline(deadline),
            _permission_status,
            params=params,
        )

    async def send_permission_request(
        self,
        phone_number_id: str,
        to: str,
        body_text: str | None = None,
        *,
        deadline: float | None = None,
        recipient: str = "",
    ) -> str:
        """Send the interactive call-permission request; returns the message id."""
        interactive = _PermissionInteractive(
            type="call_permission_request",
            action=_Name("call_permission_request"),
            body=_Text(body_text) if body_text else None,
        )
        message = _PermissionMessage(
            messaging_product=WHATSAPP,
            recipient_type="individual",
            to=to or None,
            recipient=None if to else recipient or None,
            type="interactive",
            interactive=interactive,
        )
        url = f"{self._base}/{phone_number_id}/messages"
        return await self._with_retries(
            "permission_request", "POST", url, _encoder.encode(message), self._deadline(deadline), _message_id
        )

    # ---------------------------------------------------------------------------------------- settings
    async def settings(self, phone_number_id: str, *, deadline: float | None = None) -> dict[str, Any]:
        """``GET /<PHONE_NUMBER_ID>/settings``: the number's settings (``calling`` among them)."""
        url = f"{self._base}/{phone_number_id}/settings"
        return await self._with_retries("settings", "GET", url, None, self._deadline(deadline), _json_object)

    async def update_settings(
        self, phone_number_id: str, calling: dict[str, Any], *, deadline: float | None = None
    ) -> None:
        """``POST /<PHONE_NUMBER_ID>/settings`` with ``{"calling": ...}`` (each member replaced whole)."""
        url = f"{self._base}/{phone_number_id}/settings"
        body = msgspec.json.encode({"calling": calling})
        await self._with_retries("settings_update", "POST", url, body, self._deadline(deadline), _success)

    # ------------------------------------------------------------------------------------------- media
    async def media(self, media_id: str, *, deadline: float | None = None) -> MediaInfo:
        """A fresh download URL for ``media_id`` (Meta's webhook URLs expire after 5 minutes)."""
        url = f"{self._base}/{media_id}"
        return await self._with_retries("media", "GET", url, None, self._deadline(deadline), _media_info)

    async def download(
        self, url: str, *, deadline: float | None = None, max_bytes: int = MAX_MEDIA_BYTES
    ) -> bytes:
        """The bytes behind a media URL, fetched with the token (Meta's lookaside URLs require it).

        One attempt, streamed, bounded by ``deadline`` (not by the per-request timeout: an hour of Opus is
        tens of megabytes) and by ``max_bytes`` (not by the JSON answers' size limit). The archiver retries,
        and asks for a fresh URL when this one is refused."""
        action: Action = "media_download"
        started = time.perf_counter()
        remaining = self._deadline(deadline) - time.monotonic()
        headers = {"Authorization": f"Bearer {self._settings.access_token}"}
        try:
            async with asyncio.timeout(max(0.1, remaining)):
                async with self._http().get(url, headers=headers, allow_redirects=True) as response:
                    if not 200 <= response.status < 300:
                        error = _classify(action, response.status, await response.content.read(65536), None)
                        self._observe(action, _outcome_of(error), started, _code_label(error))
                        raise error
                    chunks, size = [], 0
                    async for chunk in response.content.iter_chunked(1 << 16):
                        size += len(chunk)
                        if size > max_bytes:
                            raise GraphRefused(f"{action}: media over {max_bytes} bytes", action=action)
                        chunks.append(chunk)
        except aiohttp.ClientConnectorError as exc:
            self._observe(action, "retryable", started, "connection")
            raise GraphRetryable(f"{action}: cannot connect: {exc.os_error}", action=action) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._observe(action, "retryable", started, "timeout")
            raise GraphRetryable(
                f"{action}: no complete answer: {type(exc).__name__}", action=action
            ) from exc
        self._observe(action, "ok", started, None)
        return b"".join(chunks)

    # ------------------------------------------------------------------------------------------ plumbing
    def _deadline(self, deadline: float | None) -> float:
        return (
            deadline if deadline is not None else time.monotonic() + self._settings.default_deadline_seconds
        )

    async def _calls_action(
        self, action: Action, phone_number_id: str, body: _CallAction, deadline: float
    ) -> None:
        url = f"{self._base}/{phone_number_id}/calls"
        await self._with_retries(action, "POST", url, _encoder.encode(body), deadline, _success)

    async def _with_retries(
        self,
        action: Action,
        method: str,
        url: str,
        body: bytes | None,
        deadline: float,
        parse: Callable[[Action, bytes], T],
        params: dict[str, str] | None = None,
    ) -> T:
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GraphRetryable(f"{action}: deadline passed before attempt {attempt}", action=action)
            try:
                timeout_seconds = min(remaining, self._settings.timeout_seconds)
                return await self._attempt(action, method, url, body, params, timeout_seconds, parse)
            except (GraphRetryable, _TransportUnknown) as exc:
                delay = self._retry_delay(action, exc, attempt, deadline)
                if delay is None:
                    raise
                log.warning(
                    "graph request failed, retrying",
                    extra={
                        "action": action,
                        "attempt": attempt,
                        "code": exc.code,
                        "retry_in_s": round(delay, 3),
                    },
                )
                await asyncio.sleep(delay)

    def _retry_delay(self, action: Action, exc: GraphError, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before the next attempt, or None when this error must be raised now."""
        if isinstance(exc, _TransportUnknown) and action not in REPEATABLE:
            return None
        if attempt >= self._settings.max_attempts:
            return None
        s = self._settings
        backoff = min(s.backoff_max_seconds, s.backoff_base_seconds * 2.0 ** (attempt - 1))
        delay = backoff * (0.5 + 0.5 * self._jitter())
        hint: float | None = exc.retry_after_seconds if isinstance(exc, GraphRetryable) else None
        if hint is not None:
            delay = max(delay, hint)
        if time.monotonic() + delay >= deadline:
            return None
        return delay

    async def _attempt(
        self,
        action: Action,
        method: str,
        url: str,
        body: bytes | None,
        params: dict[str, str] | None,
        timeout_seconds: float,
        parse: Callable[[Action, bytes], T],
    ) -> T:
        started = time.perf_counter()
        try:
            result = parse(action, await self._send(action, method, url, body, params, timeout_seconds))
        except GraphError as exc:
            self._observe(action, _outcome_of(exc), started, _code_label(exc))
            if exc.code is not None and self._metrics is not None:
                known = describe(exc.code)
                self._metrics.meta_errors.labels(name=known.name, action=known.action.value).inc()
            raise
        self._observe(action, "ok", started, None)
        return result

    async def _send(
        self,
        action: Action,
        method: str,
        url: str,
        body: bytes | None,
        params: dict[str, str] | None,
        timeout_seconds: float,
    ) -> bytes:
        headers = {"Authorization": f"Bearer {self._settings.access_token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with asyncio.timeout(timeout_seconds):
                async with self._http().request(
                    method, url, data=body, params=params, headers=headers, allow_redirects=False
                ) as response:
                    raw = await _read_capped(response.content, MAX_RESPONSE_BYTES)
                    status = response.status
                    retry_after = _retry_after(response.headers)
        except ResponseTooLarge as exc:
            raise _TransportUnknown(f"{action}: answer too large", action=action) from exc
        except aiohttp.ClientConnectorError as exc:
            # Failed to open a connection: the request never left, so any action may try again.
            raise GraphRetryable(f"{action}: cannot connect: {exc.os_error}", action=action) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _TransportUnknown(f"{action}: no answer: {type(exc).__name__}", action=action) from exc
        if 200 <= status < 300:
            return raw
        raise _classify(action, status, raw, retry_after)

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("GraphClient is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    def _observe(self, action: Action, outcome: str, started: float, code: str | None) -> None:
        if self._metrics is None:
            return
        self._metrics.graph_duration.labels(action, outcome).observe(time.perf_counter() - started)
        if code is not None:
            self._metrics.graph_errors.labels(action, code).inc()


def _classify(action: Action, status: int, raw: bytes, retry_after: float | None) -> GraphError:
    """Turn a non-2xx answer into the error that says what to do, by Meta's code first."""
    try:
        error: _ErrorBody | None = _error_decoder.decode(raw).error
    except msgspec.DecodeError:
        error = None
    code = error.code if error else None
    text = f"{action}: HTTP {status}" + (f", code {code}: {error.message}" if error else "")
    if error is not None and error.error_data is not None and error.error_data.details:
        text = f"{text} [{error.error_data.details[:300]}]"
    known = ERROR_CODES.get(code) if code is not None else None
    if known is not None:
        cls, reason = known
        text = f"{text} ({reason})"
        if cls is GraphRetryable:
            return GraphRetryable(
                text, action=action, code=code, http_status=status, retry_after_seconds=retry_after
            )
        return cls(text, action=action, code=code, http_status=status)
    if status >= 500 or status == 429:
        if action == "connect" and status >= 500:
            # A server error after Meta read the request may hide a placed call: never repeated.
            return GraphUnknownOutcome(text, action=action, code=code, http_status=status)
        return GraphRetryable(
            text, action=action, code=code, http_status=status, retry_after_seconds=retry_after
        )
    if status == 401 and code is None:
        return GraphAuthError(text, action=action, http_status=status)
    return GraphRefused(text, action=action, code=code, http_status=status)


# Parsers of 2xx bodies: a body that does not say what Meta promises is an unknown outcome, never ignored.
def _decode(action: Action, decoder: msgspec.json.Decoder[S], raw: bytes) -> S:
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise _Malformed(f"{action}: unexpected success body: {exc}", action=action) from exc


def _success(action: Action, raw: bytes) -> None:
    if not _decode(action, _success_decoder, raw).success:
        raise _Malformed(f"{action}: answered success=false", action=action)


def _call_id(action: Action, raw: bytes) -> str:
    calls = _decode(action, _calls_decoder, raw).calls
    if not calls or not calls[0].id:
        raise _Malformed(f"{action}: answered without a call id", action=action)
    return calls[0].id


def _message_id(action: Action, raw: bytes) -> str:
    messages = _decode(action, _messages_decoder, raw).messages
    if not messages or not messages[0].id:
        raise _Malformed(f"{action}: answered without a message id", action=action)
    return messages[0].id


def _permission_status(action: Action, raw: bytes) -> PermissionStatus:
    decoded = _decode(action, _permissions_decoder, raw)
    can = {a.action_name: a.can_perform_action for a in decoded.actions}
    permission = decoded.permission
    return PermissionStatus(
        status=permission.status.lower(),
        expiration_time=permission.expiration_time
        if permission.expiration_time is not None
        else permission.expiration,
        can_start_call=can.get("start_call"),
        can_request_permission=can.get("send_call_permission_request"),
        limits=tuple(
            ActionLimit(a.action_name, x.time_period, x.max_allowed, x.current_usage, x.limit_expiration_time)
            for a in decoded.actions
            for x in a.limits
        ),
    )


def _json_object(action: Action, raw: bytes) -> dict[str, Any]:
    return _decode(action, _object_decoder, raw)


def _media_info(action: Action, raw: bytes) -> MediaInfo:
    info = _decode(action, _media_decoder, raw)
    return MediaInfo(url=info.url, mime_type=info.mime_type, sha256=info.sha256, file_size=info.file_size)


def _consents(capture: Capture | None) -> tuple[_Consent | None, _Consent | None]:
    if capture is None:
        return None, None
    fields = capture.validated().body_fields()
    recording, transcription = fields.get("recording"), fields.get("transcription")
    return (
        _Consent(**recording) if recording is not None else None,
        _Consent(**transcription) if transcription is not None else None,
    )


def _retry_after(headers: Any) -> float | None:
    """Meta's wait hint: ``Retry-After`` seconds, or the use-case header's minutes to regain access."""
    value = headers.get("Retry-After")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None
    usage = headers.get("X-Business-Use-Case-Usage")
    if usage is None:
        return None
    try:
        entries = _usage_decoder.decode(usage)
    except msgspec.DecodeError:
        return None
    minutes = [e.estimated_time_to_regain_access for group in entries.values() for e in group]
    return max(minutes) * 60.0 if minutes and max(minutes) > 0 else None


def _outcome_of(exc: GraphError) -> str:
    if isinstance(exc, GraphRetryable):
        return "retryable"
    if isinstance(exc, GraphAuthError):
        return "auth"
    if isinstance(exc, GraphUnknownOutcome):
        return "unknown"
    return "refused"


def _code_label(exc: GraphError) -> str:
    if exc.code is not None:
        return str(exc.code)
    if exc.http_status is not None:
        return f"http_{exc.http_status}"
    if isinstance(exc, _Malformed):
        return "malformed"
    return "timeout" if isinstance(exc, _TransportUnknown) else "connection"


# Graph answers are a few hundred bytes; anything near this is not Meta's, and is not buffered.
MAX_RESPONSE_BYTES = 1_048_576


class ResponseTooLarge(Exception):
    pass


async def _read_capped(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, or :class:`ResponseTooLarge` as soon as more than ``limit`` bytes arrived."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.readany():
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)
