"""The broker contract: queue names every AMQP client accepts, one per call id."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from ingress import contract

# pamqp (under aio-pika) refuses any queue name outside this pattern before it reaches the broker.
AMQP_QUEUE_NAME = re.compile(r"^[a-zA-Z0-9\-_.:]*$")


def test_real_meta_call_id_makes_a_valid_readable_mailbox_name() -> None:
    call_id = "wacid.HBgLMTgwMDU1NTAwMDAVAgARGCA3QjQwNjBCQjNBNzc4MkRDMjk2MzEzNkVFRTg3QjlEOQA="
    name = contract.mailbox_queue(call_id)
    assert AMQP_QUEUE_NAME.match(name)
    assert name.startswith("callhook.call.wacid.HBgLMTgw")
    assert name.endswith(":3D")


@given(st.text(max_size=300))
def test_any_call_id_maps_to_a_valid_queue_name(call_id: str) -> None:
    name = contract.mailbox_queue(call_id)
    assert AMQP_QUEUE_NAME.match(name)
    assert len(name.encode()) <= 255


@given(st.text(max_size=60), st.text(max_size=60))
def test_distinct_call_ids_never_share_a_mailbox(a: str, b: str) -> None:
    if a != b:
        assert contract.mailbox_queue(a) != contract.mailbox_queue(b)


def test_message_id_is_the_body_digest() -> None:
    assert contract.message_id(b"x") == contract.message_id(b"x") != contract.message_id(b"y")
    assert len(contract.message_id(b"")) == 64
