"""Meta's recordings and transcripts of ended calls: archived (optionally) and announced exactly once.

``call_recording_available`` and ``call_transcription_available`` arrive after the call's terminate (usually
within a minute), in any order, and like every webhook possibly more than once. The router sends each as a
:class:`~worker.events.CallMediaReady` to the quorum queue ``callhook.media``; this consumer turns it into
one lifecycle event on ``callhook.events``: ``call.recording.ready`` or ``call.transcript.ready``, matched
to its call by ``call_id``, saying where the file was archived (``CALLHOOK_ARCHIVE_DIR``,
:mod:`worker.archive`) and, for a transcript, its typed segments (:mod:`worker.transcript`).

Published once, and why that holds:

1. ``callhook.media`` has a *single active consumer*: whichever worker holds it judges every media event,
   one at a time (prefetch 1). Two copies of a webhook are never judged concurrently, by two workers or one.
2. The judgement is a broker-held marker: a durable queue ``callhook.media.seen.<sha256(call id, kind)>``
   that receives one message once the lifecycle event is confirmed. A copy finds the marker's
   ``message_count`` at 1 and is dropped (``callhook_media_ready_total{outcome="duplicate"}``). The marker
   expires (``x-expires``) 8 days after its last use: Meta's media live 7 days, so no copy can come later.
3. Order: archive, publish the event (confirmed, ``message_id`` = ``<call id>:<kind>.ready``, so a consumer
   can also drop a copy itself), put the marker (confirmed), then ack. A crash between the event and the
   marker republishes the event once on redelivery: the only window, documented in docs/platform-2026.md.

A download that fails for good (Meta unreachable, hash mismatch after retries) still publishes the event, with
``archived: false``, the error, Meta's media id and URL: the integrator can fetch it for 7 days.
"""

from __future__ import annotations

import hashlib
import logging
import time

import aio_pika
import msgspec
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from ingress import contract
from worker.amqp import AMQP_FAILURES, AmqpLink, Session, SessionServer, publish, settle
from worker.archive import Archived, Archiver
from worker.errors import TransientError
from worker.events import CallMediaReady, media_ready_decoder
from worker.metrics import WorkerMetrics
from worker.transcript import Transcript, TranscriptError, decode_transcript

log = logging.getLogger(__name__)

MARKER_EXPIRES_MS = 8 * 24 * 3600 * 1000
PUBLISH_TIMEOUT_SECONDS = 10.0


class MediaEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The body of ``call.recording.ready`` / ``call.transcript.ready`` (README, "Call lifecycle events")."""

    event: str  # recording.ready | transcript.ready
    call_id: str
    phone_number_id: str
    kind: str  # recording | transcript
    media_id: str
    timestamp: float
    webhook_timestamp: int
    caller: str = ""
    caller_user_id: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    url: str | None = None  # Meta's (short-lived) URL; the media id gets a fresh one for 7 days
    archived: bool = False
    archive_outcome: str | None = None  # archived | exists | hash_mismatch | failed; None: not archiving
    path: str | None = None
    metadata_path: str | None = None
    size_bytes: int | None = None
    sha256_verified: bool | None = None
    url_refreshed: bool | None = None
    error: str | None = None
    transcript: Transcript | None = None


_encoder = msgspec.json.Encoder()


def marker_queue(ready: CallMediaReady) -> str:
    digest = hashlib.sha256(f"{ready.call_id}\0{ready.kind}".encode()).hexdigest()[:40]
    return contract.MEDIA_SEEN_PREFIX + digest


def media_event(
    ready: CallMediaReady, archived: Archived | None, transcript: Transcript | None
) -> MediaEvent:
    return MediaEvent(
        event=f"{ready.kind}.ready",
        call_id=ready.call_id,
        phone_number_id=ready.phone_number_id,
        kind=ready.kind,
        media_id=ready.media_id,
        timestamp=round(time.time(), 3),
        webhook_timestamp=ready.timestamp,
        caller=ready.caller,
        caller_user_id=ready.caller_user_id,
        mime_type=ready.mime_type,
        sha256=ready.sha256,
        url=ready.url,
        archived=archived is not None and archived.ok,
        archive_outcome=archived.outcome if archived is not None else None,
        path=archived.path if archived is not None else None,
        metadata_path=archived.metadata_path if archived is not None else None,
        size_bytes=archived.size_bytes if archived is not None else None,
        sha256_verified=archived.sha256_verified if archived is not None else None,
        url_refreshed=archived.url_refreshed if archived is not None else None,
        error=archived.error if archived is not None else None,
        transcript=transcript,
    )


class MediaReadyConsumer(SessionServer):
    """``async with MediaReadyConsumer(link, archiver, metrics)``: judges ``callhook.media`` while it holds
    the queue's single active consumer (module docstring)."""

    def __init__(self, link: AmqpLink, archiver: Archiver | None, metrics: WorkerMetrics) -> None:
        super().__init__("media-ready", link, "media consumer")
        self._archiver = archiver
        self._metrics = metrics

    async def _serve(self, session: Session) -> None:
        channel = await session.channel(prefetch=1)
        try:
            queue = await channel.get_queue(contract.MEDIA_QUEUE, ensure=False)
            events = await channel.get_exchange(contract.EVENTS_EXCHANGE, ensure=False)

            async def on_message(message: AbstractIncomingMessage) -> None:
                try:
                    await self._handle(channel, events, message)
                except TransientError as exc:
                    log.warning("media event requeued", extra={"error": str(exc)})
                    await settle(message, ack=False, requeue=True)
                    session.abort(f"media consumer: {exc}")
                except Exception:  # a bug must not hold the queue (prefetch 1): keep the event for a human
                    log.exception("media event failed: dead-lettered")
                    self._metrics.dead_letters.labels(source="media", reason="error").inc()
                    await settle(message, ack=False, requeue=False)

            await queue.consume(on_message)
            await session.wait_lost()
        except AMQP_FAILURES as exc:
            raise TransientError(f"media consumer failed: {exc!r}") from exc
        finally:
            await session.close_channel(channel)

    async def _handle(
        self, channel: AbstractChannel, events: AbstractExchange, message: AbstractIncomingMessage
    ) -> None:
        try:
            ready = media_ready_decoder.decode(message.body)
        except msgspec.DecodeError as exc:
            log.warning("undecodable media event dead-lettered", extra={"error": str(exc)[:200]})
            self._metrics.dead_letters.labels(source="media", reason="undecodable").inc()
            await settle(message, ack=False, requeue=False)
            return
        marker = marker_queue(ready)
        try:
            declared = await channel.declare_queue(
                marker, durable=True, arguments={"x-expires": MARKER_EXPIRES_MS}
            )
        except AMQP_FAILURES as exc:
            raise TransientError(f"cannot declare the marker {marker}: {exc!r}") from exc
        result = declared.declaration_result
        if result.message_count:
            log.info("duplicate media event dropped", extra={"call_id": ready.call_id, "kind": ready.kind})
            self._metrics.media_ready.labels(kind=ready.kind, outcome="duplicate").inc()
            await settle(message, ack=True)
            return
        archived = await self._archiver.archive(ready) if self._archiver is not None else None
        transcript = _transcript(ready, archived)
        body = _encoder.encode(media_event(ready, archived, transcript))
        routing_key = f"call.{ready.kind}.ready"
        event = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=f"{ready.call_id}:{ready.kind}.ready",
        )
        await publish(events, event, routing_key, confirm_timeout_seconds=PUBLISH_TIMEOUT_SECONDS)
        done = aio_pika.Message(
            message.body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json"
        )
        await publish(channel.default_exchange, done, marker, confirm_timeout_seconds=PUBLISH_TIMEOUT_SECONDS)
        self._metrics.media_ready.labels(kind=ready.kind, outcome="published").inc()
        self._metrics.lifecycle_events.labels(event=routing_key).inc()
        await settle(message, ack=True)


def _transcript(ready: CallMediaReady, archived: Archived | None) -> Transcript | None:
    if ready.kind != "transcript" or archived is None or archived.content is None:
        return None
    try:
        return decode_transcript(archived.content)
    except TranscriptError as exc:
        log.warning("transcript not decodable", extra={"call_id": ready.call_id, "error": str(exc)})
        return None
