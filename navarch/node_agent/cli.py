"""``navarch-agent``: ``run`` the node agent, list the ``xids`` in a log, or take a ``snapshot``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from navarch import __version__
from navarch.errors import ConfigError
from navarch.node_agent import config

EXIT_CONFIG = 2


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, with the same exit code as invalid configuration."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="navarch-agent",
        description="Navarch node agent: reports NVIDIA GPU health into the node's GpuNodeHealth.",
    )
    root.add_argument("--version", action="version", version=f"navarch-agent {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run the agent (the DaemonSet's command)",
        description="Keep this node's GpuNodeHealth status true until SIGTERM. Every flag "
        "can also be set through the environment variable named in its help.",
    )
    config.add_run_arguments(run)
    xids = commands.add_parser(
        "xids",
        help="print the XIDs in a kernel log as JSON lines",
        description="Parse kernel-log text (dmesg, journalctl -k, syslog) and print one JSON "
        "object per XID found.",
    )
    xids.add_argument("source", nargs="?", default="-", help="file to read, or - for stdin")
    snapshot = commands.add_parser(
        "snapshot",
        help="collect once and print the status the agent would write, as YAML",
        description="Read NVML and the kernel log once and print the agent's status keys as "
        "YAML, without any cluster.",
    )
    config.add_source_arguments(snapshot)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "xids":
        from navarch.node_agent import xids_command

        return xids_command.run(args.source, sys.stdout, sys.stderr)
    try:
        if args.command == "snapshot":
            from navarch.node_agent import snapshot_command

            return snapshot_command.run(config.snapshot_config(args), sys.stdout)
        settings = config.run_config(args)
        from navarch.node_agent import daemon, logs

        logs.configure(settings.log_format, settings.log_level)
        return daemon.serve(settings)
    except ConfigError as e:
        print(f"navarch-agent {args.command}: {e}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
