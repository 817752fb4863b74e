"""The agent console's objects (helm/callhook/templates/console.yaml), behind console.enabled."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.helm import chart as c


def test_console_is_rendered_only_when_enabled(rendered_scenarios: dict[str, c.Rendered]) -> None:
    name = f"{c.RELEASE}-callhook-console"
    assert not [o for o in rendered_scenarios["default"].objects if o["metadata"]["name"] == name]
    rendered = rendered_scenarios["console"]
    deployment = rendered.one("Deployment", name)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert container["args"] == ["console"]
    assert env["CALLHOOK_CONSOLE_AGENTS"]["valueFrom"]["secretKeyRef"]["key"] == "console-agents"
    assert "CALLHOOK_ACCESS_TOKEN" not in env, "the console never calls the Graph API"
    service = rendered.one("Service", name)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    ingress = rendered.one("Ingress", name)
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "agents.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": name, "port": {"name": "http"}}


def _console_env(rendered: c.Rendered) -> dict[str, dict[str, Any]]:
    deployment = rendered.one("Deployment", f"{c.RELEASE}-callhook-console")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item for item in container["env"]}


def test_console_oidc_settings_reach_the_console_and_it_accepts_them(
    rendered_scenarios: dict[str, c.Rendered],
) -> None:
    from console import config

    env = _console_env(rendered_scenarios["console"])
    values = {name: item.get("value", "") for name, item in env.items()}
    assert values["CALLHOOK_CONSOLE_OIDC_ISSUER"] == "https://sso.example.com/realms/acme"
    assert values["CALLHOOK_CONSOLE_OIDC_QUEUE_MAP"] == "/callhook/leads=*;/callhook/support=support"
    # static tokens beside the provider: the Secret's key may be absent
    assert env["CALLHOOK_CONSOLE_AGENTS"]["valueFrom"]["secretKeyRef"]["optional"] is True
    values["CALLHOOK_CONSOLE_AGENTS"] = "alice:a-long-random-token:support"
    values["CALLHOOK_AMQP_URL"] = "amqp://u:p@broker:5672/vhost"
    settings = config.load(values)
    assert settings.oidc is not None
    assert settings.oidc.client_id == "callhook-console"
    assert settings.oidc.queue_map == {"/callhook/leads": None, "/callhook/support": frozenset({"support"})}
    assert settings.oidc.algorithms == ("RS256", "ES256")


def test_console_with_the_provider_only_or_with_neither(chart: helm.Chart) -> None:
    oidc_only = c.merged(
        c.MINIMAL_VALUES,
        {
            "console": {
                "enabled": True,
                "agentsKey": "",
                "oidc": {"issuer": "https://login.example.com", "clientId": "console"},
            }
        },
    )
    env = _console_env(c.render(chart, oidc_only))
    assert "CALLHOOK_CONSOLE_AGENTS" not in env
    assert "CALLHOOK_CONSOLE_OIDC_QUEUE_MAP" not in env  # no map: the claim's values are the queues
    neither = c.merged(c.MINIMAL_VALUES, {"console": {"enabled": True, "agentsKey": ""}})
    with pytest.raises(helm.HelmRenderError, match=r"console\.agentsKey"):
        c.render(chart, neither)
    no_client = c.merged(
        c.MINIMAL_VALUES, {"console": {"enabled": True, "oidc": {"issuer": "https://x.example"}}}
    )
    with pytest.raises(helm.HelmRenderError, match=r"console\.oidc\.clientId is required"):
        c.render(chart, no_client)
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(
            c.merged(oidc_only, {"console": {"oidc": {"issuer": "http://sso.example.com"}}})
        )
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(c.merged(oidc_only, {"console": {"oidc": {"algorithms": ["HS256"]}}}))
