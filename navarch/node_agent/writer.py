"""The agent's REST calls: its Node (read only) and its GpuNodeHealth (create, patch status).

The GpuNodeHealth is named after the Node and owned by it (``ownerReference`` with
``controller: false``, so the object goes when the Node goes while no controller claims it).
Creating needs the Node's uid, so the Node is read first. ``blockOwnerDeletion`` is left out:
setting it needs permission to update the Node's finalizers, which the agent should not have.
"""

from __future__ import annotations

import logging
from typing import Any

from navarch import api
from navarch.errors import ApiError
from navarch.node_agent.kube import KubeClient

log = logging.getLogger(__name__)

GNH_COLLECTION = f"/apis/{api.GROUP}/{api.VERSION}/{api.GNH_PLURAL}"
NODE_COLLECTION = "/api/v1/nodes"


class StatusWriter:
    """Reads and writes what the agent of node ``node_name`` owns in the API."""

    def __init__(self, client: KubeClient, node_name: str) -> None:
        self._client = client
        self._name = node_name
        self._node_uid: str | None = None

    def read_node(self) -> dict[str, Any]:
        node = self._client.get(f"{NODE_COLLECTION}/{self._name}")
        self._node_uid = (node.get("metadata") or {}).get("uid")
        return node

    def read_status(self) -> dict[str, Any] | None:
        """The object's status (``{}`` when it has none), or None when there is no object."""
        try:
            current = self._client.get(f"{GNH_COLLECTION}/{self._name}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        status = current.get("status")
        return status if isinstance(status, dict) else {}

    def patch_status(self, patch: dict[str, Any]) -> None:
        """Merge-patch ``/status``, creating the object first when it does not exist."""
        path = f"{GNH_COLLECTION}/{self._name}/status"
        try:
            self._client.merge_patch(path, patch)
        except ApiError as e:
            if e.status != 404:
                raise
            log.info("GpuNodeHealth %s does not exist; creating it", self._name)
            self.create()
            self._client.merge_patch(path, patch)

    def create(self) -> None:
        # Read the Node every time: one deleted and created again under the same name has a
        # new uid, and an owner reference to the old one would have the object collected.
        try:
            self.read_node()
        except ApiError as e:
            if e.status == 404:
                raise ApiError(404, f"node {self._name} does not exist") from None
            raise
        body = api.gpu_node_health(self._name)
        body["metadata"]["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "name": self._name,
                "uid": self._node_uid,
                "controller": False,
            }
        ]
        try:
            self._client.create(GNH_COLLECTION, body)
        except ApiError as e:
            # Someone created it between our look and now; the patch goes to theirs.
            if e.status != 409:
                raise
