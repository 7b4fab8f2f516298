"""``navarch-agent``: configuration errors stop it with one message; ``snapshot`` prints YAML."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from navarch import api
from navarch.errors import ConfigError
from navarch.node_agent import cli
from navarch.node_agent.config import (
    DEFAULT_HEALTH_PORT,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_METRICS_PORT,
    DEFAULT_POLL_INTERVAL,
    AgentConfig,
    run_config,
)
from navarch.serving import TlsFiles
from navarch.testing.fake_nvml import FakeGpu, FakeNode, NvmlReturn, write_scenario

NOT_IN_A_POD = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "NODE_NAME")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in NOT_IN_A_POD:
        monkeypatch.delenv(name, raising=False)
    # ``run`` sets up logging to the (captured) stderr of the test that calls it.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exit:
        code = int(exit.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "invalid --node-name: required (or set NODE_NAME)"),
        (["--node-name", "Not_A_Node"], "'Not_A_Node' is not a valid Kubernetes node name"),
        (["--node-name", "n1", "--poll-interval", "soon"], "'soon' is neither seconds"),
        (["--node-name", "n1", "--poll-interval", "0"], "must be between 0.1s and 3600s"),
        (["--node-name", "n1", "--heartbeat-interval", "2h"], "must be between 1s and 3600s"),
        (["--node-name", "n1", "--expected-gpus", "-1"], "must be between 0 and 1024"),
        (["--node-name", "n1", "--metrics-port", "http"], "'http' is not a whole number"),
        (["--node-name", "n1", "--log-format", "xml"], "must be text or json"),
        (["--node-name", "n1", "--log-level", "loud"], "must be one of debug, info"),
        (["--node-name", "n1", "--kubeconfig", "/nonexistent"], "/nonexistent does not exist"),
        (["--node-name", "n1", "--nvml-library", "/nonexistent.so"], "does not exist"),
        (["--node-name", "n1", "--metrics-insecure"], "not running in a pod"),
        (["--node-name", "n1"], "invalid --metrics-cert-file: metrics are served over HTTPS"),
        (["--node-name", "n1", "--health-port", "-1"], "must be between 0 and 65535"),
        (["--node-name", "n1", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_invalid_configuration_exits_2_with_one_clear_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, "run", *argv)

    assert code == 2
    assert out == ""
    assert message in err
    assert err.count("\n") == 1, err
    assert err.startswith("navarch-agent")


def test_an_unusable_kubeconfig_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("current-context: nowhere\n")

    code, _, err = run_cli(
        capsys, "run", "--node-name", "n1", "--metrics-insecure", "--kubeconfig", str(kubeconfig)
    )

    assert code == 2
    assert "no entry named 'nowhere'" in err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys)

    assert code == 2
    assert "required: COMMAND" in err


def args(**flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.config.add_run_arguments(parser)
    argv = [f"--{name.replace('_', '-')}={value}" for name, value in flags.items()]
    return parser.parse_args(argv)


def test_defaults_and_the_node_name_from_the_downward_api(tmp_path: Path) -> None:
    tls = TlsFiles(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
    Path(tls.cert_file).touch()
    Path(tls.key_file).touch()
    config = run_config(
        args(metrics_cert_file=tls.cert_file, metrics_key_file=tls.key_file),
        {"NODE_NAME": "gpu-node-1", "KUBERNETES_SERVICE_HOST": "x"},
    )

    assert config == AgentConfig(
        node_name="gpu-node-1",
        kubeconfig=None,
        poll_interval=DEFAULT_POLL_INTERVAL,
        heartbeat_interval=DEFAULT_HEARTBEAT_INTERVAL,
        kmsg_path="/dev/kmsg",
        nvml_library=None,
        expected_gpus=None,
        metrics_port=DEFAULT_METRICS_PORT,
        metrics_tls=tls,
        health_port=DEFAULT_HEALTH_PORT,
        log_format="text",
        log_level="info",
    )


def test_flags_win_over_environment_variables() -> None:
    env = {
        "NODE_NAME": "from-env",
        "NAVARCH_AGENT_POLL_INTERVAL": "5",
        "NAVARCH_AGENT_HEARTBEAT_INTERVAL": "1m",
        "NAVARCH_AGENT_METRICS_PORT": "0",
        "NAVARCH_AGENT_HEALTH_PORT": "0",
        "NAVARCH_AGENT_LOG_FORMAT": "json",
    }

    config = run_config(args(node_name="from-flag", poll_interval="2.5s"), env)

    assert config.node_name == "from-flag"
    assert (config.poll_interval, config.heartbeat_interval) == (2.5, 60.0)
    assert (config.metrics_port, config.health_port, config.log_format) == (0, 0, "json")


@pytest.mark.parametrize("value", ["true", "TRUE"])
def test_plain_metrics_from_the_environment(value: str) -> None:
    env = {"NODE_NAME": "n1", "NAVARCH_AGENT_METRICS_INSECURE": value}

    config = run_config(args(), env)

    assert (config.metrics_port, config.metrics_tls) == (DEFAULT_METRICS_PORT, None)


def test_a_metrics_switch_that_is_not_a_boolean_is_refused() -> None:
    env = {"NODE_NAME": "n1", "NAVARCH_AGENT_METRICS_INSECURE": "yes"}

    with pytest.raises(ConfigError, match="invalid --metrics-insecure: must be true or false"):
        run_config(args(), env)


# --- snapshot ------------------------------------------------------------------------------


def test_snapshot_prints_the_status_it_would_write_as_yaml(
    capsys: pytest.CaptureFixture[str], fake_nvml_library: Path, scenario: Path, tmp_path: Path
) -> None:
    write_scenario(
        scenario, FakeNode(gpus=[FakeGpu(index=0), FakeGpu(index=1, pci="00000000:3B:00.0")])
    )
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(
        "4,10,5000000,-;NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off "
        "the bus.\n"
        "6,11,5000100,-;usb 1-1: new high-speed USB device number 2\n"
    )

    code, out, err = run_cli(
        capsys,
        "snapshot",
        "--nvml-library",
        str(fake_nvml_library),
        "--kmsg-path",
        str(kmsg),
        "--expected-gpus",
        "2",
    )

    assert code == 0, err
    status = yaml.safe_load(out)
    assert set(status) <= set(api.AGENT_STATUS_KEYS)
    assert (status["gpuCount"], status["expectedGpuCount"]) == (2, 2)
    assert status["agent"]["driverVersion"] == "550.54.15"
    assert [g["pciBusId"] for g in status["gpus"]] == ["0000:18:00.0", "0000:3b:00.0"]
    (xid,) = status["xids"]
    assert (xid["code"], xid["gpuIndex"], xid["source"]) == (79, 1, "kmsg")
    assert (
        status["lastXid"] == "79 ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS on GPU 1 (0000:3b:00.0)"
    )


def test_snapshot_without_nvml_or_kernel_log_reports_why(
    capsys: pytest.CaptureFixture[str], fake_nvml_library: Path, scenario: Path, tmp_path: Path
) -> None:
    write_scenario(scenario, FakeNode(init_error=NvmlReturn.DRIVER_NOT_LOADED))

    code, out, _ = run_cli(
        capsys,
        "snapshot",
        "--nvml-library",
        str(fake_nvml_library),
        "--kmsg-path",
        str(tmp_path / "missing"),
    )

    assert code == 0
    status = yaml.safe_load(out)
    assert "DRIVER_NOT_LOADED" in status["agent"]["nvmlError"]
    assert "cannot read" in status["agent"]["kmsgError"]
    assert "gpuCount" not in status


def test_xids_reads_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = tmp_path / "dmesg"
    log.write_text("[ 12.5] NVRM: Xid (0000:03:00): 14, Channel 00000001\n")

    code, out, _ = run_cli(capsys, "xids", str(log))

    assert code == 0
    assert '"code": 14' in out
