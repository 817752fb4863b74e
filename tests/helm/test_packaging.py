"""The container image, compose.yaml and the YAML we ship, checked statically.

`docker build` cannot run here, so the Dockerfile is read: multi-stage, pinned bases, the lock file honoured,
non-root, one entry point for every component, consistent with the chart (uid, ports). compose.yaml's settings
are fed to each component's real settings parser.
"""

from __future__ import annotations

import importlib
import re
import shlex
import tomllib
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from yamllint import config as yamllint_config
from yamllint import linter

from tests.helm import chart as c

YAMLLINT = yamllint_config.YamlLintConfig(
    """
extends: default
rules:
  line-length: {max: 120}
  document-start: disable
  comments: {min-spaces-from-content: 1}
  truthy: {check-keys: false}
"""
)


@pytest.mark.parametrize(
    "path",
    [
        "helm/callhook/values.yaml",
        "helm/callhook/Chart.yaml",
        *sorted(str(p.relative_to(c.ROOT)) for p in c.scenario_files()),
        "compose.yaml",
        "deploy/prometheus/prometheus.yml",
    ],
)
def test_yamllint(path: str) -> None:
    text = (c.ROOT / path).read_text()
    problems = [f"{path}:{p.line}:{p.column} {p.desc} ({p.rule})" for p in linter.run(text, YAMLLINT, path)]
    assert not problems, "\n".join(problems)


# --- Dockerfile


@dataclass(frozen=True)
class Instruction:
    command: str
    args: str


@dataclass(frozen=True)
class Stage:
    image: str
    name: str
    instructions: tuple[Instruction, ...]

    def all(self, command: str) -> list[str]:
        return [i.args for i in self.instructions if i.command == command]


def _instructions(text: str) -> list[Instruction]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        command, _, args = line.partition(" ")
        out.append(Instruction(command.upper(), args.strip()))
    return out


def _stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    current: list[Instruction] | None = None
    image = name = ""
    for instruction in _instructions(text):
        if instruction.command == "FROM":
            if current is not None:
                stages.append(Stage(image, name, tuple(current)))
            parts = instruction.args.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""
            current = []
        elif current is None and instruction.command == "ARG":
            key, _, value = instruction.args.partition("=")
            global_args[key] = value
        elif current is not None:
            current.append(instruction)
    assert current is not None
    stages.append(Stage(image, name, tuple(current)))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    return _stages((c.ROOT / "Dockerfile").read_text())[1]


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((c.ROOT / "pyproject.toml").read_text())


def test_base_images_are_pinned(dockerfile: list[Stage], pyproject: dict[str, Any]) -> None:
    stage_names = {s.name for s in dockerfile}
    external = [s.image for s in dockerfile if s.image not in stage_names]
    assert external
    for image in external:
        repository, _, tag = image.rpartition(":")
        assert repository, f"{image}: no tag"
        assert "/" not in tag, f"{image}: no tag"
        assert tag != "latest", image
        assert re.search(r"\d+\.\d+", tag), f"{image}: not a pinned version"
    uv_version = re.search(r"^UV_VERSION=(\S+)$", (c.ROOT / "run").read_text(), re.M)
    assert uv_version is not None
    assert f"ghcr.io/astral-sh/uv:{uv_version.group(1)}" in external, "the image builds with ./run's uv"
    minimum = pyproject["project"]["requires-python"].removeprefix(">=")
    pythons = [i for i in external if i.startswith("python:")]
    assert pythons
    assert all(i.startswith(f"python:{minimum}.") for i in pythons)


def test_multi_stage_build_honours_the_lock(dockerfile: list[Stage], pyproject: dict[str, Any]) -> None:
    build, runtime = dockerfile[-2], dockerfile[-1]
    assert len(dockerfile) >= 3
    assert runtime.name == "runtime"
    assert build.name == "build"
    syncs = [shlex.split(run) for run in build.all("RUN") if "uv sync" in run]
    assert len(syncs) == 2, "dependencies (cached layer), then the project"
    for sync in syncs:
        assert "--frozen" in sync, sync
        assert "--no-dev" in sync, sync
    assert "--no-install-project" in syncs[0]
    assert "--no-editable" in syncs[1]
    assert "source=uv.lock" in build.all("RUN")[0]
    copied = " ".join(build.all("COPY"))
    for package in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert f" ./{package}" in copied or f"{package} ./{package}" in copied, package
    # The runtime stage gets the virtualenv only: no sources, no build tools, no uv.
    assert runtime.all("COPY") == ["--from=build /app/.venv /app/.venv"]
    assert not [r for r in runtime.all("RUN") if "apt-get" in r or "pip" in r]


def test_runtime_is_non_root_and_matches_the_chart(
    dockerfile: list[Stage], pyproject: dict[str, Any]
) -> None:
    runtime = dockerfile[-1]
    (user,) = runtime.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "numeric, for runAsNonRoot"
    assert gid.isdigit(), "numeric, for runAsNonRoot"
    assert int(uid) > 0, "not root"
    assert int(gid) > 0, "not root's group"
    values = c.load_values(c.CHART_DIR / "values.yaml")
    assert int(uid) == values["podSecurityContext"]["runAsUser"]
    assert int(gid) == values["podSecurityContext"]["runAsGroup"]
    exposed = {int(p) for line in runtime.all("EXPOSE") for p in line.split()}
    assert exposed == {values["ingress"]["port"], values["worker"]["metricsPort"]}
    assert runtime.all("ENTRYPOINT") == ['["callhook"]']
    assert "callhook" in pyproject["project"]["scripts"]
    assert runtime.all("WORKDIR") == ["/tmp"], "the only writable directory in Kubernetes"


def test_dockerignore_sends_only_what_the_build_reads(dockerfile: list[Stage]) -> None:
    lines = [
        line
        for line in (c.ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "deny everything, then allow"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = set()
    for stage in dockerfile:
        for copy in stage.all("COPY"):
            if copy.startswith("--from"):
                continue
            sources.update(copy.split()[:-1])
    assert sources <= allowed, sources - allowed
    assert not allowed & {".venv", "tests", ".git", "bench"}


# --- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((c.ROOT / "compose.yaml").read_text())
    return loaded


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return int(match.group(1))


def test_compose_runs_every_component(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"rabbitmq", "ingress", "worker", "sim", "prometheus"}
    for name in ("ingress", "worker", "sim"):
        service = services[name]
        assert service["image"] == "callhook:dev"
        assert service["build"]["context"] == "."
        assert service["command"] == [name]
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
    assert services["worker"]["deploy"]["replicas"] >= 2
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{port}: published beyond this machine"


@pytest.mark.parametrize(
    ("service", "module"), [("ingress", "ingress"), ("worker", "worker"), ("sim", "sim")]
)
def test_compose_settings_are_accepted(compose: dict[str, Any], service: str, module: str) -> None:
    from callhook.cli import CONFIG_MODULES

    env = {k: str(v) for k, v in compose["services"][service]["environment"].items()}
    importlib.import_module(CONFIG_MODULES[module]).load(env)  # raises ConfigError listing every problem


def test_compose_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    ingress, worker, sim = (services[n]["environment"] for n in ("ingress", "worker", "sim"))
    assert sim["CALLHOOK_SIM_INGRESS_URL"] == f"http://ingress:{ingress['CALLHOOK_INGRESS_PORT']}/webhook"
    assert worker["CALLHOOK_GRAPH_URL"] == f"http://sim:{sim['CALLHOOK_SIM_GRAPH_PORT']}"
    assert sim["CALLHOOK_APP_SECRETS"] == ingress["CALLHOOK_APP_SECRETS"], (
        "the simulator signs what the ingress checks"
    )
    assert sim["CALLHOOK_ACCESS_TOKEN"] == worker["CALLHOOK_ACCESS_TOKEN"]
    drain = int(worker["CALLHOOK_DRAIN_TIMEOUT_SECONDS"])
    assert _seconds(services["worker"]["stop_grace_period"]) > drain, "docker would kill draining workers"
    # Prometheus scrapes the ports the processes listen on.
    prometheus = yaml.safe_load((c.ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["callhook-ingress"]["static_configs"][0]["targets"] == [
        f"ingress:{ingress['CALLHOOK_INGRESS_PORT']}"
    ]
    (dns,) = jobs["callhook-worker"]["dns_sd_configs"]
    assert dns["names"] == ["worker"]
    assert dns["port"] == int(worker["CALLHOOK_METRICS_PORT"])
