"""Rendering the Helm chart offline with Helm's own engine (helm-python-sdk binds Helm's Go SDK; no binary, no
cluster), and the scenarios under ``helm/callhook/ci``.

Run as a module it prints the compose Prometheus' rules (the chart's PrometheusRule for release ``callhook``
in namespace ``callhook``)::

    uv run --frozen python -m tests.helm.chart rules > deploy/prometheus/rules.yml
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from helm_python import _native

from tests.helm import promql

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "callhook"
CI_DIR = CHART_DIR / "ci"

RELEASE = "rel"
NAMESPACE = "voice"

# Every optional API the chart can render for; CRDs present in the simulated cluster unless a test says
# otherwise.
KEDA_API = "keda.sh/v1alpha1"
OPTIONAL_APIS = (KEDA_API, "monitoring.coreos.com/v1", "rabbitmq.com/v1beta1", "gateway.networking.k8s.io/v1")

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
OLDEST_KUBE = "1.27.0"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    """One rendering: the objects Helm would apply, and NOTES.txt."""

    objects: list[Manifest]
    notes: str

    def of_kind(self, kind: str) -> list[Manifest]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> Manifest:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, (
            f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
        )
        return found[0]

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)


def render(
    chart: helm.Chart,
    values: Mapping[str, Any],
    *,
    api_versions: tuple[str, ...] = OPTIONAL_APIS,
    kube_version: str = OLDEST_KUBE,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> Rendered:
    """Render like ``helm template --api-versions ... --kube-version ...`` (values are schema-checked first).

    ``Chart.render`` does not expose the capabilities, but the C ABI under it takes them in the same options
    object (``api_versions``, ``kube_version``), so this calls that entry point directly.
    """
    options = {
        "name": release,
        "namespace": namespace,
        "is_install": True,
        "api_versions": list(api_versions),
        "kube_version": f"v{kube_version}",
    }
    raw = _native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(options))
    files: dict[str, str] = json.loads(raw)
    objects: list[Manifest] = []
    notes = ""
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(objects, notes)


def scenario_files() -> list[Path]:
    return sorted(CI_DIR.glob("*-values.yaml"))


def load_values(path: Path) -> dict[str, Any]:
    values = yaml.safe_load(path.read_text())
    assert isinstance(values, dict), f"{path} is not a mapping"
    return values


MINIMAL_VALUES: dict[str, Any] = {
    "secrets": {"existingSecret": "callhook"},
    "amqp": {"existingSecret": "amqp"},
}


def merged(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge value layers, later wins (like several ``-f`` files)."""
    out: dict[str, Any] = {}
    for layer in layers:
        _merge_into(out, layer)
    return out


def _merge_into(target: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        elif isinstance(value, Mapping):
            target[key] = merged(value)
        else:
            target[key] = value


def rule_groups(rendered: Rendered) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for rule in rendered.of_kind("PrometheusRule"):
        groups.extend(rule["spec"]["groups"])
    return groups


def alerts(rendered: Rendered) -> Iterator[dict[str, Any]]:
    for group in rule_groups(rendered):
        yield from group["rules"]


# Everything that carries PromQL: alerts (the RabbitMQ group included), KEDA's capacity trigger, the
# dashboard.
OBSERVABILITY_VALUES: dict[str, Any] = merged(
    MINIMAL_VALUES,
    {
        "autoscaling": {"mode": "keda"},
        "monitoring": {
            "prometheusRule": {
                "enabled": True,
                "rabbitmqMetrics": {"enabled": True, "selector": 'job="rmq"'},
            },
            "dashboard": {"enabled": True},
        },
    },
)


def dashboard_expressions() -> Iterator[tuple[str, promql.Expression]]:
    dashboard = json.loads((CHART_DIR / "dashboards" / "callhook.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", promql.parse(target["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", promql.parse_grafana_variable_query(variable["definition"])


def promql_expressions(rendered: Rendered) -> Iterator[tuple[str, promql.Expression]]:
    """Every PromQL expression the chart ships, with where it is: ``<group>/<alert>``, trigger, dashboard."""
    for group in rule_groups(rendered):
        for rule in group["rules"]:
            yield f"{group['name']}/{rule['alert']}", promql.parse(rule["expr"])
    for scaled in rendered.of_kind("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            if trigger["type"] == "prometheus":
                yield f"ScaledObject trigger {trigger['name']}", promql.parse(trigger["metadata"]["query"])
    yield from dashboard_expressions()


# The values compose.yaml's Prometheus rules are rendered with: RabbitMQ's per-object metrics are scraped
# there.
COMPOSE_RULE_VALUES: dict[str, Any] = merged(
    MINIMAL_VALUES,
    {
        "monitoring": {
            "prometheusRule": {
                "enabled": True,
                "rabbitmqMetrics": {"enabled": True, "selector": 'job="rabbitmq"'},
            }
        }
    },
)


def compose_rules_yaml(chart: helm.Chart) -> str:
    rendered = render(chart, COMPOSE_RULE_VALUES, release="callhook", namespace="callhook")
    header = (
        "# Generated from the chart (PrometheusRule, release callhook, namespace callhook); do not edit.\n"
        "#   uv run --frozen python -m tests.helm.chart rules > deploy/prometheus/rules.yml\n"
    )
    body: str = yaml.safe_dump({"groups": rule_groups(rendered)}, sort_keys=False, width=1000)
    return header + body


def main(argv: list[str]) -> int:
    if argv != ["rules"]:
        print("usage: python -m tests.helm.chart rules", file=sys.stderr)
        return 2
    with helm.Chart.load(CHART_DIR) as chart:
        sys.stdout.write(compose_rules_yaml(chart))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
