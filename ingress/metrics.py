"""Every Prometheus metric the ingress exports, created on a registry that is passed in (no globals).

The names are a contract with the Helm chart (alerts, dashboard): change them only together.
``route`` is ``webhook`` (POST /webhook, Meta's deliveries), ``verify`` (GET /webhook, the subscription
handshake), ``dial`` (POST /v1/calls) or ``hangup`` (POST /v1/calls/{id}/hangup). Labelled children are
resolved once here, so the request path does no label lookups.
"""

from __future__ import annotations

import enum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ingress.signature import SignatureFailure


class Route(enum.Enum):
    WEBHOOK = "webhook"
    VERIFY = "verify"
    DIAL = "dial"
    HANGUP = "hangup"
    TRANSFER = "transfer"


class Outcome(enum.Enum):
    OK = "ok"
    BAD_SIGNATURE = "bad_signature"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    FORBIDDEN = "forbidden"
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"  # integrator API: missing or wrong bearer token
    UNSUPPORTED = "unsupported_media_type"  # a Content-Encoding on /webhook (415)
    TIMEOUT = "timeout"  # the body did not arrive within its deadline (408)
    THROTTLED = "throttled"  # integrator API: too many failed logins from one address (429)
    CONFLICT = "conflict"  # integrator API: an Idempotency-Key reused with a different request (422)
    CLIENT_GONE = "client_gone"  # the connection closed while its body was being read


# Local work plus one broker round trip: sub-millisecond up to the confirm timeout (seconds).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BODY_BUCKETS = (256, 1_024, 4_096, 16_384, 65_536, 262_144, 1_048_576, 3_500_000)


class IngressMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        requests = Counter(
            "callhook_ingress_requests_total",
            "Webhook requests answered, by route and outcome.",
            ["route", "outcome"],
            registry=registry,
        )
        duration = Histogram(
            "callhook_ingress_request_duration_seconds",
            "Time from a webhook request's arrival to its answer, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.publish_confirm_duration = Histogram(
            "callhook_ingress_publish_confirm_duration_seconds",
            "Time from publishing a webhook to the broker's confirm (or the failure), per publish.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        failures = Counter(
            "callhook_ingress_signature_failures_total",
            "Webhooks refused for their signature, by reason (missing, malformed, mismatch).",
            ["reason"],
            registry=registry,
        )
        self.body_bytes = Histogram(
            "callhook_ingress_body_bytes",
            "Size of the webhook bodies received (within the limit).",
            buckets=BODY_BUCKETS,
            registry=registry,
        )
        self.broker_connected = Gauge(
            "callhook_ingress_broker_connected",
            "1 while the ingress has a broker connection with a confirm channel, else 0.",
            registry=registry,
        )
        self.inflight_requests = Gauge(
            "callhook_ingress_inflight_requests",
            "Webhook requests being handled right now.",
            registry=registry,
        )
        self.reading_connections = Gauge(
            "callhook_ingress_reading_connections",
            "Connections still sending headers or a body, or idle between requests, per listener.",
            ["listener"],
            registry=registry,
        )
        self.connections_closed = Counter(
            "callhook_ingress_connections_closed_total",
            "Connections closed by the ingress's deadlines or its cap, by listener and reason "
            "(header_timeout, body_timeout, idle_timeout, evicted).",
            ["listener", "reason"],
            registry=registry,
        )
        self.requests = {
            (r, o): requests.labels(route=r.value, outcome=o.value) for r in Route for o in Outcome
        }
        self.request_duration = {r: duration.labels(route=r.value) for r in Route}
        self.signature_failures = {f: failures.labels(reason=f.value) for f in SignatureFailure}
