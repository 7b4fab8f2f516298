"""The operator's probes, ``/healthz`` (liveness) and ``/readyz`` (readiness), in plain HTTP.

Served from the operator's event loop, so an event loop that no longer runs answers no probe:
the kubelet then sees its probe time out and restarts the operator, as it should.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from navarch.errors import ConfigError

Check = Callable[[], tuple[bool, str]]


def _route(check: Check) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def answer(_: web.Request) -> web.Response:
        ok, why = check()
        return web.Response(status=200 if ok else 503, text=why + "\n")

    return answer


async def serve(port: int, alive: Check, ready: Check) -> web.AppRunner:
    """Start answering on ``port``; ConfigError when it cannot be had. Clean up the runner to
    stop."""
    app = web.Application()
    app.add_routes([web.get("/healthz", _route(alive)), web.get("/readyz", _route(ready))])
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, port=port).start()
    except OSError as e:
        await runner.cleanup()
        raise ConfigError(
            "--health-port", f"cannot listen on port {port}: {e.strerror or e}"
        ) from None
    return runner
