"""The probe endpoints and how the operator finds kopf's watch-streams and configures kopf."""

from __future__ import annotations

import asyncio
import itertools
import urllib.error
import urllib.request
from collections.abc import Collection, Sized

import kopf
import pytest

from navarch.errors import ConfigError
from navarch.operator import handlers, probes
from navarch.testing.controlplane import free_port


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_the_probes_answer_200_or_503_with_the_reason() -> None:
    async def scenario() -> list[tuple[int, str]]:
        port = free_port()
        runner = await probes.serve(port, lambda: (True, "ok"), lambda: (False, "listing"))
        try:
            loop = asyncio.get_running_loop()
            urls = [f"http://127.0.0.1:{port}/{path}" for path in ("healthz", "readyz", "x")]
            return [await loop.run_in_executor(None, get, url) for url in urls]
        finally:
            await runner.cleanup()

    healthz, readyz, other = asyncio.run(scenario())
    assert healthz == (200, "ok\n")
    assert readyz == (503, "listing\n")
    assert other[0] == 404


def test_a_taken_health_port_is_a_configuration_error() -> None:
    async def scenario() -> None:
        port = free_port()
        runner = await probes.serve(port, lambda: (True, "ok"), lambda: (True, "ok"))
        try:
            await probes.serve(port, lambda: (True, "ok"), lambda: (True, "ok"))
        finally:
            await runner.cleanup()

    with pytest.raises(ConfigError, match="--health-port"):
        asyncio.run(scenario())


def test_kopf_watch_streams_are_found_while_their_tasks_run() -> None:
    async def scenario() -> tuple[Collection[str], Collection[str]]:
        stream = asyncio.create_task(asyncio.sleep(60), name="watcher for nodes.v1@None")
        failed = asyncio.create_task(asyncio.sleep(0), name="watcher for pods.v1@None")
        other = asyncio.create_task(asyncio.sleep(60), name="reconcile loop")
        await failed
        running = handlers.kopf_watches()
        stream.cancel()
        other.cancel()
        await asyncio.sleep(0)
        return running, handlers.kopf_watches()

    running, after = asyncio.run(scenario())
    assert running == {"nodes.v1"}
    assert after == set()


def test_kopf_retries_every_request_forever_with_capped_delays() -> None:
    settings = kopf.OperatorSettings()
    handlers.configure(settings)
    backoffs = settings.networking.error_backoffs
    assert not isinstance(backoffs, Sized)
    delays = list(itertools.islice(iter(backoffs), 10_000))  # type: ignore[call-overload]
    assert len(delays) == 10_000
    assert max(delays) <= 5.0
