"""Call permissions a WhatsApp user gave a business number, and the limits around them. Pure.

A business may only place a call to a user who granted permission (temporary: seven days, or permanent);
otherwise ``connect`` fails with 138006. Asking is an interactive ``call_permission_request`` message, allowed
once per 24 h and twice per 7 days per user (138009), and refused when permission is already permanent
(138017). A user takes at most 100 connected business-initiated calls per 24 h (138012). Everything is kept
per (business number, user); a status set for ``phone_number_id=None`` applies to every number of the
simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from simulator.errors import MetaError

TEMPORARY_SECONDS = 7 * 24 * 3600
DAY = 24 * 3600
REQUEST_LIMITS: tuple[tuple[str, int, int], ...] = (("PT24H", DAY, 1), ("P7D", 7 * DAY, 2))
CALL_LIMITS: tuple[tuple[str, int, int], ...] = (("PT24H", DAY, 100),)
ANY_NUMBER = "*"


class PermissionStatus(StrEnum):
    NONE = "no_permission"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"

    @classmethod
    def parse(cls, text: str) -> PermissionStatus:
        """``none`` / ``no_permission`` / ``temporary`` / ``permanent``."""
        lowered = text.strip().lower()
        return cls.NONE if lowered == "none" else cls(lowered)


@dataclass(slots=True)
class _Grant:
    status: PermissionStatus
    expires_at: float | None = None


@dataclass(slots=True)
class _Usage:
    requests: list[float] = field(default_factory=list)
    connected_calls: list[float] = field(default_factory=list)


class PermissionBook:
    def __init__(self, default: PermissionStatus = PermissionStatus.NONE) -> None:
        self._default = default
        self._grants: dict[tuple[str, str], _Grant] = {}
        self._usage: dict[tuple[str, str], _Usage] = {}

    def set(
        self, user: str, status: PermissionStatus, *, now: float, phone_number_id: str | None = None
    ) -> None:
        expires = now + TEMPORARY_SECONDS if status is PermissionStatus.TEMPORARY else None
        self._grants[(phone_number_id or ANY_NUMBER, user)] = _Grant(status, expires)

    def status(self, phone_number_id: str, user: str, now: float) -> tuple[PermissionStatus, float | None]:
        grant = self._grants.get((phone_number_id, user)) or self._grants.get((ANY_NUMBER, user))
        if grant is None:
            return self._default, (
                now + TEMPORARY_SECONDS if self._default is PermissionStatus.TEMPORARY else None
            )
        if grant.expires_at is not None and grant.expires_at <= now:
            return PermissionStatus.NONE, None
        return grant.status, grant.expires_at

    def check_can_call(self, phone_number_id: str, user: str, now: float) -> None:
        status, _ = self.status(phone_number_id, user, now)
        if status is PermissionStatus.NONE:
            raise MetaError(138006, f"user {user} has not granted this business permission to call")
        usage = self._usage_of(phone_number_id, user, now)
        for period, seconds, limit in CALL_LIMITS:
            if _count_since(usage.connected_calls, now - seconds) >= limit:
                raise MetaError(138012, f"{limit} connected business-initiated calls per {period} reached")

    def record_connected_call(self, phone_number_id: str, user: str, now: float) -> None:
        self._usage_of(phone_number_id, user, now).connected_calls.append(now)

    def record_request(self, phone_number_id: str, user: str, now: float) -> None:
        """Count a permission request, or refuse it (138017 permanent already, 138009 over the limit)."""
        status, _ = self.status(phone_number_id, user, now)
        if status is PermissionStatus.PERMANENT:
            raise MetaError(138017, f"user {user} already granted permanent call permission")
        usage = self._usage_of(phone_number_id, user, now)
        for period, seconds, limit in REQUEST_LIMITS:
            if _count_since(usage.requests, now - seconds) >= limit:
                raise MetaError(138009, f"at most {limit} call permission request(s) per {period} per user")
        usage.requests.append(now)

    def grant(self, phone_number_id: str, user: str, *, permanent: bool, now: float) -> float | None:
        """The user accepted a request: returns the expiry of a temporary grant."""
        status = PermissionStatus.PERMANENT if permanent else PermissionStatus.TEMPORARY
        self.set(user, status, now=now, phone_number_id=phone_number_id)
        return self._grants[(phone_number_id, user)].expires_at

    def describe(self, phone_number_id: str, user: str, now: float) -> dict[str, Any]:
        """The body of ``GET /<PHONE_NUMBER_ID>/call_permissions?user_wa_id=``."""
        status, expires = self.status(phone_number_id, user, now)
        permission: dict[str, Any] = {"status": str(status)}
        if expires is not None:
            permission["expiration_time"] = int(expires)
        usage = self._usage_of(phone_number_id, user, now)
        request_limits = _limits(usage.requests, REQUEST_LIMITS, now)
        call_limits = _limits(usage.connected_calls, CALL_LIMITS, now)
        return {
            "messaging_product": "whatsapp",
            "permission": permission,
            "actions": [
                {
                    "action_name": "send_call_permission_request",
                    "can_perform_action": status is not PermissionStatus.PERMANENT
                    and _within(request_limits),
                    "limits": request_limits,
                },
                {
                    "action_name": "start_call",
                    "can_perform_action": status is not PermissionStatus.NONE and _within(call_limits),
                    "limits": call_limits,
                },
            ],
        }

    def _usage_of(self, phone_number_id: str, user: str, now: float) -> _Usage:
        usage = self._usage.setdefault((phone_number_id, user), _Usage())
        horizon = now - max(seconds for _, seconds, _ in REQUEST_LIMITS + CALL_LIMITS)
        usage.requests[:] = [t for t in usage.requests if t > horizon]
        usage.connected_calls[:] = [t for t in usage.connected_calls if t > horizon]
        return usage


def _count_since(times: list[float], since: float) -> int:
    return sum(1 for t in times if t > since)


def _limits(times: list[float], limits: tuple[tuple[str, int, int], ...], now: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for period, seconds, limit in limits:
        recent = [t for t in times if t > now - seconds]
        entry: dict[str, Any] = {"time_period": period, "max_allowed": limit, "current_usage": len(recent)}
        if len(recent) >= limit:
            entry["limit_expiration_time"] = int(min(recent) + seconds)
        out.append(entry)
    return out


def _within(limits: list[dict[str, Any]]) -> bool:
    return all(entry["current_usage"] < entry["max_allowed"] for entry in limits)
