"""End-to-end tests: diagnosable failures.

When a test fails, the report carries the tail of every log of the systems alive at that moment (ingress and
each worker, JSON lines; the files themselves stay under the test's ``tmp_path``), so a CI failure says what
the processes saw without a rerun.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.e2e.harness import ACTIVE

LOG_TAIL_LINES = 40


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, object, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    for system in ACTIVE:
        processes = [p for p in [system.ingress, *system.worker_processes] if p is not None]
        for process in processes:
            lines = process.log().splitlines()[-LOG_TAIL_LINES:]
            state = "running" if process.alive() else f"exited {process.popen.returncode}"
            title = f"{process.name} log ({state}, last {len(lines)} lines of {process.log_path})"
            report.sections.append((title, "\n".join(lines)))
