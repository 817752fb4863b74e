"""Webhook decode throughput: ``worker.decode.decode_webhook`` (msgspec) against pydantic v2, same process.

Both sides do the same work: bytes in, the same normalized events out (``worker/events.py`` structs; the run
starts by checking that both produce equal lists for every body). The pydantic side is modelled the way
Pipecat's WhatsApp transport models these webhooks (BaseModel per object, ``Field(alias="from")``, nested
value models), extended with optional lists so one model reads connect, terminate and status webhooks, and
parsed with pydantic's fastest entry point, ``model_validate_json`` (Rust JSON parser); it lets pydantic's lax
mode turn timestamp strings into ints, so it does less work in Python than the msgspec side does.

The corpus is a realistic mix from ``tests/corpus`` in Meta's wire style (compact, escaped): an incoming
``connect`` with a real-size SDP (~1.5 KB), a ``terminate``, a ``status`` and a batch of 50 call items (25
connects with their SDPs, 25 terminates). The mix is one of each, so the batch weighs most.
Iteration counts are fixed (deterministic work); each figure is the best of several repeats, in CPU time of
this process, with the repeats of every contender interleaved (see :func:`best_seconds_per_call`).

    ./run bench decode                 # or: uv run --frozen python bench/decode.py
    uv run --frozen python bench/decode.py --stages         # + each side's time split: parse, normalize
    uv run --frozen python bench/decode.py --alternatives   # + the wire-level design alternatives

Goal: decode_webhook at least 5x pydantic on the mix.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from pydantic import BaseModel, Field

from worker import wire
from worker.decode import decode_webhook
from worker.events import CallConnect, CallStatus, CallTerminate, Direction, Event

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "corpus"
# (corpus body, iterations per repeat): about 0.1-0.3 s per repeat for msgspec on a laptop core
MIX = [
    ("connect_real_sdp", 20_000),
    ("terminate_completed", 20_000),
    ("status_accepted", 20_000),
    ("batch_50_calls", 400),
]
REPEATS = 7
WABA_OBJECT = "whatsapp_business_account"


# --- pydantic v2 baseline ---------------------------------------------------------------------------------


class PSession(BaseModel):
    sdp: str | None = None
    sdp_type: str | None = None


class PWebRtc(BaseModel):
    sdp: str | None = None


class PConnection(BaseModel):
    webrtc: PWebRtc | None = None


class PCall(BaseModel):
    id: str | None = None
    from_: str | None = Field(None, alias="from")
    to: str | None = None
    event: str | None = None
    timestamp: int = 0  # lax mode: "1752583107" -> 1752583107
    direction: str | None = None
    session: PSession | None = None
    connection: PConnection | None = None
    biz_opaque_callback_data: str | None = None
    deeplink_payload: str | None = None
    cta_payload: str | None = None
    status: str | list[str] | None = None
    start_time: int | None = None
    end_time: int | None = None
    duration: int | None = None


class PStatus(BaseModel):
    id: str | None = None
    type: str | None = None
    status: str | None = None
    timestamp: int = 0
    recipient_id: str | None = None
    biz_opaque_callback_data: str | None = None


class PProfile(BaseModel):
    name: str | None = None


class PContact(BaseModel):
    wa_id: str | None = None
    profile: PProfile | None = None


class PErrorData(BaseModel):
    details: str | None = None


class PError(BaseModel):
    code: int | None = None
    message: str | None = None
    title: str | None = None
    href: str | None = None
    error_data: PErrorData | None = None


class PMetadata(BaseModel):
    phone_number_id: str
    display_phone_number: str = ""


class PCallsValue(BaseModel):
    messaging_product: str | None = None
    metadata: PMetadata
    contacts: list[PContact] | None = None
    calls: list[PCall] | None = None
    statuses: list[PStatus] | None = None
    errors: list[PError] | None = None


class PChange(BaseModel):
    field: str
    value: PCallsValue


class PEntry(BaseModel):
    id: str
    changes: list[PChange]


class PWebhook(BaseModel):
    object: str
    entry: list[PEntry]


_DIRECTIONS: dict[str, Direction] = {"user_initiated": "incoming", "business_initiated": "outgoing"}
_SDP_DIRECTIONS: dict[str, Direction] = {"offer": "incoming", "answer": "outgoing"}


def pydantic_decode(body: bytes) -> list[Event]:
    """The same normalization as worker/decode.py, for the calls shapes of the bench corpus."""
    return _p_normalize(PWebhook.model_validate_json(body))


def _p_normalize(request: PWebhook) -> list[Event]:
    if request.object != WABA_OBJECT:
        raise ValueError("not a WhatsApp Business Account webhook")
    events: list[Event] = []
    for entry in request.entry:
        for change in entry.changes:
            value = change.value
            calls, contacts = value.calls or [], value.contacts or []
            terminates = sum(1 for c in calls if (c.event or "").lower() == "terminate")
            error = value.errors[0] if value.errors and terminates == 1 else None
            only = contacts[0] if len(contacts) == 1 and len(calls) == 1 else None
            by_wa_id = {c.wa_id: c for c in reversed(contacts) if c.wa_id is not None}
            for call in calls:
                event = (call.event or "").lower()
                if event == "connect":
                    events.append(_p_connect(call, value.metadata, entry.id, by_wa_id, only))
                elif event == "terminate":
                    events.append(_p_terminate(call, value.metadata, entry.id, error))
            for status in value.statuses or ():
                events.append(_p_status(status, value.metadata, entry.id))
    return events


def pydantic_decode_via_dict(body: bytes) -> list[Event]:
    """The same, entered the way a framework that parses JSON before validating does (e.g. FastAPI)."""
    return _p_normalize(PWebhook.model_validate(json.loads(body)))


def _p_connect(
    call: PCall, metadata: PMetadata, waba_id: str, contacts: dict[str, PContact], only: PContact | None
) -> CallConnect:
    session = call.session
    sdp = session.sdp if session else None
    sdp_type = session.sdp_type.lower() if session and session.sdp_type else None
    if not sdp and call.connection and call.connection.webrtc:
        sdp = call.connection.webrtc.sdp
    direction = _DIRECTIONS.get(call.direction.lower()) if call.direction else None
    if sdp_type is None and direction is not None:
        sdp_type = "offer" if direction == "incoming" else "answer"
    implied = _SDP_DIRECTIONS.get(sdp_type or "")
    if not sdp or sdp_type is None or implied is None or (direction and direction != implied):
        raise ValueError("unusable connect")
    caller, callee = call.from_ or "", call.to or ""
    contact = contacts.get(caller) or contacts.get(callee) or only
    return CallConnect(
        call_id=call.id or "",
        phone_number_id=metadata.phone_number_id,
        direction=implied,
        caller=caller,
        callee=callee,
        timestamp=call.timestamp,
        sdp_type=sdp_type,
        sdp=sdp,
        display_phone_number=metadata.display_phone_number,
        waba_id=waba_id,
        contact_name=contact.profile.name if contact and contact.profile else None,
        contact_wa_id=contact.wa_id if contact else None,
        biz_opaque_callback_data=call.biz_opaque_callback_data,
        deeplink_payload=call.deeplink_payload,
        cta_payload=call.cta_payload,
    )


def _p_terminate(call: PCall, metadata: PMetadata, waba_id: str, error: PError | None) -> CallTerminate:
    status = call.status[0] if isinstance(call.status, list) and call.status else call.status
    message = None
    if error is not None:
        text, details = error.message or error.title, error.error_data.details if error.error_data else None
        message = f"{text}: {details}" if text and details else text or details
    return CallTerminate(
        call_id=call.id or "",
        phone_number_id=metadata.phone_number_id,
        timestamp=call.timestamp,
        status=status.lower() if isinstance(status, str) and status else "unknown",
        direction=_DIRECTIONS.get(call.direction.lower()) if call.direction else None,
        start_time=call.start_time,
        end_time=call.end_time,
        duration_seconds=call.duration,
        biz_opaque_callback_data=call.biz_opaque_callback_data,
        error_code=error.code if error else None,
        error_message=message,
        waba_id=waba_id,
        caller=call.from_ or "",
        callee=call.to or "",
    )


def _p_status(status: PStatus, metadata: PMetadata, waba_id: str) -> CallStatus:
    return CallStatus(
        call_id=status.id or "",
        phone_number_id=metadata.phone_number_id,
        timestamp=status.timestamp,
        status=(status.status or "").lower(),
        recipient_id=status.recipient_id,
        biz_opaque_callback_data=status.biz_opaque_callback_data,
        waba_id=waba_id,
    )


# --- wire-level design alternatives (--alternatives) ------------------------------------------------------

_envelope = msgspec.json.Decoder(wire.Envelope)
_calls_envelope = msgspec.json.Decoder(wire.CallsEnvelope, strict=False)
_calls = msgspec.json.Decoder(wire.CallsValue, strict=False)
_calls_items = msgspec.json.Decoder(wire.CallsValueItems, strict=False)
_call_item = msgspec.json.Decoder(wire.CallItem, strict=False)


def typed_single_pass(body: bytes) -> Any:
    """The route for webhooks made only of calls changes: the whole body typed in one pass."""
    return _calls_envelope.decode(body)


def raw_then_typed(body: bytes) -> list[Any]:
    """The route for any other webhook: envelope with Raw values, then one typed decode per calls value."""
    return [
        _calls.decode(c.value)
        for e in _envelope.decode(body).entry
        for c in e.changes or ()
        if c.field == "calls"
    ]


def raw_then_per_item(body: bytes) -> list[Any]:
    """Every item decoded on its own (what the slow path does): simpler, one decoder call per item."""
    out = []
    for entry in _envelope.decode(body).entry:
        for change in entry.changes or ():
            if change.field == "calls":
                out.append([_call_item.decode(r) for r in _calls_items.decode(change.value).calls or ()])
    return out


def generic_then_convert(body: bytes) -> list[Any]:
    """Decode to dicts once, convert calls values, re-encode the others for passthrough."""
    out: list[Any] = []
    for entry in msgspec.json.decode(body)["entry"]:
        for change in entry.get("changes") or ():
            if change["field"] == "calls":
                out.append(msgspec.convert(change["value"], wire.CallsValue, strict=False))
            else:
                out.append(msgspec.json.encode(change["value"]))
    return out


def _retyped(struct: type[msgspec.Struct], **types: Any) -> Any:
    """A copy of a wire struct with some field types replaced (same JSON names, defaults and options)."""
    fields = [
        (f.name, types.get(f.name, f.type), msgspec.field(name=f.encode_name, default=f.default))
        if f.default is not msgspec.NODEFAULT
        else (f.name, types.get(f.name, f.type), msgspec.field(name=f.encode_name))
        for f in msgspec.structs.fields(struct)
    ]
    return msgspec.defstruct(struct.__name__, fields, frozen=True, kw_only=True, gc=False)


_List: Any = list  # subscripted with the types built at run time below
_RawSdpSession = _retyped(wire.Session, sdp=msgspec.Raw)
_RawSdpCallItem = _retyped(wire.CallItem, session=_RawSdpSession | None)
_RawSdpValue = _retyped(wire.CallsValue, calls=_List[_RawSdpCallItem] | None)
_RawSdpChange = _retyped(wire.CallsChange, value=_RawSdpValue)
_RawSdpEntry = _retyped(wire.CallsEntry, changes=_List[_RawSdpChange] | None)
_raw_sdp_envelope = msgspec.json.Decoder(
    _retyped(wire.CallsEnvelope, entry=_List[_RawSdpEntry]), strict=False
)


def single_pass_sdp_raw(body: bytes) -> Any:
    """The one pass with each SDP kept as Raw (its JSON string, escapes and all): what keeping the SDP
    undecoded up to the router's re-encoding would save. Not taken, see worker/decode.py."""
    return _raw_sdp_envelope.decode(body)


class _Nothing(msgspec.Struct):
    pass


_nothing = msgspec.json.Decoder(_Nothing)


def validate_only(body: bytes) -> Any:
    """The floor: msgspec scans every byte (JSON syntax only: skipped strings are not checked for UTF-8)
    and builds nothing."""
    return _nothing.decode(body)


ALTERNATIVES = [
    typed_single_pass,
    raw_then_typed,
    raw_then_per_item,
    generic_then_convert,
    single_pass_sdp_raw,
    validate_only,
]


# --- measurement -------------------------------------------------------------------------------------------


def best_seconds_per_call(
    contenders: dict[str, tuple[Callable[[bytes], object], int]], body: bytes
) -> dict[str, float]:
    """Best CPU seconds per call of each ``name: (fn, iterations)``, all contenders' repeats interleaved.

    CPU time of this process (``time.process_time``), not wall time: on a shared box the time a runnable
    process waits for a core is not the decoder's. Interleaving spreads slow phases of the machine (another
    process thrashing the caches) over every contender alike.
    """
    for fn, _ in contenders.values():
        fn(body)  # warm up
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(REPEATS):
        for name, (fn, iterations) in contenders.items():
            gc.collect()
            started = time.process_time()
            for _ in range(iterations):
                fn(body)
            best[name] = min(best[name], (time.process_time() - started) / iterations)
    return best


def check_equivalence(bodies: dict[str, bytes]) -> None:
    for name, body in bodies.items():
        ours = decode_webhook(body)
        for contender in (pydantic_decode, pydantic_decode_via_dict):
            if not ours or contender(body) != ours:
                sys.exit(
                    f"{name}: {contender.__name__} disagrees with decode_webhook; the comparison is void"
                )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stages", action="store_true", help="also split each side's time into stages")
    parser.add_argument("--alternatives", action="store_true", help="also time the wire-level alternatives")
    args = parser.parse_args()
    bodies = {name: (CORPUS / f"{name}.json").read_bytes() for name, _ in MIX}
    check_equivalence(bodies)
    print(f"python {sys.version.split()[0]}, msgspec {msgspec.__version__}, pydantic {_pydantic_version()}")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    busy = " (above the core count: a smoke run, not a reference figure)" if load > cores else ""
    print(f"load average {load:.1f} on {cores} cores{busy}")
    print("per webhook: CPU microseconds, webhooks/s, MB/s; ratio = pydantic time / decode_webhook time\n")
    header = (
        f"{'webhook':<20}{'bytes':>7}{'events':>7} |{'decode_webhook':^28}|"
        f"{'pydantic validate_json':^34}|{'json.loads+validate':^19}"
    )
    print(header)
    print("-" * len(header))
    totals = [0.0, 0.0, 0.0]
    for name, iterations in MIX:
        body = bodies[name]
        best = best_seconds_per_call(
            {
                "ours": (decode_webhook, iterations),
                "pydantic": (pydantic_decode, max(1, iterations // 3)),
                "via_dict": (pydantic_decode_via_dict, max(1, iterations // 3)),
            },
            body,
        )
        times = [best["ours"], best["pydantic"], best["via_dict"]]
        totals = [t + new for t, new in zip(totals, times, strict=True)]
        print(_row(name, len(body), len(decode_webhook(body)), times))
    print("-" * len(header))
    size = sum(len(body) for body in bodies.values())
    events = sum(len(decode_webhook(body)) for body in bodies.values())
    print(_row("mix (one of each)", size, events, totals, per=len(MIX)))
    if args.stages:
        print_stages(bodies)
    if args.alternatives:
        print_alternatives(bodies)
    return 0


def _row(name: str, size: int, events: int, times: list[float], per: int = 1) -> str:
    """One table row; ``per`` webhooks took ``times`` seconds (ours, pydantic, pydantic via dict)."""
    ours, theirs, via_dict = times

    def cols(seconds: float) -> str:
        return f"{seconds / per * 1e6:>9.1f}{per / seconds:>10,.0f}{size / seconds / 1e6:>8.1f}"

    return (
        f"{name:<20}{size:>7}{events:>7} |{cols(ours)} |{cols(theirs)}{theirs / ours:>7.1f}x |"
        f"{via_dict / per * 1e6:>9.1f}{via_dict / ours:>8.1f}x"
    )


def print_stages(bodies: dict[str, bytes]) -> None:
    """Each side's time split: parsing into typed objects, then the Python that makes events of them."""
    print("\nwhere the time goes, CPU microseconds per webhook (normalize = total - parse, same run):")
    stages = [
        "ours: parse (one typed pass)",
        "ours: normalize",
        "ours: total",
        "pydantic: model_validate_json",
        "pydantic: normalize",
        "pydantic: total",
        "floor: validate_only",
    ]
    columns: dict[str, list[float]] = {stage: [] for stage in stages}
    for name, iterations in MIX:
        body = bodies[name]
        best = best_seconds_per_call(
            {
                "parse": (typed_single_pass, iterations),
                "ours": (decode_webhook, iterations),
                "validate": (PWebhook.model_validate_json, max(1, iterations // 3)),
                "pydantic": (pydantic_decode, max(1, iterations // 3)),
                "floor": (validate_only, iterations),
            },
            body,
        )
        row = [
            best["parse"],
            best["ours"] - best["parse"],
            best["ours"],
            best["validate"],
            best["pydantic"] - best["validate"],
            best["pydantic"],
            best["floor"],
        ]
        for stage, seconds in zip(stages, row, strict=True):
            columns[stage].append(seconds * 1e6)
    names = [name for name, _ in MIX]
    print(f"{'stage':<32}" + "".join(f"{name:>22}" for name in names) + f"{'mix':>10}")
    for stage in stages:
        figures = columns[stage]
        print(f"{stage:<32}" + "".join(f"{us:>22.1f}" for us in figures) + f"{sum(figures):>10.1f}")


def print_alternatives(bodies: dict[str, bytes]) -> None:
    print("\nwire-level decode only (no normalization), CPU microseconds per webhook:")
    print(f"{'webhook':<20}" + "".join(f"{fn.__name__:>22}" for fn in ALTERNATIVES))
    for name, iterations in MIX:
        best = best_seconds_per_call({fn.__name__: (fn, iterations) for fn in ALTERNATIVES}, bodies[name])
        print(f"{name:<20}" + "".join(f"{best[fn.__name__] * 1e6:>22.1f}" for fn in ALTERNATIVES))


def _pydantic_version() -> str:
    import pydantic

    return pydantic.VERSION


if __name__ == "__main__":
    raise SystemExit(main())
