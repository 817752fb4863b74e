"""Issue 17's input findings, checked on the pure parts (each test names its finding in its docstring).

Finding numbers: 1 apps chosen by the caller, 2 characters vs bytes, 4 idempotency, 7 the smaller ones.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callhook.env import ConfigError, EnvReader
from ingress import idempotency
from ingress.commands import CommandError, Dial, check_call_id, hangup
from ingress.config import load as load_ingress
from ingress.throttle import LoginThrottle

GOOD = {"CALLHOOK_APP_SECRETS": "0123456789abcdef0123", "CALLHOOK_VERIFY_TOKEN": "verify-token-0123456"}


def dial(**overrides: str | None) -> Dial:
    fields: dict[str, str | None] = {"to": "15551234567", "phone_number_id": "1234567890"}
    fields.update(overrides)
    return Dial(**fields)  # type: ignore[arg-type]


def test_phone_number_with_a_trailing_newline_is_refused() -> None:
    """Finding 7: the phone pattern used ``$``, which accepts a trailing newline."""
    with pytest.raises(CommandError, match="'to'"):
        dial(to="15551234567\n").validated()


@pytest.mark.parametrize(
    "digits",
    [
        "١٥٥٥١٢٣٤٥٦٧",
        "\uff11\uff15\uff15\uff15\uff11\uff12\uff13\uff14\uff15\uff16\uff17",
        "15551234567\u0660",
    ],
)
def test_non_ascii_digits_never_pass(digits: str) -> None:
    """Finding 7: ``isdigit()`` accepted Arabic-Indic and full-width digits, which then went into a Graph URL
    path; ``to`` and ``phone_number_id`` now take ASCII digits only."""
    with pytest.raises(CommandError, match="'to'"):
        dial(to=digits).validated()
    with pytest.raises(CommandError, match="phone_number_id"):
        dial(phone_number_id=digits).validated()
    with pytest.raises(ConfigError, match="CALLHOOK_PHONE_NUMBER_ID"):
        load_ingress({**GOOD, "CALLHOOK_PHONE_NUMBER_ID": digits})


@pytest.mark.parametrize("data", ["a\x00b", "line\nbreak", "del\x7f", "c1\x85", "bell\x07"])
def test_callback_data_with_control_characters_is_refused(data: str) -> None:
    """Finding 7: callback data accepted control characters."""
    with pytest.raises(CommandError, match="control characters"):
        dial(biz_opaque_callback_data=data).validated()


def test_callback_data_is_limited_in_bytes() -> None:
    """Finding 2 (bytes, not characters): 300 x é is 600 bytes, over Meta's 512."""
    assert dial(biz_opaque_callback_data="é" * 256).validated()
    with pytest.raises(CommandError, match="512 bytes"):
        dial(biz_opaque_callback_data="é" * 300).validated()
    with pytest.raises(CommandError, match="512 bytes"):
        dial(biz_opaque_callback_data="\ud800").validated()  # a lone surrogate cannot be encoded at all


def test_call_id_is_limited_in_bytes_and_to_metas_alphabet() -> None:
    """Finding 2: 200 x é passed the 200-character limit and broke the command channel (400 bytes is over
    an AMQP routing key's 255)."""
    check_call_id("wacid.HBgLMTU1NTEyMzQ1NjcVAgARGBI5QTAyQ0U0RjA1QjYyRjlGNDQA")
    check_call_id("a" * 200)
    for bad in ("é" * 200, "a" * 201, "", "id with space", "id\n", "x/../y\x00"):
        with pytest.raises(CommandError):
            hangup(bad)


def test_only_configured_app_names_are_accepted() -> None:
    """Finding 1: the API passed any app spec (a ws:// URL, a module, play:/etc/passwd) to the worker."""
    allowed = frozenset({"echo", "agent"})
    assert dial(app="agent").validated(allowed).app == "agent"
    for spec in ("ws://evil.example/x", "os:system", "play:/etc/passwd", "record:/tmp", "Agent", "missing"):
        with pytest.raises(CommandError, match="'app'"):
            dial(app=spec).validated(allowed)


@pytest.mark.parametrize(
    "to", ["US.13491208655302741918", "US.ENT.11815799212886844830", "15551234567", "+442071234567"]
)
def test_recipient_may_be_a_phone_number_or_a_whatsapp_user_id(to: str) -> None:
    validated = dial(to=to).validated()
    if to.startswith(("US.", "BR.")):  # a user id given as 'to' is addressed as Meta wants it: 'recipient'
        assert (validated.to, validated.recipient) == ("", to)
    else:
        assert (validated.to, validated.recipient) == (to.removeprefix("+"), "")


@pytest.mark.parametrize("to", ["us.1349", "US.", "US.ENT.", "USA.123", "US.123\n", "US.12 3", "US.ENT.x1"])
def test_malformed_user_ids_are_refused(to: str) -> None:
    with pytest.raises(CommandError):
        dial(to=to).validated()


@given(st.text(max_size=300))
def test_any_text_either_validates_to_ascii_or_is_refused(text: str) -> None:
    """Whatever a caller sends, what is accepted is short ASCII without controls (finding 2's class)."""
    for field in ("to", "phone_number_id"):
        try:
            validated = dial(**{field: text}).validated()
        except CommandError:
            continue
        value = getattr(validated, field)
        assert value.isascii()
        assert value.isprintable()
        assert len(value.encode()) <= 64
    try:
        check_call_id(text)
    except CommandError:
        return
    assert text.isascii()
    assert text.isprintable()
    assert len(text.encode()) <= 200


def test_nan_and_infinity_are_refused_in_float_settings() -> None:
    """Finding 7: ``float("nan")`` passed every range check (all comparisons with NaN are false)."""
    for raw in ("nan", "NaN", "inf", "-inf", "Infinity"):
        reader = EnvReader({"X": raw})
        value = reader.float("X", 1.0, minimum=0, maximum=10)
        assert math.isfinite(value)
        assert reader.problems, raw
    with pytest.raises(ConfigError, match="CALLHOOK_PUBLISH_CONFIRM_TIMEOUT_SECONDS"):
        load_ingress({**GOOD, "CALLHOOK_PUBLISH_CONFIRM_TIMEOUT_SECONDS": "nan"})


def test_short_secrets_and_tokens_are_refused_at_start_up_without_showing_them() -> None:
    """Finding 7: secrets and tokens had no minimum length."""
    with pytest.raises(ConfigError) as caught:
        load_ingress(
            {
                "CALLHOOK_APP_SECRETS": "0123456789abcdef0123,short1",
                "CALLHOOK_VERIFY_TOKEN": "tok",
                "CALLHOOK_API_TOKENS": "0123456789abcdef0123456789,tiny-token",
            }
        )
    text = str(caught.value)
    for name in ("CALLHOOK_APP_SECRETS", "CALLHOOK_VERIFY_TOKEN", "CALLHOOK_API_TOKENS"):
        assert name in text
    for secret in ("short1", "tok\n", "tiny-token"):
        assert secret not in text
    assert load_ingress(GOOD).app_secrets == ("0123456789abcdef0123",)


def test_apps_setting_gives_names_and_keeps_specs_out_of_errors() -> None:
    """Finding 1: the operator's apps are names -> specs; a bad item is reported without its spec."""
    reader = EnvReader({"CALLHOOK_APPS": "agent=wss://agent.example/ws?token=s3cret, greet=play:/srv/hi.wav"})
    assert reader.app_map("CALLHOOK_APPS") == {
        "echo": "echo",
        "agent": "wss://agent.example/ws?token=s3cret",
        "greet": "play:/srv/hi.wav",
    }
    bad = EnvReader({"CALLHOOK_APPS": "Agent=wss://x/?token=s3cret,agent,x=1,x=2"})
    bad.app_map("CALLHOOK_APPS")
    assert len(bad.problems) == 3
    assert "s3cret" not in "".join(bad.problems)
    config = load_ingress({**GOOD, "CALLHOOK_APPS": "agent=wss://agent.example/ws"})
    assert config.app_names == {"echo", "agent"}


def test_idempotency_names_and_request_ids_are_derived_from_the_key() -> None:
    """Finding 4: every replica derives the same queue and request id from a key, and nothing else."""
    assert idempotency.key_queue("k1") == idempotency.key_queue("k1") != idempotency.key_queue("k2")
    assert len(idempotency.key_queue("x" * 255).encode()) <= 255
    assert idempotency.request_id("dial", "k1") == idempotency.request_id("dial", "k1")
    assert idempotency.request_id("dial", "k1") != idempotency.request_id("hangup", "k1")
    same = idempotency.fingerprint("dial", {"to": "1", "app": None})
    assert same == idempotency.fingerprint("dial", {"app": None, "to": "1"})
    assert same != idempotency.fingerprint("dial", {"to": "2", "app": None})
    record = idempotency.Record(same, "dial-abc", 1.5)
    assert idempotency.Record.decode(record.encode()) == record
    for bad in ("", "has space", "é", "x" * 256, "tab\t"):
        with pytest.raises(idempotency.IdempotencyKeyError):
            idempotency.check_key(bad)


def test_failed_logins_are_throttled_per_address_in_bounded_memory() -> None:
    """Finding 7: failed API logins were not throttled."""
    throttle = LoginThrottle(limit=3, window=60, max_addresses=100)
    for _ in range(3):
        assert throttle.blocked("10.0.0.1", 0) == 0
        throttle.failed("10.0.0.1", 0)
    assert throttle.blocked("10.0.0.1", 1) == pytest.approx(59)
    assert throttle.blocked("10.0.0.2", 1) == 0  # others are not affected
    assert throttle.blocked("10.0.0.1", 61) == 0  # the window passed
    for n in range(10_000):
        throttle.failed(f"addr-{n}", 100)
    assert len(throttle) == 100
