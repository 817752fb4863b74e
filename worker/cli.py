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

    dial = sub.add_parser(
        "dial",
        help="place an outgoing call: a worker with room takes it (prints the request id)",
        description="Queue a call to a WhatsApp user on callhook.dials; with --wait, print the call's "
        "lifecycle events (call.dialed/ringing/answered/ended) until it ends. Needs CALLHOOK_AMQP_URL and "
        "the business number's id (--from or CALLHOOK_PHONE_NUMBER_ID).",
    )
    dial.add_argument(
        "to", help="the user's phone number (international format, e.g. 15551234567) or, for a user with a "
        "WhatsApp username and no number, their user id (BSUID, e.g. US.13491208655302741918)",
    )  # fmt: skip
    dial.add_argument(
        "--from", dest="from_id", help="business phone number id (default CALLHOOK_PHONE_NUMBER_ID)"
    )
    dial.add_argument("--app", help="the call's app (default: the worker's CALLHOOK_APP)")
    dial.add_argument("--callback-data", help="biz_opaque_callback_data, echoed in Meta's webhooks (<= 512)")
    dial.add_argument(
        "--permission", choices=("skip", "check", "request"), default="skip",
        help="check call permission first; 'request' also asks the user for it when missing",
    )  # fmt: skip
    dial.add_argument("--wait", type=float, metavar="SECONDS", help="follow the call's events this long")
    dial.add_argument(
        "--recording", choices=("enabled", "disabled"),
        help="Meta records the call (opt-in sent on connect; default: the worker's CALLHOOK_RECORDING)",
    )  # fmt: skip
    dial.add_argument(
        "--transcription", choices=("enabled", "disabled"),
        help="Meta transcribes the call (default: the worker's CALLHOOK_TRANSCRIPTION)",
    )  # fmt: skip
    dial.add_argument("--purpose", help="why the call is recorded, read aloud to both parties (1-250 chars)")
    dial.add_argument("--announcement-language", help="language of Meta's announcement (e.g. en_US, pt, es)")
    dial.set_defaults(handler=_dial)


def _run_worker(args: argparse.Namespace) -> int:
    from worker import config
    from worker.service import run

    return run(config.load(os.environ))


def _dial(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses

    from ingress.commands import CommandError, Consent
    from worker.dial_cli import dial, options_from

    options, amqp_url = options_from(
        args.to, args.from_id, args.app, args.callback_data, args.permission, args.wait
    )
    consents = {
        name: Consent(choice.upper(), args.purpose, args.announcement_language)
        for name, choice in (("recording", args.recording), ("transcription", args.transcription))
        if choice is not None
    }
    options = dataclasses.replace(options, **consents)  # type: ignore[arg-type]
    try:
        return asyncio.run(dial(options, amqp_url))
    except CommandError as exc:
        print(f"callhook dial: {exc}", file=sys.stderr)
        return 2


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
