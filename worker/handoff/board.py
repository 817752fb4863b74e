"""The queues as a console (or a worker) sees them, rebuilt from the owners' announcements (pure).

No process holds the queues: each waiting call lives in the worker that owns it, which announces
``queued``, ``taken`` and ``left`` on the board exchange and repeats its whole list (``presence``) every
heartbeat. A :class:`Board` applies those in arrival order. An entry is a lease: it expires ``ttl_seconds``
after its owner last mentioned it, so a worker killed with SIGKILL (no ``left`` ever sent) leaves no ghost:
its calls disappear from every board within one TTL. A presence is authoritative for its worker: entries of
that worker it does not list are dropped (a ``left`` that was lost).
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.handoff.wire import BoardMessage, Left, Presence, Queued, Taken, Waiting


@dataclass(slots=True)
class _Lease:
    entry: Waiting
    expires_at: float


class Board:
    def __init__(self) -> None:
        self._leases: dict[str, _Lease] = {}

    def apply(self, message: BoardMessage, now: float) -> bool:
        """Apply one announcement received at ``now`` (a monotonic clock); True if the view changed."""
        match message:
            case Queued(entry=entry, ttl_seconds=ttl):
                self._leases[entry.call_id] = _Lease(entry, now + ttl)
                return True
            case Taken(call_id=call_id) | Left(call_id=call_id):
                return self._leases.pop(call_id, None) is not None
            case Presence(worker=worker, entries=entries, ttl_seconds=ttl):
                return self._presence(worker, entries, now + ttl)

    def _presence(self, worker: str, entries: list[Waiting], expires_at: float) -> bool:
        listed = {entry.call_id for entry in entries}
        gone = [k for k, lease in self._leases.items() if lease.entry.worker == worker and k not in listed]
        for call_id in gone:
            del self._leases[call_id]
        added = False
        for entry in entries:
            added = added or entry.call_id not in self._leases
            self._leases[entry.call_id] = _Lease(entry, expires_at)
        return bool(gone) or added

    def expire(self, now: float) -> bool:
        """Drop the entries whose owner has been silent for longer than their TTL; True if any."""
        stale = [k for k, lease in self._leases.items() if lease.expires_at <= now]
        for call_id in stale:
            del self._leases[call_id]
        return bool(stale)

    def next_expiry(self) -> float | None:
        return min((lease.expires_at for lease in self._leases.values()), default=None)

    def waiting(self, queues: frozenset[str] | None = None) -> list[Waiting]:
        """Waiting calls in the given queues (None: all), oldest first (ties by call id)."""
        entries = [x.entry for x in self._leases.values() if queues is None or x.entry.queue in queues]
        return sorted(entries, key=lambda e: (e.enqueued_at, e.call_id))

    def position(self, call_id: str) -> int | None:
        """1 for the next call an agent of its queue gets; None if unknown."""
        lease = self._leases.get(call_id)
        if lease is None:
            return None
        ahead = self.waiting(frozenset({lease.entry.queue}))
        return next(i for i, e in enumerate(ahead, 1) if e.call_id == call_id)

    def __len__(self) -> int:
        return len(self._leases)
