"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hub.app import HUB
from hub.web.registry import ROUTES, openapi
from hub.web.schemas import Health


@ROUTES.route(
    "GET",
    "/healthz",
    summary="Liveness: the process answers",
    tag="operations",
    auth=False,
    response=Health,
    everywhere=True,
)
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@ROUTES.route(
    "GET",
    "/readyz",
    summary="Readiness: the database and the stream are reachable and the background tasks run",
    tag="operations",
    auth=False,
    response=Health,
    everywhere=True,
    errors=(503,),
)
async def readyz(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    checks: dict[str, str] = {}
    for name, probe in (("database", hub.db.ping), ("stream", hub.stream.ping)):
        try:
            await asyncio.wait_for(probe(), 3.0)
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised: this is the health check
            checks[name] = f"{type(exc).__name__}: {exc}"
    # A dead consumer or relay leaves every event unhandled while the database
    # and the stream still answer: not ready until it is running again.
    down = dict(hub.down)
    checks["tasks"] = "; ".join(f"{name} {why}" for name, why in sorted(down.items())) if down else "ok"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )


@ROUTES.route(
    "GET",
    "/metrics",
    summary="Prometheus metrics",
    tag="operations",
    auth=False,
    content_type="text/plain",
    everywhere=True,
)
async def metrics_endpoint(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await hub.relay.backlog()
    await hub.relay.dead_letters()
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


@ROUTES.route("GET", "/api/openapi.json", summary="This document", tag="operations", auth=False, everywhere=True)
async def openapi_json(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    return web.json_response(openapi(ROUTES, title="crm-hub", version="0.1.0", server_url=hub.config.public_url))
