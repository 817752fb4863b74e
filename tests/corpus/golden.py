"""The golden corpus of webhook bodies and how decode output is rendered for comparison.

Each ``tests/corpus/<name>.json`` is a webhook body (exact bytes, some deliberately not JSON) with a sibling
``<name>.expected.json``: ``{"events": [...]}`` or ``{"poison": "<reason>"}``. Every case of the peer
project's fixtures (``tests/corpus/pywa_fixtures/<file>.json``, an object of case name -> body, copied
from pywa with its licence beside them) has its expected output in
``tests/corpus/pywa/<file>.<case>.expected.json``.

Regenerate after an intended change, then review the diff by hand (``git diff tests/corpus``)::

    uv run --frozen python -m tests.corpus.golden
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from worker.decode import decode_webhook
from worker.errors import PoisonWebhook
from worker.events import Event

CORPUS = Path(__file__).parent
PYWA_EXPECTED = CORPUS / "pywa"
PYWA_FIXTURES = CORPUS / "pywa_fixtures"
EXPECTED_SUFFIX = ".expected.json"


def corpus_bodies() -> list[Path]:
    """Every body of the own corpus (``*.json`` that is not an expected file)."""
    return sorted(p for p in CORPUS.glob("*.json") if not p.name.endswith(EXPECTED_SUFFIX))


def expected_path(body: Path) -> Path:
    return body.with_name(body.name.removesuffix(".json") + EXPECTED_SUFFIX)


def pywa_cases() -> Iterator[tuple[str, bytes]]:
    """``(<file>.<case>, body bytes)`` for every case of the pywa fixtures, re-serialized as Meta does
    (compact, non-ASCII escaped)."""
    for path in sorted(PYWA_FIXTURES.glob("*.json")):
        cases: dict[str, Any] = json.loads(path.read_bytes())
        for name, body in cases.items():
            yield f"{path.stem}.{name}", json.dumps(body, separators=(",", ":")).encode()


def pywa_expected_path(case_id: str) -> Path:
    return PYWA_EXPECTED / f"{case_id}{EXPECTED_SUFFIX}"


def render(body: bytes) -> dict[str, Any]:
    """Decode output as plain JSON data: every field of every event (defaults included), tagged by type;
    Raw values shown as the JSON they hold (their byte-exactness is tested separately)."""
    try:
        events = decode_webhook(body)
    except PoisonWebhook as exc:
        return {"poison": exc.reason}
    return {"events": [render_event(event) for event in events]}


def render_event(event: Event) -> dict[str, Any]:
    fields = {name: getattr(event, name) for name in event.__struct_fields__}
    rendered: dict[str, Any] = msgspec.to_builtins(fields, enc_hook=_raw_as_json)
    return {"$type": type(event).__name__, **rendered}


def _raw_as_json(value: object) -> object:
    if isinstance(value, msgspec.Raw):
        return msgspec.json.decode(value)
    raise NotImplementedError(f"cannot render {type(value).__name__}")


def dump(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def regenerate() -> list[Path]:
    """Rewrite every expected file from the current decoder; returns the files whose content changed."""
    targets = [(expected_path(body), body.read_bytes()) for body in corpus_bodies()]
    targets += [(pywa_expected_path(case_id), body) for case_id, body in pywa_cases()]
    PYWA_EXPECTED.mkdir(exist_ok=True)
    changed = []
    for path, body in targets:
        text = dump(render(body))
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


if __name__ == "__main__":
    for path in regenerate():
        print("updated", path.relative_to(CORPUS.parents[1]))
