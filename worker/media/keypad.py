"""One call's keypad: telephone-event packets in (from the media's seam), digits out to the app.

The pure :class:`~worker.media.dtmf.DtmfDecoder` does the RFC 4733 work; this adds what needs a loop:

* **a timer** for an event whose end packets were all lost: armed at the decoder's deadline while an event
  is pending, so such a digit comes ``end_timeout_seconds`` after its last packet, with no polling task;
* **a buffer**: digits are kept from the moment the media exists until the app reads them (type-ahead: a
  caller who presses 1 during the menu is heard when the app asks), each digit delivered once, to whichever
  reader takes it; beyond ``capacity`` unread digits the oldest is dropped (counted);
* **the count** for metrics (``on_digit``), never the digit itself: digits can be PINs, so they are not
  logged above debug level.

:meth:`Keypad.close` (the media ended) reports a key still held, then ends every reader once the buffer is
read.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable

from worker.media.dtmf import (
    DEFAULT_END_TIMEOUT_SECONDS,
    Digit,
    DtmfDecoder,
    DtmfStatistics,
    TelephoneEventPacket,
)

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 64


class Keypad:
    """Digits of one call. Create inside the running loop; :meth:`feed` from the loop's thread."""

    def __init__(
        self,
        *,
        on_digit: Callable[[Digit], None] | None = None,
        end_timeout_seconds: float = DEFAULT_END_TIMEOUT_SECONDS,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._decoder = DtmfDecoder(end_timeout_seconds=end_timeout_seconds)
        self._on_digit = on_digit
        self._loop = asyncio.get_running_loop()
        # The clock of the packets' ``arrival``: the seam stamps them with the loop's.
        self._clock = clock or self._loop.time
        self._buffer: deque[Digit] = deque()
        self._capacity = capacity
        self._ready = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.dropped = 0

    def feed(self, packet: TelephoneEventPacket) -> None:
        """One telephone-event RTP packet of this call (any order, duplicates welcome)."""
        if self._closed:
            return
        self._deliver(self._decoder.feed(packet))
        self._arm()

    async def next_digit(self) -> Digit | None:
        """The oldest digit not yet read, waiting for one; None once the call is over and all were read."""
        while not self._buffer:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._buffer.popleft()

    async def digits(self) -> AsyncIterator[Digit]:
        """Digits as they are pressed (and those pressed before and not yet read); ends with the call."""
        while (digit := await self.next_digit()) is not None:
            yield digit

    def close(self) -> None:
        """The call is over: a key held until now counts; readers end once the buffer is read. Idempotent."""
        if self._closed:
            return
        self._deliver(self._decoder.flush())
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._ready.set()

    def statistics(self) -> DtmfStatistics:
        return self._decoder.statistics()

    # ------------------------------------------------------------------------------------------ internals
    def _deliver(self, digits: list[Digit]) -> None:
        for digit in digits:
            if len(self._buffer) >= self._capacity:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(digit)
            log.debug("keypad digit", extra={"digit": digit.digit, "duration": digit.duration_seconds})
            if self._on_digit is not None:
                self._on_digit(digit)
        if digits:
            self._ready.set()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._decoder.deadline
        if deadline is not None:
            delay = max(0.0, deadline - self._clock())
            self._timer = self._loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._closed:
            return
        self._deliver(self._decoder.poll(self._clock()))
        self._arm()
