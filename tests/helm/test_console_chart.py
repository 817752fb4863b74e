"""The agent console's objects (helm/callhook/templates/console.yaml), behind console.enabled."""

from __future__ import annotations

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
