"""Input the API must answer with a 4xx naming the problem, never a 500 or a
silent success: sizes the sender could not send, times outside the calendar,
bodies nested past the stack, guesses sent in parallel, misspelt query
parameters and unknown channels."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from hub.web.middleware import error_middleware
from hub.web.registry import Registry
from storage.queries import encode_cursor
from tests.hub.helpers import PASSWORD, config_on
from tests.hub.web.test_api import Env, _env


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    async for config in config_on(request.param, tmp_path):
        async for e in _env(config):
            yield e


async def test_an_attachment_size_the_sender_cannot_send_is_a_422(env: Env) -> None:
    r = await env.inbound("v-size", "v-size:1")
    url = f"/api/v1/tickets/{r.ticket_id}/messages"
    form = aiohttp.FormData()
    form.add_field("file", b"%PDF-1.4", filename="report.pdf", content_type="application/pdf")
    async with env.http.post(f"{env.base}/api/v1/attachments", data=form, headers=env.admin.headers) as resp:
        assert resp.status == 201, await resp.text()
        attachment = await resp.json()
    bad = await env.admin.post(url, {"body": "see attached", "attachments": [{**attachment, "size": 2**53}]}, 422)
    assert "attachments.0.size" in bad["error"]["message"]
    # Within the limit it is taken, with the size the store has.
    sent = await env.admin.post(url, {"body": "see attached", "attachments": [{**attachment, "size": 2**53 - 1}]}, 201)
    assert sent["attachments"][0]["size"] == len(b"%PDF-1.4")


@pytest.mark.parametrize("until", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"])
async def test_a_time_outside_the_calendar_in_utc_is_a_422(env: Env, until: str) -> None:
    r = await env.inbound("v-snz", "v-snz:1")
    bad = await env.admin.post(
        f"/api/v1/tickets/{r.ticket_id}/status", {"status": "snoozed", "snoozed_until": until}, 422
    )
    assert "snoozed_until" in bad["error"]["message"] and "out of range" in bad["error"]["message"]


async def test_a_cursor_time_outside_the_calendar_is_a_400(env: Env) -> None:
    r = await env.inbound("v-cur", "v-cur:1")
    ticket_cursor = encode_cursor("9999-12-31T23:59:59-05:00", 1)
    for path in (
        f"/api/v1/tickets?cursor={ticket_cursor}",
        f"/api/v1/inbox/tickets?view=unassigned&status=&cursor={ticket_cursor}",
        f"/api/v1/contacts/{r.contact_id}/timeline?cursor={encode_cursor('0001-01-01T00:00:00+05:00', 'message', 1)}",
    ):
        bad = await env.admin.get(path, 400)
        assert "cursor" in bad["error"]["message"], path


# Deeper than any body of ours goes (the cap is 64 levels), and deep enough to
# exhaust the stack of a recursive parser.
@pytest.mark.parametrize("depth", [100, 5000])
async def test_a_body_nested_too_deep_is_a_400(env: Env, depth: int) -> None:
    r = await env.inbound("v-deep", "v-deep:1")
    nested = "[" * (depth - 1) + "]" * (depth - 1)  # under the body's own object
    json_type = {"Content-Type": "application/json"}
    async with env.http.post(
        f"{env.base}/api/v1/tickets/{r.ticket_id}/messages",
        data='{"body": "x", "attachments": ' + nested + "}",
        headers={**env.admin.headers, **json_type},
    ) as resp:
        assert resp.status == 400, await resp.text()
        assert "levels deep" in (await resp.json())["error"]["message"]
    # The public login endpoint too: no token is needed to send one.
    nested = "[" * depth + "]" * depth
    async with env.http.post(f"{env.base}/api/v1/auth/token", data=nested, headers=json_type) as resp:
        assert resp.status == 400, await resp.text()


async def test_a_body_nested_within_the_cap_is_still_validated(env: Env) -> None:
    r = await env.inbound("v-deep-ok", "v-deep-ok:1")
    nested = "[" * 20 + "]" * 20
    async with env.http.post(
        f"{env.base}/api/v1/tickets/{r.ticket_id}/messages",
        data='{"body": "x", "attachments": ' + nested + "}",
        headers={**env.admin.headers, "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 422, await resp.text()


async def test_wrong_passwords_sent_in_parallel_are_held_to_the_limit(env: Env) -> None:
    url = f"{env.base}/api/v1/auth/token"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def guess(i: int) -> int:
            async with http.post(url, json={"email": "agent@example.com", "password": f"guess-{i}"}) as r:
                return r.status

        statuses = Counter(await asyncio.gather(*(guess(i) for i in range(40))))
    # 10 failures per 15 minutes per account and address: no more passwords are checked.
    assert statuses[401] <= 10
    assert statuses[401] + statuses[429] == 40
    # Once the window is full of failures, the right password waits too.
    async with env.http.post(url, json={"email": "agent@example.com", "password": PASSWORD}) as r:
        assert r.status == (429 if statuses[401] == 10 else 201)


async def test_logins_that_succeed_do_not_fill_the_window(env: Env) -> None:
    url = f"{env.base}/api/v1/auth/token"
    for _ in range(12):
        async with env.http.post(url, json={"email": "agent@example.com", "password": PASSWORD}) as r:
            assert r.status == 201
    for _ in range(10):
        async with env.http.post(url, json={"email": "agent@example.com", "password": "wrong"}) as r:
            assert r.status == 401
    async with env.http.post(url, json={"email": "agent@example.com", "password": "wrong"}) as r:
        assert r.status == 429


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/api/v1/tickets?stauts=resolved", "'stauts'"),
        ("/api/v1/tickets?status=open&assigne=me&lable=vip", "'assigne', 'lable'"),
        ("/api/v1/inbox/tickets?views=all", "'views'"),
        ("/api/v1/inbox/counts?view=mine", "'view'"),
        ("/api/v1/contacts?query=ana", "'query'"),
        ("/api/v1/contacts/1/timeline?before=3", "'before'"),
        ("/api/v1/canned_responses?search=hi", "'search'"),
    ],
)
async def test_a_query_parameter_the_route_does_not_take_is_a_400(env: Env, path: str, needle: str) -> None:
    await env.inbound("v-q", "v-q:1")
    bad = await env.admin.get(path, 400)
    assert needle in bad["error"]["message"]
    assert {d["field"] for d in bad["error"]["details"]} == set(needle.replace("'", "").split(", "))


async def test_the_query_parameters_a_route_declares_are_taken(env: Env) -> None:
    r = await env.inbound("v-ok", "v-ok:1")
    query = "status=open&assignee=none&channel=webchat,sms&label=&q=hello&limit=5&cursor="
    assert [t["id"] for t in (await env.admin.get(f"/api/v1/tickets?{query}"))["items"]] == [r.ticket_id]
    query = "view=unassigned&status=open&channel=webchat&priority=normal&label=&q=&limit=5"
    assert [t["id"] for t in (await env.admin.get(f"/api/v1/inbox/tickets?{query}"))["items"]] == [r.ticket_id]
    await env.admin.get(f"/api/v1/tickets/{r.ticket_id}/messages?limit=5")


@pytest.mark.parametrize("path", ["/api/v1/tickets", "/api/v1/inbox/tickets?view=unassigned&"])
async def test_an_unknown_channel_is_a_400(env: Env, path: str) -> None:
    await env.inbound("v-c", "v-c:1")
    sep = "" if path.endswith("&") else "?"
    bad = await env.admin.get(f"{path}{sep}channel=webchat,web_chat", 400)
    assert "channel 'web_chat' is not one of webchat, sms, voice, email, telegram" in bad["error"]["message"]


async def test_only_a_route_that_declares_its_query_has_it_checked() -> None:
    routes = Registry()

    async def ok(request: web.Request) -> web.Response:
        return web.json_response(dict(request.query))

    routes.route("GET", "/free", summary="query not declared", tag="t", auth=False)(ok)
    routes.route("GET", "/none", summary="takes no query", tag="t", query={}, auth=False)(ok)
    routes.route("GET", "/some", summary="takes a", tag="t", query={"a": "a thing"}, auth=False)(ok)
    app = web.Application(middlewares=[error_middleware])
    routes.install(app)
    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:

            async def status(path: str) -> int:
                async with http.get(server.make_url(path)) as r:
                    return r.status

            assert await status("/free?anything=1") == 200
            assert await status("/none") == 200
            assert await status("/none?a=1") == 400
            assert await status("/some?a=1") == 200
            assert await status("/some?a=1&b=2") == 400
            async with http.get(server.make_url("/none?a=1")) as r:
                assert (await r.json())["error"]["message"] == "unknown query parameter 'a': it takes none"
    finally:
        await server.close()


async def test_an_api_route_that_declares_no_query_takes_none(env: Env) -> None:
    r = await env.inbound("v-q", "v-q:1")
    for path in (f"/api/v1/tickets/{r.ticket_id}?include=messages", "/api/v1/me?fields=name"):
        bad = await env.admin.get(path, 400)
        assert "unknown query parameter" in bad["error"]["message"] and "it takes none" in bad["error"]["message"]
    # Pages and scripts stay lenient: browsers and embedding sites add their own.
    async with env.http.get(f"{env.base}/widget.js?v=2") as page:
        assert page.status == 200


async def test_a_query_parameter_given_twice_is_a_400_not_its_first_value(env: Env) -> None:
    """Handlers read one value: ?status=resolved&status=open listed open
    tickets only, as if the second had not been asked for."""
    await env.inbound("v-twice", "v-twice:1")
    bad = await env.admin.get("/api/v1/tickets?status=resolved&status=open&limit=5", 400)
    assert bad["error"]["message"] == (
        "query parameter 'status' given more than once: give each once (a list as comma-separated values)"
    )
    assert [d["field"] for d in bad["error"]["details"]] == ["status"]
    listed = await env.admin.get("/api/v1/tickets?status=resolved,open&limit=5")
    assert len(listed["items"]) == 1


@pytest.mark.parametrize("token", [None, "not-a-token"])
async def test_a_caller_without_a_valid_token_hears_that_before_the_query_is_checked(
    env: Env, token: str | None
) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for query in ("stauts=open", "status=open&status=open"):
        async with env.http.get(f"{env.base}/api/v1/tickets?{query}", headers=headers) as r:
            assert r.status == 401
            assert "stat" not in await r.text()


@pytest.mark.parametrize("spelt", ["%20" + "{id}", "+{id}", "{id}_0", "\u0663"])
async def test_an_id_is_ascii_digits(env: Env, spelt: str) -> None:
    """int() also reads these; each would be another spelling of some id."""
    r = await env.inbound("v-id", "v-id:1")
    raw = spelt.format(id=r.ticket_id)
    bad = await env.admin.get(f"/api/v1/tickets/{raw}", 400)
    assert "must be an integer" in bad["error"]["message"]
    await env.admin.get(f"/api/v1/tickets?assignee={raw}", 400)
