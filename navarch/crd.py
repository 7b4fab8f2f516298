"""Generates the CustomResourceDefinitions from the API dataclasses in ``navarch.api``.

``python -m navarch.crd`` rewrites ``crds/`` and the chart's ``crds/`` (the same files); a unit
test fails when either differs from what the types produce, so schema and code cannot drift.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from navarch import api
from navarch.wire import camel, to_wire, type_hints

SCALARS: dict[Any, dict[str, Any]] = {
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    bool: {"type": "boolean"},
    datetime: {"type": "string", "format": "date-time"},
}


def schema_of(hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return schema_of(options[0])
        if set(options) == {int, str}:
            return {"x-kubernetes-int-or-string": True}
        raise TypeError(f"unsupported union {hint!r}")
    if origin is list:
        return {"type": "array", "items": schema_of(args[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": schema_of(args[1])}
    if origin is Literal:
        return {"type": "string", "enum": list(args)}
    if dataclasses.is_dataclass(hint):
        return object_schema(typing.cast(type, hint))
    return dict(SCALARS[hint])


def object_schema(cls: type) -> dict[str, Any]:
    hints = type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        prop = schema_of(hints[f.name])
        extra = dict(f.metadata.get("schema", {}))
        extra.pop("intOrString", None)
        ordered: dict[str, Any] = {"description": f.metadata["description"], **prop, **extra}
        default = field_default(f)
        if default is not None:
            ordered["default"] = default
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(camel(f.name))
        properties[camel(f.name)] = ordered
        if camel(f.name) == "conditions":
            ordered["x-kubernetes-list-type"] = "map"
            ordered["x-kubernetes-list-map-keys"] = ["type"]
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    return out


def field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING and f.default is not None:
        return to_wire(f.default)
    if f.default_factory is not dataclasses.MISSING:
        value = to_wire(f.default_factory())
        return value if value not in ([], {}) else None
    return None


def describe(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


def resource_schema(
    kind_doc: str, spec: type, status: type, validations: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    spec_schema = {"description": describe(spec), **object_schema(spec)}
    status_schema = {"description": describe(status), **object_schema(status)}
    root: dict[str, Any] = {
        "description": kind_doc,
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"description": "API version of this object.", "type": "string"},
            "kind": {"description": "Kind of this object.", "type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    if validations:
        root["x-kubernetes-validations"] = validations
    return root


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
        column("Reason", ".status.verdict.reason"),
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


def manifests() -> dict[str, str]:
    header = "# Generated by `python -m navarch.crd` from navarch/api.py. Do not edit.\n"
    out = {}
    for name, body in (
        (f"{api.GNH_PLURAL}.{api.GROUP}.yaml", gpu_node_health_crd()),
        (f"{api.GHP_PLURAL}.{api.GROUP}.yaml", gpu_health_policy_crd()),
    ):
        out[name] = header + yaml.safe_dump(body, sort_keys=False, width=100)
    return out


def status_owners() -> str:
    """Which component owns which GpuNodeHealth status key, for the chart's admission policy."""
    header = (
        "# Generated by `python -m navarch.crd` from navarch/api.py. Do not edit.\n"
        "# GpuNodeHealth status keys by owner; admission refuses the agent the operator's keys.\n"
    )
    owners = {owner.value: list(api.status_keys(owner)) for owner in api.Owner}
    return header + yaml.safe_dump(owners, sort_keys=False)


REPO_ROOT = Path(__file__).resolve().parents[1]
CRD_DIRS = (REPO_ROOT / "crds", REPO_ROOT / "charts" / "navarch" / "crds")
STATUS_OWNERS_FILE = REPO_ROOT / "charts" / "navarch" / "files" / "status-owners.yaml"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    for target in [Path(a) for a in args] or CRD_DIRS:
        target.mkdir(parents=True, exist_ok=True)
        for name, text in manifests().items():
            (target / name).write_text(text)
    if not args:
        STATUS_OWNERS_FILE.write_text(status_owners())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
