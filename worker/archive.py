"""Keeping Meta's recordings and transcripts: download in time, verify, write atomically, once.

Meta deletes a call's recording and transcript 7 days after its webhook, and the webhook's URL works for only
5 minutes. With ``CALLHOOK_ARCHIVE_DIR`` set, each ``call_recording_available`` /
``call_transcription_available`` is archived as::

    <dir>/<phone_number_id>/<YYYY-MM-DD of the webhook, UTC>/<call id, path-safe>/
        recording.ogg          Meta's Ogg/Opus file, byte for byte
        recording.meta.json    what it is: call id, media id, sha256, size, mime type, when, from which URL
        transcript.json        Meta's transcript document, byte for byte
        transcript.meta.json

How, and why:

- **in time**: the webhook's URL is used only while it is younger than its 5 minutes (less a margin, measured
  from the webhook's ``timestamp``); otherwise, or when the download is refused (expired, 4xx), a fresh URL
  is fetched by media id (``GET /<MEDIA_ID>``) and used instead;
- **verified**: the SHA-256 of the bytes (base64, as Meta writes it) must equal the webhook's (or the fresh
  URL's) hash; a mismatch is retried with a fresh URL, then reported, never written;
- **atomically**: each file is written to a temporary name in the same directory, flushed to disk, then
  renamed; the metadata file is written last, so its presence means the data file beside it is complete;
- **idempotently**: a data file already there with the expected hash is not downloaded again (a duplicate
  webhook, a redelivery after a crash);
- **with retries**: up to ``attempts`` downloads with exponential backoff; Graph errors keep the client's
  own retry rules (worker/graph.py).

Every outcome is counted in ``callhook_archive_total{kind,outcome}``: ``archived``, ``exists``,
``hash_mismatch``, ``failed``; fresh URLs in ``callhook_archive_url_refreshes_total{kind}``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from worker.errors import GraphError, GraphRetryable
from worker.events import CallMediaReady
from worker.graph import MediaInfo
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

URL_LIFETIME_SECONDS = 300.0  # Meta: the webhook's URL lasts 5 minutes
URL_MARGIN_SECONDS = 30.0  # not started in the last 30 s of it: a slow download would outlive the URL
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")
FILES = {
    "recording": ("recording.ogg", "recording.meta.json"),
    "transcript": ("transcript.json", "transcript.meta.json"),
}


class Fetcher(Protocol):
    """What the archiver needs of the Graph API client."""

    async def media(self, media_id: str, *, deadline: float | None = None) -> MediaInfo: ...

    async def download(self, url: str, *, deadline: float | None = None) -> bytes: ...


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    root: Path
    attempts: int = 4
    backoff_seconds: float = 0.5
    download_deadline_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class Archived:
    """The outcome of archiving one media file (published in the lifecycle event)."""

    outcome: str  # archived | exists | hash_mismatch | failed
    path: str | None = None
    metadata_path: str | None = None
    size_bytes: int | None = None
    sha256_verified: bool = False
    url_refreshed: bool = False
    error: str | None = None
    content: bytes | None = None  # the file's bytes (the transcript is decoded from them)

    @property
    def ok(self) -> bool:
        return self.outcome in ("archived", "exists")


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def call_folder(root: Path, ready: CallMediaReady) -> Path:
    """Where a call's media go: by business number, UTC day of the webhook, path-safe call id."""
    day = datetime.fromtimestamp(ready.timestamp or time.time(), UTC).strftime("%Y-%m-%d")
    number = _UNSAFE.sub("_", ready.phone_number_id) or "unknown"
    call = _UNSAFE.sub("_", ready.call_id)[:200] or "unknown"
    return root / number / day / call


def paths(root: Path, ready: CallMediaReady) -> tuple[Path, Path]:
    data_name, meta_name = FILES[ready.kind]
    folder = call_folder(root, ready)
    return folder / data_name, folder / meta_name


def write_atomically(path: Path, data: bytes) -> None:
    """Temporary file in the same directory, fsync, rename over ``path`` (readers see all or nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    tmp.replace(path)


def _existing(data_path: Path, meta_path: Path, expected: str | None) -> bytes | None:
    """The archived bytes if both files are there and the data has the expected hash."""
    if not (data_path.is_file() and meta_path.is_file()):
        return None
    data = data_path.read_bytes()
    if expected is not None and sha256_b64(data) != expected:
        return None
    return data


class Archiver:
    def __init__(
        self,
        settings: ArchiveSettings,
        fetcher: Fetcher,
        metrics: WorkerMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._fetcher = fetcher
        self._metrics = metrics
        self._clock = clock

    async def archive(self, ready: CallMediaReady) -> Archived:
        result = await self._archive(ready)
        self._metrics.archive.labels(kind=ready.kind, outcome=result.outcome).inc()
        if result.url_refreshed:
            self._metrics.archive_url_refreshes.labels(kind=ready.kind).inc()
        log.info(
            "media archived" if result.ok else "media not archived",
            extra={
                "call_id": ready.call_id,
                "kind": ready.kind,
                "outcome": result.outcome,
                "error": result.error,
            },
        )
        return result

    async def _archive(self, ready: CallMediaReady) -> Archived:
        data_path, meta_path = paths(self._settings.root, ready)
        existing = await asyncio.to_thread(_existing, data_path, meta_path, ready.sha256)
        if existing is not None:
            return Archived(
                "exists",
                str(data_path),
                str(meta_path),
                len(existing),
                ready.sha256 is not None,
                content=existing,
            )
        url = ready.url if self._url_fresh(ready) else None
        expected, refreshed, outcome, error = ready.sha256, False, "failed", "no attempt made"
        for attempt in range(1, self._settings.attempts + 1):
            if attempt > 1:
                await asyncio.sleep(self._settings.backoff_seconds * 2 ** (attempt - 2))
            try:
                if url is None:
                    info = await self._fetcher.media(ready.media_id)
                    url, refreshed = info.url, True
                    expected = info.sha256 or expected
                data = await self._fetcher.download(
                    url, deadline=time.monotonic() + self._settings.download_deadline_seconds
                )
            except GraphRetryable as exc:
                outcome, error = "failed", str(exc)
                continue
            except GraphError as exc:  # refused, expired, unknown: a fresh URL by media id next time
                outcome, error, url = "failed", str(exc), None
                continue
            if expected is not None and sha256_b64(data) != expected:
                outcome, error, url = "hash_mismatch", "SHA-256 of the download differs from Meta's", None
                continue
            metadata = self._metadata(ready, data, expected, refreshed)
            try:
                await asyncio.to_thread(write_atomically, data_path, data)
                await asyncio.to_thread(write_atomically, meta_path, metadata)
            except (
                OSError
            ) as exc:  # full, read-only, gone: the next attempt may find room (a human is alerted)
                outcome, error = "failed", f"cannot write {data_path.parent}: {exc}"
                continue
            return Archived(
                "archived",
                str(data_path),
                str(meta_path),
                len(data),
                expected is not None,
                refreshed,
                content=data,
            )
        return Archived(outcome, url_refreshed=refreshed, error=error)

    def _url_fresh(self, ready: CallMediaReady) -> bool:
        if not ready.url or not ready.timestamp:
            return bool(ready.url)
        age = self._clock() - ready.timestamp
        return age < URL_LIFETIME_SECONDS - URL_MARGIN_SECONDS

    def _metadata(self, ready: CallMediaReady, data: bytes, expected: str | None, refreshed: bool) -> bytes:
        return json.dumps(
            {
                "call_id": ready.call_id,
                "phone_number_id": ready.phone_number_id,
                "kind": ready.kind,
                "media_id": ready.media_id,
                "mime_type": ready.mime_type,
                "sha256": sha256_b64(data),
                "sha256_verified": expected is not None,
                "size_bytes": len(data),
                "webhook_timestamp": ready.timestamp,
                "archived_at": round(self._clock(), 3),
                "url_refreshed": refreshed,
                "caller": ready.caller,
                "caller_user_id": ready.caller_user_id,
            },
            indent=2,
        ).encode()
