"""2026 platform: usernames (BSUIDs) from webhook to app, and the recording/transcription opt-in rules."""

from __future__ import annotations

import pytest

from callhook.env import ConfigError
from ingress.commands import CommandError, Consent, Dial, consent_from_json
from tests.corpus.golden import CORPUS
from worker import config as worker_config
from worker.apps.api import CallInfo
from worker.apps.bridge_twilio import custom_parameters
from worker.capture import Capture, CaptureError
from worker.capture import Consent as MetaConsent
from worker.decode import decode_webhook
from worker.events import (
    CallConnect,
    CallMediaReady,
    CallStatus,
    CallTerminate,
    Passthrough,
    PermissionReply,
)

UID = "US.13491208655302741918"
ENV = {"CALLHOOK_ACCESS_TOKEN": "test-access-token-0123456789"}


def only(name: str) -> object:
    [event] = [
        e for e in decode_webhook((CORPUS / f"{name}.json").read_bytes()) if not isinstance(e, Passthrough)
    ]
    return event


def test_every_event_type_of_a_username_only_user_names_them_by_user_id() -> None:
    connect = only("username_only_connect_incoming")
    assert isinstance(connect, CallConnect)
    assert (connect.caller, connect.caller_user_id, connect.contact_username) == ("", UID, "@ana.calls")
    terminate = only("username_only_terminate")
    assert isinstance(terminate, CallTerminate)
    assert (terminate.caller, terminate.caller_user_id) == ("", UID)
    status = only("username_only_status")
    assert isinstance(status, CallStatus)
    assert (status.recipient_id, status.recipient_user_id) == (None, UID)
    reply = only("username_only_permission_reply")
    assert isinstance(reply, PermissionReply)
    assert (reply.user, reply.user_id, reply.context_id) == ("", UID, "wamid.req1")
    for name in ("username_only_recording_available", "username_only_transcription_available"):
        ready = only(name)
        assert isinstance(ready, CallMediaReady)
        assert (ready.caller, ready.caller_user_id, ready.call_id) == ("", UID, "wacid.u1")


def test_the_app_and_the_agent_learn_who_called_whichever_id_meta_sent() -> None:
    connect = only("username_only_connect_incoming")
    assert isinstance(connect, CallConnect)
    info = CallInfo.from_connect(connect)
    assert (info.caller, info.caller_id, info.caller_user_id, info.caller_username) == (
        "",
        UID,
        UID,
        "@ana.calls",
    )
    params = custom_parameters(info)
    assert params["caller_id"] == UID
    assert params["caller_username"] == "@ana.calls"
    assert "from_number" not in params  # no number: nothing pretends to be one
    both = only("username_and_phone_connect")
    assert isinstance(both, CallConnect)
    info = CallInfo.from_connect(both)
    assert (info.caller, info.caller_id, info.user_id) == ("14155550123", "14155550123", "BR.555")
    outgoing = only("username_only_connect_outgoing_answer")
    assert isinstance(outgoing, CallConnect)
    assert CallInfo.from_connect(outgoing).user_ref == UID


def test_a_bsuid_written_in_from_is_read_as_the_user_id() -> None:
    connect = only("connect_single_contact_user_id_only")
    assert isinstance(connect, CallConnect)
    assert (connect.caller, connect.caller_user_id) == ("", UID)


def test_both_objects_carry_the_recording_words_as_meta_announces_once() -> None:
    capture = Capture(
        MetaConsent("ENABLED", "quality assurance", "en_US"), MetaConsent("ENABLED", "ignored", "fr")
    )
    fields = capture.body_fields()
    assert (
        fields["recording"]
        == fields["transcription"]
        == {
            "status": "ENABLED",
            "purpose": "quality assurance",
            "announcement_language": "en_US",
        }
    )
    assert capture.announced
    assert capture.announcement_max_seconds() > 4
    assert Capture(MetaConsent("DISABLED")).body_fields() == {"recording": {"status": "DISABLED"}}
    assert Capture().body_fields() == {}
    assert not Capture().announced


def test_meta_refusals_are_caught_before_any_request_every_problem_listed() -> None:
    bad = Capture(MetaConsent("ENABLED", "", "xx"), MetaConsent("ENABLED", "p" * 251, "en"))
    with pytest.raises(CaptureError) as caught:
        bad.validated()
    message = str(caught.value)
    assert "recording.purpose" in message
    assert "recording.announcement_language" in message
    assert "transcription.purpose" in message


def test_worker_configuration_validates_the_default_opt_in_at_start_up() -> None:
    loaded = worker_config.load(
        {**ENV, "CALLHOOK_RECORDING": "enabled", "CALLHOOK_CAPTURE_PURPOSE": "training"}
    )
    assert loaded.capture.recording
    assert not loaded.capture.transcription
    with pytest.raises(ConfigError) as caught:
        worker_config.load(
            {
                **ENV,
                "CALLHOOK_TRANSCRIPTION": "enabled",
                "CALLHOOK_ANNOUNCEMENT_LANGUAGE": "klingon",
                "CALLHOOK_ARCHIVE_DIR": "relative/dir",
            }
        )
    problems = caught.value.problems
    assert any("CALLHOOK_CAPTURE_PURPOSE" in p for p in problems)
    assert any("CALLHOOK_ANNOUNCEMENT_LANGUAGE" in p for p in problems)
    assert any("CALLHOOK_ARCHIVE_DIR" in p for p in problems)


def test_a_dial_may_name_a_user_id_and_its_own_opt_in() -> None:
    dial = Dial(
        to="", recipient=UID, phone_number_id="1", recording=Consent("ENABLED", "orders", "en")
    ).validated()
    assert b'"recipient": "US.13491208655302741918"' in dial.encode()
    with pytest.raises(CommandError, match=r"'to' .* or 'recipient'"):
        Dial(to="", phone_number_id="1").validated()
    with pytest.raises(CommandError) as caught:
        Dial(to="1555", recipient="nope", phone_number_id="1", transcription=Consent("ON")).validated()
    text = str(caught.value)
    assert "'to' must be" in text
    assert "'recipient' must be" in text
    assert "transcription.status" in text
    consent, problems = consent_from_json("recording", {"status": 1, "extra": True})
    assert consent is None
    assert len(problems) == 2


def test_the_agent_is_told_that_meta_announces_first_and_for_how_long() -> None:
    capture = Capture(MetaConsent("ENABLED", "quality assurance", "en"))
    info = CallInfo(
        call_id="c", phone_number_id="p", direction="incoming", user_number="1555", capture=capture
    )
    params = custom_parameters(info)
    assert params["meta_announcement"] == "recording"
    assert float(params["announcement_max_seconds"]) == capture.announcement_max_seconds()
    assert info.announced
    quiet = CallInfo(call_id="c", phone_number_id="p", direction="incoming", user_number="1555")
    assert "meta_announcement" not in custom_parameters(quiet)
