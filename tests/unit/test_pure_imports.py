"""The pure modules stay pure: importing one pulls in no I/O library (house style, rule 1).

Each module is imported alone in a fresh interpreter, so an import that some other test already made cannot
hide a violation, and a failure names the module that dragged the library in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PURE_MODULES = [
    "worker.decode", "worker.wire", "worker.events", "worker.call", "worker.sdp", "ingress.contract",
    "ingress.signature", "simulator.calls", "simulator.sdp", "simulator.faults", "worker.media.codec",
    # worker/media/__init__.py imports its session lazily, so a pure module of the package stays pure.
    "worker.media.dtmf", "worker.media.jitter", "worker.media.quality", "worker.media.forward",
    "simulator.net", "simulator.heard", "simulator.dtmf",
    "worker.handoff.wire", "worker.handoff.board", "worker.handoff.config", "worker.handoff.opus_params",
    "worker.crashpoints",
    "ingress.commands", "ingress.idempotency", "ingress.throttle",
    "worker.capture", "worker.meta_codes", "worker.transcript",
    "callhook.call_settings", "simulator.call_settings",
    "console.config",
]  # fmt: skip
FORBIDDEN = {"aiohttp", "aio_pika", "aiortc", "prometheus_client", "asyncio"}

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after_importing(module: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_io_library(module: str) -> None:
    loaded = _modules_after_importing(module)
    assert module in loaded
    dragged_in = sorted(name for name in loaded if name.split(".")[0] in FORBIDDEN)
    assert dragged_in == [], f"{module} imports {dragged_in}"


def test_the_probe_would_notice_an_io_import() -> None:
    assert "asyncio" in _modules_after_importing("asyncio")
