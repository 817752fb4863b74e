"""values.schema.json refuses wrong values, the templates refuse what a schema cannot express, and every
value in values.yaml is documented.

Each bad value is checked twice: by Helm itself (the schema validation `helm install` runs) and by jsonschema
on the merged values, so the schema is right for Helm 3 (draft-07, gojsonschema) as well as Helm 4.
"""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

from tests.helm import chart as c
from tests.helm.conftest import SCENARIOS

SCHEMA = json.loads((c.CHART_DIR / "values.schema.json").read_text())

BAD_VALUES: list[tuple[str, dict[str, Any]]] = [
    ("callhook Secret not named", {"secrets": {"existingSecret": ""}}),
    ("Secret name not a Kubernetes name", {"secrets": {"existingSecret": "Callhook_Secrets"}}),
    ("AMQP Secret missing without a RabbitmqCluster", {"amqp": {"existingSecret": ""}}),
    ("required Secret key emptied", {"secrets": {"keys": {"accessToken": ""}}}),
    ("unknown top-level key", {"replicaCount": 3}),
    ("typo in a worker key", {"worker": {"maxcalls": 10}}),
    ("maxCalls as a string", {"worker": {"maxCalls": "40"}}),
    ("maxCalls zero", {"worker": {"maxCalls": 0}}),
    ("maxCalls above what the worker accepts", {"worker": {"maxCalls": 20_000}}),
    ("one worker", {"worker": {"replicas": 1}}),
    ("autoscaling below two workers", {"autoscaling": {"minReplicas": 1}}),
    ("unknown autoscaling mode", {"autoscaling": {"mode": "vpa"}}),
    ("negative drain timeout", {"worker": {"drainTimeoutSeconds": -1}}),
    ("fractional drain timeout", {"worker": {"drainTimeoutSeconds": 1.5}}),
    ("no time left after the drain", {"worker": {"terminationMarginSeconds": 5}}),
    ("privileged ingress port", {"ingress": {"port": 80}}),
    ("privileged metrics port", {"worker": {"metricsPort": 443}}),
    ("unknown log level", {"logging": {"level": "verbose"}}),
    ("unknown log format", {"logging": {"format": "text"}}),
    ("app without its argument", {"worker": {"app": "play"}}),
    ("ICE server without a scheme", {"worker": {"ice": {"servers": ["stun.example.com:3478"]}}}),
    ("Graph URL without a scheme", {"worker": {"graph": {"url": "graph.facebook.com"}}}),
    ("Graph version not vN.M", {"worker": {"graph": {"version": "23"}}}),
    ("truncated image digest", {"image": {"digest": "sha256:abc"}}),
    ("unknown pull policy", {"image": {"pullPolicy": "Sometimes"}}),
    ("capacity target as a percentage", {"autoscaling": {"keda": {"capacity": {"targetUtilization": 70}}}}),
    ("queue length target zero", {"autoscaling": {"keda": {"unclaimed": {"targetQueueLength": 0}}}}),
    (
        "Prometheus address without a scheme",
        {"autoscaling": {"keda": {"capacity": {"serverAddress": "prom:9090"}}}},
    ),
    ("KEDA fallback with the Value trigger", {"autoscaling": {"keda": {"fallback": {"enabled": True}}}}),
    ("HPA CPU target zero", {"autoscaling": {"hpa": {"targetCPUUtilizationPercentage": 0}}}),
    ("privilege escalation", {"containerSecurityContext": {"allowPrivilegeEscalation": True}}),
    ("privileged container", {"containerSecurityContext": {"privileged": True}}),
    ("writable root filesystem", {"containerSecurityContext": {"readOnlyRootFilesystem": False}}),
    ("root allowed", {"podSecurityContext": {"runAsNonRoot": False}}),
    ("capabilities kept", {"containerSecurityContext": {"capabilities": {"drop": ["NET_RAW"]}}}),
    (
        "capabilities added",
        {"containerSecurityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}},
    ),
    ("uid 0", {"podSecurityContext": {"runAsUser": 0}}),
    ("even RabbitMQ cluster", {"rabbitmq": {"create": True, "replicas": 2}}),
    ("RabbitMQ plugin misnamed", {"rabbitmq": {"additionalPlugins": ["prometheus"]}}),
    ("unknown alert disabled", {"monitoring": {"prometheusRule": {"disabledAlerts": ["CallhookTypo"]}}}),
    ("scrape interval in words", {"monitoring": {"serviceMonitor": {"interval": "30 seconds"}}}),
    (
        "RabbitMQ selector with braces",
        {"monitoring": {"prometheusRule": {"rabbitmqMetrics": {"selector": '{job="x"}'}}}},
    ),
    ("ratio threshold above 1", {"monitoring": {"prometheusRule": {"thresholds": {"graphErrorRatio": 5}}}}),
    ("runbook URL not a URL", {"monitoring": {"prometheusRule": {"runbookBaseUrl": "docs/kubernetes.md"}}}),
    ("NetworkPolicy peer typo", {"networkPolicy": {"metricsFrom": [{"namespaceSelectr": {}}]}}),
    (
        "CIDR without prefix length",
        {"networkPolicy": {"worker": {"mediaTo": [{"ipBlock": {"cidr": "0.0.0.0"}}]}}},
    ),
    ("AMQP port out of range", {"networkPolicy": {"amqp": {"ports": [70000]}}}),
    ("PDB budget in words", {"worker": {"pdb": {"maxUnavailable": "one"}}}),
    ("ExternalName ingress Service", {"ingress": {"service": {"type": "ExternalName"}}}),
    ("environment entry without a name", {"worker": {"extraEnv": [{"value": "x"}]}}),
    ("volume mount without a path", {"worker": {"extraVolumeMounts": [{"name": "data"}]}}),
    ("/tmp size not a quantity", {"tmpSizeLimit": "lots"}),
    ("resources typo", {"worker": {"resources": {"request": {"cpu": "1"}}}}),
    ("probe with a string period", {"worker": {"readinessProbe": {"periodSeconds": "5"}}}),
    ("rolling update strategy misnamed", {"worker": {"strategy": {"type": "Rolling"}}}),
    (
        "Ingress host with a scheme",
        {"ingress": {"kubernetesIngress": {"hosts": ["https://calls.example.com"]}}},
    ),
    ("HTTPRoute parent without a name", {"ingress": {"httpRoute": {"parentRefs": [{"namespace": "gw"}]}}}),
    ("API port out of range", {"ingress": {"apiPort": 70000}}),
    ("app name with capitals", {"worker": {"apps": {"Agent": "echo"}}}),
    ("app spec with a comma", {"worker": {"apps": {"agent": "ws://a/x,y"}}}),
    ("empty app spec", {"worker": {"apps": {"agent": ""}}}),
    ("API policy peer typo", {"networkPolicy": {"api": {"from": [{"podSelectr": {}}]}}}),
]


def _refused_by_helm(chart: helm.Chart, values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(values)
    return str(refused.value)


@pytest.mark.parametrize(("why", "override"), BAD_VALUES, ids=[why for why, _ in BAD_VALUES])
def test_bad_values_are_refused(chart: helm.Chart, why: str, override: dict[str, Any]) -> None:
    values = c.merged(c.MINIMAL_VALUES, override)
    _refused_by_helm(chart, values)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate(chart.merge_values(values))
    # `helm install` validates before rendering: nothing is rendered from refused values.
    with pytest.raises(helm.HelmValuesError):
        c.render(chart, values)


def test_schema_is_valid_draft7() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_default_values_need_only_the_secrets(chart: helm.Chart) -> None:
    message = _refused_by_helm(chart, {})
    assert "/secrets/existingSecret" in message
    assert "/amqp/existingSecret" in message
    chart.validate_schema(c.MINIMAL_VALUES)


GOOD_VALUES: list[tuple[str, dict[str, Any]]] = [
    (
        "RabbitmqCluster instead of an AMQP Secret",
        {"rabbitmq": {"create": True}, "amqp": {"existingSecret": ""}},
    ),
    ("platform-assigned uid (OpenShift)", {"podSecurityContext": {"runAsUser": None, "fsGroup": None}}),
    ("module app", {"worker": {"app": "mycompany.voice:handle_call"}}),
    ("voice agent bridge", {"worker": {"app": "ws:wss://agent.example.com/stream"}}),
    ("no drain at all", {"worker": {"drainTimeoutSeconds": 0}}),
    (
        "fallback without the capacity trigger",
        {"autoscaling": {"keda": {"capacity": {"enabled": False}, "fallback": {"enabled": True}}}},
    ),
    ("percentage PDB", {"worker": {"pdb": {"maxUnavailable": "10%"}}}),
    ("IPv6 peer", {"networkPolicy": {"worker": {"graphTo": [{"ipBlock": {"cidr": "2a03:2880::/32"}}]}}}),
]


@pytest.mark.parametrize(("why", "override"), GOOD_VALUES, ids=[why for why, _ in GOOD_VALUES])
def test_good_values_are_accepted(chart: helm.Chart, why: str, override: dict[str, Any]) -> None:
    values = c.merged(c.MINIMAL_VALUES, override)
    chart.validate_schema(values)
    jsonschema.Draft7Validator(SCHEMA).validate(chart.merge_values(values))
    assert c.render(chart, values).of_kind("Deployment")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenarios_satisfy_the_schema(chart: helm.Chart, scenario: str) -> None:
    values = c.load_values(SCENARIOS[scenario])
    chart.validate_schema(values)
    jsonschema.Draft7Validator(SCHEMA).validate(chart.merge_values(values))


# What a JSON schema cannot say (relations between values): the templates `fail` with a message naming the
# fix.
TEMPLATE_GUARDS: list[tuple[dict[str, Any], str]] = [
    ({"autoscaling": {"minReplicas": 6, "maxReplicas": 4}}, "must not exceed autoscaling.maxReplicas"),
    (
        {"autoscaling": {"mode": "hpa", "minReplicas": 6, "maxReplicas": 4}},
        "must not exceed autoscaling.maxReplicas",
    ),
    (
        {"autoscaling": {"keda": {"unclaimed": {"enabled": False}, "capacity": {"enabled": False}}}},
        "enable at least one trigger",
    ),
    ({"autoscaling": {"mode": "hpa"}, "worker": {"resources": {"requests": {"cpu": None}}}}, "requests.cpu"),
    (
        {"ingress": {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}}},
        "requests.cpu",
    ),
    ({"ingress": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}}, "must not exceed"),
    ({"ingress": {"kubernetesIngress": {"enabled": True}}}, "name at least one host"),
    ({"ingress": {"httpRoute": {"enabled": True}}}, "parentRefs"),
    (
        {"ingress": {"preStopSleepSeconds": 30, "terminationGracePeriodSeconds": 30}},
        "must exceed ingress.preStop",
    ),
    ({"ingress": {"apiPort": 8080}}, "ingress.apiPort must differ from ingress.port"),
    ({"ingress": {"apiIngress": {"enabled": True, "hosts": ["api.example.com"]}}}, "needs ingress.apiPort"),
    ({"ingress": {"apiPort": 8081, "apiIngress": {"enabled": True}}}, "ingress.apiIngress.hosts"),
]


@pytest.mark.parametrize(("override", "message"), TEMPLATE_GUARDS)
def test_templates_refuse_inconsistent_values(
    chart: helm.Chart, override: dict[str, Any], message: str
) -> None:
    values = c.merged(c.MINIMAL_VALUES, override)
    chart.validate_schema(values)  # each is schema-valid on its own
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        c.render(chart, values)


# --- documentation of values.yaml

# Blocks that are plain Kubernetes (or HPA) objects, documented by Kubernetes, or user data (label maps).
KUBERNETES_BLOCKS = {
    "ports",
    "graphTo",
    "mediaTo",
    "labels",
    "resources",
    "requests",
    "limits",
    "podSecurityContext",
    "containerSecurityContext",
    "seccompProfile",
    "capabilities",
    "strategy",
    "rollingUpdate",
    "readinessProbe",
    "livenessProbe",
    "startupProbe",
    "behavior",
    "scaleUp",
    "scaleDown",
    "ipBlock",
}
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*):(?P<rest>.*)$")


def test_every_value_is_documented() -> None:
    """Each key of values.yaml has a comment right above it (or after it), except in Kubernetes objects."""
    lines = (c.CHART_DIR / "values.yaml").read_text().splitlines()
    parents: list[tuple[int, str]] = []
    undocumented = []
    for number, line in enumerate(lines):
        match = _KEY.match(line)
        if match is None:
            continue
        indent = len(match["indent"])
        while parents and parents[-1][0] >= indent:
            parents.pop()
        inside_kubernetes = any(key in KUBERNETES_BLOCKS for _, key in parents)
        parents.append((indent, match["key"]))
        if inside_kubernetes:
            continue
        above = lines[number - 1].strip() if number else ""
        if not above.startswith("#") and "#" not in match["rest"]:
            undocumented.append(f"values.yaml:{number + 1}: {match['key']}")
    assert not undocumented, "\n".join(undocumented)


def test_values_yaml_is_what_helm_loads(chart: helm.Chart) -> None:
    assert chart.values == yaml.safe_load((c.CHART_DIR / "values.yaml").read_text())
