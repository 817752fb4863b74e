"""Recordings and transcripts: the archiver's rules (fresh URLs, hashes, atomic and idempotent writes), the
transcript's typed segments, Meta's code table, and the simulator's opt-in rules."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from simulator.errors import MetaError
from simulator.platform import Announcement, capture_of, transcript_document
from worker.archive import Archiver, ArchiveSettings, paths, sha256_b64
from worker.errors import GraphRefused, GraphRetryable
from worker.events import CallMediaReady
from worker.graph import MediaInfo
from worker.meta_codes import CODES, TERMINATE_CODES, Action, describe
from worker.metrics import WorkerMetrics
from worker.transcript import TranscriptError, decode_transcript

NOW = 1_782_583_300.0
DATA = b"OggS fake opus pages"


@dataclass
class FakeMeta:
    """The Graph API as the archiver sees it: URLs that are expired, wrong or good."""

    files: dict[str, bytes] = field(default_factory=dict)  # url -> bytes
    refused: set[str] = field(default_factory=set)
    fresh: list[str] = field(default_factory=list)  # URLs GET /<MEDIA_ID> hands out, in order
    asked: list[str] = field(default_factory=list)

    async def media(self, media_id: str, *, deadline: float | None = None) -> MediaInfo:
        self.asked.append(f"media:{media_id}")
        return MediaInfo(self.fresh.pop(0), "audio/ogg", None, None)

    async def download(self, url: str, *, deadline: float | None = None) -> bytes:
        self.asked.append(f"get:{url}")
        if url in self.refused:
            raise GraphRefused("media_download: HTTP 404 (expired)", action="media_download", http_status=404)
        if url not in self.files:
            raise GraphRetryable("media_download: cannot connect", action="media_download")
        return self.files[url]


def ready(**overrides: object) -> CallMediaReady:
    values: dict[str, object] = {
        "call_id": "wacid.HBgL/+x=",
        "phone_number_id": "106540352242922",
        "kind": "recording",
        "media_id": "1410",
        "timestamp": int(NOW) - 10,
        "sha256": sha256_b64(DATA),
        "mime_type": "audio/ogg; codecs=opus",
        "url": "https://lookaside/1",
    }
    values.update(overrides)
    return CallMediaReady(**values)  # type: ignore[arg-type]


def archiver(tmp_path: Path, meta: FakeMeta) -> tuple[Archiver, WorkerMetrics]:
    metrics = WorkerMetrics(CollectorRegistry())
    settings = ArchiveSettings(tmp_path, attempts=3, backoff_seconds=0.0)
    return Archiver(settings, meta, metrics, clock=lambda: NOW), metrics


def counted(metrics: WorkerMetrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "callhook_archive_total", {"kind": "recording", "outcome": outcome}
    )
    return value or 0.0


def test_a_fresh_url_is_downloaded_verified_and_written_with_its_metadata(tmp_path: Path) -> None:
    meta = FakeMeta(files={"https://lookaside/1": DATA})
    archive, metrics = archiver(tmp_path, meta)
    result = asyncio.run(archive.archive(ready()))
    assert (result.outcome, result.sha256_verified, result.url_refreshed) == ("archived", True, False)
    data_path, meta_path = paths(tmp_path, ready())
    assert data_path.read_bytes() == DATA
    assert data_path.name == "recording.ogg"
    assert "/" not in data_path.parent.name  # the call id is made path-safe
    metadata = json.loads(meta_path.read_text())
    assert (metadata["media_id"], metadata["sha256"]) == ("1410", sha256_b64(DATA))
    assert not list(tmp_path.rglob(".*tmp-*"))
    assert counted(metrics, "archived") == 1

    again = asyncio.run(archive.archive(ready()))  # a duplicate or a redelivery: nothing downloaded again
    assert again.outcome == "exists"
    assert meta.asked == ["get:https://lookaside/1"]


def test_an_expired_or_refused_url_is_replaced_by_a_fresh_one_by_media_id(tmp_path: Path) -> None:
    meta = FakeMeta(
        files={"https://fresh/1": DATA}, refused={"https://lookaside/1"}, fresh=["https://fresh/1"]
    )
    archive, _ = archiver(tmp_path, meta)
    result = asyncio.run(archive.archive(ready()))
    assert (result.outcome, result.url_refreshed) == ("archived", True)
    assert meta.asked == ["get:https://lookaside/1", "media:1410", "get:https://fresh/1"]

    # A webhook older than the URL's 5 minutes is not even tried: straight to a fresh URL.
    old = FakeMeta(files={"https://fresh/2": DATA}, fresh=["https://fresh/2"])
    archive, _ = archiver(tmp_path / "old", old)
    assert asyncio.run(archive.archive(ready(timestamp=int(NOW) - 400))).outcome == "archived"
    assert old.asked == ["media:1410", "get:https://fresh/2"]


def test_a_file_whose_hash_differs_is_never_written(tmp_path: Path) -> None:
    meta = FakeMeta(
        files={"https://lookaside/1": b"corrupt", "https://fresh/1": b"still corrupt"},
        fresh=["https://fresh/1", "https://fresh/1"],
    )
    archive, metrics = archiver(tmp_path, meta)
    result = asyncio.run(archive.archive(ready()))
    assert result.outcome == "hash_mismatch"
    assert not result.ok
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    assert counted(metrics, "hash_mismatch") == 1


def test_an_unreachable_meta_fails_after_the_attempts(tmp_path: Path) -> None:
    archive, metrics = archiver(tmp_path, FakeMeta())
    result = asyncio.run(archive.archive(ready()))
    assert result.outcome == "failed"
    assert "cannot connect" in (result.error or "")
    assert counted(metrics, "failed") == 1


def test_the_transcript_becomes_typed_segments_in_time_order() -> None:
    transcript = decode_transcript(transcript_document(3.0, "pt"))
    assert transcript.language == "pt"
    assert transcript.duration_seconds == 3.0
    assert [(s.speaker, s.channel, s.start, s.end) for s in transcript.segments] == [
        ("Business", 0, 0.0, 1.0),
        ("Customer", 1, 1.0, 2.0),
        ("Business", 0, 2.0, 3.0),
    ]
    assert len(transcript.by_speaker("customer")) == 1
    empty = decode_transcript(b'{"transcript": {"text": "", "segments": []}}')  # unsupported language
    assert empty.segments == []
    with pytest.raises(TranscriptError):
        decode_transcript(b'{"metadata": {}}')


def test_every_documented_code_has_a_name_and_an_action() -> None:
    documented = {100, 613, 131009, 131026, 131030, 131044, 131055} | set(range(138000, 138024)) - {
        138008,
        138010,
        138011,
        138016,
    }
    assert set(CODES) == documented
    assert set(CODES) >= TERMINATE_CODES
    assert describe(138006).action is Action.STOP
    assert describe(138004).action is Action.RETRY
    assert describe(138014).action is Action.ALERT
    assert (describe(138999).name, describe(138999).action) == ("unknown", Action.ALERT)
    assert len({c.name for c in CODES.values()}) == len(CODES)


def test_the_simulator_refuses_the_opt_in_where_meta_does() -> None:
    good = {"status": "ENABLED", "purpose": "training", "announcement_language": "en_US"}
    with pytest.raises(MetaError, match="not a parameter of pre_accept"):
        capture_of("pre_accept", {"recording": good})
    for bad in (
        {"status": "ENABLED"},
        {**good, "purpose": "x" * 251},
        {**good, "announcement_language": "xx"},
    ):
        with pytest.raises(MetaError):
            capture_of("accept", {"transcription": bad})
    both = capture_of("accept", {"recording": good, "transcription": {**good, "purpose": "other"}})
    assert both is not None
    assert (both.recording, both.transcription, both.purpose) == (True, True, "training")
    assert capture_of("accept", {}) is None
    tone = Announcement(1.0).render(0, 32_000, 16_000)
    assert abs(tone[:16_000]).max() > 0.2
    assert abs(tone[16_000:]).max() == 0.0
