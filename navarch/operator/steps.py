"""Remediation steps' objects on the API server: create them, find them, read and delete them.

Builds what ``step_objects`` describes: a Job from a ConfigMap in the operator's namespace, or
an object from a remediation template, whose resource names come from the API server's
discovery documents (cached: they do not change while the operator runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from navarch import api
from navarch.errors import CONFLICT, NOT_FOUND, ApiError
from navarch.operator import step_objects
from navarch.operator.kube import KubeApi
from navarch.operator.ladder import Step


@dataclass(frozen=True)
class Target:
    """The node a step works on, and what its objects are told and owned by."""

    node: str
    owner: step_objects.Owner
    quarantine: str
    gpus: Sequence[str]
    taint_key: str


class Steps:
    def __init__(self, kube: KubeApi, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        """Where Job steps' ConfigMaps are and their Jobs run: the operator's namespace."""
        self._plurals: dict[tuple[str, str], str] = {}

    async def create(self, target: Target, step: Step, attempt: int) -> str:
        """Create the step's object (once: an existing one is the one created before a
        restart); return it as ``Kind namespace/name``. ValueError says why it cannot be."""
        node, owner = target.node, target.owner
        if step.job is not None:
            path = f"/api/v1/namespaces/{self.namespace}/configmaps/{quote(step.job.config_map)}"
            try:
                config_map = await self.kube.get(path, "configmaps")
            except ApiError as err:
                if err.status == NOT_FOUND:
                    where = f"{self.namespace}/{step.job.config_map}"
                    raise ValueError(f"ConfigMap {where} not found") from None
                raise
            try:
                manifest = step_objects.job_manifest(config_map)
            except ValueError as err:
                raise ValueError(f"ConfigMap {self.namespace}/{step.job.config_map} {err}") from err
            name = step_objects.job_name(node, step.name, attempt, target.quarantine)
            job = step_objects.build_job(
                manifest,
                name=name,
                namespace=self.namespace,
                node=node,
                step=step.name,
                gpus=target.gpus,
                taint_key=target.taint_key,
                owner=owner,
            )
            await self._post(f"/apis/batch/v1/namespaces/{self.namespace}/jobs", job, "jobs")
            return f"Job {self.namespace}/{name}"
        assert step.template is not None
        ref = step.template
        base = step_objects.group_version_path(ref.api_version)
        template_plural = await self._plural(ref.api_version, ref.kind)
        ns = quote(ref.namespace)
        template = await self.kube.get(
            f"{base}/namespaces/{ns}/{template_plural}/{quote(ref.name)}", template_plural
        )
        kind = step_objects.remediation_kind(ref.kind)
        plural = await self._plural(ref.api_version, kind)
        body = step_objects.build_object(
            template, kind=kind, node=node, step=step.name, owner=owner
        )
        await self._post(f"{base}/namespaces/{ns}/{plural}", body, plural)
        return f"{kind} {ref.namespace}/{node}"

    async def _post(self, collection: str, body: dict[str, object], resource: str) -> None:
        try:
            await self.kube.create(collection, dict(body), resource)
        except ApiError as err:
            if err.status != CONFLICT:
                raise

    async def path(self, node: str, quarantine: str, step: Step, attempt: int) -> str:
        """Where the object of this attempt of the step is, derived as it was named."""
        if step.job is not None:
            name = step_objects.job_name(node, step.name, attempt, quarantine)
            return f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{name}"
        assert step.template is not None
        ref = step.template
        kind = step_objects.remediation_kind(ref.kind)
        plural = await self._plural(ref.api_version, kind)
        base = step_objects.group_version_path(ref.api_version)
        return f"{base}/namespaces/{quote(ref.namespace)}/{plural}/{quote(node)}"

    async def outcome(self, path: str, step: Step) -> tuple[api.StepPhase | None, str]:
        """Succeeded or Failed once the object says so, else None; and a message."""
        if step.job is not None:
            return step_objects.job_outcome(await self.kube.get(path, "jobs"))
        return step_objects.object_outcome(await self.kube.get(path, "remediations"))

    async def remove(self, path: str, step: Step) -> None:
        try:
            await self.kube.delete(path, "jobs" if step.job is not None else "remediations")
        except ApiError as err:
            if err.status != NOT_FOUND:
                raise

    async def _plural(self, api_version: str, kind: str) -> str:
        key = (api_version, kind)
        if key not in self._plurals:
            path = step_objects.group_version_path(api_version)
            found = step_objects.plural(await self.kube.get(path, "discovery"), kind)
            if found is None:
                raise ValueError(f"the API server serves no {kind} in {api_version}")
            self._plurals[key] = found
        return self._plurals[key]
