"""``make demo``: a real local control plane with Navarch's chart installed."""

from __future__ import annotations

import subprocess
import sys

from navarch.testing.controlplane import REPO_ROOT, ControlPlane, binary


def main() -> int:
    with ControlPlane() as plane:
        print(f"control plane up at {plane.server}")

        def tool(name: str, *args: str) -> None:
            argv = [binary(name), "--kubeconfig", str(plane.kubeconfig), *args]
            print(f"$ {name} {' '.join(args)}", flush=True)
            subprocess.run(argv, check=True, cwd=REPO_ROOT)

        tool(
            "helm",
            "install",
            "navarch",
            "charts/navarch",
            "--namespace",
            "navarch-system",
            "--create-namespace",
        )
        tool("kubectl", "get", "crd")
        tool("kubectl", "get", "gnh")
    print("control plane stopped; nothing left running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
