"""The published contract matches the server (datasette's docs tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from hub.app import build_hub, create_app
from hub.web.registry import ROUTES, openapi
from tests.hub.helpers import make_config, running_hub
from tests.hub.web.test_api import _env

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


def _undocumented(spec: dict[str, Any], schema: dict[str, Any], value: Any, where: str) -> list[str]:
    """The keys of ``value`` (and of the objects in it) that ``schema`` does
    not name: ``additionalProperties`` lets them through validation, so a
    client generated from the document would never see them."""
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    if "anyOf" in schema:
        found = [_undocumented(spec, alt, value, where) for alt in schema["anyOf"]]
        return min(found, key=len)
    missing: list[str] = []
    if isinstance(value, dict) and schema.get("properties"):
        props = schema["properties"]
        for key, sub in value.items():
            if key not in props:
                missing.append(f"{where}.{key}")
            else:
                missing += _undocumented(spec, props[key], sub, f"{where}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, sub in enumerate(value):
            missing += _undocumented(spec, schema["items"], sub, f"{where}[{i}]")
    return missing


async def test_login_documents_its_refusals(tmp_path: Path) -> None:
    create_app(make_config(tmp_path))
    spec = openapi(ROUTES, title="hub", version="test", server_url="http://localhost")
    responses = spec["paths"]["/api/v1/auth/token"]["post"]["responses"]
    assert {"201", "401", "429"} <= responses.keys()
    assert "Retry-After" in responses["429"]["headers"]


async def test_every_key_of_a_real_ticket_response_is_documented(tmp_path: Path) -> None:
    async for env in _env(make_config(tmp_path)):
        async with env.http.get(f"{env.base}/api/openapi.json") as resp:
            spec = await resp.json()
        r = await env.inbound("v-documented", "v-documented:1", name="Documented")
        tid, cid = r.ticket_id, r.contact_id
        me = await env.admin.get("/api/v1/me")
        calls: list[tuple[str, str, str, Any]] = [
            ("GET", "/api/v1/tickets", "/api/v1/tickets", None),
            ("GET", f"/api/v1/tickets?contact={cid}", "/api/v1/tickets", None),
            ("GET", f"/api/v1/tickets/{tid}", "/api/v1/tickets/{id}", None),
            ("GET", "/api/v1/inbox/tickets?view=all", "/api/v1/inbox/tickets", None),
            ("GET", f"/api/v1/contacts/{cid}", "/api/v1/contacts/{id}", None),
            ("POST", f"/api/v1/tickets/{tid}/assign", "/api/v1/tickets/{id}/assign", {"agent_id": me["id"]}),
            ("PUT", f"/api/v1/tickets/{tid}/labels", "/api/v1/tickets/{id}/labels", {"labels": ["vip"]}),
            ("POST", f"/api/v1/tickets/{tid}/priority", "/api/v1/tickets/{id}/priority", {"priority": "high"}),
            ("POST", f"/api/v1/tickets/{tid}/status", "/api/v1/tickets/{id}/status", {"status": "resolved"}),
        ]
        missing: list[str] = []
        for method, url, path, body in calls:
            async with env.http.request(method, env.base + url, json=body, headers=env.admin.headers) as resp:
                assert resp.status == 200, (method, url, await resp.text())
                value = await resp.json()
            schema = spec["paths"][path][method.lower()]["responses"]["200"]["content"]["application/json"]["schema"]
            missing += _undocumented(spec, schema, value, f"{method} {path}")
        assert missing == []
