"""decode_webhook's two routes agree: one typed pass for a webhook of calls changes, two layers for any other.

``worker/decode.py`` takes the one-pass route only for bodies that end the way Meta's calling webhooks end
(compact JSON, ``"field":"calls"}]}]}``), and falls back to the two-layer route whenever that pass fails or
meets anything it does not handle. The same webhook with one trailing space is the same JSON but always takes
the two-layer route, so each body here is decoded both ways and the outcomes (events, or the poison reason)
must be identical.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.corpus import golden
from tests.unit.test_decode_fuzz import FUZZ, WORDS, change, entry, mutated
from worker import decode
from worker.decode import decode_webhook
from worker.errors import PoisonWebhook
from worker.events import CallConnect, CallNotice, CallStatus, CallTerminate, Event

CALLS_TAIL = b'"field":"calls"}]}]}'


def metas_order(node: Any) -> Any:
    """``node`` with every object's ``field`` key moved last, as Meta orders a change (value, then field)."""
    if isinstance(node, list):
        return [metas_order(child) for child in node]
    if isinstance(node, dict):
        ordered = {key: metas_order(child) for key, child in node.items() if key != "field"}
        if "field" in node:
            ordered["field"] = node["field"]
        return ordered
    return node


def compact(body: Any) -> bytes:
    """Meta's wire style: compact, non-ASCII escaped, value before field."""
    return json.dumps(metas_order(body), separators=(",", ":")).encode()


def outcome(body: bytes) -> tuple[str, Any]:
    try:
        return "events", decode_webhook(body)
    except PoisonWebhook as exc:
        return "poison", exc.reason


def assert_routes_agree(body: bytes) -> None:
    assert outcome(body) == outcome(body + b" ")


def _json_bodies() -> list[bytes]:
    bodies = []
    for path in golden.corpus_bodies():
        try:
            bodies.append(compact(json.loads(path.read_bytes())))
        except ValueError:
            continue  # not JSON: the poison cases of the corpus
    return bodies + [compact(json.loads(body)) for _, body in golden.pywa_cases()]


BODIES = _json_bodies()


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_both_routes_decode_every_corpus_body_alike(body: bytes) -> None:
    assert_routes_agree(body)


def test_calls_webhooks_take_the_one_pass_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-pass route really runs (and succeeds) for Meta's calling webhooks, and declines notices."""
    taken: list[list[Event] | None] = []
    one_pass: Callable[[bytes], list[Event] | None] = decode._calls_only

    def spy(body: bytes) -> list[Event] | None:
        taken.append(one_pass(body))
        return taken[-1]

    monkeypatch.setattr(decode, "_calls_only", spy)
    calls_bodies = [body for body in BODIES if body.endswith(CALLS_TAIL)]
    for body in calls_bodies:
        outcome(body)
    assert len(taken) == len(calls_bodies) >= 30
    decoded = [events for events in taken if events is not None]
    kinds = {type(event) for events in decoded for event in events}
    assert {CallConnect, CallTerminate, CallStatus} <= kinds
    assert CallNotice not in kinds  # a notice forwards Meta's item bytes: the two-layer route's job
    assert len(decoded) >= 0.8 * len(calls_bodies)


def _obj(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


# Calls values whose every slot has a type the wire types accept (values from Meta's vocabulary, some of them
# still unusable: "-1" as a time, "Answer" as a direction), so that the one-pass route mostly succeeds.
word = st.sampled_from(WORDS) | st.none()
number = st.sampled_from(WORDS) | st.integers(0, 10**15)  # ids and phone numbers
seconds = st.sampled_from([1752583107, "1752583107", None] * 4 + ["-1", "x", 2**64])


def either(*likely: str) -> st.SearchStrategy[str | None]:
    """Mostly one of ``likely``, sometimes any word of Meta's (or null)."""
    return st.sampled_from([*likely] * 8 + [*WORDS, None])


call_item = st.fixed_dictionaries(
    {
        "id": either("wacid.1", "wacid.2"),
        "event": either("connect", "terminate", "CONNECT", "Terminate", "call_created"),
        "session": _obj(sdp_type=either("offer", "answer", "ANSWER"), sdp=either("v=0\r\n")),
    },
    optional={
        "from": number,
        "to": number,
        "timestamp": seconds,
        "direction": either("USER_INITIATED", "BUSINESS_INITIATED", "business_initiated"),
        "connection": _obj(webrtc=_obj(sdp=either("v=0\r\n"))),
        "status": either("COMPLETED", "failed") | st.lists(st.sampled_from(WORDS), max_size=2),
        "start_time": seconds,
        "duration": seconds,
        "biz_opaque_callback_data": word,
    },
)
status_item = st.fixed_dictionaries(
    {"id": either("wacid.1"), "type": either("call", "CALL"), "status": either("RINGING", "accepted")},
    optional={"timestamp": seconds, "recipient_id": number},
)
calls_value = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {"phone_number_id": number}, optional={"display_phone_number": number}
        )
    },
    optional={
        "contacts": st.lists(_obj(wa_id=number, profile=_obj(name=word) | st.none()), max_size=3),
        "calls": st.lists(call_item, max_size=4),
        "statuses": st.lists(status_item, max_size=3),
        "errors": st.lists(_obj(code=st.integers(0, 2**31), message=word, title=word), max_size=2),
    },
)
calls_change = st.fixed_dictionaries({"value": calls_value, "field": st.just("calls")})
# The last change of the last entry is a calls change (so that the body ends as the one-pass route expects),
# after any other entries and changes made of Meta's names with anything in any slot.
ends_with_calls = st.builds(
    lambda object_type, entries, waba_id, changes, last: {
        "object": object_type,
        "entry": [*entries, {"id": waba_id, "changes": [*changes, last]}],
    },
    st.sampled_from(["whatsapp_business_account"] * 9 + ["page"]),
    st.just([])
    | st.lists(st.fixed_dictionaries({"id": number, "changes": st.lists(calls_change, max_size=2)}))
    | st.lists(entry, max_size=2),
    number,
    st.lists(calls_change, max_size=2) | st.lists(calls_change | change, max_size=2),
    calls_change,
)


@settings(FUZZ, max_examples=1000)
@given(ends_with_calls)
def test_both_routes_agree_on_envelopes_with_anything_in_any_slot(body: dict[str, Any]) -> None:
    assert_routes_agree(compact(body))


@settings(FUZZ, max_examples=500)
@given(mutated())
def test_both_routes_agree_on_damaged_corpus_bodies(body: Any) -> None:
    assert_routes_agree(compact(body))


@FUZZ
@given(st.sampled_from([b for b in BODIES if b.endswith(CALLS_TAIL)]), st.data())
def test_both_routes_agree_on_bytes_damaged_before_the_tail(body: bytes, data: st.DataObject) -> None:
    damaged = bytearray(body)
    at = data.draw(st.integers(0, len(damaged) - len(CALLS_TAIL)))
    damaged[at:at] = data.draw(
        st.sampled_from([b"\\u", b'"', b"{", b"]", b"\\ud83d", b"\xc3", b",", b"\xff"])
    )
    assert_routes_agree(bytes(damaged))
