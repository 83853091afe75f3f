"""The bot's admin API: the knowledge base (who may read and write it, bad
input, versions, all-or-nothing imports), ``bot/ask`` and the gap report."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from sqlalchemy import func, select, text

from bots.kb import KbEntry
from hub.app import HUB, Hub
from hub.bot_actions import do_delete_faq, do_save_faq
from hub.core import Role
from storage.db import Database
from storage.models import FaqEntry, FaqVersion
from tests.bots.conversation import KB, add_turns
from tests.hub.helpers import Agent, add_agent, make_config, running_hub

ENTRY: dict[str, Any] = {
    "id": "gift-cards",
    "questions": ["do you sell gift cards", "کارت هدیه دارید"],
    "answer": {"en": "Yes, from $10.", "fa": "بله، از ۱۰ دلار."},
    "tags": ["Shop"],
}


@asynccontextmanager
async def api(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[Agent, Agent, aiohttp.ClientSession, str, Hub]]:
    config = make_config(tmp_path, **{"bot.enabled": True, **overrides})
    async with running_hub(config) as server:
        await add_agent(config, "admin@example.com", Role.ADMIN)
        await add_agent(config, "ana@example.com", Role.AGENT)
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            admin = await Agent.login(http, base, "admin@example.com")
            agent = await Agent.login(http, base, "ana@example.com")
            yield admin, agent, http, base, server.app[HUB]


async def error(http: aiohttp.ClientSession, method: str, url: str, status: int, **kwargs: Any) -> str:
    async with http.request(method, url, **kwargs) as r:
        body = await r.json()
        assert r.status == status, body
        return str(body["error"]["message"])


async def test_only_agents_read_and_only_admins_write(tmp_path: Path) -> None:
    async with api(tmp_path) as (admin, agent, http, base, _):
        assert "token" in await error(http, "GET", f"{base}/api/v1/faq", 401)
        assert "token" in await error(http, "POST", f"{base}/api/v1/faq", 401, json=ENTRY)
        assert "token" in await error(http, "POST", f"{base}/api/v1/bot/ask", 401, json={"text": "hi"})
        headers = agent.headers
        for method, path, body in [
            ("POST", "/api/v1/faq", ENTRY),
            ("PUT", "/api/v1/faq/gift-cards", ENTRY),
            ("DELETE", "/api/v1/faq/gift-cards", None),
            ("POST", "/api/v1/faq/import", {"content": yaml.safe_dump([ENTRY])}),
        ]:
            message = await error(http, method, f"{base}{path}", 403, json=body, headers=headers)
            assert message == "this needs an admin"
        assert (await agent.get("/api/v1/faq"))["items"] == []
        await admin.post("/api/v1/faq", ENTRY, 201)
        assert [e["id"] for e in (await agent.get("/api/v1/faq"))["items"]] == ["gift-cards"]
        assert (await agent.get("/api/v1/faq/gift-cards"))["answer"] == ENTRY["answer"]


async def test_an_entry_through_its_versions(tmp_path: Path) -> None:
    async with api(tmp_path) as (admin, _, http, base, _hub):
        created = await admin.post("/api/v1/faq", ENTRY, 201)
        assert created["version"] == 1
        assert created["tags"] == ["shop"]
        assert created["updated_by"] == "agent:1"
        assert "already exists" in await error(
            http, "POST", f"{base}/api/v1/faq", 409, json=ENTRY, headers=admin.headers
        )
        # The same content again is no new version.
        assert (await admin.put("/api/v1/faq/gift-cards", ENTRY))["version"] == 1
        changed = {**ENTRY, "answer": "Yes.", "team": "Sales"}
        updated = await admin.put("/api/v1/faq/gift-cards", changed)
        assert (updated["version"], updated["answer"], updated["team"]) == (2, "Yes.", "Sales")
        await admin.delete("/api/v1/faq/gift-cards")
        assert "does not exist" in await error(http, "GET", f"{base}/api/v1/faq/gift-cards", 404, headers=admin.headers)
        assert (await admin.get("/api/v1/faq"))["items"] == []
        again = await admin.post("/api/v1/faq", ENTRY, 201)
        assert again["version"] == 4
        history = (await admin.get("/api/v1/faq/gift-cards/versions"))["items"]
        assert [(v["version"], v["change"], v["actor"]) for v in history] == [
            (4, "created", "agent:1"),
            (3, "deleted", "agent:1"),
            (2, "updated", "agent:1"),
            (1, "created", "agent:1"),
        ]
        assert history[2]["document"] == {**changed, "tags": ["shop"]}
        assert history[1]["document"] == {}


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({**ENTRY, "id": "has space"}, 422, "id: Value error, must be letters"),
        ({**ENTRY, "questions": []}, 422, "questions"),
        ({**ENTRY, "questions": ["ok", "  "]}, 422, "every question must be a non-empty string"),
        ({**ENTRY, "answer": {"english": "x"}}, 422, "answer language 'english'"),
        ({**ENTRY, "answer": {}}, 422, "answer: Value error, is empty"),
        ({**ENTRY, "colour": "red"}, 422, "colour"),
        ({"id": "x", "answer": "y"}, 422, "questions"),
    ],
)
async def test_bad_entries_are_refused_with_the_field_named(
    tmp_path: Path, body: dict[str, Any], status: int, needle: str
) -> None:
    async with api(tmp_path) as (admin, _, http, base, _hub):
        for method, path in [("POST", "/api/v1/faq"), ("PUT", f"/api/v1/faq/{body['id']}")]:
            message = await error(http, method, f"{base}{path}", status, json=body, headers=admin.headers)
            assert needle in message
        assert (await admin.get("/api/v1/faq"))["items"] == []


async def test_unknown_entries_and_mismatched_ids(tmp_path: Path) -> None:
    async with api(tmp_path) as (admin, _, http, base, _hub):
        for method, path in [
            ("GET", "/api/v1/faq/nope"),
            ("DELETE", "/api/v1/faq/nope"),
            ("GET", "/api/v1/faq/nope/versions"),
        ]:
            assert "'nope'" in await error(http, method, f"{base}{path}", 404, headers=admin.headers)
        message = await error(http, "PUT", f"{base}/api/v1/faq/other", 400, json=ENTRY, headers=admin.headers)
        assert message == "the body's id 'gift-cards' differs from the URL's 'other'"
        assert "not valid JSON" in await error(
            http, "POST", f"{base}/api/v1/faq", 400, data=b"{", headers=admin.headers
        )


async def test_import_is_all_or_nothing(tmp_path: Path) -> None:
    async with api(tmp_path) as (admin, _, http, base, _hub):
        result = await admin.post("/api/v1/faq/import", {"content": yaml.safe_dump(KB, allow_unicode=True)})
        assert sorted(result["created"]) == sorted(e["id"] for e in KB)
        csv = "id,question,answer\ngift-cards,do you sell gift cards,Yes\nbad id,q,x\n"
        message = await error(
            http,
            "POST",
            f"{base}/api/v1/faq/import",
            422,
            json={"format": "csv", "content": csv, "replace": True},
            headers=admin.headers,
        )
        assert message == "content: line 3 (id 'bad id'): id: Value error, must be letters, digits and . _ : - " + (
            "(no spaces), starting with a letter or digit"
        )
        assert len((await admin.get("/api/v1/faq"))["items"]) == len(KB)
        good = "id,question,answer\ngift-cards,do you sell gift cards,Yes\n"
        replaced = await admin.post("/api/v1/faq/import", {"format": "csv", "content": good, "replace": True})
        assert (replaced["created"], len(replaced["deleted"])) == (["gift-cards"], len(KB))
        assert "format" in await error(
            http,
            "POST",
            f"{base}/api/v1/faq/import",
            422,
            json={"format": "xlsx", "content": good},
            headers=admin.headers,
        )


async def test_import_of_a_csv_field_over_the_csv_modules_limit_is_refused_not_a_crash(tmp_path: Path) -> None:
    huge = f"id,question,answer\ngift-cards,do you sell gift cards,Yes\nb,r,{'x' * 131_073}\n"
    async with api(tmp_path) as (admin, _, http, base, _hub):
        message = await error(
            http,
            "POST",
            f"{base}/api/v1/faq/import",
            422,
            json={"format": "csv", "content": huge},
            headers=admin.headers,
        )
        assert message == (
            'content: line 3: a field is longer than 131,072 characters; is a quote (") opened there and never closed?'
        )
        assert (await admin.get("/api/v1/faq"))["items"] == []


async def test_ask_follows_the_knowledge_base_as_it_changes(tmp_path: Path) -> None:
    async with api(tmp_path) as (admin, agent, http, base, hub):
        empty = await agent.post("/api/v1/bot/ask", {"text": "do you sell gift cards"})
        assert empty == {
            "action": "handoff",
            "reason": "no_match",
            "replies": ["I'm connecting you with a member of our team; they will reply here shortly."],
            "entry_id": None,
            "confidence": 0.0,
            "candidates": [],
        }
        await admin.post("/api/v1/faq/import", {"content": yaml.safe_dump([*KB, ENTRY], allow_unicode=True)})
        answer = await agent.post("/api/v1/bot/ask", {"text": "کارت هدیه دارید؟"})
        assert (answer["action"], answer["entry_id"]) == ("answer", "gift-cards")
        await admin.delete("/api/v1/faq/gift-cards")
        await hub.bot.kb.idle()
        gone = await agent.post("/api/v1/bot/ask", {"text": "کارت هدیه دارید؟"})
        assert gone["entry_id"] != "gift-cards"
        assert "text" in await error(http, "POST", f"{base}/api/v1/bot/ask", 422, json={}, headers=agent.headers)


async def test_report_pages(tmp_path: Path) -> None:
    async with api(tmp_path) as (_, agent, http, base, hub):
        from sqlalchemy import func, select

        from storage.models import BotTurn

        await add_turns(hub.db, [(f"question {n}", "handoff", "no_match") for n in range(3)])
        first = await agent.get("/api/v1/bot/report?limit=2")
        assert [i["question"] for i in first["items"]] == ["question 2", "question 1"]
        rest = await agent.get(f"/api/v1/bot/report?limit=2&cursor={first['next_cursor']}")
        assert ([i["question"] for i in rest["items"]], rest["next_cursor"]) == (["question 0"], None)
        assert "cursor" in await error(
            http, "GET", f"{base}/api/v1/bot/report?cursor=garbage", 400, headers=agent.headers
        )
        assert "limit" in await error(http, "GET", f"{base}/api/v1/bot/report?limit=0", 400, headers=agent.headers)
        async with hub.db.read() as s:
            assert await s.scalar(select(func.count()).select_from(BotTurn)) == 3


async def _lock_waiters(db: Database) -> int:
    async with db.read() as s:
        waiting = await s.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return int(waiting or 0)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        # Both create: the one that commits second is told the entry exists.
        ("POST", "/api/v1/faq", {**ENTRY, "answer": "Mine."}, 409),
        # Create or replace: the second replaces the first's entry.
        ("PUT", "/api/v1/faq/gift-cards", {**ENTRY, "answer": "Mine."}, 200),
        ("POST", "/api/v1/faq/import", {"content": yaml.safe_dump([{**ENTRY, "answer": "Mine."}])}, 200),
    ],
)
async def test_a_new_entry_written_twice_at_once_on_postgres(
    tmp_path: Path, postgres_url: str, method: str, path: str, body: dict[str, Any], status: int
) -> None:
    """Another admin's transaction inserts the same new id and commits while
    this request waits on the unique index: a conflict or an update, never a 500."""
    async with api(tmp_path, **{"database.url": postgres_url}) as (admin, _, http, base, _hub):
        other = Database(postgres_url)
        try:
            async with other.write() as session:
                await do_save_faq(session, KbEntry.model_validate(ENTRY), actor="agent:9", create_only=True)
                request = asyncio.create_task(http.request(method, f"{base}{path}", json=body, headers=admin.headers))
                async with asyncio.timeout(30):
                    while await _lock_waiters(other) == 0:
                        assert not request.done(), await (await request).text()
                        await asyncio.sleep(0.02)
            async with await request as response:
                assert response.status == status, await response.text()
                answer = await response.json()
            async with other.read() as session:
                row = await session.scalar(select(FaqEntry).where(FaqEntry.key == "gift-cards"))
                versions = await session.scalar(select(func.count()).select_from(FaqVersion))
        finally:
            await other.dispose()
        assert row is not None
        if status == 409:
            assert "already exists" in answer["error"]["message"]
            assert (row.answer, row.updated_by, versions) == (ENTRY["answer"], "agent:9", 1)
        else:
            assert (row.answer, row.version, row.updated_by, versions) == ({"default": "Mine."}, 2, "agent:1", 2)


@pytest.mark.postgres
async def test_many_admins_creating_one_entry_at_once_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    async with api(tmp_path, **{"database.url": postgres_url}) as (admin, _, http, base, _hub):

        async def create() -> int:
            async with http.post(f"{base}/api/v1/faq", json=ENTRY, headers=admin.headers) as r:
                return r.status

        statuses = await asyncio.gather(*(create() for _ in range(8)))
        assert sorted(statuses) == [201] + [409] * 7
        assert [e["version"] for e in (await admin.get("/api/v1/faq"))["items"]] == [1]


# --- edits based on a version (optimistic concurrency) ---------------------------------


async def _stored(db: Database) -> tuple[FaqEntry | None, int]:
    async with db.read() as session:
        row = await session.scalar(select(FaqEntry).where(FaqEntry.key == "gift-cards"))
        versions = await session.scalar(select(func.count()).select_from(FaqVersion))
    return row, int(versions or 0)


async def test_what_get_answers_can_be_sent_back_with_put(tmp_path: Path) -> None:
    async with api(tmp_path) as (admin, _, _http, _base, _hub):
        await admin.post("/api/v1/faq", ENTRY, 201)
        read = await admin.get("/api/v1/faq/gift-cards")
        assert {"version", "updated_at", "updated_by"} <= set(read)
        # Unchanged: the read-only fields are ignored, and no new version.
        assert await admin.put("/api/v1/faq/gift-cards", read) == read
        edited = {**read, "answer": "Yes.", "updated_at": "2000-01-01T00:00:00+00:00", "updated_by": "someone"}
        saved = await admin.put("/api/v1/faq/gift-cards", edited)
        assert (saved["version"], saved["answer"], saved["updated_by"]) == (2, "Yes.", "agent:1")
        assert saved["updated_at"] != edited["updated_at"]
        listed = (await admin.get("/api/v1/faq"))["items"][0]
        assert (await admin.put("/api/v1/faq/gift-cards", {**listed, "tags": ["shop", "cards"]}))["version"] == 3


async def test_an_edit_of_a_version_another_admin_changed_is_refused(tmp_path: Path) -> None:
    async with api(tmp_path) as (admin, _, http, base, hub):
        await admin.post("/api/v1/faq", ENTRY, 201)
        # Two admins read version 1.
        a = await admin.get("/api/v1/faq/gift-cards")
        b = await admin.get("/api/v1/faq/gift-cards")
        more = [*a["questions"], "gift vouchers?"]
        assert (await admin.put("/api/v1/faq/gift-cards", {**a, "questions": more}))["version"] == 2
        message = await error(
            http,
            "PUT",
            f"{base}/api/v1/faq/gift-cards",
            409,
            json={**b, "answer": "No."},
            headers=admin.headers,
        )
        assert message == (
            "knowledge-base entry 'gift-cards' is at version 2, not version 1 that you read: someone changed it "
            "since; GET /api/v1/faq/gift-cards again and make your change to what is there"
        )
        row, versions = await _stored(hub.db)
        assert row is not None
        assert (row.version, row.questions, row.answer, versions) == (2, more, ENTRY["answer"], 2)
        # Read again, the edit goes through, keeping the other admin's question.
        fresh = await admin.get("/api/v1/faq/gift-cards")
        assert fresh["version"] == 2
        saved = await admin.put("/api/v1/faq/gift-cards", {**fresh, "answer": "No."})
        assert (saved["version"], saved["questions"], saved["answer"]) == (3, more, "No.")
        # Without a version the last write wins, as before.
        assert (await admin.put("/api/v1/faq/gift-cards", {**ENTRY, "answer": "Maybe."}))["version"] == 4


async def test_a_version_of_an_entry_that_is_not_there_is_refused(tmp_path: Path) -> None:
    async with api(tmp_path) as (admin, _, http, base, hub):
        url = f"{base}/api/v1/faq/gift-cards"
        message = await error(http, "PUT", url, 409, json={**ENTRY, "version": 1}, headers=admin.headers)
        assert message == (
            "knowledge-base entry 'gift-cards' does not exist, so it is not at version 1; "
            "leave version out to create it"
        )
        assert await _stored(hub.db) == (None, 0)
        read = await admin.post("/api/v1/faq", ENTRY, 201)
        await admin.delete("/api/v1/faq/gift-cards")
        message = await error(http, "PUT", url, 409, json=read, headers=admin.headers)
        assert message == (
            "knowledge-base entry 'gift-cards' was deleted at version 2 after you read version 1; "
            "leave version out to create it again"
        )
        row, versions = await _stored(hub.db)
        assert row is not None
        assert (row.deleted, row.version, versions) == (True, 2, 2)
        assert "does not exist" in await error(http, "GET", url, 404, headers=admin.headers)


@pytest.mark.parametrize(
    ("version", "needle"),
    [
        (0, "version: Input should be greater than or equal to 1"),
        ("1", "version: Input should be a valid integer"),
        (1.0, "version: Input should be a valid integer"),
        (True, "version: Input should be a valid integer"),
    ],
)
async def test_a_version_that_is_not_one_is_refused(tmp_path: Path, version: Any, needle: str) -> None:
    async with api(tmp_path) as (admin, _, http, base, hub):
        await admin.post("/api/v1/faq", ENTRY, 201)
        body = {**ENTRY, "answer": "No.", "version": version}
        message = await error(http, "PUT", f"{base}/api/v1/faq/gift-cards", 422, json=body, headers=admin.headers)
        assert needle in message
        row, versions = await _stored(hub.db)
        assert row is not None
        assert (row.version, row.answer, versions) == (1, ENTRY["answer"], 1)


async def _same_version_at_once(tmp_path: Path, **overrides: Any) -> None:
    """Admins who all read version 1 save at once: exactly one wins, the others
    are told the version moved on, and only the winner's change is stored."""
    async with api(tmp_path, **overrides) as (admin, _, http, base, hub):
        read = await admin.post("/api/v1/faq", ENTRY, 201)

        async def put(n: int) -> tuple[int, str, dict[str, Any]]:
            body = {**read, "answer": f"Answer {n}."}
            async with http.put(f"{base}/api/v1/faq/gift-cards", json=body, headers=admin.headers) as r:
                return r.status, f"Answer {n}.", await r.json()

        results = await asyncio.gather(*(put(n) for n in range(8)))
        assert sorted(status for status, _, _ in results) == [200] + [409] * 7
        (winner,) = [answer for status, answer, _ in results if status == 200]
        for status, _, body in results:
            if status == 409:
                assert "is at version 2, not version 1" in body["error"]["message"]
        row, versions = await _stored(hub.db)
        assert row is not None
        assert (row.version, row.answer, versions) == (2, {"default": winner}, 2)


async def test_puts_of_one_version_at_once_on_sqlite(tmp_path: Path) -> None:
    await _same_version_at_once(tmp_path)


@pytest.mark.postgres
async def test_puts_of_one_version_at_once_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    await _same_version_at_once(tmp_path, **{"database.url": postgres_url})


@pytest.mark.postgres
async def test_the_version_is_compared_after_the_row_lock_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    """Another admin's transaction has saved version 2 but not yet committed:
    a PUT of version 1 waits for it and is then refused, rather than reading
    version 1 before the lock and overwriting the other admin's change."""
    async with api(tmp_path, **{"database.url": postgres_url}) as (admin, _, http, base, hub):
        read = await admin.post("/api/v1/faq", ENTRY, 201)
        theirs = KbEntry.model_validate({**ENTRY, "answer": "Theirs."})
        other = Database(postgres_url)
        try:
            async with other.write() as session:
                await do_save_faq(session, theirs, actor="agent:9", expected_version=1)
                body = {**read, "answer": "Mine."}
                request = asyncio.create_task(
                    http.put(f"{base}/api/v1/faq/gift-cards", json=body, headers=admin.headers)
                )
                async with asyncio.timeout(30):
                    while await _lock_waiters(other) == 0:
                        assert not request.done(), await (await request).text()
                        await asyncio.sleep(0.02)
            async with await request as response:
                assert response.status == 409, await response.text()
                assert "is at version 2, not version 1" in (await response.json())["error"]["message"]
        finally:
            await other.dispose()
        row, versions = await _stored(hub.db)
        assert row is not None
        assert (row.version, row.answer, row.updated_by, versions) == (2, {"default": "Theirs."}, "agent:9", 2)


@pytest.mark.postgres
@pytest.mark.parametrize("theirs", ["delete", "edit"])
async def test_a_delete_without_version_waits_for_another_admins_write_on_postgres(
    tmp_path: Path, postgres_url: str, theirs: str
) -> None:
    """Another admin's uncommitted delete or edit holds the entry: a DELETE
    without a version waits for it, then is a 404 (deleted already) or deletes
    the edited entry (the last write wins), never a 500 from both writing the
    same version into the history."""
    async with api(tmp_path, **{"database.url": postgres_url}) as (admin, _, http, base, hub):
        await admin.post("/api/v1/faq", ENTRY, 201)
        other = Database(postgres_url)
        try:
            async with other.write() as session:
                if theirs == "delete":
                    await do_delete_faq(session, "gift-cards", actor="agent:9")
                else:
                    await do_save_faq(session, KbEntry.model_validate({**ENTRY, "answer": "Theirs."}), actor="agent:9")
                request = asyncio.create_task(http.delete(f"{base}/api/v1/faq/gift-cards", headers=admin.headers))
                async with asyncio.timeout(30):
                    while await _lock_waiters(other) == 0:
                        assert not request.done(), await (await request).text()
                        await asyncio.sleep(0.02)
            async with await request as response:
                assert response.status == (404 if theirs == "delete" else 204), await response.text()
        finally:
            await other.dispose()
        row, versions = await _stored(hub.db)
        assert row is not None
        if theirs == "delete":
            assert (row.deleted, row.version, row.updated_by, versions) == (True, 2, "agent:9", 2)
        else:
            assert (row.deleted, row.version, row.updated_by, versions) == (True, 3, "agent:1", 3)


@pytest.mark.postgres
async def test_many_deletes_of_one_entry_at_once_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    async with api(tmp_path, **{"database.url": postgres_url}) as (admin, _, http, base, _hub):
        await admin.post("/api/v1/faq", ENTRY, 201)

        async def delete() -> int:
            async with http.delete(f"{base}/api/v1/faq/gift-cards", headers=admin.headers) as r:
                return r.status

        assert sorted(await asyncio.gather(*(delete() for _ in range(6)))) == [204] + [404] * 5


async def test_the_openapi_document_describes_the_version_check(tmp_path: Path) -> None:
    async with api(tmp_path) as (admin, _, _http, _base, _hub):
        spec = await admin.get("/api/openapi.json")
    put = spec["paths"]["/api/v1/faq/{key}"]["put"]
    assert "409" in put["responses"]

    def body(operation: dict[str, Any]) -> dict[str, Any]:
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        return dict(spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"])

    fields = body(put)
    assert "409 Conflict" in fields["version"]["description"]
    assert fields["updated_at"]["readOnly"] is True
    assert fields["updated_by"]["readOnly"] is True
    # Creating is not based on a version.
    assert "version" not in body(spec["paths"]["/api/v1/faq"]["post"])


async def test_an_entrys_team_must_be_a_team_the_hub_knows(tmp_path: Path) -> None:
    # A team nobody set up would be created empty at handoff, and the
    # customers handed to it would wait there for ever.
    async with api(tmp_path, **{"routing.teams": [{"name": "Billing"}]}) as (admin, _, http, base, hub):
        from hub.actions import do_get_or_create_team

        async with hub.db.write() as s:
            await do_get_or_create_team(s, "Support")
        message = await error(
            http, "PUT", f"{base}/api/v1/faq/gift-cards", 422, json={**ENTRY, "team": "Suport"}, headers=admin.headers
        )
        assert message.startswith("team 'Suport' (entry 'gift-cards') does not exist; did you mean 'Support'?")
        assert "(the teams: 'Billing', 'Sales', 'Support')" in message
        csv = "id,question,answer,team\na,q,x,Nobody\nb,q,y,Nobody\n"
        message = await error(
            http,
            "POST",
            f"{base}/api/v1/faq/import",
            422,
            json={"format": "csv", "content": csv},
            headers=admin.headers,
        )
        assert message.startswith("team 'Nobody' (entry 'a', 'b') does not exist")
        assert (await admin.get("/api/v1/faq"))["items"] == []
        # A team in another case is that team, stored as the team is spelled;
        # one the config names may not exist yet (it does once the hub has started).
        saved = await admin.post("/api/v1/faq", {**ENTRY, "team": " support "}, 201)
        assert saved["team"] == "Support"
        imported = await admin.post(
            "/api/v1/faq/import", {"content": "- {id: b, questions: [q], answer: x, team: BILLING}"}
        )
        assert imported["created"] == ["b"]
        assert (await admin.get("/api/v1/faq/b"))["team"] == "Billing"


async def test_a_lone_surrogate_in_a_body_is_a_422_naming_the_field(tmp_path: Path) -> None:
    async with api(tmp_path) as (admin, _, http, base, _hub):
        headers = {**admin.headers, "Content-Type": "application/json"}
        for raw, field in [
            (b'{"id": "hi", "questions": ["hi"], "answer": "Welcome \\ud83d"}', "answer"),
            (b'{"id": "hi", "questions": ["hi"], "answer": {"en": "x", "\\udc00": "y"}}', "answer.\\udc00"),
        ]:
            async with http.post(f"{base}/api/v1/faq", data=raw, headers=headers) as r:
                body = await r.json()
            assert r.status == 422, body
            assert body["error"]["details"][0]["field"] == field
            assert "Input should be a valid string, not half of a \\uXXXX surrogate pair" in body["error"]["message"]
        # An escaped pair is one character.
        raw = b'{"id": "hi", "questions": ["hi"], "answer": "Welcome \\ud83d\\ude0a"}'
        async with http.post(f"{base}/api/v1/faq", data=raw, headers=headers) as r:
            assert r.status == 201, await r.text()
        assert (await admin.get("/api/v1/faq/hi"))["answer"] == "Welcome 😊"


async def test_import_of_yaml_content_with_an_escaped_emoji(tmp_path: Path) -> None:
    # json.dumps writes 😊 as "\ud83d\ude0a": YAML reads the two halves apart.
    content = '[{"id": "hello", "questions": ["hi there"], "answer": "Welcome \\ud83d\\ude0a"}]'
    async with api(tmp_path) as (admin, _, http, base, _hub):
        assert (await admin.post("/api/v1/faq/import", {"content": content}))["created"] == ["hello"]
        assert (await admin.get("/api/v1/faq/hello"))["answer"] == "Welcome 😊"
        message = await error(
            http,
            "POST",
            f"{base}/api/v1/faq/import",
            422,
            json={"content": '[{"id": "bye", "questions": ["bye"], "answer": "Bye \\ud83d"}]'},
            headers=admin.headers,
        )
        assert message.startswith("content: entry 1 (id 'bye'): answer: has half of a \\uXXXX surrogate pair")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"format": "csv", "content": "id,question,answer\n"}, "content has no entries, only the header row"),
        ({"content": "[]"}, "content has no entries"),
    ],
)
async def test_replace_with_content_of_no_entries_is_refused(
    tmp_path: Path, body: dict[str, Any], problem: str
) -> None:
    async with api(tmp_path) as (admin, _, http, base, _hub):
        await admin.post("/api/v1/faq", ENTRY, 201)
        url = f"{base}/api/v1/faq/import"
        assert await error(http, "POST", url, 422, json={**body, "replace": True}, headers=admin.headers) == problem
        assert [e["id"] for e in (await admin.get("/api/v1/faq"))["items"]] == ["gift-cards"]


async def test_delete_with_the_version_read_refuses_an_entry_changed_since(tmp_path: Path) -> None:
    async with api(tmp_path) as (admin, _, http, base, _hub):
        await admin.post("/api/v1/faq", ENTRY, 201)
        await admin.put("/api/v1/faq/gift-cards", {**ENTRY, "answer": "Edited by A", "version": 1})
        url = f"{base}/api/v1/faq/gift-cards"
        message = await error(http, "DELETE", f"{url}?version=1", 409, headers=admin.headers)
        assert message.startswith("knowledge-base entry 'gift-cards' is at version 2, not version 1 that you read")
        assert (await admin.get("/api/v1/faq/gift-cards"))["answer"] == "Edited by A"
        for bad in ("0", "two", "-1", "1.5"):
            message = await error(http, "DELETE", f"{url}?version={bad}", 400, headers=admin.headers)
            assert message.startswith("version must be a whole number from 1")
        async with http.delete(f"{url}?version=2", headers=admin.headers) as r:
            assert r.status == 204
        assert "does not exist" in await error(http, "DELETE", f"{url}?version=3", 404, headers=admin.headers)
        spec = await admin.get("/api/openapi.json")
        operation = spec["paths"]["/api/v1/faq/{key}"]["delete"]
        assert [p["name"] for p in operation["parameters"]] == ["key", "version"]
        assert "409" in operation["responses"]


async def test_import_body_may_be_larger_than_the_servers_usual_limit(tmp_path: Path) -> None:
    # Escaped as most clients send it (\uXXXX for each Persian letter), a
    # Persian knowledge base of ~400,000 characters is a body of 2 MB.
    entries = [
        {"id": f"e{n}", "questions": [f"سؤال شماره {n} درباره ارسال"], "answer": "پاسخ " * 60} for n in range(1200)
    ]
    content = yaml.safe_dump(entries, allow_unicode=True)
    async with api(tmp_path, **{"server.max_body_bytes": 1_048_576}) as (admin, _, http, base, _hub):
        import json

        body = json.dumps({"content": content})
        assert len(body) > 1_048_576
        headers = {**admin.headers, "Content-Type": "application/json"}
        async with http.post(f"{base}/api/v1/faq/import", data=body, headers=headers) as r:
            assert r.status == 200, (await r.text())[:300]
        # Other routes keep the usual limit.
        async with http.post(f"{base}/api/v1/faq", data=body, headers=headers) as r:
            assert r.status == 413
        from hub.web.faq import IMPORT_MAX_BODY

        too_big = json.dumps({"content": "x" * (IMPORT_MAX_BODY - 10)})
        async with http.post(f"{base}/api/v1/faq/import", data=too_big, headers=headers) as r:
            assert r.status == 413
        schema = (await admin.get("/api/openapi.json"))["components"]["schemas"]["FaqImportIn"]
        assert schema["properties"]["content"]["maxLength"] == 2_000_000
