"""The metrics callhook really exports, as the series names PromQL can select and the labels each carries.

From the code: each component's metrics class instantiated on a fresh registry
(``worker.metrics.WorkerMetrics``, and whatever class in ``ingress.metrics`` takes a ``registry``). From a
scrape: the families in a /metrics body.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

# Labels Prometheus adds to every scraped series (ServiceMonitor targets, compose's relabelling).
TARGET_LABELS = frozenset({"namespace", "service", "pod", "instance", "job", "container", "endpoint"})


@dataclass(frozen=True)
class Family:
    name: str  # as registered (counters without _total)
    kind: str  # counter | gauge | histogram | summary | info | ...
    labels: frozenset[str]

    def series(self) -> dict[str, frozenset[str]]:
        """Series names this family exposes, each with the labels PromQL may use on it."""
        own = self.labels | TARGET_LABELS
        if self.kind == "counter":
            return {f"{self.name}_total": own, f"{self.name}_created": own}
        if self.kind == "histogram":
            return {
                f"{self.name}_bucket": own | {"le"},
                f"{self.name}_sum": own,
                f"{self.name}_count": own,
                f"{self.name}_created": own,
            }
        if self.kind == "summary":
            return {self.name: own | {"quantile"}, f"{self.name}_sum": own, f"{self.name}_count": own}
        if self.kind == "info":
            return {f"{self.name}_info": own}
        return {self.name: own}


def series_of(families: Iterable[Family]) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for family in families:
        out.update(family.series())
    return out


def families_of_registry(registry: CollectorRegistry, holders: Iterable[object] = ()) -> list[Family]:
    """Every family registered, with the label names seen on its samples or declared on its metric object.

    A labelled metric has no samples before its first child, and prometheus_client has no public accessor for
    its label names: they are read from the metric objects found as attributes of ``holders``.
    """
    declared: dict[str, frozenset[str]] = {}
    for holder in holders:
        for value in vars(holder).values():
            if isinstance(value, MetricWrapperBase):
                for described in value.describe():
                    declared[described.name] = frozenset(getattr(value, "_labelnames", ()))
    families = []
    for family in registry.collect():
        seen = frozenset(k for sample in family.samples for k in sample.labels) - {"le", "quantile"}
        families.append(Family(family.name, family.type, seen | declared.get(family.name, frozenset())))
    return families


def families_of_module(module: ModuleType) -> list[Family]:
    """Instantiate each class of ``module`` whose constructor takes a ``registry``, on a fresh registry."""
    families: list[Family] = []
    classes: list[tuple[str, Any]] = inspect.getmembers(module, inspect.isclass)
    for _, cls in classes:
        if cls.__module__ != module.__name__:
            continue
        if "registry" not in inspect.signature(cls).parameters:
            continue
        registry = CollectorRegistry()
        families.extend(families_of_registry(registry, [cls(registry=registry)]))
    return families


def families_of_component(module_name: str) -> list[Family]:
    return families_of_module(importlib.import_module(module_name))


def families_of_scrape(text: str) -> list[Family]:
    """Families in a Prometheus text exposition; labels are known only for families with samples."""
    families = []
    for family in text_string_to_metric_families(text):
        labels = frozenset(k for sample in family.samples for k in sample.labels) - {"le", "quantile"}
        families.append(Family(family.name, family.type, labels))
    return families


def unknown_metrics(used: Iterable[str], known: Mapping[str, frozenset[str]]) -> set[str]:
    return {name for name in used if name not in known}
