"""Every Prometheus metric a worker exports, created on a registry that is passed in (no globals).

Names are prefixed ``callhook_``, carry their unit, and never label by call id or phone number. The chart's
alerts, scaler and dashboard use these names; ``tests/helm`` checks them against a scrape of a running worker.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Buckets for latencies dominated by local work and one HTTP round trip (seconds).
FAST_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)
# Per-call media quality, observed once at the call's end.
MOS_BUCKETS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4, 4.5)
MEDIA_DELAY_BUCKETS = (0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
RATIO_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0)
TICK_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.035, 0.05, 0.1, 0.25)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # router stage
        self.webhook_lag = Histogram(
            "callhook_webhook_lag_seconds",
            "Ingress receipt of a webhook to its decoding by a router.",
            buckets=FAST_BUCKETS,
            registry=registry,
        )
        self.router_webhooks = Counter(
            "callhook_router_webhooks_total",
            "Webhooks consumed by the router, by outcome (ok, poison).",
            ["outcome"],
            registry=registry,
        )
        self.router_events = Counter(
            "callhook_router_events_total",
            "Normalized events the router published, by kind.",
            ["kind"],
            registry=registry,
        )
        self.router_skipped = Counter(
            "callhook_router_skipped_total",
            "Webhook items skipped while decoding (unknown events), by kind.",
            ["kind"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "callhook_dead_letters_total",
            "Messages callhook dead-lettered, by stage and reason.",
            ["source", "reason"],
            registry=registry,
        )
        # ownership
        self.claims = Counter(
            "callhook_call_claims_total",
            "Claims on calls by outcome (claimed, duplicate, tombstone).",
            ["outcome"],
            registry=registry,
        )
        self.dropped_events = Counter(
            "callhook_call_events_dropped_total",
            "Call events dropped, by reason (duplicate, stale, orphan, tombstoned, unknown_status).",
            ["reason"],
            registry=registry,
        )
        self.orphans = Counter(
            "callhook_orphan_events_total",
            "Call events that no owner claimed after their retries, by kind.",
            ["kind"],
            registry=registry,
        )
        self.overflow = Counter(
            "callhook_calls_overflow_total",
            "Incoming calls rejected because no worker had room in time.",
            registry=registry,
        )
        # calls
        self.setup_seconds = Histogram(
            "callhook_call_setup_seconds",
            "Ingress receipt of the connect webhook to a setup stage (pre_accept, media_connected, accept).",
            ["direction", "stage"],
            buckets=FAST_BUCKETS,
            registry=registry,
        )
        self.graph_duration = Histogram(
            "callhook_graph_request_duration_seconds",
            "Graph API requests by action and outcome.",
            ["action", "outcome"],
            buckets=FAST_BUCKETS,
            registry=registry,
        )
        self.graph_errors = Counter(
            "callhook_graph_errors_total",
            "Graph API errors by action and Meta error code.",
            ["action", "code"],
            registry=registry,
        )
        self.calls_active = Gauge(
            "callhook_calls_active", "Calls this worker owns right now.", registry=registry
        )
        self.calls_capacity = Gauge(
            "callhook_calls_capacity",
            "Calls this worker may own at once (CALLHOOK_MAX_CALLS).",
            registry=registry,
        )
        self.calls = Counter(
            "callhook_calls_total",
            "Calls ended, by direction and outcome.",
            ["direction", "outcome"],
            registry=registry,
        )
        self.call_duration = Histogram(
            "callhook_call_duration_seconds",
            "Answered calls from accept to end.",
            ["direction"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.media_frames = Counter(
            "callhook_media_frames_total",
            "Audio frames received from (in) and sent to (out) callers.",
            ["direction"],
            registry=registry,
        )
        self.media_packets_lost = Counter(
            "callhook_media_packets_lost_total",
            "RTP packets lost on inbound audio (RTCP receiver reports).",
            registry=registry,
        )
        self.loop_lag = Histogram(
            "callhook_event_loop_lag_seconds",
            "Event-loop scheduling lag, sampled periodically.",
            buckets=FAST_BUCKETS,
            registry=registry,
        )
        self.draining = Gauge(
            "callhook_worker_draining", "1 while the worker drains before exit.", registry=registry
        )
        self.dials = Counter(
            "callhook_dials_total",
            "Outgoing call requests by outcome (placed, no_permission, permission_requested, "
            "permission_request_limit, callee_limit, calling_unavailable, not_callable, bad_app, failed).",
            ["outcome"],
            registry=registry,
        )
        self.lifecycle_events = Counter(
            "callhook_lifecycle_events_total",
            "Call lifecycle events published for integrators, by type.",
            ["event"],
            registry=registry,
        )
        # media path (worker/media/): the playout tick and each call's quality at its end
        self.media_tick_lag = Histogram(
            "callhook_media_tick_lag_seconds",
            "How late the worker's 20 ms playout tick ran, per tick.",
            buckets=TICK_BUCKETS,
            registry=registry,
        )
        self.media_ticks_skipped = Counter(
            "callhook_media_ticks_skipped_total",
            "Playout ticks skipped because the event loop stalled for longer than 200 ms.",
            registry=registry,
        )
        self.media_mos = Histogram(
            "callhook_media_mos",
            "Estimated MOS of a call's inbound audio (simplified E-model, ITU-T G.107), at call end.",
            buckets=MOS_BUCKETS,
            registry=registry,
        )
        self.media_jitter_buffer_delay = Histogram(
            "callhook_media_jitter_buffer_delay_seconds",
            "Mean delay a call's inbound audio spent in the jitter buffer, at call end.",
            buckets=MEDIA_DELAY_BUCKETS,
            registry=registry,
        )
        self.media_jitter = Histogram(
            "callhook_media_jitter_seconds",
            "Interarrival jitter of a call's inbound RTP (RFC 3550), at call end.",
            buckets=MEDIA_DELAY_BUCKETS,
            registry=registry,
        )
        self.media_round_trip = Histogram(
            "callhook_media_round_trip_seconds",
            "Round-trip time to the caller's phone from RTCP reports, at call end (when known).",
            buckets=MEDIA_DELAY_BUCKETS,
            registry=registry,
        )
        self.media_loss_ratio = Histogram(
            "callhook_media_loss_ratio",
            "Share of a call's inbound RTP packets lost (never arrived or arrived too late), at call end.",
            buckets=RATIO_BUCKETS,
            registry=registry,
        )
        self.media_concealed_frames = Counter(
            "callhook_media_concealed_frames_total",
            "Inbound audio frames concealed, by how (fec: rebuilt from the next packet, plc: extrapolated).",
            ["method"],
            registry=registry,
        )
        self.media_late_packets = Counter(
            "callhook_media_late_packets_total",
            "Inbound RTP packets that arrived after their playout time and were dropped.",
            registry=registry,
        )
        self.media_dropped_frames = Counter(
            "callhook_media_dropped_frames_total",
            "Frames dropped, by where (catch_up: jitter buffer shrinking its delay, app: an app too slow).",
            ["where"],
            registry=registry,
        )
        # No labels: a digit's value never leaves the call (digits can be PINs).
        self.dtmf_digits = Counter(
            "callhook_dtmf_digits_total",
            "Keypad digits (RFC 4733 telephone events) decoded from callers' media.",
            registry=registry,
        )
        # Meta's 2026 platform: recordings, transcripts, restrictions, error codes (docs/platform-2026.md)
        self.media_ready = Counter(
            "callhook_media_ready_total",
            "Recording/transcript webhooks judged, by kind and outcome (published, duplicate).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.archive = Counter(
            "callhook_archive_total",
            "Recordings/transcripts archived, by kind and outcome (archived, exists, hash_mismatch, failed).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.archive_url_refreshes = Counter(
            "callhook_archive_url_refreshes_total",
            "Media downloads that needed a fresh URL by media id (the webhook's had expired or was refused).",
            ["kind"],
            registry=registry,
        )
        self.account_restrictions = Counter(
            "callhook_account_restrictions_total",
            "account_update webhooks restricting calling (ACCOUNT_RESTRICTION), by restriction type.",
            ["restriction_type"],
            registry=registry,
        )
        self.meta_errors = Counter(
            "callhook_meta_errors_total",
            "Meta calling error codes seen (refused requests and terminate webhooks), by name and action.",
            ["name", "action"],
            registry=registry,
        )
