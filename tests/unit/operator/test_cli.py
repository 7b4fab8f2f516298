"""navarch-operator's command line: bad flags stop it with one message and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from navarch.operator import cli


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--metrics-port", "70000"], "--metrics-port"),
        ([], "invalid --metrics-cert-file: metrics are served over HTTPS"),
        (["--metrics-cert-file", "/tls.crt"], "invalid --metrics-key-file"),
        (
            ["--metrics-insecure", "--metrics-key-file", "/tls.key"],
            "invalid --metrics-insecure: it serves plain HTTP",
        ),
        (["--workers", "0"], "--workers"),
        (["--log-format", "xml"], "--log-format"),
        (["--metrics-insecure", "--kubeconfig", "/nonexistent"], "invalid --kubeconfig"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_invalid_flags_exit_2_with_one_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_a_kubeconfig_that_is_not_one_is_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("not: [a kubeconfig")
    with pytest.raises(SystemExit) as stop:
        cli.main(["--metrics-port=0", "--kubeconfig", str(path)])
    assert stop.value.code == 2
    assert "invalid --kubeconfig" in capsys.readouterr().err
