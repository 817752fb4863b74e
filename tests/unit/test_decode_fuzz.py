"""The decoder's invariant (h11's fuzz rule): any input either decodes or raises PoisonWebhook, nothing else.

And what it returns can always be published: the router encodes every event it gets. Inputs come in four
kinds, from least to most likely to reach the item-level code: arbitrary bytes, arbitrary JSON, envelopes
assembled from Meta's own field names with arbitrary values in every slot, and corpus bodies with one node
replaced, deleted or retyped (plus byte-level damage).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.corpus import golden
from worker.decode import decode_webhook
from worker.errors import PoisonWebhook

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_decodes_or_poison(body: bytes) -> None:
    try:
        events = decode_webhook(body)
    except PoisonWebhook as exc:
        reason = exc.reason
    else:
        msgspec.json.encode(events)  # the router must be able to publish whatever came out
        return
    assert reason
    assert reason.isascii()


# --- arbitrary bytes and JSON ------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(st.binary(max_size=512))
def test_any_bytes(body: bytes) -> None:
    assert_decodes_or_poison(body)


@FUZZ
@given(json_values)
def test_any_json(value: Any) -> None:
    assert_decodes_or_poison(json.dumps(value).encode())


# --- envelopes made of Meta's names, anything in every slot -------------------------------------------

WORDS = [
    "connect",
    "terminate",
    "CONNECT",
    "call_created",
    "call_recording_available",
    "USER_INITIATED",
    "BUSINESS_INITIATED",
    "offer",
    "answer",
    "Answer",
    "COMPLETED",
    "failed",
    "RINGING",
    "call",
    "call_permission_reply",
    "accept",
    "1752583107",
    "-1",
    "99999999999999999999999",
    "wacid.x",
    "v=0\r\n",
    "",
    "é\U0001f600",
]
slot = st.sampled_from(WORDS) | json_values | st.integers()


def _obj(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict holding any subset of ``fields`` (each missing, or a value from its strategy)."""
    return st.fixed_dictionaries({}, optional=fields)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return strategy | slot


session = _maybe(_obj(sdp_type=slot, sdp=slot))
call_item = _obj(
    id=slot,
    event=slot,
    **{"from": slot},
    to=slot,
    timestamp=slot,
    direction=slot,
    session=session,
    connection=_maybe(_obj(webrtc=_maybe(_obj(sdp=slot)))),
    status=_maybe(st.lists(slot, max_size=2)),
    start_time=slot,
    end_time=slot,
    duration=slot,
    biz_opaque_callback_data=slot,
)
status_item = _obj(id=slot, type=slot, status=slot, timestamp=slot, recipient_id=slot)
contact = _obj(wa_id=slot, profile=_maybe(_obj(name=slot)))
error = _obj(code=slot, message=slot, title=slot, error_data=_maybe(_obj(details=slot)))
reply = _obj(response=slot, is_permanent=slot, expiration_timestamp=slot, response_source=slot)
message = _obj(
    id=slot,
    **{"from": slot},
    timestamp=slot,
    interactive=_maybe(_obj(type=slot, call_permission_reply=_maybe(reply))),
)
metadata = _maybe(_obj(phone_number_id=slot, display_phone_number=slot))
value = _maybe(
    _obj(
        metadata=metadata,
        contacts=_maybe(st.lists(_maybe(contact), max_size=3)),
        calls=_maybe(st.lists(_maybe(call_item), max_size=4)),
        statuses=_maybe(st.lists(_maybe(status_item), max_size=3)),
        errors=_maybe(st.lists(_maybe(error), max_size=2)),
        messages=_maybe(st.lists(_maybe(message), max_size=3)),
    )
)
change = _maybe(_obj(field=st.sampled_from(["calls", "messages", "account_update"]) | slot, value=value))
entry = _obj(id=slot, changes=_maybe(st.lists(change, max_size=3)))
envelope = st.fixed_dictionaries(
    {},
    optional={
        "object": st.just("whatsapp_business_account") | slot,
        "entry": _maybe(
            st.lists(_maybe(_obj(id=slot, changes=_maybe(st.lists(change, max_size=3)))), max_size=3)
        ),
    },
)


@settings(FUZZ, max_examples=1000)
@given(envelope)
def test_envelopes_with_anything_in_any_slot(body: dict[str, Any]) -> None:
    assert_decodes_or_poison(json.dumps(body).encode())


# --- corpus bodies, damaged -----------------------------------------------------------------------------

VALID = [
    json.loads(p.read_bytes())
    for p in golden.corpus_bodies()
    if not p.stem.startswith("poison_") and p.stem != "batch_50_calls"
]
RAW_BODIES = [p.read_bytes() for p in golden.corpus_bodies()]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    body = json.loads(json.dumps(draw(st.sampled_from(VALID))))  # a private copy
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(body)
        path = draw(st.sampled_from(paths))
        if not path:
            body = draw(slot)
            continue
        parent = body
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "wrap"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "wrap":
            parent[path[-1]] = [parent[path[-1]]]
        else:
            parent[path[-1]] = draw(slot)
    return body


@settings(FUZZ, max_examples=1000)
@given(mutated())
def test_corpus_bodies_with_nodes_replaced_deleted_or_wrapped(body: Any) -> None:
    assert_decodes_or_poison(json.dumps(body).encode())


@FUZZ
@given(st.sampled_from(RAW_BODIES), st.data())
def test_corpus_bodies_with_bytes_damaged(body: bytes, data: st.DataObject) -> None:
    damaged = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        if not damaged:
            break
        at = data.draw(st.integers(0, len(damaged) - 1))
        match data.draw(st.sampled_from(["flip", "cut", "insert"])):
            case "flip":
                damaged[at] = data.draw(st.integers(0, 255))
            case "cut":
                del damaged[at:]
            case "insert":
                damaged[at:at] = data.draw(
                    st.sampled_from([b"\\u", b'"', b"{", b"]", b"\\ud83d", b"\xc3", b","])
                )
    assert_decodes_or_poison(bytes(damaged))


def test_deep_nesting_is_poison_not_a_crash() -> None:
    for depth in (10_000, 100_000):
        deep = b'{"object":"whatsapp_business_account","entry":' + b"[" * depth + b"]" * depth + b"}"
        assert_decodes_or_poison(deep)
        nested_value = (
            b'{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"calls","value":'
            + b'{"a":' * depth
            + b"1"
            + b"}" * depth
            + b"}]}]}"
        )
        assert_decodes_or_poison(nested_value)
