"""The Helm chart renders, lints and validates for every scenario, and what it renders holds together.

Every scenario under helm/callhook/ci is rendered with Helm's engine for the oldest and the newest Kubernetes
the chart supports; core objects are checked by kubernetes-validate (strict: unknown fields fail), custom
resources by tests/helm/crds.py. The invariants below are the things a wrong template would silently break in
production.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest

from ingress import contract
from tests.helm import chart as c
from tests.helm import crds
from tests.helm.conftest import KUBE_VERSIONS, SCENARIOS

Manifest = dict[str, Any]


def pod_specs(rendered: c.Rendered) -> Iterator[tuple[Manifest, Manifest]]:
    for deployment in rendered.of_kind("Deployment"):
        yield deployment, deployment["spec"]["template"]["spec"]


def env_of(container: Manifest) -> dict[str, Manifest]:
    return {item["name"]: item for item in container.get("env", [])}


def component_deployment(rendered: c.Rendered, component: str) -> Manifest:
    return rendered.one("Deployment", f"{c.RELEASE}-callhook-{component}")


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pods_selected(rendered: c.Rendered, selector: Mapping[str, str]) -> list[str]:
    return [
        d["metadata"]["name"]
        for d in rendered.of_kind("Deployment")
        if selects(selector, d["spec"]["template"]["metadata"]["labels"])
    ]


# --- rendering, linting, validating


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_renders_and_validates(chart: helm.Chart, scenario: str, kube: str) -> None:
    rendered = c.render(chart, c.load_values(SCENARIOS[scenario]), kube_version=kube)
    assert rendered.of_kind("Deployment"), "nothing rendered"
    for obj in rendered.objects:
        schema = crds.SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        if schema is not None:
            jsonschema.validate(obj, schema)
            continue
        try:
            kubernetes_validate.validate(obj, kube, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(
                f"{obj['kind']}/{obj['metadata']['name']} invalid for {kube} at {path}: {exc.message}"
            )


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario_lints_strict(scenario: str, kube: str) -> None:
    report = helm.lint(c.CHART_DIR, c.load_values(SCENARIOS[scenario]), strict=True, kube_version=f"v{kube}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems
    assert not report["errors"], report["errors"]


def test_tested_kubernetes_range_is_the_supported_one(chart: helm.Chart) -> None:
    """Chart.yaml's kubeVersion (what `helm install` enforces) starts where the validation above starts."""
    constraint = chart.metadata["kubeVersion"]
    assert re.fullmatch(r">=(\d+\.\d+\.\d+)-0", constraint), constraint
    assert constraint.removeprefix(">=").removesuffix("-0") == c.OLDEST_KUBE


def test_every_scenario_is_exercised(rendered_scenarios: dict[str, c.Rendered]) -> None:
    """Together the scenarios render every template the chart has."""
    kinds = {o["kind"] for r in rendered_scenarios.values() for o in r.objects}
    assert kinds >= {
        "Deployment",
        "Service",
        "ServiceAccount",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "RabbitmqCluster",
        "Ingress",
        "HTTPRoute",
    }


def test_label_values_and_names_are_valid(rendered_scenarios: dict[str, c.Rendered]) -> None:
    label_value = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
    dns1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    for rendered in rendered_scenarios.values():
        for obj in rendered.objects:
            for key, value in obj["metadata"].get("labels", {}).items():
                assert len(value) <= 63, f"label {key}={value!r}"
                assert label_value.match(value), f"label {key}={value!r}"
            if obj["kind"] == "Service":
                name = obj["metadata"]["name"]
                assert len(name) <= 63, name
                assert dns1035.match(name), name


def test_long_release_names_stay_within_kubernetes_limits(chart: helm.Chart) -> None:
    release = "a-very-long-release-name-for-the-voice-platform-in-production"
    rendered = c.render(chart, c.MINIMAL_VALUES, release=release)
    for obj in rendered.objects:
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]


# --- selectors


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_selectors_match_the_right_pods(rendered_scenarios: dict[str, c.Rendered], scenario: str) -> None:
    rendered = rendered_scenarios[scenario]
    for deployment, _ in pod_specs(rendered):
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert pods_selected(rendered, selector) == [deployment["metadata"]["name"]], "selector overlaps"
    for service in rendered.of_kind("Service"):
        # the API Service (ingress.apiPort) selects the ingress pods too
        owner = service["metadata"]["name"].removesuffix("-api")
        assert pods_selected(rendered, service["spec"]["selector"]) == [owner]
    for pdb in rendered.of_kind("PodDisruptionBudget"):
        assert pods_selected(rendered, pdb["spec"]["selector"]["matchLabels"]) == [pdb["metadata"]["name"]]
    for policy in rendered.of_kind("NetworkPolicy"):
        assert pods_selected(rendered, policy["spec"]["podSelector"]["matchLabels"]) == [
            policy["metadata"]["name"]
        ]
    for monitor in rendered.of_kind("ServiceMonitor"):
        services = [
            s
            for s in rendered.of_kind("Service")
            if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert [s["metadata"]["name"].removesuffix("-api") for s in services] == [monitor["metadata"]["name"]]
        ports = {p["name"] for p in services[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [c.NAMESPACE]
    for deployment, spec in pod_specs(rendered):
        for constraint in spec.get("topologySpreadConstraints", []):
            selected = pods_selected(rendered, constraint["labelSelector"]["matchLabels"])
            assert selected == [deployment["metadata"]["name"]]


def test_services_target_named_container_ports(rendered_scenarios: dict[str, c.Rendered]) -> None:
    for rendered in rendered_scenarios.values():
        for service in rendered.of_kind("Service"):
            (deployment,) = [
                d
                for d in rendered.of_kind("Deployment")
                if selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
            ]
            ports = {
                p["name"]
                for ctr in deployment["spec"]["template"]["spec"]["containers"]
                for p in ctr["ports"]
            }
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in ports


# --- probes, ports, environment


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_probes_point_at_real_ports_and_paths(
    rendered_scenarios: dict[str, c.Rendered], scenario: str
) -> None:
    for _, spec in pod_specs(rendered_scenarios[scenario]):
        (container,) = spec["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in container:
                assert container[probe]["httpGet"]["port"] in ports, f"{probe} on an undeclared port"
        env = env_of(container)
        port_setting = {
            "ingress": "CALLHOOK_INGRESS_PORT",
            "worker": "CALLHOOK_METRICS_PORT",
            "console": "CALLHOOK_CONSOLE_PORT",
        }[container["name"]]
        # The process listens where the probes and the Service look.
        assert int(env[port_setting]["value"]) == next(iter(ports.values()))
        assert container["args"] == [container["name"]]


def _resolve_env(container: Manifest) -> dict[str, str]:
    """The environment the process would see, with placeholder Secret contents and $(VAR) expanded."""
    resolved: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda m: resolved[m.group(1)], item["value"])
        else:
            key = item["valueFrom"]["secretKeyRef"]["key"]
            # Placeholders as long as real secrets must be (start-up refuses short ones).
            value = (
                "amqp://u:p@broker:5672/vhost"
                if item["name"] == "CALLHOOK_AMQP_URL"
                else f"secret-{key}-0123456789abcdef"
            )
        resolved[item["name"]] = value
    return resolved


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_worker_environment_is_accepted_by_the_worker(
    rendered_scenarios: dict[str, c.Rendered], scenario: str
) -> None:
    from worker import config

    values = c.load_values(SCENARIOS[scenario])
    (container,) = component_deployment(rendered_scenarios[scenario], "worker")["spec"]["template"]["spec"][
        "containers"
    ]
    settings = config.load(_resolve_env(container))  # raises ConfigError listing every bad setting
    worker = values.get("worker", {})
    assert settings.max_calls == worker.get("maxCalls", 40)
    assert settings.drain_timeout_seconds == worker.get("drainTimeoutSeconds", 120)
    assert settings.app == worker.get("app", "echo")
    assert settings.access_token.startswith("secret-")
    assert settings.amqp_url.startswith("amqp://")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_ingress_environment_is_accepted_by_the_ingress(
    rendered_scenarios: dict[str, c.Rendered], scenario: str
) -> None:
    config = pytest.importorskip("ingress.config", reason="ingress/config.py is written in parallel")
    (container,) = component_deployment(rendered_scenarios[scenario], "ingress")["spec"]["template"]["spec"][
        "containers"
    ]
    config.load(_resolve_env(container))


def test_rabbitmq_operator_url_is_assembled_from_the_default_user(
    rendered_scenarios: dict[str, c.Rendered],
) -> None:
    rendered = rendered_scenarios["rabbitmq-operator"]
    cluster = rendered.one("RabbitmqCluster")
    default_user = f"{cluster['metadata']['name']}-default-user"
    for _, spec in pod_specs(rendered):
        env = spec["containers"][0]["env"]
        names = [e["name"] for e in env]
        # $(VAR) only expands variables defined earlier in the list.
        assert names.index("RABBITMQ_USERNAME") < names.index("CALLHOOK_AMQP_URL")
        assert names.index("RABBITMQ_PASSWORD") < names.index("CALLHOOK_AMQP_URL")
        for e in env[:2]:
            assert e["valueFrom"]["secretKeyRef"]["name"] == default_user
        url = _resolve_env(spec["containers"][0])["CALLHOOK_AMQP_URL"]
        assert (
            url == f"amqp://secret-username-0123456789abcdef:secret-password-0123456789abcdef@"
            f"{cluster['metadata']['name']}.{c.NAMESPACE}.svc:5672/"
        )


# Settings the chart can pass before the code reads them, with the reason. When the code starts reading one,
# the test below fails: remove it from here.
PENDING_SETTINGS: dict[tuple[str, str], str] = {}


def test_chart_sets_only_settings_the_code_reads(rendered_scenarios: dict[str, c.Rendered]) -> None:
    """Every CALLHOOK_* variable the chart sets is read by the component's config module (catches typos)."""
    sources = {name: (c.ROOT / name / "config.py").read_text() for name in ("ingress", "worker", "console")}
    unread = set()
    for rendered in rendered_scenarios.values():
        for _, spec in pod_specs(rendered):
            container = spec["containers"][0]
            for name in env_of(container):
                if name.startswith("CALLHOOK_") and f'"{name}"' not in sources[container["name"]]:
                    unread.add((container["name"], name))
    assert unread == set(PENDING_SETTINGS), f"set by the chart, not read by the code: {sorted(unread)}"


# --- draining and the grace period


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_worker_grace_period_outlasts_the_drain(
    rendered_scenarios: dict[str, c.Rendered], scenario: str
) -> None:
    values = c.load_values(SCENARIOS[scenario]).get("worker", {})
    spec = component_deployment(rendered_scenarios[scenario], "worker")["spec"]["template"]["spec"]
    drain = int(env_of(spec["containers"][0])["CALLHOOK_DRAIN_TIMEOUT_SECONDS"]["value"])
    assert drain == values.get("drainTimeoutSeconds", 120)
    assert spec["terminationGracePeriodSeconds"] == drain + values.get("terminationMarginSeconds", 30)
    assert spec["terminationGracePeriodSeconds"] >= drain + 10


def test_grace_period_follows_the_drain_timeout(chart: helm.Chart) -> None:
    for drain, margin in [(0, 10), (45, 15), (3600, 120)]:
        values = c.merged(
            c.MINIMAL_VALUES, {"worker": {"drainTimeoutSeconds": drain, "terminationMarginSeconds": margin}}
        )
        spec = component_deployment(c.render(chart, values), "worker")["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] == drain + margin


def test_rolling_updates_start_new_workers_before_old_ones_drain(
    rendered_scenarios: dict[str, c.Rendered],
) -> None:
    for rendered in rendered_scenarios.values():
        strategy = component_deployment(rendered, "worker")["spec"]["strategy"]
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0


# --- autoscaling


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scaling_never_goes_below_two_workers(
    rendered_scenarios: dict[str, c.Rendered], scenario: str
) -> None:
    rendered = rendered_scenarios[scenario]
    worker = component_deployment(rendered, "worker")
    scalers = rendered.of_kind("ScaledObject") + [
        h
        for h in rendered.of_kind("HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    ]
    assert len(scalers) <= 1, "both KEDA and an HPA would scale the workers"
    if not scalers:
        assert worker["spec"]["replicas"] >= 2
        return
    (scaler,) = scalers
    # The replica count belongs to the autoscaler: an upgrade must not reset it.
    assert "replicas" not in worker["spec"]
    spec = scaler["spec"]
    low, high = (
        (spec["minReplicaCount"], spec["maxReplicaCount"])
        if "minReplicaCount" in spec
        else (
            spec["minReplicas"],
            spec["maxReplicas"],
        )
    )
    assert 2 <= low <= high
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": worker["metadata"]["name"],
    }


KEDA_SCENARIOS = sorted(
    name
    for name, path in SCENARIOS.items()
    if c.load_values(path).get("autoscaling", {}).get("mode", "keda") == "keda"
)


@pytest.mark.parametrize("scenario", KEDA_SCENARIOS)
def test_scaled_object_scales_on_unclaimed_calls_and_capacity(
    rendered_scenarios: dict[str, c.Rendered], scenario: str
) -> None:
    rendered = rendered_scenarios[scenario]
    scaled = rendered.one("ScaledObject")
    triggers = {t["type"]: t for t in scaled["spec"]["triggers"]}
    rabbit = triggers["rabbitmq"]
    assert rabbit["metadata"]["queueName"] == contract.UNCLAIMED_QUEUE
    assert rabbit["metadata"]["protocol"] == "amqp"
    assert rabbit["metadata"]["mode"] == "QueueLength"
    assert rabbit["metricType"] == "AverageValue"
    auth = rendered.one("TriggerAuthentication", rabbit["authenticationRef"]["name"])
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    # KEDA reads the broker with the same credentials as the workers.
    worker_env = env_of(component_deployment(rendered, "worker")["spec"]["template"]["spec"]["containers"][0])
    amqp = worker_env["CALLHOOK_AMQP_URL"]
    if "valueFrom" in amqp:
        ref = amqp["valueFrom"]["secretKeyRef"]
        assert refs == {"host": (ref["name"], ref["key"])}
    else:
        user = worker_env["RABBITMQ_USERNAME"]["valueFrom"]["secretKeyRef"]
        password = worker_env["RABBITMQ_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert refs == {
            "username": (user["name"], user["key"]),
            "password": (password["name"], password["key"]),
        }
        assert rabbit["metadata"]["host"] == amqp["value"].replace(
            "$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@", ""
        )
    if "prometheus" in triggers:
        prom = triggers["prometheus"]
        assert prom["metricType"] == "Value"
        assert 0 < float(prom["metadata"]["threshold"]) <= 1
        assert "callhook_calls_active" in prom["metadata"]["query"]
        assert "callhook_calls_capacity" in prom["metadata"]["query"]
    if "fallback" in scaled["spec"]:
        # KEDA's admission webhook refuses a fallback unless every trigger is AverageValue.
        assert all(t["metricType"] == "AverageValue" for t in scaled["spec"]["triggers"])
    # Slow scale-down: a worker that goes away drains its calls.
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "behavior-check"},
        "spec": {
            "scaleTargetRef": {"kind": "Deployment", "name": "x"},
            "maxReplicas": 2,
            "behavior": behavior,
        },
    }
    kubernetes_validate.validate(hpa, c.OLDEST_KUBE, strict=True)


@pytest.mark.parametrize(
    ("mode", "check", "apis", "expected"),
    [
        ("keda", True, c.OPTIONAL_APIS, "ScaledObject"),
        ("keda", True, (), "HorizontalPodAutoscaler"),  # no KEDA in the cluster: fall back
        ("keda", False, (), "ScaledObject"),  # helm template for a cluster known to have KEDA
        ("hpa", True, c.OPTIONAL_APIS, "HorizontalPodAutoscaler"),
        ("none", True, c.OPTIONAL_APIS, None),
    ],
)
def test_autoscaling_mode_and_keda_fallback(
    chart: helm.Chart, mode: str, check: bool, apis: tuple[str, ...], expected: str | None
) -> None:
    values = c.merged(c.MINIMAL_VALUES, {"autoscaling": {"mode": mode, "keda": {"checkCapabilities": check}}})
    rendered = c.render(chart, values, api_versions=apis)
    scalers = {o["kind"] for o in rendered.objects} & {"ScaledObject", "HorizontalPodAutoscaler"}
    assert scalers == ({expected} if expected else set())
    if expected == "HorizontalPodAutoscaler":
        metrics = rendered.one("HorizontalPodAutoscaler")["spec"]["metrics"]
        assert metrics[0]["resource"]["name"] == "cpu"
    falling_back = mode == "keda" and expected == "HorizontalPodAutoscaler"
    assert ("no keda.sh/v1alpha1 API" in rendered.notes) == falling_back


def test_hpa_can_also_scale_on_active_calls(rendered_scenarios: dict[str, c.Rendered]) -> None:
    hpa = rendered_scenarios["hpa"].one("HorizontalPodAutoscaler", f"{c.RELEASE}-callhook-worker")
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == [
        {
            "metric": {"name": "callhook_calls_active"},
            "target": {"type": "AverageValue", "averageValue": "30"},
        }
    ]


# --- security


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_pods_are_hardened(rendered_scenarios: dict[str, c.Rendered], scenario: str) -> None:
    for deployment, spec in pod_specs(rendered_scenarios[scenario]):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False
        assert not spec.get("hostNetwork")
        assert not spec.get("hostPID")
        assert not spec.get("hostIPC")
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["privileged"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert all("hostPort" not in p for p in container["ports"])
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp, f"{deployment['metadata']['name']}: no writable /tmp"
            assert "emptyDir" in volumes[tmp[0]["name"]], f"{deployment['metadata']['name']}: /tmp"
            assert not container["image"].endswith(":latest")
            assert "memory" in container["resources"]["limits"]


def test_image_digest_pins_the_image(rendered_scenarios: dict[str, c.Rendered]) -> None:
    values = c.load_values(SCENARIOS["hardened"])["image"]
    for _, spec in pod_specs(rendered_scenarios["hardened"]):
        assert spec["containers"][0]["image"] == f"{values['repository']}:{values['tag']}@{values['digest']}"
        assert spec["imagePullSecrets"] == [{"name": "registry-example"}]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_secrets_only_by_reference(rendered_scenarios: dict[str, c.Rendered], scenario: str) -> None:
    rendered = rendered_scenarios[scenario]
    values = c.load_values(SCENARIOS[scenario])
    assert not rendered.of_kind("Secret"), "the chart must never render credentials"
    allowed = {values["secrets"]["existingSecret"], values.get("amqp", {}).get("existingSecret")}
    allowed |= {f"{r['metadata']['name']}-default-user" for r in rendered.of_kind("RabbitmqCluster")}
    secret_settings = {
        "CALLHOOK_AMQP_URL",
        "CALLHOOK_APP_SECRETS",
        "CALLHOOK_VERIFY_TOKEN",
        "CALLHOOK_ACCESS_TOKEN",
        "CALLHOOK_API_TOKENS",
        "CALLHOOK_TURN_USERNAME",
        "CALLHOOK_TURN_CREDENTIAL",
        "RABBITMQ_USERNAME",
        "RABBITMQ_PASSWORD",
    }
    for _, spec in pod_specs(rendered):
        for item in spec["containers"][0]["env"]:
            if "valueFrom" in item:
                assert item["valueFrom"]["secretKeyRef"]["name"] in allowed
            elif item["name"] in secret_settings:
                # Only the operator form, where the URL is assembled from Secret-backed variables.
                assert item["name"] == "CALLHOOK_AMQP_URL"
                assert "$(RABBITMQ_PASSWORD)" in item["value"]


def test_components_get_only_their_own_credentials(rendered_scenarios: dict[str, c.Rendered]) -> None:
    rendered = rendered_scenarios["hardened"]
    ingress_env = env_of(
        component_deployment(rendered, "ingress")["spec"]["template"]["spec"]["containers"][0]
    )
    worker_env = env_of(component_deployment(rendered, "worker")["spec"]["template"]["spec"]["containers"][0])
    assert {"CALLHOOK_APP_SECRETS", "CALLHOOK_VERIFY_TOKEN"} <= ingress_env.keys()
    assert "CALLHOOK_ACCESS_TOKEN" not in ingress_env, "the ingress never calls the Graph API"
    assert {
        "CALLHOOK_ACCESS_TOKEN",
        "CALLHOOK_TURN_USERNAME",
        "CALLHOOK_TURN_CREDENTIAL",
    } <= worker_env.keys()
    assert not {"CALLHOOK_APP_SECRETS", "CALLHOOK_VERIFY_TOKEN"} & worker_env.keys()


# --- network policies


def _egress_ports(policy: Manifest) -> set[tuple[str, int | None]]:
    return {
        (port.get("protocol", "TCP"), port.get("port"))
        for rule in policy["spec"]["egress"]
        for port in rule.get("ports", [{}])
    }


def test_network_policies_allow_what_each_component_needs_and_no_more(
    rendered_scenarios: dict[str, c.Rendered],
) -> None:
    rendered = rendered_scenarios["default"]
    ingress = rendered.one("NetworkPolicy", f"{c.RELEASE}-callhook-ingress")
    worker = rendered.one("NetworkPolicy", f"{c.RELEASE}-callhook-worker")
    for policy in (ingress, worker):
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert {("UDP", 53), ("TCP", 53), ("TCP", 5672), ("TCP", 5671)} <= _egress_ports(policy)
    assert _egress_ports(ingress) == {("UDP", 53), ("TCP", 53), ("TCP", 5672), ("TCP", 5671)}
    assert ("TCP", 443) in _egress_ports(worker)
    assert ("UDP", None) in _egress_ports(worker), "media: UDP to any port"
    # Inbound: the webhook port on the ingress, only the metrics port on workers.
    assert [p["port"] for rule in ingress["spec"]["ingress"] for p in rule["ports"]] == ["http"]
    assert [p["port"] for rule in worker["spec"]["ingress"] for p in rule["ports"]] == ["metrics"]


def test_network_policies_follow_configured_peers(rendered_scenarios: dict[str, c.Rendered]) -> None:
    hardened = rendered_scenarios["hardened"]
    worker = hardened.one("NetworkPolicy", f"{c.RELEASE}-callhook-worker")
    rules = worker["spec"]["egress"]
    assert {"port": 5671, "protocol": "TCP"} in rules[1]["ports"]
    assert len(rules[1]["ports"]) == 1
    assert rules[0]["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    ice = rules[-1]
    assert ice["to"] == [{"ipBlock": {"cidr": "203.0.113.10/32"}}]
    assert {"port": 5349, "protocol": "TCP"} in ice["ports"]
    observed = rendered_scenarios["keda-observability"]
    ingress = observed.one("NetworkPolicy", f"{c.RELEASE}-callhook-ingress")
    sources = [rule["from"] for rule in ingress["spec"]["ingress"]]
    assert sources == [
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
    ]
    operator = rendered_scenarios["rabbitmq-operator"].one("NetworkPolicy", f"{c.RELEASE}-callhook-worker")
    assert operator["spec"]["egress"][1]["to"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": f"{c.RELEASE}-callhook-rabbitmq"}}}
    ]


# --- exposure


def test_only_webhook_and_api_paths_are_exposed(rendered_scenarios: dict[str, c.Rendered]) -> None:
    service = f"{c.RELEASE}-callhook-ingress"
    ingress = rendered_scenarios["keda-observability"].one("Ingress")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert [p["path"] for p in paths] == ["/webhook", "/v1"]
    assert all(p["backend"]["service"] == {"name": service, "port": {"name": "http"}} for p in paths)
    route = rendered_scenarios["gateway"].one("HTTPRoute")
    (rule,) = route["spec"]["rules"]
    assert [m["path"]["value"] for m in rule["matches"]] == ["/webhook", "/v1"]
    port = rendered_scenarios["gateway"].one("Service", service)["spec"]["ports"][0]["port"]
    assert rule["backendRefs"] == [{"name": service, "port": port}]


# --- monitoring objects


def test_dashboard_configmap_is_the_dashboard_file(rendered_scenarios: dict[str, c.Rendered]) -> None:
    import json

    configmap = rendered_scenarios["keda-observability"].one("ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    dashboard = json.loads(configmap["data"]["callhook.json"])
    assert dashboard == json.loads((c.CHART_DIR / "dashboards" / "callhook.json").read_text())


def test_alerts_are_documented_and_well_formed(rendered_scenarios: dict[str, c.Rendered]) -> None:
    runbooks = (c.ROOT / "docs" / "kubernetes.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-"))
        for h in re.findall(r"^#+ (.+)$", runbooks, re.M)
    }
    seen = set()
    for rendered in rendered_scenarios.values():
        for alert in c.alerts(rendered):
            seen.add(alert["alert"])
            annotations = alert["annotations"]
            assert annotations["summary"]
            assert annotations["description"]
            assert annotations["runbook_url"].endswith("#" + alert["alert"].lower())
            assert alert["alert"].lower() in anchors, (
                f"docs/kubernetes.md has no runbook for {alert['alert']}"
            )
            assert alert["labels"]["severity"] in {"critical", "warning", "info"}
    schema = (c.CHART_DIR / "values.schema.json").read_text()
    assert all(f'"{name}"' in schema for name in seen), "disabledAlerts' enum must list every alert"


def test_disabled_alerts_are_not_rendered(rendered_scenarios: dict[str, c.Rendered]) -> None:
    names = {a["alert"] for a in c.alerts(rendered_scenarios["rabbitmq-operator"])}
    assert "CallhookDeadLetterQueueNotEmpty" not in names
    assert {"CallhookQueueWithoutConsumers", "CallhookGraphTokenInvalid"} <= names


def test_service_monitor_timeout_fits_in_interval(rendered_scenarios: dict[str, c.Rendered]) -> None:
    def seconds(duration: str) -> int:
        units = {"s": 1, "m": 60, "h": 3600}
        return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration))

    for rendered in rendered_scenarios.values():
        for monitor in rendered.of_kind("ServiceMonitor"):
            for endpoint in monitor["spec"]["endpoints"]:
                assert seconds(endpoint["scrapeTimeout"]) <= seconds(endpoint["interval"])


# --- issue 17: the integrator API apart from Meta's webhook, apps chosen by the operator


def _rules_by_port(policy: Manifest) -> dict[str, list[Manifest]]:
    rules: dict[str, list[Manifest]] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule.get("ports", []):
            rules.setdefault(port["port"], []).append(rule)
    return rules


def test_api_listener_has_its_own_service_ingress_and_policy(
    rendered_scenarios: dict[str, c.Rendered],
) -> None:
    """Finding 6: /v1 and /metrics shared the webhook port; inside the cluster every pod reached them."""
    rendered = rendered_scenarios["api-listener"]
    (container,) = component_deployment(rendered, "ingress")["spec"]["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8080, "api": 8081}
    env = _resolve_env(container)
    assert env["CALLHOOK_API_PORT"] == "8081"
    assert env["CALLHOOK_API_APPS"] == "agent,greeting"  # names only: the specs stay with the workers
    assert "CALLHOOK_APPS" not in env
    api_service = rendered.one("Service", f"{c.RELEASE}-callhook-ingress-api")
    assert [p["targetPort"] for p in api_service["spec"]["ports"]] == ["api"]
    webhook_service = rendered.one("Service", f"{c.RELEASE}-callhook-ingress")
    assert [p["targetPort"] for p in webhook_service["spec"]["ports"]] == ["http"]
    public = rendered.one("Ingress", f"{c.RELEASE}-callhook-ingress")
    assert [p["path"] for r in public["spec"]["rules"] for p in r["http"]["paths"]] == ["/webhook"]
    api = rendered.one("Ingress", f"{c.RELEASE}-callhook-ingress-api")
    (rule,) = api["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert (rule["host"], path["path"], path["backend"]["service"]["name"]) == (
        "calls-api.example.com",
        "/v1",
        f"{c.RELEASE}-callhook-ingress-api",
    )
    by_port = _rules_by_port(rendered.one("NetworkPolicy", f"{c.RELEASE}-callhook-ingress"))
    peers = {
        port: [
            p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for r in rules
            for p in r["from"]
        ]
        for port, rules in by_port.items()
    }
    assert peers == {"http": ["ingress-public"], "api": ["ingress-internal", "backend", "monitoring"]}
    monitor = rendered.one("ServiceMonitor", f"{c.RELEASE}-callhook-ingress")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["api"]


def test_worker_gets_the_operators_apps(rendered_scenarios: dict[str, c.Rendered]) -> None:
    """Finding 1: the apps a dial may name are the operator's, set in values and loaded by the workers."""
    from worker import config

    (container,) = component_deployment(rendered_scenarios["api-listener"], "worker")["spec"]["template"][
        "spec"
    ]["containers"]
    env = _resolve_env(container)
    assert env["CALLHOOK_APPS"] == "agent=wss://agent.example.com/ws,greeting=play:/srv/greeting.wav"
    assert set(config.load(env).apps) == {"echo", "agent", "greeting"}


def test_without_an_api_port_the_api_policy_defaults_to_the_namespace(chart: Any) -> None:
    """Finding 6: with apiPort set and no networkPolicy.api.from, only pods of the release namespace reach the
    API; without apiPort nothing changes."""
    values = c.merged(c.MINIMAL_VALUES, {"ingress": {"apiPort": 9000}})
    by_port = _rules_by_port(c.render(chart, values).one("NetworkPolicy", f"{c.RELEASE}-callhook-ingress"))
    assert next(r["from"] for r in by_port["api"]) == [{"podSelector": {}}]
    plain = c.render(chart, c.MINIMAL_VALUES)
    assert not [s for s in plain.of_kind("Service") if s["metadata"]["name"].endswith("-api")]
    assert set(_rules_by_port(plain.one("NetworkPolicy", f"{c.RELEASE}-callhook-ingress"))) == {"http"}
