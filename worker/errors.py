"""callhook's exception tree. Each branch decides what happens to the message or call that raised it::

    CallhookError
    ├── PoisonMessage           can never be processed: dead-letter it with the reason, never requeue
    │   └── PoisonWebhook       webhook bytes that do not decode as Meta's envelope
    ├── TransientError          may work later: requeue, retry with backoff
    └── GraphError              the Graph API refused or failed (``code`` is Meta's error code, if any)
        ├── GraphRetryable      throttled, 5xx, connection error: safe to retry within the deadline
        ├── GraphRefused        a definite no for this request (bad parameter, cannot be called, no
        │                       permission, limits): do not retry, record the outcome
        ├── GraphAuthError      token invalid or expired (190): alert, nothing will work
        └── GraphUnknownOutcome the request may or may not have taken effect (timeout after sending):
                                never retried for ``connect``

Defined beside the code that raises them, under the same root:
    CallhookError
    ├── worker.media.MediaError         the call's media failed: before accept → reject, after → terminate
    │   ├── UnusableSdp                 an offer/answer we cannot use (the caller's problem, counted)
    │   ├── MediaConnectTimeout         ICE+DTLS not connected in time
    │   └── MediaConnectFailed          the connection failed before connecting
    ├── worker.apps.api.CallEnded       an app sent audio after its call ended
    └── worker.apps.loader.AppSpecError CALLHOOK_APP (or a dial's app) cannot be loaded: fails start-up

Library exceptions (aiohttp, aio-pika, aiortc) are translated into these at the module that calls the library,
with ``raise ... from exc``.
"""

from __future__ import annotations


class CallhookError(Exception):
    """Base of every error callhook raises on purpose."""


class PoisonMessage(CallhookError):
    """The message can never be processed; ``reason`` is short and safe to put in a header."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PoisonWebhook(PoisonMessage):
    """Webhook bytes that are not a decodable WhatsApp Business Account envelope."""


class TransientError(CallhookError):
    """A failure that may go away: the message is requeued or the operation retried."""


class GraphError(CallhookError):
    """The Graph API did not do what was asked."""

    def __init__(
        self, message: str, *, action: str, code: int | None = None, http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.action = action
        self.code = code
        self.http_status = http_status


class GraphRetryable(GraphError):
    """Throttled, server error or connection failure: safe to retry while the deadline allows."""

    def __init__(
        self,
        message: str,
        *,
        action: str,
        code: int | None = None,
        http_status: int | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message, action=action, code=code, http_status=http_status)
        self.retry_after_seconds = retry_after_seconds


class GraphRefused(GraphError):
    """A definite refusal (invalid parameter, receiver cannot be called, no permission, limits)."""


class GraphAuthError(GraphError):
    """The access token is invalid or expired (code 190)."""


class GraphUnknownOutcome(GraphError):
    """The request may have taken effect (timed out after it was sent)."""
