"""``GET/POST /<PHONE_NUMBER_ID>/settings`` (``calling``) as Meta behaves, traps included. Pure.

A POST names some members of ``calling``; each named member replaces the stored one *whole*: that is the
documented behaviour of ``call_hours`` (and so a ``call_hours`` without ``holiday_schedule`` deletes the
holidays), and the simulator applies it to every member, the strictest reading. Members not named are left
as they are (``sip`` untouched unless named). Validation follows Meta's listed errors (invalid status, bad
schedule, past or malformed holiday date, unknown time zone, empty weekly hours, more than two entries a
day, overlaps) and answers code 100 with the first problem, as Meta does: it is the client's job to list
them all before sending (``callhook settings``).
"""

from __future__ import annotations

import copy
import re
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from simulator.errors import invalid_parameter

DAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
_HHMM = re.compile(r"^([01][0-9]|2[0-3])[0-5][0-9]$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
ENABLED_DISABLED = ("ENABLED", "DISABLED")

DEFAULT_CALLING: dict[str, Any] = {
    "status": "ENABLED",
    "call_icon_visibility": "DEFAULT",
    "call_icons": {"restrict_to_user_countries": []},
    "callback_permission_status": "DISABLED",
    "audio": {"additional_codecs": []},
    "srtp_key_exchange_protocol": "DTLS",
    "sip": {"status": "DISABLED", "servers": []},
}


class CallSettingsBook:
    def __init__(self) -> None:
        self._calling: dict[str, dict[str, Any]] = {}
        self.posts: list[dict[str, Any]] = []  # every accepted POST body, in order

    def get(self, phone_number_id: str, now: float) -> dict[str, Any]:
        calling = copy.deepcopy(self._calling.get(phone_number_id, DEFAULT_CALLING))
        return {"calling": calling}

    def post(self, phone_number_id: str, body: dict[str, Any], now: float) -> None:
        calling = body.get("calling")
        if not isinstance(calling, dict) or not calling:
            raise invalid_parameter("calling is required: an object with the settings to change")
        problem = _first_problem(calling, now)
        if problem is not None:
            raise invalid_parameter(problem)
        stored = copy.deepcopy(self._calling.get(phone_number_id, DEFAULT_CALLING))
        for key, value in calling.items():
            if key == "restrictions":
                continue  # read-only
            stored[key] = copy.deepcopy(value)  # replaced whole (call_hours: as documented)
        self._calling[phone_number_id] = stored
        self.posts.append(copy.deepcopy(body))


def _first_problem(calling: dict[str, Any], now: float) -> str | None:
    for key in ("status", "callback_permission_status"):
        if key in calling and calling[key] not in ENABLED_DISABLED:
            return f"{key} must be ENABLED or DISABLED"
    if "call_icon_visibility" in calling and calling["call_icon_visibility"] not in (
        "DEFAULT",
        "DISABLE_ALL",
    ):
        return "call_icon_visibility must be DEFAULT or DISABLE_ALL"
    if "audio" in calling:
        audio = calling["audio"]
        codecs = audio.get("additional_codecs", []) if isinstance(audio, dict) else None
        if not isinstance(codecs, list) or not all(c in ("PCMA", "PCMU") for c in codecs):
            return "audio.additional_codecs may only hold PCMA and PCMU"
    if "call_hours" in calling:
        return _hours_problem(calling["call_hours"], now)
    return None


def _hours_problem(hours: object, now: float) -> str | None:
    if not isinstance(hours, dict) or hours.get("status") not in ENABLED_DISABLED:
        return "call_hours.status must be ENABLED or DISABLED"
    try:
        ZoneInfo(str(hours.get("timezone_id", "")))
    except (ZoneInfoNotFoundError, ValueError):
        return "call_hours.timezone_id is not a valid time zone"
    weekly = hours.get("weekly_operating_hours")
    if not isinstance(weekly, list) or not weekly:
        return "call_hours.weekly_operating_hours must not be empty"
    per_day: dict[str, list[tuple[str, str]]] = {}
    for entry in weekly:
        day, opens, closes = entry.get("day_of_week"), entry.get("open_time"), entry.get("close_time")
        if day not in DAYS or not _HHMM.match(str(opens)) or not _HHMM.match(str(closes)) or opens >= closes:
            return f"invalid call_hours schedule entry {entry}"
        per_day.setdefault(day, []).append((opens, closes))
    for day, ranges in per_day.items():
        if len(ranges) > 2:
            return f"more than 2 entries for {day}"
        ranges.sort()
        if len(ranges) == 2 and ranges[1][0] < ranges[0][1]:
            return f"overlapping schedule entries on {day}"
    holidays = hours.get("holiday_schedule", [])
    if not isinstance(holidays, list) or len(holidays) > 20:
        return "call_hours.holiday_schedule holds at most 20 entries"
    today = datetime.fromtimestamp(now, UTC).date()
    for holiday in holidays:
        text = str(holiday.get("date", ""))
        if not _DATE.match(text):
            return f"bad holiday date format {text!r} (YYYY-MM-DD)"
        if date.fromisoformat(text) < today:
            return f"holiday date {text} is in the past"
        start, end = holiday.get("start_time"), holiday.get("end_time")
        if not _HHMM.match(str(start)) or not _HHMM.match(str(end)) or start >= end:
            return f"invalid holiday hours {holiday}"
    return None
