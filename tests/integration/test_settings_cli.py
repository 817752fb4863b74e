"""``callhook settings`` and ``callhook permissions`` as real processes against the simulated Graph API.

The simulator keeps Meta's behaviour: every member a POST names is replaced whole, so a ``call_hours``
without ``holiday_schedule`` deletes the holidays. The CLI must see that coming, and must refuse a bad file
with every problem listed before it sends anything (the simulator's journal shows no request then).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from simulator.config import SimulatorConfig
from simulator.sim import Simulator

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "settings-token"
ROOT = Path(__file__).resolve().parents[2]
PNID = SimulatorConfig().numbers[0].phone_number_id
SOON = (datetime.now(UTC).date() + timedelta(days=30)).isoformat()
LATER = (datetime.now(UTC).date() + timedelta(days=60)).isoformat()

HOURS = {
    "status": "ENABLED",
    "timezone_id": "America/Manaus",
    "weekly_operating_hours": [
        {"day_of_week": "MONDAY", "open_time": "0900", "close_time": "1200"},
        {"day_of_week": "MONDAY", "open_time": "13:00", "close_time": "1800"},  # HH:MM is read too
        {"day_of_week": "TUESDAY", "open_time": "0900", "close_time": "1800"},
    ],
    "holiday_schedule": [{"date": SOON, "start_time": "0000", "end_time": "2359"}],
}


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest_asyncio.fixture(loop_scope="module")
async def sim() -> AsyncIterator[Simulator]:
    """A simulator of its own for each test: each starts from Meta's default settings, in any order."""
    config = SimulatorConfig(access_token=TOKEN, ingress_url="http://127.0.0.1:9/webhook")
    async with Simulator(config, graph_port=0) as simulator:
        yield simulator


async def callhook(sim: Simulator, *args: str) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLHOOK_")}
    env |= {
        "CALLHOOK_GRAPH_URL": sim.graph_url,
        "CALLHOOK_ACCESS_TOKEN": TOKEN,
        "CALLHOOK_PHONE_NUMBER_ID": PNID,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callhook", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def write(path: Path, settings: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def posts(sim: Simulator) -> int:
    return len(sim.journal.graph_requests("settings")) - len(
        [r for r in sim.journal.graph_requests("settings") if r.method == "GET"]
    )


async def test_round_trip_diff_apply_show_then_nothing_to_do(sim: Simulator, tmp_path: Path) -> None:
    file = write(
        tmp_path / "calling.yaml",
        {"call_icon_visibility": "DISABLE_ALL", "callback_permission_status": "ENABLED",
         "call_icons": {"restrict_to_user_countries": ["BR", "US"]}, "audio": {"additional_codecs": ["PCMA"]},
         "call_hours": HOURS},
    )  # fmt: skip
    diff = await callhook(sim, "settings", "diff", str(file))
    assert diff.code == 0, diff.err
    assert '~ call_icon_visibility: "DEFAULT" -> "DISABLE_ALL"' in diff.out
    assert '+ call_hours.timezone_id: "America/Manaus"' in diff.out
    assert posts(sim) == 0  # diff only reads

    applied = await callhook(sim, "settings", "apply", str(file))
    assert applied.code == 0, applied.err
    [body] = sim.call_settings.posts
    managed = {"call_icon_visibility", "callback_permission_status", "call_icons", "audio", "call_hours"}
    assert set(body["calling"]) == managed
    assert "sip" not in body["calling"]  # not named: untouched
    assert body["calling"]["call_hours"]["weekly_operating_hours"][1]["open_time"] == "1300"

    shown = await callhook(sim, "settings", "show")
    assert shown.code == 0
    calling = yaml.safe_load(shown.out)["calling"]
    assert calling["call_hours"]["holiday_schedule"] == HOURS["holiday_schedule"]
    assert calling["sip"] == {"status": "DISABLED", "servers": []}

    again = await callhook(sim, "settings", "diff", str(file))
    assert (again.code, again.out.strip()) == (0, "no changes")


async def test_the_holiday_trap_is_refused_before_anything_is_sent(sim: Simulator, tmp_path: Path) -> None:
    await callhook(sim, "settings", "apply", str(write(tmp_path / "a.yaml", {"call_hours": HOURS})))
    sent = posts(sim)
    hours = {k: v for k, v in HOURS.items() if k != "holiday_schedule"}
    hours["weekly_operating_hours"] = [{"day_of_week": "FRIDAY", "open_time": "1000", "close_time": "1400"}]
    trap = await callhook(sim, "settings", "apply", str(write(tmp_path / "b.yaml", {"call_hours": hours})))
    assert trap.code == 3
    assert "holiday_schedule is missing" in trap.err
    assert "1 holiday(s)" in trap.err
    assert posts(sim) == sent
    assert sim.settings(PNID)["calling"]["call_hours"]["holiday_schedule"]  # still there

    # Deleting them on purpose is a decision the file states.
    hours["holiday_schedule"] = []
    done = await callhook(sim, "settings", "apply", str(write(tmp_path / "c.yaml", {"call_hours": hours})))
    assert done.code == 0, done.err
    assert sim.settings(PNID)["calling"]["call_hours"]["holiday_schedule"] == []


async def test_a_bad_file_is_refused_with_every_problem_listed_and_no_request(
    sim: Simulator, tmp_path: Path
) -> None:
    requests = len(sim.journal.requests)
    bad = {
        "status": "ON",
        "call_icons": {"restrict_to_user_countries": ["Brazil"]},
        "audio": {"additional_codecs": ["G729"]},
        "colour": "blue",
        "call_hours": {
            "status": "ENABLED",
            "timezone_id": "Mars/Olympus",
            "weekly_operating_hours": [
                {"day_of_week": "MONDAY", "open_time": "0900", "close_time": "1200"},
                {"day_of_week": "MONDAY", "open_time": "1100", "close_time": "1300"},
                {"day_of_week": "MONDAY", "open_time": "1400", "close_time": "1500"},
                {"day_of_week": "FUNDAY", "open_time": "2500", "close_time": "0800"},
            ],
            "holiday_schedule": [{"date": "2020-01-01", "start_time": "0000", "end_time": "2359"},
                                 {"date": LATER, "start_time": "1800", "end_time": "0900"}],
        },
    }  # fmt: skip
    run = await callhook(sim, "settings", "apply", str(write(tmp_path / "bad.yaml", bad)))
    assert run.code == 2
    expected = [
        "colour: not a calling setting",
        "status: must be ENABLED or DISABLED",
        "'Brazil' is not an ISO country code",
        "'G729' is not PCMA or PCMU",
        "'Mars/Olympus' is not a known time zone",
        "FUNDAY",
        "open_time: must be HHMM",
        "MONDAY has 3 entries",
        "MONDAY 0900-1200 overlaps 1100-1300",
        "2020-01-01 is in the past",
        "start_time 1800 must be before end_time 0900",
    ]
    missing = [text for text in expected if text not in run.err]
    assert missing == [], run.err
    assert "11 problem(s)" in run.err or "problem(s)" in run.err
    assert len(sim.journal.requests) == requests  # nothing reached Meta
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    unreadable = await callhook(sim, "settings", "diff", str(broken))
    assert unreadable.code == 2
    assert "not valid JSON" in unreadable.err


async def test_permissions_shows_status_expiry_and_limits(sim: Simulator) -> None:
    sim.set_permission("15551230009", "temporary")
    sim.set_permission("US.777", "permanent")
    run = await callhook(sim, "permissions", "15551230009")
    assert run.code == 0, run.err
    assert "permission:  temporary" in run.out
    assert "expires:" in run.out
    assert "0/100 per PT24H" in run.out
    assert "0/1 per PT24H" in run.out
    by_id = await callhook(sim, "permissions", "US.777", "--json")
    shown = json.loads(by_id.out)
    assert (shown["status"], shown["can_start_call"]) == ("permanent", True)
    assert sim.journal.graph_requests("call_permissions")[-1].to == "US.777"
