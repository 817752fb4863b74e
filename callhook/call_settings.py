"""Call settings as code: a file says what ``calling`` should be; check it, diff it, plan the one POST. Pure.

The file (YAML or JSON) holds the members of Meta's ``calling`` settings object, at the top level or under
``calling``. Only members the file names are managed: the others, ``sip`` included, are left as they are.

Meta's traps, and what :func:`plan` does about them:

- ``call_hours`` is **replaced whole** on every write: the file must give the whole object (``status``,
  ``timezone_id``, ``weekly_operating_hours``), never a patch; :func:`problems` says what is missing.
- a ``call_hours`` **without** ``holiday_schedule`` **deletes** the holidays in force: when the current
  settings have holidays and the file's ``call_hours`` does not list any, the plan is refused; write the
  holidays to keep, or ``holiday_schedule: []`` to delete them on purpose.
- holidays in the past are refused by Meta: listed as problems (a file that kept yesterday's holiday cannot be
  applied until it is removed).
- times: Meta's table says ``HHMM``; one copy of its page shows ``HH:MM``, both are accepted here and written
  as ``HHMM``. Its holiday table says ``open_time``/``close_time``, its examples ``start_time``/``end_time``:
  either pair is accepted and sent as written.

Everything is checked locally, every problem listed, before any request (``callhook settings apply``).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

DAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
ON_OFF = ("ENABLED", "DISABLED")
MEMBERS = frozenset(
    {"status", "call_icon_visibility", "call_icons", "call_hours", "callback_permission_status", "sip",
     "srtp_key_exchange_protocol", "audio", "voicemail", "video"}
)  # fmt: skip
READ_ONLY = frozenset({"restrictions"})
MAX_HOLIDAYS = 20
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):?([0-5][0-9])$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")

Settings = dict[str, Any]


class SettingsFileError(ValueError):
    """The file cannot be read as settings (not YAML/JSON, not a mapping)."""


def parse(text: str, name: str = "settings") -> Settings:
    """The ``calling`` members of a YAML or JSON document (JSON is YAML; a ``.json`` is parsed as JSON)."""
    try:
        document = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if name.endswith(".json") else "YAML"
        raise SettingsFileError(f"{name}: not valid {kind}: {exc}") from exc
    if isinstance(document, dict) and set(document) == {"calling"}:
        document = document["calling"]
    if not isinstance(document, dict):
        raise SettingsFileError(f"{name}: expected a mapping of calling settings")
    return normalized(document)


def normalized(settings: Settings) -> Settings:
    """Times written ``HH:MM`` become Meta's ``HHMM``; everything else as given."""
    out = copy.deepcopy(settings)
    hours = out.get("call_hours")
    if isinstance(hours, dict):
        for entry in _dicts(hours.get("weekly_operating_hours")):
            for key in ("open_time", "close_time"):
                entry[key] = _hhmm(entry.get(key))
        for entry in _dicts(hours.get("holiday_schedule")):
            for key in ("start_time", "end_time", "open_time", "close_time"):
                if key in entry:
                    entry[key] = _hhmm(entry[key])
    return out


def problems(settings: Settings, today: date) -> list[str]:
    """Every reason Meta would refuse these settings, one line each (empty: fine)."""
    found = [f"{key}: not a calling setting (known: {', '.join(sorted(MEMBERS))})" for key in settings
             if key not in MEMBERS and key not in READ_ONLY]  # fmt: skip
    found += [f"{key}: read-only, cannot be set" for key in settings if key in READ_ONLY]
    for key in ("status", "callback_permission_status"):
        if key in settings and settings[key] not in ON_OFF:
            found.append(f"{key}: must be ENABLED or DISABLED, not {settings[key]!r}")
    if "call_icon_visibility" in settings and settings["call_icon_visibility"] not in (
        "DEFAULT",
        "DISABLE_ALL",
    ):
        found.append("call_icon_visibility: must be DEFAULT or DISABLE_ALL")
    if "srtp_key_exchange_protocol" in settings and settings["srtp_key_exchange_protocol"] not in (
        "DTLS",
        "SDES",
    ):
        found.append("srtp_key_exchange_protocol: must be DTLS or SDES")
    if "call_icons" in settings:
        found += _call_icons(settings["call_icons"])
    if "audio" in settings:
        found += _audio(settings["audio"])
    if "sip" in settings:
        found += _sip(settings["sip"])
    if "call_hours" in settings:
        found += _call_hours(settings["call_hours"], today)
    return found


@dataclass(frozen=True, slots=True)
class Change:
    path: str
    before: Any
    after: Any

    def line(self) -> str:
        if self.before is None:
            return f"+ {self.path}: {_show(self.after)}"
        if self.after is None:
            return f"- {self.path}: {_show(self.before)}"
        return f"~ {self.path}: {_show(self.before)} -> {_show(self.after)}"


@dataclass(frozen=True, slots=True)
class Plan:
    changes: list[Change]
    body: dict[str, Any]  # the POST body: {"calling": {member: whole value}} of the changed members
    refusals: list[str]  # traps the file walks into: apply must not send the body

    @property
    def empty(self) -> bool:
        return not self.body["calling"]


def plan(current: Settings, desired: Settings) -> Plan:
    """What to send to make ``current`` (Meta's GET) what ``desired`` (the file) names."""
    members: dict[str, Any] = {}
    changes: list[Change] = []
    for key in sorted(desired):
        if key in READ_ONLY:
            continue
        member_changes = list(_diff(key, current.get(key), desired[key]))
        if member_changes:
            changes += member_changes
            members[key] = copy.deepcopy(desired[key])  # a member is always sent whole
    refusals = []
    hours = desired.get("call_hours")
    current_hours = current.get("call_hours")
    if isinstance(hours, dict) and "holiday_schedule" not in hours and "call_hours" in members:
        held = current_hours.get("holiday_schedule") if isinstance(current_hours, dict) else None
        if held:
            refusals.append(
                "call_hours.holiday_schedule is missing: Meta replaces call_hours whole and would delete "
                f"the {len(held)} holiday(s) in force; list the ones to keep, or write "
                "holiday_schedule: [] to delete them"
            )
    return Plan(changes, {"calling": members}, refusals)


# --------------------------------------------------------------------------------------------- details
def _diff(path: str, before: Any, after: Any) -> Iterator[Change]:
    if isinstance(after, dict) and before is None:
        before = {}
    if isinstance(before, dict) and after is None:
        after = {}
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            yield from _diff(f"{path}.{key}", before.get(key), after.get(key))
    elif before != after:
        yield Change(path, before, after)


def _show(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


def _hhmm(value: Any) -> Any:
    if isinstance(value, int):  # YAML reads 0900 as 900 (an int): keep the four digits
        value = f"{value:04d}"
    if isinstance(value, str):
        match = _HHMM.match(value)
        if match:
            return match.group(1) + match.group(2)
    return value


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [entry for entry in value if isinstance(entry, dict)] if isinstance(value, list) else []


def _call_icons(value: Any) -> list[str]:
    if not isinstance(value, dict):
        return ["call_icons: must be a mapping {restrict_to_user_countries: [...]}"]
    countries = value.get("restrict_to_user_countries", [])
    if not isinstance(countries, list):
        return ["call_icons.restrict_to_user_countries: must be a list of country codes ([] = everywhere)"]
    return [f"call_icons.restrict_to_user_countries: {c!r} is not an ISO country code (e.g. US, BR)"
            for c in countries if not (isinstance(c, str) and _COUNTRY.match(c))]  # fmt: skip


def _audio(value: Any) -> list[str]:
    codecs = value.get("additional_codecs", []) if isinstance(value, dict) else None
    if not isinstance(codecs, list):
        return ["audio.additional_codecs: must be a list (PCMA, PCMU; Opus is always on)"]
    found = [
        f"audio.additional_codecs: {c!r} is not PCMA or PCMU" for c in codecs if c not in ("PCMA", "PCMU")
    ]
    if len(set(map(str, codecs))) != len(codecs):
        found.append("audio.additional_codecs: listed twice")
    return found


def _sip(value: Any) -> list[str]:
    if not isinstance(value, dict):
        return ["sip: must be a mapping {status, servers}"]
    found = [] if value.get("status") in ON_OFF else ["sip.status: must be ENABLED or DISABLED"]
    servers = value.get("servers", [])
    if not isinstance(servers, list) or len(servers) > 1:
        return [*found, "sip.servers: a list of at most one server (one per app)"]
    for index, server in enumerate(servers):
        if not isinstance(server, dict) or not isinstance(server.get("hostname"), str):
            found.append(f"sip.servers[{index}].hostname: required")
        elif not isinstance(server.get("port"), int) or not 0 < server["port"] < 65536:
            found.append(f"sip.servers[{index}].port: a port number")
    return found


def _call_hours(hours: Any, today: date) -> list[str]:
    if not isinstance(hours, dict):
        return ["call_hours: must be a mapping (Meta replaces it whole: give all of it)"]
    found = []
    if hours.get("status") not in ON_OFF:
        found.append("call_hours.status: required, ENABLED or DISABLED (Meta replaces call_hours whole)")
    zone = hours.get("timezone_id")
    if not isinstance(zone, str) or not zone:
        found.append("call_hours.timezone_id: required, e.g. America/Manaus (Meta replaces call_hours whole)")
    else:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            found.append(f"call_hours.timezone_id: {zone!r} is not a known time zone")
    found += _weekly(hours.get("weekly_operating_hours"))
    if "holiday_schedule" in hours:
        found += _holidays(hours["holiday_schedule"], today)
    return found


def _weekly(weekly: Any) -> list[str]:
    if not isinstance(weekly, list) or not weekly:
        return ["call_hours.weekly_operating_hours: required and not empty"]
    found = []
    per_day: dict[str, list[tuple[str, str]]] = {}
    for index, entry in enumerate(weekly):
        where = f"call_hours.weekly_operating_hours[{index}]"
        if not isinstance(entry, dict):
            found.append(f"{where}: must be {{day_of_week, open_time, close_time}}")
            continue
        day, opens, closes = entry.get("day_of_week"), entry.get("open_time"), entry.get("close_time")
        if day not in DAYS:
            found.append(f"{where}.day_of_week: {day!r} is not one of {', '.join(DAYS)}")
        bad_time = [k for k, v in (("open_time", opens), ("close_time", closes)) if not _valid_time(v)]
        found += [f"{where}.{k}: must be HHMM (00:00-23:59)" for k in bad_time]
        if not bad_time and str(opens) >= str(closes):
            found.append(f"{where}: open_time {opens} must be before close_time {closes}")
        elif not bad_time and day in DAYS:
            per_day.setdefault(str(day), []).append((str(opens), str(closes)))
    for day, ranges in per_day.items():
        if len(ranges) > 2:
            found.append(f"call_hours.weekly_operating_hours: {day} has {len(ranges)} entries (at most 2)")
        ranges.sort()
        found += [f"call_hours.weekly_operating_hours: {day} {a[0]}-{a[1]} overlaps {b[0]}-{b[1]}"
                  for a, b in itertools.pairwise(ranges) if b[0] < a[1]]  # fmt: skip
    return found


def _holidays(holidays: Any, today: date) -> list[str]:
    if not isinstance(holidays, list):
        return ["call_hours.holiday_schedule: must be a list"]
    found = []
    if len(holidays) > MAX_HOLIDAYS:
        found.append(f"call_hours.holiday_schedule: {len(holidays)} entries (at most {MAX_HOLIDAYS})")
    for index, entry in enumerate(holidays):
        where = f"call_hours.holiday_schedule[{index}]"
        if not isinstance(entry, dict):
            found.append(f"{where}: must be {{date, start_time, end_time}}")
            continue
        text = str(entry.get("date", ""))
        if not _DATE.match(text):
            found.append(f"{where}.date: {text!r} is not YYYY-MM-DD")
        else:
            try:
                if date.fromisoformat(text) < today:
                    found.append(f"{where}.date: {text} is in the past (Meta refuses past holidays)")
            except ValueError:
                found.append(f"{where}.date: {text!r} is not a calendar date")
        start = entry.get("start_time", entry.get("open_time"))
        end = entry.get("end_time", entry.get("close_time"))
        if not _valid_time(start) or not _valid_time(end):
            found.append(f"{where}: start_time and end_time must be HHMM")
        elif str(start) >= str(end):
            found.append(f"{where}: start_time {start} must be before end_time {end}")
    return found


def _valid_time(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 4 and bool(_HHMM.match(value))
