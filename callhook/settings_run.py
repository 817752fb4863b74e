"""What ``callhook settings`` and ``callhook permissions`` do (argparse side: callhook/settings_cli.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import yaml

from callhook import call_settings
from callhook.env import EnvReader
from ingress.commands import is_user_id
from worker.errors import GraphError
from worker.graph import GraphClient, GraphSettings, PermissionStatus


def _client(env: Mapping[str, str], phone_number_id: str | None) -> tuple[GraphClient, str]:
    r = EnvReader(env)
    settings = GraphSettings(
        graph_url=r.url("CALLHOOK_GRAPH_URL", "https://graph.facebook.com", schemes=("http", "https")),
        graph_version=r.str("CALLHOOK_GRAPH_VERSION", "v23.0"),
        access_token=r.required_str("CALLHOOK_ACCESS_TOKEN", secret=True),
    )
    number = phone_number_id or r.required_str("CALLHOOK_PHONE_NUMBER_ID")
    r.finish()
    return GraphClient(settings), number


def load_file(file: Path) -> call_settings.Settings | None:
    """The file's settings, checked locally; None (every problem printed) when it cannot be applied."""
    try:
        desired = call_settings.parse(file.read_text(encoding="utf-8"), file.name)
    except (OSError, call_settings.SettingsFileError) as exc:
        print(f"callhook settings: {exc}", file=sys.stderr)
        return None
    found = call_settings.problems(desired, datetime.now(UTC).date())
    if found:  # before any request: the file is wrong whatever Meta holds
        print(f"callhook settings: {file} has {len(found)} problem(s):", file=sys.stderr)
        for problem in found:
            print(f"  - {problem}", file=sys.stderr)
        return None
    return desired


async def run_settings(
    action: str,
    desired: call_settings.Settings,
    phone_number_id: str | None,
    env: Mapping[str, str],
    out: TextIO = sys.stdout,
) -> int:
    client, number = _client(env, phone_number_id)
    async with client:
        try:
            return await _settings_action(client, number, action, desired, out)
        except GraphError as exc:
            print(f"callhook settings: Meta refused: {exc}", file=sys.stderr)
            return 1


async def _settings_action(
    client: GraphClient, number: str, action: str, desired: call_settings.Settings, out: TextIO
) -> int:
    current = (await client.settings(number)).get("calling", {})
    if action == "show":
        out.write(yaml.safe_dump({"calling": current}, sort_keys=True))
        return 0
    plan = call_settings.plan(current, desired)
    for change in plan.changes:
        out.write(change.line() + "\n")
    if plan.empty:
        out.write("no changes\n")
    for refusal in plan.refusals:
        print(f"callhook settings: refused: {refusal}", file=sys.stderr)
    if action == "diff" or plan.empty:
        return 3 if plan.refusals else 0
    if plan.refusals:
        return 3
    await client.update_settings(number, plan.body["calling"])
    after = (await client.settings(number)).get("calling", {})
    left = call_settings.plan(after, desired)
    if not left.empty:
        print("callhook settings: Meta does not hold what was applied:", file=sys.stderr)
        for change in left.changes:
            print(f"  {change.line()}", file=sys.stderr)
        return 1
    out.write(f"applied {len(plan.body['calling'])} setting(s)\n")
    return 0


async def run_permissions(
    user: str, phone_number_id: str | None, as_json: bool, env: Mapping[str, str], out: TextIO = sys.stdout
) -> int:
    client, number = _client(env, phone_number_id)
    by_id = is_user_id(user)
    async with client:
        try:
            status = await client.call_permissions(
                number, "" if by_id else user.removeprefix("+"), recipient=user if by_id else ""
            )
        except GraphError as exc:
            print(f"callhook permissions: Meta refused: {exc}", file=sys.stderr)
            return 1
    out.write(describe_permission(user, status, as_json))
    return 0


def describe_permission(user: str, status: PermissionStatus, as_json: bool) -> str:
    if as_json:
        return (
            json.dumps(
                {
                    "user": user,
                    "status": status.status,
                    "expiration_time": status.expiration_time,
                    "can_start_call": status.can_start_call,
                    "can_request_permission": status.can_request_permission,
                    "limits": [vars_of(limit) for limit in status.limits],
                }
            )
            + "\n"
        )
    lines = [f"user:        {user}", f"permission:  {status.status}"]
    if status.expiration_time:
        lines.append(f"expires:     {_when(status.expiration_time)}")
    for action, can in (
        ("start_call", status.can_start_call),
        ("send_call_permission_request", status.can_request_permission),
    ):
        lines.append(f"{action}: {'yes' if can else 'no' if can is False else 'unknown'}")
        for limit in status.limits:
            if limit.action == action:
                frees = f", frees {_when(limit.limit_expiration_time)}" if limit.limit_expiration_time else ""
                lines.append(f"  {limit.current_usage}/{limit.max_allowed} per {limit.time_period}{frees}")
    refusal = status.start_call_refusal()
    if refusal:
        lines.append(f"a dial now would be refused: {refusal}")
    return "\n".join(lines) + "\n"


def vars_of(limit: object) -> dict[str, object]:
    return {name: getattr(limit, name) for name in limit.__slots__}  # type: ignore[attr-defined]


def _when(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M UTC")
