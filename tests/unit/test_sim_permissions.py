"""Call permissions and their limits, as Meta enforces them."""

from __future__ import annotations

import pytest

from simulator.errors import MetaError
from simulator.permissions import DAY, TEMPORARY_SECONDS, PermissionBook, PermissionStatus

NUMBER = "100"
USER = "15551230001"
T0 = 1_750_000_000.0


def _code(call: object) -> int:
    assert callable(call)
    with pytest.raises(MetaError) as caught:
        call()
    return caught.value.code


def test_no_permission_means_138006_as_401() -> None:
    book = PermissionBook()
    with pytest.raises(MetaError) as caught:
        book.check_can_call(NUMBER, USER, T0)
    assert caught.value.code == 138006
    assert caught.value.http_status == 401


def test_temporary_permission_expires_after_seven_days() -> None:
    book = PermissionBook()
    book.set(USER, PermissionStatus.TEMPORARY, now=T0)
    book.check_can_call(NUMBER, USER, T0 + TEMPORARY_SECONDS - 1)
    assert book.status(NUMBER, USER, T0 + TEMPORARY_SECONDS) == (PermissionStatus.NONE, None)
    assert _code(lambda: book.check_can_call(NUMBER, USER, T0 + TEMPORARY_SECONDS)) == 138006


def test_permission_is_per_number_with_an_any_number_fallback() -> None:
    book = PermissionBook()
    book.set(USER, PermissionStatus.PERMANENT, now=T0, phone_number_id="200")
    book.check_can_call("200", USER, T0)
    assert _code(lambda: book.check_can_call(NUMBER, USER, T0)) == 138006
    book.set(USER, PermissionStatus.PERMANENT, now=T0)
    book.check_can_call(NUMBER, USER, T0)


def test_requests_are_limited_to_one_a_day_and_two_a_week() -> None:
    book = PermissionBook()
    book.record_request(NUMBER, USER, T0)
    assert _code(lambda: book.record_request(NUMBER, USER, T0 + 3600)) == 138009
    book.record_request(NUMBER, USER, T0 + DAY + 1)
    assert _code(lambda: book.record_request(NUMBER, USER, T0 + 3 * DAY)) == 138009
    book.record_request(NUMBER, USER, T0 + 7 * DAY + 1)
    book.record_request("other number", USER, T0 + 7 * DAY + 2)


def test_a_request_to_a_permanent_user_is_138017() -> None:
    book = PermissionBook()
    expiry = book.grant(NUMBER, USER, permanent=True, now=T0)
    assert expiry is None
    assert _code(lambda: book.record_request(NUMBER, USER, T0)) == 138017


def test_connected_calls_are_limited_per_day() -> None:
    book = PermissionBook(default=PermissionStatus.PERMANENT)
    for i in range(100):
        book.record_connected_call(NUMBER, USER, T0 + i)
    assert _code(lambda: book.check_can_call(NUMBER, USER, T0 + 200)) == 138012
    book.check_can_call(NUMBER, USER, T0 + DAY + 100)


def test_describe_is_the_call_permissions_body() -> None:
    book = PermissionBook()
    book.record_request(NUMBER, USER, T0)
    expiry = book.grant(NUMBER, USER, permanent=False, now=T0 + 60)
    body = book.describe(NUMBER, USER, T0 + 120)
    assert body["messaging_product"] == "whatsapp"
    assert body["permission"] == {"status": "temporary", "expiration_time": int(expiry or 0)}
    request, start = body["actions"]
    assert request["action_name"] == "send_call_permission_request"
    assert request["can_perform_action"] is False
    assert request["limits"][0] == {
        "time_period": "PT24H",
        "max_allowed": 1,
        "current_usage": 1,
        "limit_expiration_time": int(T0 + DAY),
    }
    assert request["limits"][1] == {"time_period": "P7D", "max_allowed": 2, "current_usage": 1}
    assert start == {
        "action_name": "start_call",
        "can_perform_action": True,
        "limits": [{"time_period": "PT24H", "max_allowed": 100, "current_usage": 0}],
    }
    assert PermissionStatus.parse("none") is PermissionStatus.NONE
    assert book.describe(NUMBER, "nobody", T0)["permission"] == {"status": "no_permission"}
