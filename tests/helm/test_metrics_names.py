"""The PromQL the chart ships (alerts, KEDA's capacity query, the dashboard) selects only metrics callhook
really exports, with labels those metrics really carry; promtool checks and unit-tests the alert rules.

Names come from the code: each component's metrics class instantiated on a fresh registry. Metrics outside
callhook are allowed only by name below, each for a stated reason.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.helm import chart as c
from tests.helm import exported, promql

# Series that are not callhook's, and why the chart may use them.
EXTERNAL_SERIES: dict[str, frozenset[str]] = {
    # Prometheus' own per-target health series: workers or ingresses down.
    "up": exported.TARGET_LABELS,
}
# RabbitMQ's prometheus plugin (per-object metrics), only in the optional callhook-rabbitmq alert group.
RABBITMQ_LABELS = exported.TARGET_LABELS | {"vhost", "queue"}
RABBITMQ_SERIES = {
    f"rabbitmq_{name}": RABBITMQ_LABELS
    for name in ("queue_messages_ready", "queue_messages", "queue_consumers")
}


@pytest.fixture(scope="module")
def code_series() -> dict[str, frozenset[str]]:
    """Series callhook exports, from worker.metrics and ingress.metrics."""
    families = exported.families_of_component("worker.metrics") + exported.families_of_component(
        "ingress.metrics"
    )
    series = exported.series_of(families)
    assert "callhook_calls_active" in series
    assert "callhook_ingress_requests_total" in series
    return series


# --- the tokenizer the checks rely on


@pytest.mark.parametrize(
    ("expr", "metrics", "labels"),
    [
        ("up", {"up"}, set()),
        ('sum by (le) (rate(a_bucket{x="1", y=~"b|c"}[5m]))', {"a_bucket"}, {"le", "x", "y"}),
        ("sum(a) / ignoring(code) group_left sum without (z) (b) > 0.5", {"a", "b"}, {"code", "z"}),
        ("a unless on(instance) (b == 1) and c offset 5m", {"a", "b", "c"}, {"instance"}),
        (
            'histogram_quantile(0.99, sum(rate(h_bucket{n="$namespace"}[$__rate_interval])) by (le))',
            {"h_bucket"},
            {"le", "n"},
        ),
        ('absent(up{job="w"} == 1) or vector(0)', {"up"}, {"job"}),
        ("max_over_time(a[1h:5m]) * 1e3 > bool 2.5e-1", {"a"}, set()),
    ],
)
def test_promql_reading(expr: str, metrics: set[str], labels: set[str]) -> None:
    parsed = promql.parse(expr)
    assert parsed.metrics == metrics
    assert parsed.label_names == labels


# --- names and labels


def test_alerts_scaler_and_dashboard_use_only_exported_metrics(
    observability: c.Rendered, code_series: dict[str, frozenset[str]]
) -> None:
    known = code_series | EXTERNAL_SERIES
    problems = []
    checked = 0
    for where, expression in c.promql_expressions(observability):
        allowed = known | (RABBITMQ_SERIES if where.startswith("callhook-rabbitmq/") else {})
        checked += 1
        for metric in expression.metrics - allowed.keys():
            problems.append(f"{where}: {metric} is not exported by callhook")
        usable = set().union(*(allowed.get(m, frozenset()) for m in expression.metrics))
        for label in expression.label_names - usable:
            problems.append(f"{where}: no metric it selects has the label {label!r}")
    assert not problems, "\n".join(problems)
    assert checked >= 30


def test_scaler_and_alerts_select_by_what_the_service_monitor_adds(observability: c.Rendered) -> None:
    """Selectors use the labels a ServiceMonitor gives the targets of this release's Services."""
    worker = f'namespace="{c.NAMESPACE}",service="{c.RELEASE}-callhook-worker"'
    query = observability.one("ScaledObject")["spec"]["triggers"][1]["metadata"]["query"]
    assert query.count(worker) == 4
    services = {s["metadata"]["name"] for s in observability.of_kind("Service")}
    for where, expression in c.promql_expressions(observability):
        for selector in expression.selectors:
            if "service" in selector.matchers:
                assert selector.matchers["namespace"] == c.NAMESPACE, where
                assert selector.matchers["service"] in services, where


def test_the_capacity_query_scales_on_calls(observability: c.Rendered) -> None:
    query = observability.one("ScaledObject")["spec"]["triggers"][1]["metadata"]["query"]
    parsed = promql.parse(query)
    assert parsed.metrics == {"callhook_calls_active", "callhook_calls_capacity", "callhook_worker_draining"}


def test_compose_rules_are_the_charts(chart: helm.Chart) -> None:
    committed = (c.ROOT / "deploy" / "prometheus" / "rules.yml").read_text()
    assert committed == c.compose_rules_yaml(chart), (
        "deploy/prometheus/rules.yml is stale: uv run --frozen python -m tests.helm.chart rules > "
        "deploy/prometheus/rules.yml"
    )


# --- promtool


def _rules_file(rendered: c.Rendered, directory: Path) -> Path:
    path = directory / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": c.rule_groups(rendered)}, sort_keys=False))
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)


def test_promtool_checks_every_rendered_rule_file(
    promtool: str, observability: c.Rendered, rendered_scenarios: dict[str, c.Rendered], tmp_path: Path
) -> None:
    renderings = [observability, *(r for r in rendered_scenarios.values() if r.of_kind("PrometheusRule"))]
    assert len(renderings) >= 3
    for number, rendered in enumerate(renderings):
        directory = tmp_path / str(number)
        directory.mkdir()
        result = _run(promtool, "check", "rules", str(_rules_file(rendered, directory)))
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_compose_prometheus_config(promtool: str) -> None:
    result = _run(promtool, "check", "config", str(c.ROOT / "deploy" / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


W = f'namespace="{c.NAMESPACE}",service="{c.RELEASE}-callhook-worker"'


def _annotations(rendered: c.Rendered, alert: str, **labels: str) -> dict[str, str]:
    (rule,) = [a for a in c.alerts(rendered) if a["alert"] == alert]
    annotations: dict[str, str] = dict(rule["annotations"])
    for key, value in labels.items():
        placeholder = "{{ $labels." + key + " }}"
        annotations = {k: v.replace(placeholder, value) for k, v in annotations.items()}
    return annotations


def _alert_tests(rendered: c.Rendered) -> list[dict[str, Any]]:
    """promtool unit tests: input series over time, the alerts expected to fire (or not) at given times."""
    query = rendered.one("ScaledObject")["spec"]["triggers"][1]["metadata"]["query"]
    calling = "RESTRICTED_BUSINESS_INITIATED_CALLING"
    return [
        {
            # Meta pauses business-initiated calling at minute 5; a messaging restriction is not about calls.
            "interval": "1m",
            "input_series": [
                {
                    "series": f'callhook_account_restrictions_total{{{W},instance="w1",'
                    f'restriction_type="{calling}"}}',
                    "values": "0x5 1x15",
                },
                {
                    "series": f'callhook_account_restrictions_total{{{W},instance="w1",'
                    'restriction_type="RESTRICTED_BIZ_INITIATED_MESSAGING"}',
                    "values": "0x5 1x15",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "CallhookCallingRestricted", "exp_alerts": []},
                {
                    "eval_time": "7m",
                    "alertname": "CallhookCallingRestricted",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "critical", "restriction_type": calling},
                            "exp_annotations": _annotations(
                                rendered, "CallhookCallingRestricted", restriction_type=calling
                            ),
                        }
                    ],
                },
            ],
        },
        {
            # w1 is busy; w2 is draining and idle. Capacity used counts only workers that take calls: 38/40.
            "interval": "1m",
            "input_series": [
                {"series": f'callhook_calls_active{{{W},instance="w1"}}', "values": "38x20"},
                {"series": f'callhook_calls_capacity{{{W},instance="w1"}}', "values": "40x20"},
                {"series": f'callhook_worker_draining{{{W},instance="w1"}}', "values": "0x20"},
                {"series": f'callhook_calls_active{{{W},instance="w2"}}', "values": "2x20"},
                {"series": f'callhook_calls_capacity{{{W},instance="w2"}}', "values": "40x20"},
                {"series": f'callhook_worker_draining{{{W},instance="w2"}}', "values": "1x20"},
                {"series": f'up{{{W},instance="w1"}}', "values": "1x20"},
            ],
            "promql_expr_test": [
                {"expr": query, "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": 0.95}]}
            ],
            "alert_rule_test": [
                {"eval_time": "9m", "alertname": "CallhookCapacityNearlyExhausted", "exp_alerts": []},
                {
                    "eval_time": "12m",
                    "alertname": "CallhookCapacityNearlyExhausted",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "warning"},
                            "exp_annotations": _annotations(rendered, "CallhookCapacityNearlyExhausted")
                            | {
                                "description": _annotations(rendered, "CallhookCapacityNearlyExhausted")[
                                    "description"
                                ].replace("{{ $value | humanizePercentage }}", "95%")
                            },
                        }
                    ],
                },
                {"eval_time": "12m", "alertname": "CallhookWorkersDown", "exp_alerts": []},
            ],
        },
        {
            # The access token stops working at minute 10; a throttling error (code 4) is not a token problem.
            "interval": "1m",
            "input_series": [
                {
                    "series": f'callhook_graph_errors_total{{{W},instance="w1",action="accept",code="190"}}',
                    "values": "0x10 1+1x10",
                },
                {
                    "series": f'callhook_graph_errors_total{{{W},instance="w2",action="connect",code="4"}}',
                    "values": "0+1x20",
                },
                {"series": f'up{{{W},instance="w1"}}', "values": "0x20"},
            ],
            "alert_rule_test": [
                {"eval_time": "9m", "alertname": "CallhookGraphTokenInvalid", "exp_alerts": []},
                {
                    "eval_time": "13m",
                    "alertname": "CallhookGraphTokenInvalid",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "critical", "action": "accept"},
                            "exp_annotations": _annotations(
                                rendered, "CallhookGraphTokenInvalid", action="accept"
                            ),
                        }
                    ],
                },
                {
                    # The scrape target is down for 3 minutes: no worker is running.
                    "eval_time": "4m",
                    "alertname": "CallhookWorkersDown",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "critical",
                                "namespace": c.NAMESPACE,
                                "service": f"{c.RELEASE}-callhook-worker",
                            },
                            "exp_annotations": _annotations(rendered, "CallhookWorkersDown"),
                        }
                    ],
                },
            ],
        },
        {
            # Every call that ends lost ~7.5 % of the caller's packets (all in the 5-10 % bucket).
            "interval": "1m",
            "input_series": [
                *(
                    {
                        "series": f'callhook_media_loss_ratio_bucket{{{W},instance="w1",le="{le}"}}',
                        "values": "0x40",
                    }
                    for le in ("0.0", "0.001", "0.005", "0.01", "0.02", "0.03", "0.05")
                ),
                *(
                    {
                        "series": f'callhook_media_loss_ratio_bucket{{{W},instance="w1",le="{le}"}}',
                        "values": "0+10x40",
                    }
                    for le in ("0.1", "0.2", "0.5", "1.0", "+Inf")
                ),
                {"series": f'up{{{W},instance="w1"}}', "values": "1x40"},
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "CallhookMediaLossHigh", "exp_alerts": []},
                {
                    "eval_time": "35m",
                    "alertname": "CallhookMediaLossHigh",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "warning"},
                            "exp_annotations": _annotations(rendered, "CallhookMediaLossHigh")
                            | {
                                "description": _annotations(rendered, "CallhookMediaLossHigh")[
                                    "description"
                                ].replace("{{ $value | humanizePercentage }}", "7.5%")
                            },
                        }
                    ],
                },
            ],
        },
    ]


def test_promtool_unit_tests_the_alerts(promtool: str, observability: c.Rendered, tmp_path: Path) -> None:
    rules = _rules_file(observability, tmp_path)
    tests = tmp_path / "tests.yml"
    tests.write_text(
        yaml.safe_dump(
            {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": _alert_tests(observability)},
            sort_keys=False,
            width=1000,
        )
    )
    result = _run(promtool, "test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
