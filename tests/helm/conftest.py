from __future__ import annotations

import shutil
from collections.abc import Iterator

import helm_python as helm
import pytest
from kubernetes_validate import utils as kube_versions

from tests.helm import chart as c

NEWEST_KUBE = kube_versions.latest_version()
KUBE_VERSIONS = (c.OLDEST_KUBE, NEWEST_KUBE)

SCENARIOS = {path.name.removesuffix("-values.yaml"): path for path in c.scenario_files()}

PROMTOOL_INSTALL = "scripts/install-promtool (apt-get install -y --no-install-recommends prometheus)"


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(c.CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def rendered_scenarios(chart: helm.Chart) -> dict[str, c.Rendered]:
    """Every ci/*-values.yaml rendered once, for a cluster with every optional API installed."""
    return {name: c.render(chart, c.load_values(path)) for name, path in SCENARIOS.items()}


@pytest.fixture(scope="session")
def observability(chart: helm.Chart) -> c.Rendered:
    """A rendering with every piece of PromQL the chart can ship."""
    return c.render(chart, c.OBSERVABILITY_VALUES)


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool from the `prometheus` package; CI installs it, a missing one is a failure, not a skip."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(f"promtool is not installed: run {PROMTOOL_INSTALL}")
    return path
