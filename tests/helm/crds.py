"""Structural schemas of the custom resources the chart renders, for the fields it uses.

kubernetes-validate knows only Kubernetes' own kinds. These schemas follow the CRDs' published OpenAPI (KEDA
2.16, prometheus-operator 0.7x, RabbitMQ Cluster Operator 2.x, Gateway API 1.x) for the parts the chart
writes, with ``additionalProperties: false`` wherever the chart's output must stay within known fields, so a
typo'd field or a wrong type fails the test instead of being dropped by the API server.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_BOOL: Schema = {"type": "boolean"}
_STR_MAP: Schema = {"type": "object", "additionalProperties": _STR}
_DNS_NAME: Schema = {
    "type": "string",
    "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
}
_DURATION: Schema = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}
_LABEL_SELECTOR: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": _STR_MAP, "matchExpressions": {"type": "array"}},
}


def _obj(properties: dict[str, Schema], required: tuple[str, ...] = (), closed: bool = True) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": not closed}
    if required:
        schema["required"] = list(required)
    return schema


def _resource(api_version: str, kind: str, spec: Schema) -> Schema:
    return _obj(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _obj(
                {"name": _DNS_NAME, "namespace": _STR, "labels": _STR_MAP, "annotations": _STR_MAP},
                required=("name",),
            ),
            "spec": spec,
        },
        required=("apiVersion", "kind", "metadata", "spec"),
    )


_TRIGGER = _obj(
    {
        "type": {"enum": ["rabbitmq", "prometheus", "cpu", "memory"]},
        "name": _DNS_NAME,
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        # KEDA's trigger metadata is map[string]string: a number here is refused by the API server.
        "metadata": _STR_MAP,
        "authenticationRef": _obj(
            {"name": _DNS_NAME, "kind": {"enum": ["TriggerAuthentication"]}}, ("name",)
        ),
        "useCachedMetrics": _BOOL,
    },
    required=("type", "metadata"),
)

SCALED_OBJECT = _resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    _obj(
        {
            "scaleTargetRef": _obj(
                {"apiVersion": _STR, "kind": _STR, "name": _DNS_NAME, "envSourceContainerName": _STR},
                ("name",),
            ),
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "initialCooldownPeriod": {"type": "integer", "minimum": 0},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "fallback": _obj(
                {
                    "failureThreshold": {"type": "integer", "minimum": 0},
                    "replicas": {"type": "integer", "minimum": 0},
                },
                ("failureThreshold", "replicas"),
            ),
            "advanced": _obj(
                {
                    "restoreToOriginalReplicaCount": _BOOL,
                    "horizontalPodAutoscalerConfig": _obj(
                        {"name": _DNS_NAME, "behavior": {"type": "object"}}
                    ),
                }
            ),
            "triggers": {"type": "array", "minItems": 1, "items": _TRIGGER},
        },
        required=("scaleTargetRef", "triggers"),
    ),
)

TRIGGER_AUTHENTICATION = _resource(
    "keda.sh/v1alpha1",
    "TriggerAuthentication",
    _obj(
        {
            "secretTargetRef": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {"parameter": {"enum": ["host", "username", "password"]}, "name": _DNS_NAME, "key": _STR},
                    ("parameter", "name", "key"),
                ),
            }
        },
        required=("secretTargetRef",),
    ),
)

SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    _obj(
        {
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": _obj({"any": _BOOL, "matchNames": {"type": "array", "items": _STR}}),
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "port": _STR,
                        "path": {"type": "string", "pattern": "^/"},
                        "interval": _DURATION,
                        "scrapeTimeout": _DURATION,
                    },
                    ("port",),
                ),
            },
        },
        required=("selector", "endpoints"),
    ),
)

PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    _obj(
        {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "name": {"type": "string", "minLength": 1},
                        "interval": _DURATION,
                        "rules": {
                            "type": "array",
                            "minItems": 1,
                            "items": _obj(
                                {
                                    "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                                    "expr": {"type": "string", "minLength": 1},
                                    "for": _DURATION,
                                    "labels": _STR_MAP,
                                    "annotations": _STR_MAP,
                                },
                                ("alert", "expr"),
                            ),
                        },
                    },
                    ("name", "rules"),
                ),
            }
        },
        required=("groups",),
    ),
)

_QUANTITY: Schema = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?([mkMGTPE]|[KMGTPE]i)?$"}

RABBITMQ_CLUSTER = _resource(
    "rabbitmq.com/v1beta1",
    "RabbitmqCluster",
    _obj(
        {
            "replicas": {"type": "integer", "minimum": 0},
            "image": _STR,
            "resources": _obj(
                {
                    "requests": {"type": "object", "additionalProperties": _QUANTITY},
                    "limits": {"type": "object", "additionalProperties": _QUANTITY},
                }
            ),
            "persistence": _obj({"storageClassName": _STR, "storage": _QUANTITY}),
            "rabbitmq": _obj(
                {
                    "additionalPlugins": {
                        "type": "array",
                        "items": {"type": "string", "pattern": "^rabbitmq_"},
                    },
                    "additionalConfig": {"type": "string", "maxLength": 100_000},
                }
            ),
        }
    ),
)

HTTP_ROUTE = _resource(
    "gateway.networking.k8s.io/v1",
    "HTTPRoute",
    _obj(
        {
            "parentRefs": {
                "type": "array",
                "minItems": 1,
                "maxItems": 32,
                "items": _obj(
                    {
                        "group": _STR,
                        "kind": _STR,
                        "namespace": _STR,
                        "name": {"type": "string", "minLength": 1},
                        "sectionName": _STR,
                        "port": _INT,
                    },
                    ("name",),
                ),
            },
            "hostnames": {"type": "array", "maxItems": 16, "items": _STR},
            "rules": {
                "type": "array",
                "minItems": 1,
                "maxItems": 16,
                "items": _obj(
                    {
                        "matches": {
                            "type": "array",
                            "maxItems": 64,
                            "items": _obj(
                                {
                                    "path": _obj(
                                        {
                                            "type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]},
                                            "value": {"type": "string", "pattern": "^/"},
                                        },
                                        ("type", "value"),
                                    )
                                }
                            ),
                        },
                        "backendRefs": {
                            "type": "array",
                            "items": _obj(
                                {"name": _DNS_NAME, "port": _INT, "weight": _INT}, ("name", "port")
                            ),
                        },
                    }
                ),
            },
        },
        required=("parentRefs", "rules"),
    ),
)

SCHEMAS: dict[tuple[str, str], Schema] = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): RABBITMQ_CLUSTER,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): HTTP_ROUTE,
}
