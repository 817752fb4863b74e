"""The board: the queues rebuilt from the owners' announcements, with leases (worker/handoff/board.py)."""

from __future__ import annotations

from worker.handoff.board import Board
from worker.handoff.wire import Left, Presence, Queued, Taken, Waiting, board_decoder, encoder

TTL = 6.0


def entry(call_id: str, *, queue: str = "support", worker: str = "w1", at: float = 100.0) -> Waiting:
    return Waiting(call_id=call_id, queue=queue, worker=worker, enqueued_at=at, user="15550001")


def test_queue_order_is_enqueue_time_whatever_the_arrival_order() -> None:
    board = Board()
    board.apply(Queued(entry=entry("late", at=200.0), ttl_seconds=TTL), now=0.0)
    board.apply(Queued(entry=entry("early", at=100.0, worker="w2"), ttl_seconds=TTL), now=0.0)
    board.apply(Queued(entry=entry("other", queue="sales", at=50.0), ttl_seconds=TTL), now=0.0)
    assert [e.call_id for e in board.waiting(frozenset({"support"}))] == ["early", "late"]
    assert [e.call_id for e in board.waiting()] == ["other", "early", "late"]
    assert board.position("late") == 2
    assert board.position("other") == 1
    assert board.position("unknown") is None


def test_taken_and_left_remove_the_call() -> None:
    board = Board()
    board.apply(Queued(entry=entry("a"), ttl_seconds=TTL), now=0.0)
    board.apply(Queued(entry=entry("b", at=101.0), ttl_seconds=TTL), now=0.0)
    assert board.apply(Taken(call_id="a", queue="support", agent="alice"), now=1.0)
    assert board.apply(Left(call_id="b", queue="support", why="abandoned"), now=1.0)
    assert board.waiting() == []
    assert not board.apply(Left(call_id="b", queue="support", why="abandoned"), now=1.0)  # no change


def test_a_silent_owner_leaves_no_ghost() -> None:
    """A SIGKILLed worker sends no ``left``: its entries expire one TTL after its last presence."""
    board = Board()
    board.apply(Queued(entry=entry("a", worker="dead"), ttl_seconds=TTL), now=0.0)
    board.apply(Queued(entry=entry("b", worker="alive"), ttl_seconds=TTL), now=0.0)
    board.apply(Presence(worker="alive", entries=[entry("b", worker="alive")], ttl_seconds=TTL), now=4.0)
    assert not board.expire(5.9)
    assert board.next_expiry() == 6.0
    assert board.expire(6.0)
    assert [e.call_id for e in board.waiting()] == ["b"]
    assert board.expire(10.0)
    assert len(board) == 0


def test_presence_is_authoritative_for_its_worker() -> None:
    board = Board()
    board.apply(Queued(entry=entry("a"), ttl_seconds=TTL), now=0.0)  # its "left" was lost
    board.apply(Queued(entry=entry("x", worker="w2"), ttl_seconds=TTL), now=0.0)
    assert board.apply(Presence(worker="w1", entries=[entry("c")], ttl_seconds=TTL), now=1.0)
    assert sorted(e.call_id for e in board.waiting()) == ["c", "x"]
    assert not board.apply(Presence(worker="w1", entries=[entry("c")], ttl_seconds=TTL), now=2.0)


def test_messages_round_trip_on_the_wire() -> None:
    message = Queued(entry=entry("a"), ttl_seconds=TTL)
    assert board_decoder.decode(encoder.encode(message)) == message
