"""Email end to end against real servers: Dovecot serves the mailbox the hub
reads over IMAP (messages are APPENDed to it as a mail server would deliver
them), aiosmtpd receives what the hub sends over SMTP, and an agent works
through the HTTP API."""

from __future__ import annotations

import asyncio
import email.policy
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select, update

from channels.email import parse_email
from hub.attachments import AttachmentStore
from hub.config import HubConfig, load_config
from hub.core import utcnow
from hub.mail import MailboxPoller, sync_email_inboxes
from storage.db import Database
from storage.migrate import upgrade_async
from storage.models import MailboxCheckpoint, Message, Ticket, TicketEventRow
from tests.hub.helpers import Agent, add_agent, running_hub
from tests.mailservers import PASSWORD, USER, Dovecot, SmtpServer, eventually
from tests.services import shared_data

pytestmark = pytest.mark.slow

ADMIN = "admin@example.com"
PASSWORD_ENV = "HUB_TEST_MAIL_PASSWORD"


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    server = Dovecot()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def hub_config(tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer, **box: Any) -> HubConfig:
    mailbox: dict[str, Any] = {
        "address": USER,
        "display_name": "Acme Support",
        "first_sync": "all",
        "imap": {"host": "127.0.0.1", "port": dovecot.port, "security": "none", "user": USER},
        "smtp": {"host": "127.0.0.1", "port": smtp_server.port, "security": "none"},
    }
    for side in ("imap", "smtp"):
        mailbox[side] = {**mailbox[side], **box.pop(side, {})}
    mailbox["imap"].setdefault("password_env", PASSWORD_ENV)
    mailbox.update(box)
    return load_config(
        path=None,
        env={"HUB_SECRET_KEY": "test-secret", PASSWORD_ENV: PASSWORD},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "workers.sweep_interval_seconds": 0.2,
            "workers.send_backoff_seconds": 0.05,
            "logging.level": "WARNING",
            "email.mailboxes": [mailbox],
            "email.lease_seconds": 6,
            "email.reconnect_backoff_seconds": 0.2,
            "email.reconnect_backoff_max_seconds": 1,
        },
    )


def customer_mail(
    subject: str,
    body: str,
    *,
    sender: str = "Sara Ahmadi <sara@customer.test>",
    msgid: str | None = None,
    **headers: str,
) -> tuple[bytes, str]:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = f"Acme Support <{USER}>"
    msg["Subject"] = subject
    mid = msgid or make_msgid(domain="customer.test")
    msg["Message-ID"] = mid
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes(), mid.strip("<>")


async def count(db: Database, model: type, *where: Any) -> int:
    async with db.read() as s:
        return int(await s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


@pytest.fixture
async def agent_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


async def test_a_mailbox_becomes_a_shared_inbox(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpServer, agent_http: aiohttp.ClientSession
) -> None:
    config = hub_config(tmp_path, dovecot, smtp)
    await upgrade_async(config.database_url)
    await add_agent(config, ADMIN)
    async with running_hub(config) as server:
        base = str(server.make_url("")).rstrip("/")
        agent = await Agent.login(agent_http, base, ADMIN)

        async def tickets() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = (await agent.get("/api/v1/tickets?channel=email"))["items"]
            return items

        # A customer writes (in Persian, with quoted history and a signature).
        raw, first_id = customer_mail(
            "سفارش ۱۲۳ نرسیده",
            "سلام، سفارش من هنوز نرسیده.\n\n-- \nسارا\n\n"
            "On Mon, 3 Mar 2025 at 10:12, Shop <shop@x.test> wrote:\n> old\n",
        )
        await dovecot.append_async(raw)
        (ticket,) = await eventually(tickets, what="the first email's ticket")
        assert ticket["subject"] == "سفارش ۱۲۳ نرسیده" and ticket["channel"] == "email"
        detail = await agent.get(f"/api/v1/tickets/{ticket['id']}")
        (message,) = detail["messages"]
        assert message["body"] == "سلام، سفارش من هنوز نرسیده."
        assert message["external_id"] == first_id
        assert message["email"]["signature"] == "-- \nسارا" and message["email"]["quoted"].startswith("On Mon")
        original = await agent_http.get(f"{base}{message['email']['original_url']}")
        assert await original.read() == raw

        # The agent answers; the customer's mail client receives a threaded reply.
        await agent.post(f"/api/v1/tickets/{ticket['id']}/messages", {"body": "سلام سارا، بررسی می‌کنیم."}, 201)
        (sent,) = await smtp.received(1)
        assert sent["In-Reply-To"] == f"<{first_id}>"
        assert sent["References"] == f"<{first_id}>"
        assert sent["Subject"] == f"Re: سفارش ۱۲۳ نرسیده [#{ticket['id']}]"
        assert str(sent["From"]) == f"Acme Support <{USER}>"
        assert sent["To"].addresses[0].addr_spec == "sara@customer.test"
        assert sent.get_content_type() == "multipart/alternative"
        ours = sent["Message-ID"].strip("<>")

        async def reply_sent() -> dict[str, Any] | None:
            msgs = (await agent.get(f"/api/v1/tickets/{ticket['id']}"))["messages"]
            out = [m for m in msgs if m["direction"] == "out" and m["status"] == "sent"]
            return out[0] if out else None

        reply = await eventually(reply_sent, what="the reply marked sent")
        assert reply["external_id"] == ours

        # The customer answers it: same ticket. Then writes about something else: new ticket.
        raw, _ = customer_mail(
            f"Re: {sent['Subject']}", "ممنون!", In_Reply_To=f"<{ours}>", References=f"<{first_id}> <{ours}>"
        )
        await dovecot.append_async(raw)
        raw, _ = customer_mail("Invoice address", "Please change my invoice address.")
        await dovecot.append_async(raw)
        # Outlook, headers rewritten, only our token left in the subject.
        raw, _ = customer_mail(f"RE: anything [#{ticket['id']}]", "one more thing", sender="sara@customer.test")
        await dovecot.append_async(raw)

        async def settled() -> list[dict[str, Any]] | None:
            items = await tickets()
            return items if len(items) == 2 and (await count_messages(agent, ticket["id"])) == 4 else None

        items = await eventually(settled, what="threads")
        assert {t["subject"] for t in items} == {"سفارش ۱۲۳ نرسیده", "Invoice address"}

        # An out-of-office answer is stored and marked, never a conversation for the bot.
        raw, _ = customer_mail(
            f"Automatic reply: {sent['Subject']}", "I am away", In_Reply_To=f"<{ours}>", Auto_Submitted="auto-replied"
        )
        await dovecot.append_async(raw)
        msgs = await eventually(lambda: auto_replies(agent, ticket["id"]), what="the auto-reply")
        assert msgs[0]["auto_reply"] == "Auto-Submitted: auto-replied"

        # The second reply bounces: it turns failed with the server's reason.
        await agent.post(f"/api/v1/tickets/{ticket['id']}/messages", {"body": "Any news?"}, 201)
        second = (await smtp.received(2))[1]
        bounce = dsn(second["Message-ID"].strip("<>"))
        await dovecot.append_async(bounce)

        async def failed() -> dict[str, Any] | None:
            msgs = (await agent.get(f"/api/v1/tickets/{ticket['id']}"))["messages"]
            done = [m for m in msgs if m["status"] == "failed"]
            return done[0] if done else None

        bounced = await eventually(failed, what="the bounce")
        assert bounced["body"] == "Any news?" and "550 5.1.1" in bounced["status_reason"]
        assert len(await tickets()) == 2  # the bounce is no conversation


async def count_messages(agent: Agent, ticket_id: int) -> int:
    return len((await agent.get(f"/api/v1/tickets/{ticket_id}"))["messages"])


async def auto_replies(agent: Agent, ticket_id: int) -> list[dict[str, Any]]:
    return [m for m in (await agent.get(f"/api/v1/tickets/{ticket_id}"))["messages"] if m.get("auto_reply")]


def dsn(original_id: str) -> bytes:
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.customer.test>\r\n"
        f"To: {USER}\r\nSubject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\n"
        f"Message-ID: {make_msgid(domain='mx.customer.test')}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nThis is the mail system.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.customer.test\r\n\r\n"
        "Final-Recipient: rfc822; sara@customer.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <sara@customer.test>: Recipient address rejected: User unknown\r\n"
        "\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: <{original_id}>\r\nSubject: x\r\n\r\n--B--\r\n"
    ).encode()


async def test_every_cpython_sample_arrives_over_imap(tmp_path: Path, dovecot: Dovecot, smtp: SmtpServer) -> None:
    samples = sorted(shared_data("email", "cpython_test_email").glob("msg_*.txt"))
    raws = [p.read_bytes() for p in samples]
    parsed = [parse_email(raw) for raw in raws]
    # The samples' bounces are about mail this hub never sent: kept as messages.
    conversations = {p.key for p in parsed}
    for raw in raws:
        await dovecot.append_async(raw)
    config = hub_config(tmp_path, dovecot, smtp)
    async with running_hub(config):
        db = Database(config.database_url)
        try:

            async def all_read() -> bool:
                async with db.read() as s:
                    last = await s.scalar(select(MailboxCheckpoint.last_uid))
                return last == len(raws)

            await eventually(all_read, what="all 49 samples read")
            async with db.read() as s:
                stored = set((await s.scalars(select(Message.external_id).where(Message.channel == "email"))).all())
        finally:
            await db.dispose()
    # Every sample is stored (the samples share some Message-IDs: those are
    # one message).
    assert stored == conversations


async def test_restarts_lose_nothing_and_repeat_nothing(tmp_path: Path, dovecot: Dovecot, smtp: SmtpServer) -> None:
    config = hub_config(tmp_path, dovecot, smtp)
    db = Database(config.database_url)
    expected: set[str] = set()

    async def stored() -> set[str]:
        async with db.read() as s:
            found = await s.scalars(select(Message.external_id).where(Message.channel == "email"))
            return {mid for mid in found.all() if mid}

    async def deliver(n: int, start: int) -> None:
        for i in range(start, start + n):
            raw, mid = customer_mail(f"Question {i}", f"question number {i}", sender=f"c{i % 3}@customer.test")
            expected.add(mid)
            await dovecot.append_async(raw)

    try:
        async with running_hub(config):
            await deliver(10, 0)
            await eventually(lambda: _at_least(stored, 3), what="some messages")
            # The IMAP server goes away mid-stream and comes back.
            await asyncio.to_thread(dovecot.restart)
            await deliver(5, 10)
            await eventually(lambda: _equals(stored, expected), what="all 15 after the server restart")
        # Mail that arrives while the hub is down is read when it is back.
        await deliver(4, 15)
        async with running_hub(config):
            await eventually(lambda: _equals(stored, expected), what="all 19 after the hub restart")
            await asyncio.sleep(1)
        assert await count(db, Message, Message.channel == "email") == 19
        async with db.read() as s:
            assert await s.scalar(select(MailboxCheckpoint.last_uid)) == 19
    finally:
        await db.dispose()


async def _at_least(stored: Any, n: int) -> bool:
    return len(await stored()) >= n


async def _equals(stored: Any, expected: set[str]) -> bool:
    return bool(await stored() == expected)


async def test_uidvalidity_change_rereads_without_duplicates(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpServer
) -> None:
    # The poller re-checks the folder every poll interval, IDLE or not.
    config = hub_config(tmp_path, dovecot, smtp, imap={"folder": "Support", "poll_interval_seconds": 2})
    mails = [customer_mail(f"Topic {i}", f"text {i}") for i in range(3)]
    for raw, _ in mails:
        await dovecot.append_async(raw, "Support")
    db = Database(config.database_url)
    try:
        async with running_hub(config):
            await eventually(lambda: _count_is(db, 3), what="the first three")
            before = await asyncio.to_thread(dovecot.uidvalidity, "Support")
            # The folder is rebuilt (a migration, a restored backup): same
            # messages, new UIDs, new UIDVALIDITY; plus one new message.
            await asyncio.to_thread(dovecot.recreate, "Support")
            extra = customer_mail("Topic new", "brand new")
            for raw, _ in [*mails, extra]:
                await dovecot.append_async(raw, "Support")
            after = await asyncio.to_thread(dovecot.uidvalidity, "Support")
            assert after != before

            async def caught_up() -> bool:
                async with db.read() as s:
                    cp = await s.scalar(select(MailboxCheckpoint))
                return cp is not None and cp.uidvalidity == after and cp.last_uid == 4

            await eventually(caught_up, what="the checkpoint on the new UIDVALIDITY")
        assert await count(db, Message, Message.channel == "email") == 4
        assert await count(db, Ticket, Ticket.channel == "email") == 4
    finally:
        await db.dispose()


async def _count_is(db: Database, n: int) -> bool:
    return await count(db, Message, Message.channel == "email") == n


async def test_first_sync_new_reads_only_new_mail(tmp_path: Path, dovecot: Dovecot, smtp: SmtpServer) -> None:
    old, _ = customer_mail("Old", "from last year")
    await dovecot.append_async(old)
    config = hub_config(tmp_path, dovecot, smtp, first_sync="new")
    db = Database(config.database_url)
    try:
        async with running_hub(config):

            async def checkpointed() -> bool:
                async with db.read() as s:
                    return await s.scalar(select(MailboxCheckpoint.last_uid)) == 1

            await eventually(checkpointed, what="the first checkpoint")
            new, mid = customer_mail("New", "today")
            await dovecot.append_async(new)
            await eventually(lambda: _count_is(db, 1), what="the new message")
        async with db.read() as s:
            assert (await s.scalars(select(Message.external_id))).all() == [mid]
    finally:
        await db.dispose()


async def test_smtp_temporary_errors_retry_and_permanent_ones_fail(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpServer, agent_http: aiohttp.ClientSession
) -> None:
    config = hub_config(tmp_path, dovecot, smtp, smtp={"user": USER, "password_env": PASSWORD_ENV})
    await upgrade_async(config.database_url)
    await add_agent(config, ADMIN)
    raw, _ = customer_mail("Help", "please")
    await dovecot.append_async(raw)
    smtp.sink.data_replies = ["451 4.3.0 Mail server temporarily rejected message", "421 4.7.0 Try again later"]
    async with running_hub(config) as server:
        base = str(server.make_url("")).rstrip("/")
        agent = await Agent.login(agent_http, base, ADMIN)
        items = await eventually(lambda: _items(agent), what="the ticket")
        tid = items[0]["id"]
        await agent.post(f"/api/v1/tickets/{tid}/messages", {"body": "first try fails twice"}, 201)
        (delivered,) = await smtp.received(1)
        assert delivered["Subject"] == f"Re: Help [#{tid}]"
        assert smtp.sink.logins  # logged in with the configured user and password

        smtp.sink.rcpt_replies["sara@customer.test"] = "550 5.1.1 <sara@customer.test>: mailbox unavailable"
        await agent.post(f"/api/v1/tickets/{tid}/messages", {"body": "this one bounces at once"}, 201)

        async def failed() -> dict[str, Any] | None:
            msgs = (await agent.get(f"/api/v1/tickets/{tid}"))["messages"]
            done = [m for m in msgs if m["status"] == "failed"]
            return done[0] if done else None

        message = await eventually(failed, what="the permanent failure")
        assert message["status_reason"] == "550 5.1.1 <sara@customer.test>: mailbox unavailable"
        assert len(smtp.sink.messages) == 1


async def _items(agent: Agent) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await agent.get("/api/v1/tickets?channel=email"))["items"]
    return items


async def test_tls_and_login_on_both_sides(tmp_path: Path, dovecot: Dovecot, agent_http: aiohttp.ClientSession) -> None:
    secure = SmtpServer(tls=(dovecot.cert, dovecot.key))
    secure.start()
    try:
        config = hub_config(
            tmp_path,
            dovecot,
            secure,
            imap={"port": dovecot.tls_port, "security": "tls", "ca_file": str(dovecot.cert)},
            smtp={"security": "starttls", "user": USER, "password_env": PASSWORD_ENV, "ca_file": str(dovecot.cert)},
        )
        await upgrade_async(config.database_url)
        await add_agent(config, ADMIN)
        raw, _ = customer_mail("Over TLS", "secret stuff")
        await dovecot.append_async(raw)
        async with running_hub(config) as server:
            base = str(server.make_url("")).rstrip("/")
            agent = await Agent.login(agent_http, base, ADMIN)
            (ticket,) = await eventually(lambda: _items(agent), what="the ticket over IMAPS")
            await agent.post(f"/api/v1/tickets/{ticket['id']}/messages", {"body": "over STARTTLS"}, 201)
            (sent,) = await secure.received(1)
            assert sent["Subject"] == f"Re: Over TLS [#{ticket['id']}]"
            assert secure.sink.logins
    finally:
        secure.stop()


async def test_one_poller_per_mailbox_and_takeover(tmp_path: Path, dovecot: Dovecot, smtp: SmtpServer) -> None:
    """Two worker processes' pollers on one mailbox: one reads, the other
    stands by and takes over when the first dies."""
    config = hub_config(tmp_path, dovecot, smtp)
    await upgrade_async(config.database_url)
    db = Database(config.database_url)
    store = AttachmentStore(config.attachments_dir, max_bytes=config.attachments.max_bytes)
    pool = ThreadPoolExecutor(max_workers=2)
    box = config.email.mailboxes[0]
    try:
        async with db.write() as session:
            await sync_email_inboxes(session, config.email)
        first = MailboxPoller(box, config.email, db, store, pool, owner="worker-1")
        second = MailboxPoller(box, config.email, db, store, pool, owner="worker-2")
        task1 = asyncio.create_task(first.run())
        await eventually(lambda: _holder(db, "worker-1"), what="worker-1 holding the lease")
        task2 = asyncio.create_task(second.run())
        for i in range(6):
            await dovecot.append_async(customer_mail(f"Q{i}", "?")[0])
        await eventually(lambda: _count_is(db, 6), what="six messages")
        assert (first.imported, second.imported) == (6, 0)
        # worker-1 dies without a word (its lease is not released).
        first.interrupt()
        task1.cancel()
        await asyncio.gather(task1, return_exceptions=True)
        async with db.write() as session:
            await session.execute(
                update(MailboxCheckpoint).values(
                    lease_owner="worker-1", lease_until=utcnow() + timedelta(seconds=config.email.lease_seconds)
                )
            )
        for i in range(6, 9):
            await dovecot.append_async(customer_mail(f"Q{i}", "?")[0])
        await eventually(lambda: _count_is(db, 9), timeout=45, what="worker-2 taking over")
        assert second.imported == 3
        second.interrupt()
        task2.cancel()
        await asyncio.gather(task2, return_exceptions=True)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        await db.dispose()


async def _holder(db: Database, owner: str) -> bool:
    async with db.read() as s:
        return await s.scalar(select(MailboxCheckpoint.lease_owner)) == owner


async def test_a_bot_inbox_leaves_automatic_mail_to_people(tmp_path: Path, dovecot: Dovecot, smtp: SmtpServer) -> None:
    config = hub_config(tmp_path, dovecot, smtp, bot_enabled=True)
    await dovecot.append_async(customer_mail("Pricing?", "How much is it?", sender="lead@customer.test")[0])
    await dovecot.append_async(
        customer_mail("Out of office", "I am away", sender="away@customer.test", Auto_Submitted="auto-replied")[0]
    )
    db = Database(config.database_url)
    try:
        async with running_hub(config):

            async def routed() -> dict[str, list[str]] | None:
                # What happened to each ticket: the router gives the customer's
                # mail to the bot (pending; with an empty knowledge base the bot
                # then hands off), and leaves the out-of-office to people.
                async with db.read() as s:
                    rows = (
                        await s.execute(
                            select(Ticket.subject, TicketEventRow.actor, TicketEventRow.kind)
                            .join(TicketEventRow, TicketEventRow.ticket_id == Ticket.id)
                            .order_by(TicketEventRow.id)
                        )
                    ).all()
                seen: dict[str, list[str]] = {}
                for subject, actor, kind in rows:
                    seen.setdefault(subject or "", []).append(f"{actor}:{kind}")
                done = "bot:ticket.handoff" in seen.get("Pricing?", []) and "Out of office" in seen
                return seen if done else None

            seen = await eventually(routed, what="the bot took the customer's mail")
            async with db.read() as s:
                bot_replies = (
                    await s.execute(
                        select(Ticket.subject, func.count())
                        .join(Message, Message.ticket_id == Ticket.id)
                        .where(Message.author == "bot", Message.private.is_(False))
                        .group_by(Ticket.subject)
                    )
                ).all()
        assert "router:ticket.routed" in seen["Pricing?"]
        assert seen["Out of office"] == ["contact:ticket.created"]
        assert {subject for subject, _ in bot_replies} == {"Pricing?"}
    finally:
        await db.dispose()


async def test_uidvalidity_change_with_first_sync_new_skips_the_history(
    tmp_path: Path, dovecot: Dovecot, smtp: SmtpServer
) -> None:
    config = hub_config(
        tmp_path, dovecot, smtp, first_sync="new", imap={"folder": "Support", "poll_interval_seconds": 2}
    )
    # Last year's mail, there before the hub ever connected.
    last_year = utcnow() - timedelta(days=365)
    history = [customer_mail(f"Old {i}", f"history {i}") for i in range(2)]

    def append(raw: bytes, at: Any = None) -> None:
        with dovecot.client() as c:
            if not c.folder_exists("Support"):
                c.create_folder("Support")
            c.append("Support", raw, msg_time=at)

    for raw, _ in history:
        await asyncio.to_thread(append, raw, last_year)
    db = Database(config.database_url)
    try:
        async with running_hub(config):

            async def checkpointed() -> bool:
                async with db.read() as s:
                    return await s.scalar(select(MailboxCheckpoint.last_uid)) == 2

            await eventually(checkpointed, what="the first checkpoint")
            since_hub, since_hub_id = customer_mail("Since the hub", "after the first connection")
            await asyncio.to_thread(append, since_hub)
            await eventually(lambda: _count_is(db, 1), what="the mail after the first connection")
            # The folder is rebuilt by a migration that keeps each message's
            # arrival time (INTERNALDATE): the history, the mail the hub
            # already has, and one new message.
            await asyncio.to_thread(dovecot.recreate, "Support")
            for raw, _ in history:
                await asyncio.to_thread(append, raw, last_year)
            await asyncio.to_thread(append, since_hub)
            extra, extra_id = customer_mail("Brand new", "after the migration")
            await asyncio.to_thread(append, extra)
            after = await asyncio.to_thread(dovecot.uidvalidity, "Support")

            async def caught_up() -> bool:
                async with db.read() as s:
                    cp = await s.scalar(select(MailboxCheckpoint))
                return cp is not None and cp.uidvalidity == after and cp.last_uid == 4

            await eventually(caught_up, what="the checkpoint on the new UIDVALIDITY")
        async with db.read() as s:
            stored = set((await s.scalars(select(Message.external_id).where(Message.channel == "email"))).all())
        assert stored == {since_hub_id, extra_id}
        assert await count(db, Ticket, Ticket.channel == "email") == 2
    finally:
        await db.dispose()
