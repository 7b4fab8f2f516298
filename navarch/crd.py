"""The CustomResourceDefinitions, generated from the API models in ``navarch.api``.

``navarch.generate`` writes them into ``crds/`` and the chart's ``crds/`` (the same files); a
unit test fails when either differs from what the types produce, so schema and code cannot drift.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from navarch import api

# The keywords a structural schema may use here, in the order the manifests list them.
KEYWORDS = (
    "description",
    "type",
    "format",
    "enum",
    "x-kubernetes-int-or-string",
    "items",
    "properties",
    "required",
    "additionalProperties",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "maxItems",
    "default",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
)


def object_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON Schema as a structural schema with its docstring as description."""
    generated = model.model_json_schema(by_alias=True)
    return structural(generated, generated.get("$defs", {}))


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """``schema`` as the API server wants it: references inlined, optional values as the type
    itself (a missing key, not null), no titles, keywords in a fixed order.

    A field keeps its own description, not its type's docstring: the field says what the value
    means where it is (``nodeSelector``: "Nodes this policy governs"), the type only what it is
    ("Selects Nodes by label").
    """
    node = dict(schema)
    while "$ref" in node or "anyOf" in node:
        if "$ref" in node:
            target = defs[node.pop("$ref").removeprefix("#/$defs/")]
            node = {**_without_description(target), **node}
        else:
            options = [o for o in node.pop("anyOf") if o != {"type": "null"}]
            if len(options) != 1:
                raise TypeError(f"no structural schema for a union of {options}")
            node = {**_without_description(options[0]), **node}
    node.pop("title", None)
    node.pop("$defs", None)
    if node.get("default", ...) is None:
        del node["default"]
    elif "default" in node:
        node["default"] = _without_nulls(node["default"])
    if "description" in node:
        node["description"] = " ".join(node["description"].split())
    if "properties" in node:
        node["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
    if "items" in node:
        node["items"] = structural(node["items"], defs)
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = structural(node["additionalProperties"], defs)
    unknown = set(node) - set(KEYWORDS)
    if unknown:
        raise TypeError(f"no structural schema for keywords {sorted(unknown)}")
    return {k: node[k] for k in KEYWORDS if k in node}


def _without_description(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "description"}


def resource_schema(
    kind_doc: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    validations: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    root: dict[str, Any] = {
        "description": kind_doc,
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"description": "API version of this object.", "type": "string"},
            "kind": {"description": "Kind of this object.", "type": "string"},
            "metadata": {"type": "object"},
            "spec": object_schema(spec),
            "status": object_schema(status),
        },
    }
    if validations:
        root["x-kubernetes-validations"] = validations
    return root


def _without_nulls(value: Any) -> Any:
    """A default as the API server takes it: an absent field is left out, not null."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def crd(
    kind: str,
    plural: str,
    short: str,
    schema: dict[str, Any],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["navarch"],
            },
            "scope": "Cluster",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def column(name: str, path: str, kind: str = "string", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": kind, "jsonPath": path, **extra}


def gpu_node_health_crd() -> dict[str, Any]:
    schema = resource_schema(
        "GPU health of one Node: facts from the Navarch node agent and the operator's verdict. "
        "Named after the Node.",
        api.GpuNodeHealthSpec,
        api.GpuNodeHealthStatus,
        [
            {
                "rule": "self.spec.nodeName == self.metadata.name",
                "message": "spec.nodeName must equal metadata.name",
            }
        ],
    )
    columns = [
        column("GPUs", ".status.gpuCount", "integer"),
        column("Health", ".status.verdict.health"),
        column("Action", ".status.verdict.action"),
        column("Phase", ".status.verdict.phase"),
        column("Step", ".status.verdict.step", priority=1),
        column("Reason", ".status.verdict.reason"),
        column("Drain", ".status.drain.phase"),
        column("Last XID", ".status.lastXid"),
        column("Heartbeat", ".status.lastHeartbeatTime", "date"),
        column("Age", ".metadata.creationTimestamp", "date"),
    ]
    return crd(api.GNH_KIND, api.GNH_PLURAL, "gnh", schema, columns)


def gpu_health_policy_crd() -> dict[str, Any]:
    schema = resource_schema(
        "Rules that judge GPU node health and the actions Navarch takes on the Nodes it governs.",
        api.GpuHealthPolicySpec,
        api.GpuHealthPolicyStatus,
    )
    columns = [
        column("Accepted", '.status.conditions[?(@.type=="Accepted")].status'),
        column("Nodes", ".status.counts.governed", "integer"),
        column("Unhealthy", ".status.counts.unhealthy", "integer"),
        column("Quarantined", ".status.counts.quarantined", "integer"),
        column("Held", ".status.counts.held", "integer"),
        column("Dry Run", ".spec.dryRun", "boolean"),
        column("Age", ".metadata.creationTimestamp", "date"),
    ]
    return crd(api.GHP_KIND, api.GHP_PLURAL, "ghp", schema, columns)


class _Dumper(yaml.SafeDumper):
    """Writes a value used in several places in full each time: people read these manifests,
    and a schema reused by several fields would otherwise come out as YAML anchors and aliases.
    """

    def ignore_aliases(self, data: Any) -> bool:
        return True


def manifests() -> dict[str, str]:
    header = "# Generated by `make generate` from navarch/api.py. Do not edit.\n"
    out = {}
    for name, body in (
        (f"{api.GNH_PLURAL}.{api.GROUP}.yaml", gpu_node_health_crd()),
        (f"{api.GHP_PLURAL}.{api.GROUP}.yaml", gpu_health_policy_crd()),
    ):
        out[name] = header + yaml.dump(body, Dumper=_Dumper, sort_keys=False, width=100)
    return out


def status_owners() -> str:
    """Which component owns which GpuNodeHealth status key, for the chart's admission policy."""
    header = (
        "# Generated by `make generate` from navarch/api.py. Do not edit.\n"
        "# GpuNodeHealth status keys by owner; admission refuses the agent the operator's keys.\n"
    )
    owners = {owner.value: list(api.status_keys(owner)) for owner in api.Owner}
    return header + yaml.safe_dump(owners, sort_keys=False)
