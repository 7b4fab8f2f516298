"""Throughput of the kernel-log XID parser over a realistic mix of kernel-log lines.

Run: python benchmarks/kmsg_parser.py [--lines N] [--xid-every N]

Most kernel-log lines are not XIDs; the mix here has one XID per ``--xid-every`` lines, other
NVIDIA driver lines (which pass the cheapest filters), NVSwitch SXids, and ordinary kernel
chatter, with /dev/kmsg record headers, dmesg timestamps and syslog prefixes. The agent needs at
least 200,000 lines/s on a 2-core node.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

# Runnable from a checkout, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from navarch.node_agent.kmsg import scan

TARGET_LINES_PER_SECOND = 200_000

PREFIXES = [
    "6,{seq},{usec},-;",
    "4,{seq},{usec},-,caller=T{seq};",
    "[{sec:>5}.{frac:06d}] ",
    "[Tue Mar  5 10:{minute:02d}:00 2024] ",
    "Mar  5 10:{minute:02d}:00 gpu-node-17 kernel: [{sec:>5}.{frac:06d}] ",
]
OTHER_LINES = [
    "EXT4-fs (nvme0n1p2): mounted filesystem with ordered data mode. Quota mode: none.",
    "IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready",
    "cni0: port 3(veth4f2a1b7c) entered forwarding state",
    'audit: type=1400 audit(1709632800.123:456): apparmor="STATUS" operation="profile_load"',
    "nvidia-uvm: Loaded the UVM driver, major device number 508.",
    "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:15:33 UTC 2024",
    "NVRM: GPU at PCI:0000:3b:00: GPU-8e1c2d3f-0a1b-4c5d-9e8f-001122334455",
    "NVRM: GPU Board Serial Number: 1652223012345",
    "nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 32 egress non-posted",
    "mlx5_core 0000:17:00.0: mlx5_pcie_event:301: PCIe slot advertised sufficient power (75W).",
    "pcieport 0000:00:03.1: AER: Corrected error received: 0000:00:03.1",
    "Memory cgroup out of memory: Killed process 31337 (python) total-vm:81234567kB",
    "kauditd_printk_skb: 12 callbacks suppressed",
    "TCP: request_sock_TCP: Possible SYN flooding on port 10250. Sending cookies.",
]
XID_LINES = [
    "NVRM: Xid (PCI:0000:{bus}:00): 13, pid=28563, name=python3, Graphics SM Warp Exception on "
    "(GPC 1, TPC 0, SM 0): Out Of Range Address",
    "NVRM: Xid (PCI:0000:{bus}:00): 31, pid=1950, name=python, Ch 00000008, intr 00000000. MMU "
    "Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f12_34560000",
    "NVRM: Xid (PCI:0000:{bus}:00): 79, pid=1234, name=python, GPU has fallen off the bus.",
    "NVRM: Xid (PCI:0000:{bus}:00): 48, pid=2215, name=python, Ch 00000008, An uncorrectable "
    "double bit error (DBE) has been detected on GPU in the framebuffer at partition 6.",
    "NVRM: Xid (PCI:0000:{bus}:00): 154, GPU recovery action changed from 0x0 (None) to 0x1 "
    "(GPU Reset Required)",
]
BUSES = ["18", "3b", "5e", "86", "af", "b1", "d8", "db"]


def kernel_log(count: int, xid_every: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for seq in range(count):
        usec = 1_000_000 + seq * 137
        prefix = rng.choice(PREFIXES).format(
            seq=seq,
            usec=usec,
            sec=usec // 1_000_000,
            frac=usec % 1_000_000,
            minute=(seq // 10_000) % 60,
        )
        if seq % xid_every == 0:
            body = rng.choice(XID_LINES).format(bus=rng.choice(BUSES))
        else:
            body = rng.choice(OTHER_LINES)
        lines.append(prefix + body + "\n")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--xid-every", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="report the best of this many runs")
    args = parser.parse_args()

    lines = kernel_log(args.lines, args.xid_every)
    best = float("inf")
    found = 0
    for _ in range(args.repeat):
        started = time.perf_counter()
        found = sum(1 for _ in scan(lines))
        best = min(best, time.perf_counter() - started)

    expected = len(range(0, args.lines, args.xid_every))
    if found != expected:
        print(f"parser found {found} XIDs, expected {expected}", file=sys.stderr)
        return 1
    rate = args.lines / best
    print(f"{args.lines:,} lines ({found:,} XIDs) in {best:.3f} s: {rate:,.0f} lines/s")
    print(f"target: {TARGET_LINES_PER_SECOND:,} lines/s ({rate / TARGET_LINES_PER_SECOND:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
