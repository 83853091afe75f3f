"""The published contract matches the server (datasette's docs tests)."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from hub.app import build_hub, create_app
from hub.web.registry import ROUTES
from tests.hub.helpers import make_config, running_hub

# Paths that ../shared/API.md promises, which must exist and be documented.
PROMISED = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/widget.js"),
    ("GET", "/chat/ws"),
    ("POST", "/api/v1/auth/token"),
    ("GET", "/api/v1/tickets"),
    ("GET", "/api/v1/tickets/{id}"),
    ("POST", "/api/v1/tickets/{id}/messages"),
    ("POST", "/api/v1/tickets/{id}/assign"),
    ("POST", "/api/v1/tickets/{id}/status"),
    ("GET", "/api/v1/contacts"),
    ("GET", "/api/v1/contacts/{id}"),
    ("GET", "/api/v1/contacts/{id}/timeline"),
    ("POST", "/api/v1/contacts/{id}/merge"),
    ("GET", "/api/v1/events"),
    ("GET", "/inbox/"),
]


async def test_every_route_is_documented_and_every_promise_served(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    app = create_app(config)
    served = {
        (r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD" and r.resource is not None
    }
    async with (
        running_hub(config) as server,
        aiohttp.ClientSession() as http,
        http.get(server.make_url("/api/openapi.json")) as resp,
    ):
        assert resp.status == 200
        spec = await resp.json()
    documented = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    assert served == documented
    for promise in PROMISED:
        assert promise in documented, promise
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert op["summary"], (method, path)
            assert op["responses"], (method, path)
    assert len(ROUTES.operations) == len(documented)


async def test_worker_role_serves_only_operations(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"redis.url": "redis://127.0.0.1:6379/0"})
    # Only the route table is inspected, so the hub is built as "all" (a real
    # worker also needs PostgreSQL, which build_hub's own tests cover).
    hub = build_hub(config, "all")
    app = create_app(config, "worker", hub=hub)
    paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert paths == {"/healthz", "/readyz", "/metrics", "/api/openapi.json"}
    await hub.db.dispose()
