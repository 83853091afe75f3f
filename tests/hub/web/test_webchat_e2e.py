"""The spine end to end: a visitor's web chat message reaches an agent, the
agent's reply comes back, and the conversation survives a reconnect."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from hub.web.schemas import ContactDetail, MessageOut, TicketDetail, TicketList, Timeline
from tests.hub.helpers import Agent, add_agent, make_config, next_frame, running_hub


async def test_visitor_to_agent_and_back(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            agent = await Agent.login(http, base, "ana@example.com")
            async with agent.events() as events, http.ws_connect(f"{base}/chat/ws") as visitor:
                session = await next_frame(visitor, "session")
                token = session["visitor_token"]
                assert session["ticket_id"] is None

                await visitor.send_json({"type": "message", "text": "سلام، کمک می‌خواهم", "client_id": "c1"})
                ack = await next_frame(visitor, "message", client_id="c1")
                assert ack["author"] == "contact"
                assert ack["text"] == "سلام، کمک می‌خواهم"

                live = await next_frame(events, "message.received", message__id=ack["id"])
                ticket_id = live["ticket"]["id"]
                assert live["message"]["body"] == "سلام، کمک می‌خواهم"
                assert live["ticket_created"] is True

                listing = TicketList.model_validate(await agent.get("/api/v1/tickets?status=open"))
                assert [t.id for t in listing.items] == [ticket_id]
                assert listing.items[0].channel == "webchat"

                reply = MessageOut.model_validate(
                    await agent.post(f"/api/v1/tickets/{ticket_id}/messages", {"body": "Hello! چطور کمک کنم؟"}, 201)
                )
                assert reply.direction == "out"
                assert reply.status == "queued"
                got = await next_frame(visitor, "message", id=reply.id)
                assert got["author"] == "agent"
                assert got["text"] == "Hello! چطور کمک کنم؟"

                # The widget acknowledges what it showed: the agent sees "delivered".
                await visitor.send_json({"type": "ack", "id": reply.id})
                status = await next_frame(events, "message.status", message__id=reply.id, message__status="delivered")
                assert status["message"]["delivered_at"]

                # A private note never reaches the visitor.
                await agent.post(f"/api/v1/tickets/{ticket_id}/messages", {"body": "VIP?", "private": True}, 201)

            # Later: the visitor comes back with their token.
            async with http.ws_connect(f"{base}/chat/ws?token={token}") as again:
                session2 = await next_frame(again, "session")
                assert session2["ticket_id"] == ticket_id
                history = [await next_frame(again, "message") for _ in range(2)]
                assert [m["text"] for m in history] == ["سلام، کمک می‌خواهم", "Hello! چطور کمک کنم؟"]
                await again.send_json({"type": "message", "text": "thanks", "client_id": "c2"})
                await next_frame(again, "message", client_id="c2")

            detail = TicketDetail.model_validate(await agent.get(f"/api/v1/tickets/{ticket_id}"))
            assert [m.body for m in detail.messages] == [
                "سلام، کمک می‌خواهم",
                "Hello! چطور کمک کنم؟",
                "VIP?",
                "thanks",
            ]
            assert [m.private for m in detail.messages] == [False, False, True, False]
            assert detail.first_response_at is not None
            contact = ContactDetail.model_validate(await agent.get(f"/api/v1/contacts/{detail.contact_id}"))
            assert contact.identities[0].channel == "webchat"
            timeline = Timeline.model_validate(await agent.get(f"/api/v1/contacts/{detail.contact_id}/timeline"))
            assert timeline.items[0].message is not None
            assert timeline.items[0].message.body == "thanks"


async def test_resent_frame_is_stored_once(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/chat/ws") as visitor:
            await next_frame(visitor, "session")
            for _ in range(3):
                await visitor.send_json({"type": "message", "text": "once", "client_id": "same"})
            acks = [await next_frame(visitor, "message", client_id="same") for _ in range(3)]
            assert len({a["id"] for a in acks}) == 1
            agent = await Agent.login(http, base, "ana@example.com")
            (ticket,) = (await agent.get("/api/v1/tickets"))["items"]
            detail = await agent.get(f"/api/v1/tickets/{ticket['id']}")
            assert [m["body"] for m in detail["messages"]] == ["once"]


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        ("not json", "not valid JSON"),
        ('{"type": "message", "client_id": "x"}', "text"),
        ('{"type": "message", "text": "hi"}', "client_id"),
        ('{"type": "message", "text": "hi", "client_id": "x", "admin": true}', "unknown field"),
        ('{"type": "explode"}', "unknown frame type"),
        ('["a"]', "JSON object"),
        # Nothing but NUL, which every inbound message drops: empty.
        ('{"type": "message", "text": "\\u0000\\u0000", "client_id": "n"}', "non-empty string 'text'"),
        # A lone surrogate escape is not text; no database stores it.
        ('{"type": "message", "text": "hi \\ud800", "client_id": "s"}', "text holds a lone surrogate"),
        ('{"type": "message", "text": "hi", "client_id": "c\\udc00"}', "client_id holds a lone surrogate"),
    ],
)
async def test_bad_frames_get_a_clear_error_and_store_nothing(tmp_path: Path, frame: str, needle: str) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{base}/chat/ws") as visitor:
                await next_frame(visitor, "session")
                await visitor.send_str(frame)
                error = await next_frame(visitor, "error")
                assert needle in error["message"]
            agent = await Agent.login(http, base, "ana@example.com")
            assert (await agent.get("/api/v1/tickets"))["items"] == []


async def test_forged_visitor_token_is_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server:
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            # Refused after the upgrade, where a browser can read why.
            async with http.ws_connect(f"{base}/chat/ws?token=abc.def") as visitor:
                error = await visitor.receive_json()
                assert error["type"] == "error" and error["code"] == "invalid_token"
                assert "connect without one" in error["message"]
                closing = await visitor.receive()
                assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 4401
            # As told: without the token, a new visitor.
            async with http.ws_connect(f"{base}/chat/ws") as visitor:
                session = await next_frame(visitor, "session")
                assert session["visitor_token"] != "abc.def" and session["ticket_id"] is None


async def test_bot_enabled_inbox_starts_tickets_pending_and_agent_reply_takes_over(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"bot.enabled": True})
    async with running_hub(config) as server:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            agent = await Agent.login(http, base, "ana@example.com")
            async with agent.events() as events, http.ws_connect(f"{base}/chat/ws") as visitor:
                await next_frame(visitor, "session")
                await visitor.send_json({"type": "message", "text": "price?", "client_id": "p"})
                ack = await next_frame(visitor, "message", client_id="p")
                # Two live events, in either order: the message (whose ticket the
                # router already moved to pending) and the routing itself.
                seen: dict[str, dict[str, object]] = {}
                while len(seen) < 2:
                    frame = await next_frame(events, "*")
                    if frame["type"] in ("ticket.routed", "message.received"):
                        seen[str(frame["type"])] = frame
                routed, received = seen["ticket.routed"], seen["message.received"]
                assert routed["ticket"]["status"] == "pending"  # type: ignore[index]
                assert routed["data"]["reason"] == "the bot answers first on this inbox"  # type: ignore[index]
                assert received["message"]["id"] == ack["id"]  # type: ignore[index]
                assert received["ticket"]["status"] == "pending"  # type: ignore[index]
                tid = routed["ticket"]["id"]  # type: ignore[index]
                await agent.post(f"/api/v1/tickets/{tid}/messages", {"body": "I can help"}, 201)
                assert (await agent.get(f"/api/v1/tickets/{tid}"))["status"] == "open"
        # Every change has its audit entry, naming who did it.
        from sqlalchemy import select

        from storage.db import Database
        from storage.models import AuditLog

        db = Database(config.database_url)
        try:
            async with db.read() as s:
                actions = [(a.action, a.actor) for a in (await s.scalars(select(AuditLog))).all()]
        finally:
            await db.dispose()
        assert ("agent.login", "agent:1") in actions
        assert ("message.reply", "agent:1") in actions


async def test_agent_socket_answers_ping_and_names_bad_frames(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            agent = await Agent.login(http, base, "ana@example.com")
            async with agent.events() as events:
                await events.send_json({"type": "ping"})
                await next_frame(events, "pong")
                await events.send_str("{oops")
                assert "not valid JSON" in (await next_frame(events, "error"))["message"]
            async with http.get(f"{base}/api/v1/events") as r:
                assert r.status == 401


async def test_quick_replies_reach_the_visitor_and_the_choice_comes_back(tmp_path: Path) -> None:
    from sqlalchemy import select

    from hub.actions import do_post_message
    from hub.app import HUB
    from hub.core import Author, QuickReply
    from storage.models import Ticket

    config = make_config(tmp_path)
    async with running_hub(config) as server:
        hub = server.app[HUB]
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/chat/ws") as visitor:
            await next_frame(visitor, "session")
            await visitor.send_json({"type": "message", "text": "how much?", "client_id": "c1"})
            ack = await next_frame(visitor, "message", client_id="c1")
            choices = (QuickReply(id="faq:pricing", title="Pricing"), QuickReply(id="faq:trial", title="Free trial"))
            assert ack["author"] == "contact"
            async with hub.db.write() as s:
                ticket = (await s.scalars(select(Ticket))).one()
                await do_post_message(s, ticket, body="Which one?", author=Author.BOT, quick_replies=choices)
            offered = await next_frame(visitor, "message", author="bot")
            assert offered["quick_replies"] == [q.model_dump() for q in choices]

            await visitor.send_json(
                {"type": "message", "text": "Pricing", "client_id": "c2", "quick_reply": "faq:pricing"}
            )
            await next_frame(visitor, "message", client_id="c2")
            await visitor.send_json({"type": "message", "text": "x", "client_id": "c3", "quick_reply": 5})
            error = await next_frame(visitor, "error")
            assert "quick_reply" in error["message"]
        async with hub.db.read() as s:
            from storage.queries import get_ticket

            view = await get_ticket(s, ticket.id)
        assert view is not None
        assert [m["quick_reply"] for m in view["messages"]] == [None, None, "faq:pricing"]
        assert view["messages"][1]["quick_replies"] == [q.model_dump() for q in choices]


async def test_a_visitors_other_tab_sees_what_they_wrote(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server:
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/chat/ws") as first:
            token = (await next_frame(first, "session"))["visitor_token"]
            # Alone, the tab gets its acknowledgement (and no echo of its own).
            await first.send_json({"type": "message", "text": "one tab", "client_id": "c1"})
            await next_frame(first, "message", client_id="c1")
            async with http.ws_connect(f"{base}/chat/ws?token={token}") as second:
                await next_frame(second, "session")
                await next_frame(second, "message", client_id="c1")  # from the history
                await first.send_json({"type": "message", "text": "two tabs", "client_id": "c2"})
                ack = await next_frame(first, "message", client_id="c2")
                echo = await next_frame(second, "message", client_id="c2")
                assert echo["id"] == ack["id"] and echo["text"] == "two tabs"
                assert "origin" not in echo


async def test_a_message_that_is_not_stored_is_named_by_its_client_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The widget keeps a message until the hub stores it: an error must say
    which message it is about, or the widget can neither offer to send it
    again nor stop resending one the hub will never take."""
    from hub.app import HUB
    from hub.core import InboundMessage
    from storage.ingest import IngestResult

    config = make_config(tmp_path, **{"webchat.max_message_chars": 10})
    async with running_hub(config) as server:
        hub = server.app[HUB]
        base = str(server.make_url("")).rstrip("/")
        real_submit = hub.batcher.submit
        failures: list[BaseException] = []

        async def flaky_submit(message: InboundMessage) -> IngestResult:
            if failures:
                raise failures.pop()
            return await real_submit(message)

        monkeypatch.setattr(hub.batcher, "submit", flaky_submit)
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/chat/ws") as visitor:
            assert (await next_frame(visitor, "session"))["widget"]["max_chars"] == 10

            await visitor.send_json({"type": "message", "text": "x" * 11, "client_id": "long"})
            error = await next_frame(visitor, "error")
            assert (error["code"], error["client_id"]) == ("invalid_frame", "long")
            assert "longer than 10" in error["message"]

            failures.append(ValueError("inbox 'web' is a sms inbox, not webchat"))
            await visitor.send_json({"type": "message", "text": "refused", "client_id": "no"})
            error = await next_frame(visitor, "error")
            assert (error["code"], error["client_id"]) == ("rejected", "no")

            failures.append(RuntimeError("the database went away"))
            await visitor.send_json({"type": "message", "text": "try again", "client_id": "again"})
            error = await next_frame(visitor, "error")
            assert (error["code"], error["client_id"]) == ("internal_error", "again")
            # As the error says: the same frame again is stored.
            await visitor.send_json({"type": "message", "text": "try again", "client_id": "again"})
            assert (await next_frame(visitor, "message", client_id="again"))["text"] == "try again"

            # Nothing to name: not a message frame, or no usable client_id.
            for frame in ({"type": "read", "id": "x"}, {"type": "message", "text": "hi", "client_id": 5}):
                await visitor.send_json(frame)
                assert "client_id" not in await next_frame(visitor, "error")


async def test_frames_that_cannot_be_handled_are_named_and_the_socket_stays(tmp_path: Path) -> None:
    """Each of these used to end the connection or ask the widget to resend
    a frame that could never work."""
    config = make_config(tmp_path, **{"webchat.max_message_chars": 20_000})
    async with running_hub(config) as server:
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/chat/ws") as visitor:
            await next_frame(visitor, "session")
            # The longest message the box takes, written as JSON escapes
            # (six bytes a character): within the socket's frame limit.
            await visitor.send_json({"type": "message", "text": "\x01" * 20_000, "client_id": "long"})
            assert len((await next_frame(visitor, "message", client_id="long"))["text"]) == 20_000
            # Its client_id cannot be sent back: an error all the same, and the socket stays.
            await visitor.send_str('{"type": "message", "text": "ok", "client_id": "c\\ud800"}')
            error = await next_frame(visitor, "error")
            assert error["code"] == "invalid_frame" and "client_id" not in error
            for bad in (2**64, True, -1, "7"):
                await visitor.send_json({"type": "ack", "id": bad})
                error = await next_frame(visitor, "error")
                assert error["code"] == "invalid_frame", bad
            await visitor.send_json({"type": "identify", "name": "Sa\ud800ra"}, dumps=_ascii_json)
            error = await next_frame(visitor, "error")
            assert (error["code"], error["field"]) == ("invalid_field", "name")
            await visitor.send_json({"type": "ping"})
            await next_frame(visitor, "pong")


def _ascii_json(value: object) -> str:
    import json

    return json.dumps(value)  # escapes the lone surrogate as \\ud800, as a browser's would not


async def test_an_agents_frame_that_fails_keeps_the_live_feed(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            agent = await Agent.login(http, base, "ana@example.com")
            async with agent.events() as events:
                await events.send_json({"type": "typing", "ticket_id": 2**64})
                error = await next_frame(events, "error")
                assert error["code"] == "invalid_frame" and "ticket_id" in error["message"]
                await events.send_json({"type": "ping"})
                await next_frame(events, "pong")


async def test_a_visitor_merged_while_connected_still_marks_replies_read(tmp_path: Path) -> None:
    """The socket knew the visitor's contact from when it connected; after an
    agent merged that contact into another, every ack and read was ignored."""
    config = make_config(tmp_path)
    async with running_hub(config) as server, aiohttp.ClientSession() as http:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        agent = await Agent.login(http, base, "ana@example.com")
        async with http.ws_connect(f"{base}/chat/ws") as earlier:
            await next_frame(earlier, "session")
            await earlier.send_json({"type": "message", "text": "old", "client_id": "o1"})
            kept = (await next_frame(earlier, "message", client_id="o1"))["id"]
        kept_contact = (await agent.get("/api/v1/tickets"))["items"][0]["contact_id"]
        async with agent.events() as events, http.ws_connect(f"{base}/chat/ws") as visitor:
            await next_frame(visitor, "session")
            await visitor.send_json({"type": "message", "text": "hi", "client_id": "c1"})
            ack = await next_frame(visitor, "message", client_id="c1")
            live = await next_frame(events, "message.received", message__id=ack["id"])
            source, tid = live["message"]["contact_id"], live["ticket"]["id"]
            assert source != kept_contact and kept != ack["id"]
            await agent.post(f"/api/v1/contacts/{kept_contact}/merge", {"source_id": source})
            reply = await agent.post(f"/api/v1/tickets/{tid}/messages", {"body": "hello"}, 201)
            await next_frame(visitor, "message", id=reply["id"])
            await visitor.send_json({"type": "read", "id": reply["id"]})
            await next_frame(events, "message.status", message__id=reply["id"], message__status="read")
