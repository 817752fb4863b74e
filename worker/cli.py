"""``callhook worker``, ``callhook decode`` and ``callhook dial``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = sub.add_parser(
        "worker",
        help="run a worker: route webhooks, own calls (WebRTC + Graph API), run each call's app",
        description="Consume callhook.webhooks and the call queues; answer, carry and end calls. "
        "Settings from CALLHOOK_* (see README); health and metrics on CALLHOOK_METRICS_PORT.",
    )
    worker.set_defaults(handler=_run_worker)

    decode = sub.add_parser(
        "decode",
        help="print the normalized events of a webhook body (debugging aid)",
        description="Decode a webhook body as the router does and print one JSON line per event.",
    )
    decode.add_argument("file", type=Path, help="a file holding the raw webhook body ('-' for stdin)")
    decode.set_defaults(handler=_decode)


def _run_worker(args: argparse.Namespace) -> int:
    from worker import config
    from worker.service import run

    return run(config.load(os.environ))


def _decode(args: argparse.Namespace) -> int:
    import msgspec

    from worker.decode import decode_webhook
    from worker.errors import PoisonWebhook

    path: Path = args.file
    body = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    try:
        events = decode_webhook(body)
    except PoisonWebhook as exc:
        print(f"poison webhook: {exc.reason}", file=sys.stderr)
        return 1
    encoder = msgspec.json.Encoder()
    for event in events:
        # Raw fields (passthrough values, notice items) are embedded as the JSON they are.
        fields = msgspec.structs.asdict(event)
        line = {"event": type(event).__name__, **fields}
        sys.stdout.write(encoder.encode(line).decode() + "\n")
    return 0
