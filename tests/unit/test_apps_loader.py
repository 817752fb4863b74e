"""App specs: the built-ins, a user's own app, and clear errors for everything else."""

from __future__ import annotations

import functools
import wave
from pathlib import Path

import pytest

from tests.fixtures import user_apps
from worker.apps.echo import echo
from worker.apps.loader import AppSpecError, load_app
from worker.apps.play import play
from worker.apps.record import record


def write_wav(path: Path, *, sample_width: int = 2, channels: int = 1, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(sample_width)
        w.setframerate(rate)
        w.writeframes(bytes(sample_width * channels * rate // 10))
    return path


def test_echo() -> None:
    assert load_app("echo") is echo
    assert load_app("  echo ") is echo


def test_play_binds_the_file(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "hello.wav", channels=2, rate=44100)
    app = load_app(f"play:{path}")
    assert isinstance(app, functools.partial)
    assert app.func is play
    assert app.keywords == {"path": path}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.wav", "not a readable WAV"),
        (lambda d: (d / "text.wav").write_text("hello") and d / "text.wav", "not a readable WAV"),
        (lambda d: write_wav(d / "8bit.wav", sample_width=1), "8-bit"),
        (lambda d: write_wav(d / "quad.wav", channels=4), "4 channels"),
    ],
)
def test_play_refuses_unusable_files(tmp_path: Path, make: object, message: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(AppSpecError, match=message):
        load_app(f"play:{path}")


def test_record_binds_the_directory(tmp_path: Path) -> None:
    app = load_app(f"record:{tmp_path}")
    assert isinstance(app, functools.partial)
    assert app.func is record
    assert app.keywords == {"directory": tmp_path}


def test_record_needs_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(AppSpecError, match="not an existing directory"):
        load_app(f"record:{tmp_path / 'nope'}")
    file = tmp_path / "file"
    file.write_bytes(b"")
    with pytest.raises(AppSpecError, match="not an existing directory"):
        load_app(f"record:{file}")


def test_user_apps() -> None:
    assert load_app("tests.fixtures.user_apps:greet") is user_apps.greet
    assert load_app("tests.fixtures.user_apps:handler") is user_apps.handler


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "not understood"),
        ("ecko", "not understood"),
        ("play:", "not understood"),
        (":greet", "not understood"),
        ("tests.fixtures.nowhere:app", "not found"),
        ("tests.fixtures.user_apps:missing", "has no 'missing'"),
        ("tests.fixtures.user_apps:not_async", "must be a coroutine function"),
        ("tests.fixtures.user_apps:NOT_CALLABLE", "must be a coroutine function"),
        ("tests.fixtures.user_apps:Handler", "must be a coroutine function"),
        ("tests.fixtures.broken_app:app", "importing app module 'tests.fixtures.broken_app' failed"),
    ],
)
def test_bad_specs_say_why(spec: str, message: str) -> None:
    with pytest.raises(AppSpecError, match=message):
        load_app(spec)
