"""The keypad decoder (``worker.media.dtmf``) on damaged packet streams, and what it costs per packet.

1. **Digits through loss, reordering and duplication.** Sequences of 10 key presses, each sent as a phone
   does (start, 3 updates 50 ms apart, three end packets), then each packet
   lost with probability ``loss``, duplicated with 5 %, and swapped with its neighbour with 10 %. A press is
   *recoverable* when at least one of its packets arrived. Counted: recoverable presses the decoder missed,
   digits it reported that were never pressed (or twice), digits out of order. Seeded: the same run each time.
2. **Cost.** CPU time per packet of ``DtmfDecoder.feed`` against the audio jitter buffer's ``put`` on
   20 ms Opus-like packets (``worker.media.jitter``), measured in the same run (the baseline): the keypad
   should cost no more per packet than the audio path's first step.

    ./run bench dtmf            # or: uv run --frozen python bench/dtmf.py [--presses 20000]
"""

from __future__ import annotations

import argparse
import random
import time

from _common import machine, ratio, table

from worker.media.dtmf import DtmfDecoder, EventBlock, digit_name
from worker.media.jitter import JitterBuffer, Packet

SEQUENCE = 10  # presses per call
KEYS = "0123456789*#"


def press(event: int, timestamp: int, *, at: float, sequence: int = 0) -> list[Packet]:
    """A phone's packets for one key press: start (marker), 3 updates 50 ms apart, three end packets."""
    blocks = [EventBlock(event, False, 10, n * 400) for n in range(4)] + [
        EventBlock(event, True, 10, 1600)
    ] * 3
    times = [at + n * 0.05 for n in range(4)] + [at + 0.2] * 3
    return [
        Packet((sequence + n) & 0xFFFF, timestamp, 1, n == 0, block.encode(), times[n])
        for n, block in enumerate(blocks)
    ]


def damaged(packets: list[Packet], loss: float, rng: random.Random) -> list[Packet]:
    arrived = [p for p in packets if rng.random() >= loss for _ in range(2 if rng.random() < 0.05 else 1)]
    for i in range(len(arrived) - 1):
        if rng.random() < 0.10:
            arrived[i], arrived[i + 1] = arrived[i + 1], arrived[i]
    return arrived


def robustness(loss: float, presses: int, seed: int) -> list[object]:
    rng = random.Random(seed)
    recoverable = missed = extra = disordered = 0
    for call in range(presses // SEQUENCE):
        sent = ""
        arrived: list[Packet] = []
        for n in range(SEQUENCE):
            code = rng.randrange(len(KEYS))
            packets = press(code, (call * 7919 + n * 4000) & 0xFFFFFFFF, at=n * 0.5, sequence=n * 10)
            got = damaged(packets, loss, rng)
            if got:
                sent += digit_name(code) or ""
            arrived += got
        decoder = DtmfDecoder()
        found = "".join(d.digit for p in arrived for d in decoder.feed(p)) + "".join(
            d.digit for d in decoder.poll(1e9)
        )
        recoverable += len(sent)
        if found != sent:
            missed += max(0, len(sent) - len(found))
            extra += max(0, len(found) - len(sent))
            disordered += int(sorted(found) == sorted(sent))
    return [f"{loss:.0%}", presses, recoverable, missed, extra, disordered]


def cost(packets: int) -> tuple[float, float]:
    keys = [p for n in range(packets // 7 + 1) for p in press(n % 12, n * 4000, at=n * 0.5)][:packets]
    audio = [Packet(n & 0xFFFF, n * 960, 1, False, bytes(60), n * 0.02) for n in range(packets)]
    best_dtmf = best_audio = float("inf")
    for _ in range(5):  # interleaved repeats, best of each
        decoder = DtmfDecoder()
        start = time.process_time()
        for packet in keys:
            decoder.feed(packet)
        best_dtmf = min(best_dtmf, (time.process_time() - start) / len(keys))
        buffer = JitterBuffer()
        start = time.process_time()
        for packet in audio:
            buffer.put(packet)
            buffer.pop(packet.arrival)
        best_audio = min(best_audio, (time.process_time() - start) / len(audio))
    return best_dtmf, best_audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presses", type=int, default=20000, help="key presses per loss level")
    args = parser.parse_args()
    print(f"keypad decoder bench on {machine()}\n")
    rows = [robustness(loss, args.presses, seed=13) for loss in (0.0, 0.05, 0.20, 0.50)]
    headers = ["loss", "presses", "recoverable", "missed", "extra", "out of order"]
    print(table(headers, rows))
    print("(recoverable: at least one packet of the press arrived; missed/extra/out of order must be 0)\n")
    dtmf, audio = cost(20000)
    print(
        table(
            ["per packet", "µs", "vs baseline"],
            [
                ["DtmfDecoder.feed", f"{dtmf * 1e6:.2f}", ratio(dtmf, audio)],
                ["JitterBuffer.put+pop (baseline)", f"{audio * 1e6:.2f}", "1.0x"],
            ],
        )
    )


if __name__ == "__main__":
    main()
