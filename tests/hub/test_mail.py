"""Email in the hub without servers: threading, reopening, receipts, the
pollers' leases and the reply headers, on SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

import hub.mail
from channels.base import SEND_PARTS
from channels.email import parse_email, reply_addresses
from channels.email_imap import Fetched, FolderState
from hub.actions import do_post_message, do_set_status
from hub.attachments import AttachmentStore
from hub.config import load_config
from hub.core import Author, Channel, DeliveryReceipt, DeliveryStatus, TicketStatus, utcnow
from hub.mail import MailboxPoller, do_ingest_email, do_record_receipt, save_files, sync_email_inboxes
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.mail import LeaseLost, advance_checkpoint, claim_mailbox, reply_context
from storage.models import Contact, Identity, Inbox, MailboxCheckpoint, Message, OutboxRow, Ticket, TicketEventRow
from tests.storage.test_ingest import web

ENV = {"HUB_SECRET_KEY": "x", "SUPPORT_PW": "pw"}
MAILBOX: dict[str, Any] = {
    "address": "support@hub.test",
    "display_name": "Acme Support",
    "default_team": "Support",
    "imap": {"host": "127.0.0.1", "user": "support@hub.test", "password_env": "SUPPORT_PW"},
    "smtp": {"host": "127.0.0.1", "security": "none"},
}


def config(tmp_path: Path, **box: Any) -> Any:
    return load_config(
        path=None, env=ENV, overrides={"data_dir": str(tmp_path), "email.mailboxes": [{**MAILBOX, **box}]}
    )


@pytest.fixture
async def mail_db(db: Database, tmp_path: Path) -> Database:
    async with db.write() as session:
        await sync_email_inboxes(session, config(tmp_path).email)
    return db


def mail(
    sender: str = "Sara <sara@example.com>",
    subject: str = "Order late",
    mid: str = "c1@example.com",
    body: str = "Where is my order?",
    **headers: str,
) -> bytes:
    head = {"From": sender, "To": "support@hub.test", "Subject": subject, "Message-ID": f"<{mid}>", **headers}
    text = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in head.items())
    return f"{text}Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n".encode()


async def ingest(db: Database, tmp_path: Path, raw: bytes, **box: Any) -> IngestResult:
    parsed = parse_email(raw)
    store = AttachmentStore(tmp_path / "files", max_bytes=1024 * 1024)
    files = await save_files(store, parsed, raw, truncated=False)
    async with db.write() as session:
        return await do_ingest_email(session, parsed, files, config(tmp_path, **box).email.mailboxes[0])


async def test_threads_become_tickets(mail_db: Database, tmp_path: Path) -> None:
    first = await ingest(mail_db, tmp_path, mail())
    other = await ingest(mail_db, tmp_path, mail(subject="Invoice address", mid="c2@example.com"))
    assert first.ticket_created and other.ticket_created
    assert first.ticket_id != other.ticket_id
    assert first.contact_id == other.contact_id

    by_reply = await ingest(
        mail_db, tmp_path, mail(subject="Re: Order late", mid="c3@x", In_Reply_To="<c1@example.com>")
    )
    by_refs = await ingest(
        mail_db, tmp_path, mail(subject="Re: Order late", mid="c4@x", References="<c1@example.com> <c3@x>")
    )
    # Outlook: headers rewritten, our subject token kept.
    by_token = await ingest(mail_db, tmp_path, mail(subject=f"RE: anything [#{other.ticket_id}]", mid="c5@x"))
    # A client that drops every threading header and the token.
    by_subject = await ingest(mail_db, tmp_path, mail(subject="AW: Invoice address", mid="c6@x"))
    assert [r.ticket_id for r in (by_reply, by_refs)] == [first.ticket_id] * 2
    assert [r.ticket_id for r in (by_token, by_subject)] == [other.ticket_id] * 2
    assert not any(r.ticket_created for r in (by_reply, by_refs, by_token, by_subject))
    assert by_reply.message["email"]["threaded_by"] == "in-reply-to"
    assert by_refs.message["email"]["threaded_by"] == "references"
    assert by_token.message["email"]["threaded_by"] == "token"
    assert by_subject.message["email"]["threaded_by"] == "subject"

    # The same subject without "Re:" is a new conversation.
    fresh = await ingest(mail_db, tmp_path, mail(subject="Order late", mid="c7@x"))
    assert fresh.ticket_created


async def test_threading_is_scoped_to_the_contact(mail_db: Database, tmp_path: Path) -> None:
    sara = await ingest(mail_db, tmp_path, mail())
    mallory = await ingest(
        mail_db,
        tmp_path,
        mail(
            sender="mallory@evil.test",
            subject=f"Re: Order late [#{sara.ticket_id}]",
            mid="m1@evil.test",
            In_Reply_To="<c1@example.com>",
        ),
    )
    assert mallory.ticket_created and mallory.ticket_id != sara.ticket_id


async def test_reply_to_a_resolved_ticket_reopens_it(mail_db: Database, tmp_path: Path) -> None:
    first = await ingest(mail_db, tmp_path, mail())
    async with mail_db.write() as session:
        ticket = await session.get(Ticket, first.ticket_id)
        assert ticket is not None
        await do_set_status(session, ticket, status=TicketStatus.RESOLVED, actor="agent:1")
    again = await ingest(mail_db, tmp_path, mail(subject="Re: Order late", mid="c2@x", In_Reply_To="<c1@example.com>"))
    assert again.ticket_id == first.ticket_id and not again.ticket_created
    async with mail_db.read() as session:
        ticket = await session.get(Ticket, first.ticket_id)
        assert ticket is not None and ticket.status == "open" and ticket.resolved_at is None
        events = (
            await session.scalars(select(TicketEventRow.data).where(TicketEventRow.ticket_id == first.ticket_id))
        ).all()
        assert {"from": "resolved", "to": "open"} in events


async def test_reply_to_our_message_threads_by_its_message_id(mail_db: Database, tmp_path: Path) -> None:
    first = await ingest(mail_db, tmp_path, mail())
    async with mail_db.write() as session:
        ticket = await session.get(Ticket, first.ticket_id)
        assert ticket is not None
        reply = await do_post_message(session, ticket, body="On its way", author=Author.AGENT)
        reply.status = DeliveryStatus.SENT.value
        reply.external_id = "hub.1.2.abc@hub.test"
    async with mail_db.read() as session:
        plain = await thread_headers(session, first.ticket_id)
    assert plain["reply_to"] == [] and plain["cc"] == ["support@hub.test"]
    answer = await ingest(
        mail_db,
        tmp_path,
        mail(
            subject="Re: Order late [#1]",
            mid="c2@x",
            In_Reply_To="<hub.1.2.abc@hub.test>",
            Reply_To="Sara at work <Sara.Work@example.com>",
            To="Acme <support@hub.test>, Ali <ali@example.org>",
            Cc="boss@example.com",
        ),
    )
    assert answer.ticket_id == first.ticket_id
    async with mail_db.read() as session:
        later = await thread_headers(session, first.ticket_id)
    assert later["subject"] == "Order late"
    assert later["in_reply_to"] == ["c2@x"]
    assert later["references"] == ["c1@example.com", "hub.1.2.abc@hub.test", "c2@x"]
    assert later["recipient_name"] == "Sara"
    assert later["to"] == "sara@example.com"
    # As the customer's latest mail has them; the channel picks from these.
    assert later["reply_to"] == ["sara.work@example.com"]
    assert later["cc"] == ["support@hub.test", "ali@example.org", "boss@example.com"]

    # Only the latest mail counts: writing again without them drops them.
    again = await ingest(mail_db, tmp_path, mail(subject="Re: Order late", mid="c3@x", In_Reply_To="<c2@x>"))
    assert again.ticket_id == first.ticket_id
    async with mail_db.read() as session:
        latest = await thread_headers(session, first.ticket_id)
    assert latest["reply_to"] == [] and latest["cc"] == ["support@hub.test"]
    assert latest["to"] == "sara@example.com"


async def test_reply_headers_name_only_real_message_ids(mail_db: Database, tmp_path: Path) -> None:
    # The customer's client sent no Message-ID: the hub keys the message by a
    # hash, which no mail client knows, so a reply must not name it.
    raw = b"From: Sara <sara@example.com>\r\nTo: support@hub.test\r\nSubject: No id\r\n\r\nhello\r\n"
    first = await ingest(mail_db, tmp_path, raw)
    assert first.message["external_id"].startswith("sha256:")
    async with mail_db.read() as session:
        headers = await thread_headers(session, first.ticket_id)
    assert headers["in_reply_to"] == [] and headers["references"] == []
    assert headers["to"] == "sara@example.com"

    # Our reply, then the customer's answer with a Message-ID: both are named.
    async with mail_db.write() as session:
        ticket = await session.get(Ticket, first.ticket_id)
        assert ticket is not None
        reply = await do_post_message(session, ticket, body="Hi", author=Author.AGENT)
        reply.status = DeliveryStatus.SENT.value
        reply.external_id = "hub.1.2.abc@hub.test"
    answer = mail(subject="Re: No id", mid="c2@example.com", In_Reply_To="<hub.1.2.abc@hub.test>")
    assert (await ingest(mail_db, tmp_path, answer)).ticket_id == first.ticket_id
    # And a later one without a Message-ID again: the latest real one is answered.
    again = await ingest(mail_db, tmp_path, raw.replace(b"hello", b"anyone?").replace(b"No id", b"Re: No id"))
    assert again.ticket_id == first.ticket_id
    async with mail_db.read() as session:
        later = await thread_headers(session, first.ticket_id)
    assert later["references"] == ["hub.1.2.abc@hub.test", "c2@example.com"]
    assert later["in_reply_to"] == ["c2@example.com"]
    assert not any(m.startswith("sha256:") for m in later["references"] + later["in_reply_to"])


async def thread_headers(session: Any, ticket_id: int) -> dict[str, Any]:
    """What the sender would pass to the channel for the ticket's next reply."""
    ticket = await session.get(Ticket, ticket_id)
    upcoming = Message(id=10**9, ticket_id=ticket_id, contact_id=ticket.contact_id)
    return (await reply_context(session, upcoming))["email"]  # type: ignore[no-any-return]


async def test_chat_channels_keep_one_ticket_per_contact(mail_db: Database) -> None:
    async with mail_db.write() as session:
        a, b = await ingest_batch(session, [web("v9", "v9:1"), web("v9", "v9:2")])
    assert isinstance(a, IngestResult) and isinstance(b, IngestResult) and a.ticket_id == b.ticket_id


async def test_an_email_answer_to_a_reply_sent_from_a_web_chat_continues_the_chat(
    mail_db: Database, tmp_path: Path
) -> None:
    # A visitor left their email in the widget and went away; the agent answered by email.
    async with mail_db.write() as session:
        (chat,) = await ingest_batch(session, [web("v7", "v7:1", "call me back")])
        assert isinstance(chat, IngestResult)
        session.add(Identity(contact_id=chat.contact_id, channel="email", address="sara@example.com"))
        ticket = await session.get(Ticket, chat.ticket_id)
        assert ticket is not None
        reply = await do_post_message(session, ticket, body="On it", author=Author.AGENT, channel=Channel.EMAIL)
        reply.status = DeliveryStatus.SENT.value
        reply.external_id = "hub.1.2.abc@hub.test"
        await do_set_status(session, ticket, status=TicketStatus.RESOLVED, actor="agent")

    raw = mail(subject="Re: On it", mid="a1@x", In_Reply_To="<hub.1.2.abc@hub.test>")
    answer = await ingest(mail_db, tmp_path, raw)
    assert answer.ticket_id == chat.ticket_id and not answer.ticket_created
    assert answer.contact_id == chat.contact_id
    assert answer.message["inbox"] == "email:support@hub.test"
    assert answer.message["email"]["threaded_by"] == "in-reply-to"
    # Answering that answer stays there too.
    again = await ingest(mail_db, tmp_path, mail(subject="Re: On it", mid="a2@x", In_Reply_To="<a1@x>"))
    assert again.ticket_id == chat.ticket_id
    async with mail_db.read() as session:
        ticket = await session.get(Ticket, chat.ticket_id)
        assert ticket is not None
        # Reopened, and still the web chat's conversation.
        assert (ticket.status, ticket.channel) == (TicketStatus.OPEN.value, "webchat")
        assert await session.scalar(select(func.count()).select_from(Ticket)) == 1

    # Another mailbox's message ids do not lead into this one's conversations.
    async with mail_db.write() as session:
        await sync_email_inboxes(session, config(tmp_path, address="sales@hub.test").email)
    other = await ingest(
        mail_db,
        tmp_path,
        mail(mid="a3@x", In_Reply_To="<hub.1.2.abc@hub.test>", To="sales@hub.test"),
        address="sales@hub.test",
    )
    assert other.ticket_id != chat.ticket_id and other.ticket_created


async def test_inboxes_are_configured(mail_db: Database) -> None:
    async with mail_db.read() as session:
        inbox = await session.scalar(select(Inbox).where(Inbox.key == "email:support@hub.test"))
    assert inbox is not None and inbox.channel == "email" and inbox.name == "Acme Support"
    assert inbox.default_team_id is not None and inbox.settings["address"] == "support@hub.test"


async def test_files_and_original_are_stored(mail_db: Database, tmp_path: Path) -> None:
    raw = (
        b"From: sara@example.com\r\nSubject: pics\r\nMessage-ID: <p1@x>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: text/html\r\n\r\n'
        b"<p>look<script>x()</script></p>\r\n--B\r\nContent-Type: image/png; name=a.png\r\n"
        b"Content-Disposition: attachment; filename=a.png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n"
        b"--B--\r\n"
    )
    result = await ingest(mail_db, tmp_path, raw)
    store = AttachmentStore(tmp_path / "files", max_bytes=1024 * 1024)
    (attachment,) = result.message["attachments"]
    assert attachment["filename"] == "a.png" and store.read(attachment["url"]) == b"\x89PNG\r\n\x1a\n"
    assert store.read(result.message["email"]["original_url"]) == raw
    page = store.read(result.message["email"]["html_url"])
    assert page is not None and b"look" in page and b"<script" not in page
    assert result.message["body"] == "look"


async def test_oversize_attachment_is_named_not_stored(mail_db: Database, tmp_path: Path) -> None:
    big = b"A" * 2000
    raw = (
        b"From: sara@example.com\r\nSubject: big\r\nMessage-ID: <big@x>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhere\r\n'
        b"--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=big.bin\r\n\r\n"
        + big
        + b"\r\n--B--\r\n"
    )
    parsed = parse_email(raw)
    files = await save_files(AttachmentStore(tmp_path / "f", max_bytes=1500), parsed, raw, truncated=False)
    assert files.attachments == [] and files.original_url is None
    assert any("big.bin" in n for n in files.notes)


async def test_bounce_marks_our_message_failed_with_the_reason(mail_db: Database, tmp_path: Path) -> None:
    first = await ingest(mail_db, tmp_path, mail())
    async with mail_db.write() as session:
        ticket = await session.get(Ticket, first.ticket_id)
        assert ticket is not None
        reply = await do_post_message(session, ticket, body="Hi", author=Author.AGENT)
        reply.status = DeliveryStatus.SENT.value
        reply.external_id = "hub.out.1@hub.test"
    receipt = DeliveryReceipt(
        channel="email", external_id="hub.out.1@hub.test", status=DeliveryStatus.FAILED, reason="550 5.1.1 unknown"
    )
    async with mail_db.write() as session:
        changed = await do_record_receipt(session, receipt)
        assert changed is not None and changed.status == "failed" and changed.status_reason == "550 5.1.1 unknown"
    async with mail_db.write() as session:
        # Receipts are idempotent, and a late "delivered" cannot undo a failure... nor the reverse.
        assert await do_record_receipt(session, receipt) is None
        unknown = receipt.model_copy(update={"external_id": "nobody@x"})
        assert await do_record_receipt(session, unknown) is None


async def test_one_poller_holds_a_mailbox(mail_db: Database) -> None:
    key = "email:support@hub.test"
    async with mail_db.write() as session:
        assert await claim_mailbox(session, key, "INBOX", "a", 60) is not None
    async with mail_db.write() as session:
        assert await claim_mailbox(session, key, "INBOX", "b", 60) is None
    async with mail_db.write() as session:
        await advance_checkpoint(session, key, "a", folder="INBOX", uidvalidity=7, last_uid=3, lease_seconds=60)
    # a stalls past its lease; b takes over, and a can no longer move the checkpoint.
    async with mail_db.write() as session:
        await session.execute(update(MailboxCheckpoint).values(lease_until=utcnow() - timedelta(seconds=1)))
    async with mail_db.write() as session:
        taken = await claim_mailbox(session, key, "INBOX", "b", 60)
        assert taken is not None and (taken.uidvalidity, taken.last_uid) == (7, 3)
    with pytest.raises(LeaseLost):
        async with mail_db.write() as session:
            await advance_checkpoint(session, key, "a", folder="INBOX", uidvalidity=7, last_uid=9, lease_seconds=60)
    async with mail_db.read() as session:
        assert await session.scalar(select(MailboxCheckpoint.last_uid)) == 3
        assert await session.scalar(select(func.count()).select_from(MailboxCheckpoint)) == 1


def test_mailbox_config_errors(tmp_path: Path) -> None:
    from hub.config import ConfigError

    with pytest.raises(ConfigError, match=r"email\.mailboxes\.0\.imap\.password_env: the environment variable NOPE"):
        load_config(
            path=None,
            env={},
            overrides={"email.mailboxes": [{**MAILBOX, "imap": {**MAILBOX["imap"], "password_env": "NOPE"}}]},
        )
    with pytest.raises(ConfigError, match=r"email\.mailboxes\.0\.smtp\.password: secrets must not be written"):
        load_config(
            path=None, env=ENV, overrides={"email.mailboxes": [{**MAILBOX, "smtp": {"host": "h", "password": "x"}}]}
        )
    with pytest.raises(ConfigError, match=r"email\.mailboxes\.0\.address"):
        load_config(path=None, env=ENV, overrides={"email.mailboxes": [{**MAILBOX, "address": "not-an-address"}]})
    with pytest.raises(ConfigError, match="two mailboxes use the inbox"):
        load_config(path=None, env=ENV, overrides={"email.mailboxes": [MAILBOX, MAILBOX]})
    cfg = config(tmp_path)
    box = cfg.email.mailboxes[0]
    assert box.inbox_key == "email:support@hub.test"
    assert (box.imap.effective_port, box.smtp.effective_port) == (993, 25)
    assert cfg.email.passwords == {"SUPPORT_PW": "pw"} and "pw" not in repr(cfg)


class FakeImap:
    """Stands in for the IMAP connection: the poller's own logic under test."""

    def __init__(self, messages: dict[int, bytes]) -> None:
        self.messages = messages

    def select(self) -> FolderState:
        return FolderState(uidvalidity=9, uidnext=max(self.messages) + 1, exists=len(self.messages))

    def uids_after(self, last: int) -> list[int]:
        return [uid for uid in sorted(self.messages) if uid > last]

    def fetch(self, uid: int, max_bytes: int) -> Fetched:
        return Fetched(raw=self.messages[uid], size=len(self.messages[uid]))

    def highest_uid(self, state: FolderState) -> int:
        return max(self.messages, default=0)


async def test_a_message_that_keeps_failing_is_kept_and_does_not_block_the_mailbox(
    mail_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path, first_sync="all")
    store = AttachmentStore(tmp_path / "files", max_bytes=1024 * 1024)
    real = hub.mail.do_ingest_email

    async def flaky(session: Any, parsed: Any, files: Any, box: Any) -> IngestResult:
        if parsed.subject == "poison":
            raise ValueError("a bug meets a strange message")
        return await real(session, parsed, files, box)

    monkeypatch.setattr(hub.mail, "do_ingest_email", flaky)
    poison = mail(subject="poison", mid="p@x")
    conn = FakeImap({1: poison, 2: mail(subject="fine", mid="f@x")})
    with ThreadPoolExecutor(max_workers=1) as pool:
        poller = MailboxPoller(cfg.email.mailboxes[0], cfg.email, mail_db, store, pool, owner="me")
        async with mail_db.write() as session:
            await claim_mailbox(session, poller.key, "INBOX", "me", 60)
        for _ in range(hub.mail.POISON_AFTER - 1):
            with pytest.raises(ValueError, match="strange message"):
                await poller._sync(conn)  # type: ignore[arg-type]
        await poller._sync(conn)  # type: ignore[arg-type]
    async with mail_db.read() as session:
        rows = {m.subject: m for m in (await session.scalars(select(Message))).all()}
        checkpoint = await session.scalar(select(MailboxCheckpoint))
    assert set(rows) == {"poison", "fine"}
    kept = rows["poison"]
    assert "could not be processed" in kept.body and "ValueError" in kept.body
    assert store.read(kept.attachments[0]["url"]) == poison
    assert checkpoint is not None and (checkpoint.uidvalidity, checkpoint.last_uid) == (9, 2)


def _dsn_about(original_id: str, *failed: str, delivered: tuple[str, ...] = ()) -> bytes:
    blocks = "".join(
        f"Final-Recipient: rfc822; {r}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{r}>: User unknown\r\n\r\n"
        for r in failed
    ) + "".join(f"Final-Recipient: rfc822; {r}\r\nAction: delivered\r\nStatus: 2.0.0\r\n\r\n" for r in delivered)
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.hub.test>\r\nTo: support@hub.test\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn.{'.'.join(failed)}@mx.hub.test>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nSorry.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.hub.test\r\n\r\n"
        f"{blocks}--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: support@hub.test\r\nMessage-ID: <{original_id}>\r\nSubject: Re: Order\r\n\r\n--B--\r\n"
    ).encode()


async def test_a_bounce_for_a_copy_leaves_the_reply_sent_with_a_note(mail_db: Database, tmp_path: Path) -> None:
    # Sara copied her colleague; the reply goes to Sara and copies him.
    first = await ingest(mail_db, tmp_path, mail(Cc="Boss <boss@example.com>"))
    async with mail_db.write() as session:
        ticket = await session.get(Ticket, first.ticket_id)
        assert ticket is not None
        reply = await do_post_message(session, ticket, body="Hi", author=Author.AGENT)
        reply.status = DeliveryStatus.SENT.value
        reply.external_id = "hub.out.7@hub.test"
        reply_id = reply.id
    cfg = config(tmp_path)
    store = AttachmentStore(tmp_path / "files", max_bytes=1024 * 1024)
    state = FolderState(uidvalidity=9, uidnext=10, exists=3)

    async def current() -> Message:
        async with mail_db.read() as session:
            found = await session.get(Message, reply_id)
            assert found is not None
            return found

    with ThreadPoolExecutor(max_workers=1) as pool:
        poller = MailboxPoller(cfg.email.mailboxes[0], cfg.email, mail_db, store, pool, owner="me")
        async with mail_db.write() as session:
            await claim_mailbox(session, poller.key, "INBOX", "me", 60)
        # The copy bounced and Sara's delivery was reported with it: neither
        # changes the reply's status, the copy's failure is noted.
        copy_bounce = _dsn_about("hub.out.7@hub.test", "boss@example.com", delivered=("sara@example.com",))
        assert await poller.process(copy_bounce, uid=1, state=state) == "report"
        kept = await current()
        assert kept.status == "sent"
        assert kept.status_reason is not None and "boss@example.com" in kept.status_reason
        assert "550 5.1.1" in kept.status_reason
        # The same report read again (a re-read folder) adds nothing.
        assert await poller.process(copy_bounce, uid=2, state=state) == "report"
        assert (await current()).status_reason == kept.status_reason
        # Sara's own address bouncing fails the reply, as before.
        assert await poller.process(_dsn_about("hub.out.7@hub.test", "sara@example.com"), uid=3, state=state)
    failed = await current()
    assert failed.status == "failed" and failed.status_reason is not None
    assert "sara@example.com" in failed.status_reason


# --- a sender hidden in a display name ------------------------------------------------------

SPOOF = (
    b"From: =?utf-8?q?x=0D=0Ay:_sara@example.com?= <mallory@evil.test>\r\n"
    b"Reply-To: mallory@evil.test\r\n"
    b"To: support@hub.test\r\nSubject: Re: Order late\r\nMessage-ID: <m1@evil.test>\r\n"
    b"Content-Type: text/plain\r\n\r\nPlease ship to my new address instead.\r\n"
)


async def test_an_address_in_a_display_name_reaches_no_ones_ticket(mail_db: Database, tmp_path: Path) -> None:
    sara = await ingest(mail_db, tmp_path, mail())
    mallory = await ingest(mail_db, tmp_path, SPOOF)
    assert mallory.ticket_created and mallory.ticket_id != sara.ticket_id
    assert mallory.contact_id != sara.contact_id
    async with mail_db.write() as session:
        ticket = await session.get(Ticket, sara.ticket_id)
        assert ticket is not None
        reply = await do_post_message(session, ticket, body="Sure, your address is ...", author=Author.AGENT)
        context = await reply_context(session, reply)
    # The agent's reply on Sara's ticket goes to Sara, not to mallory's Reply-To.
    assert reply_addresses(context["email"], reply.extras["recipient"], ["support@hub.test"]).to == "sara@example.com"


# --- automatic mail is stored, never acted on -----------------------------------------------


async def _answered(db: Database, first: IngestResult, *, status: TicketStatus | None = None) -> None:
    """Our reply to the customer's first mail, sent; then the ticket's status."""
    async with db.write() as session:
        ticket = await session.get(Ticket, first.ticket_id)
        assert ticket is not None
        reply = await do_post_message(session, ticket, body="Refunded. Closing this.", author=Author.AGENT)
        reply.status = DeliveryStatus.SENT.value
        reply.external_id = "hub.1.2.abc@hub.test"
        if status is not None:
            await do_set_status(session, ticket, status=status, actor="agent:1")


def _out_of_office(**headers: str) -> bytes:
    return mail(
        subject="Automatic reply: Re: Order late",
        mid="ooo@example.com",
        body="I am away until Monday.",
        In_Reply_To="<hub.1.2.abc@hub.test>",
        **headers,
    )


@pytest.mark.parametrize(
    "headers",
    [{"Auto_Submitted": "auto-replied"}, {"X_Autoreply": "yes"}, {"Precedence": "auto_reply"}, {}],
    ids=["auto-submitted", "x-autoreply", "precedence", "subject"],
)
async def test_an_out_of_office_does_not_reopen_a_resolved_ticket(
    mail_db: Database, tmp_path: Path, headers: dict[str, str]
) -> None:
    first = await ingest(mail_db, tmp_path, mail())
    await _answered(mail_db, first, status=TicketStatus.RESOLVED)
    async with mail_db.read() as session:
        before = await session.get(Ticket, first.ticket_id)
        assert before is not None and before.status == "resolved"
        events_before = await session.scalar(select(func.count()).select_from(TicketEventRow))
        last_message_at = before.last_message_at

    ooo = await ingest(mail_db, tmp_path, _out_of_office(**headers))

    # Stored on the ticket it answers, marked, and announced for agents to see ...
    assert ooo.ticket_id == first.ticket_id and not ooo.ticket_created and not ooo.duplicate
    assert ooo.message["auto_reply"] and ooo.message["body"] == "I am away until Monday."
    assert ooo.message["email"]["threaded_by"] == "in-reply-to"
    async with mail_db.read() as session:
        ticket = await session.get(Ticket, first.ticket_id)
        assert ticket is not None
        # ... but the ticket is left as it was: resolved, no status change.
        assert (ticket.status, ticket.waiting_since, ticket.last_message_at) == ("resolved", None, last_message_at)
        assert ticket.resolved_at is not None
        assert await session.scalar(select(func.count()).select_from(TicketEventRow)) == events_before
        stored = await session.get(Message, ooo.message_id)
        assert stored is not None and stored.ticket_id == first.ticket_id and stored.direction == "in"
        announced = [
            row.payload
            for row in (await session.scalars(select(OutboxRow))).all()
            if row.payload.get("kind") == "message.received"
        ]
        assert announced[-1]["message"]["id"] == ooo.message_id
        assert announced[-1]["ticket"]["status"] == "resolved"
    # The same mail read again is a duplicate, as any other.
    again = await ingest(mail_db, tmp_path, _out_of_office(**headers))
    assert again.duplicate and again.message_id == ooo.message_id


async def test_an_out_of_office_does_not_make_the_customer_wait_or_wake_a_ticket(
    mail_db: Database, tmp_path: Path
) -> None:
    first = await ingest(mail_db, tmp_path, mail())
    await _answered(mail_db, first)
    async with mail_db.read() as session:
        answered = await session.get(Ticket, first.ticket_id)
        assert answered is not None and answered.status == "open" and answered.waiting_since is None
        last_message_at = answered.last_message_at
    await ingest(mail_db, tmp_path, _out_of_office(Auto_Submitted="auto-replied"))
    async with mail_db.read() as session:
        ticket = await session.get(Ticket, first.ticket_id)
        assert ticket is not None
        # Nobody waits for an answer to an out-of-office: no SLA clock starts.
        assert (ticket.status, ticket.waiting_since, ticket.last_message_at) == ("open", None, last_message_at)

    async with mail_db.write() as session:
        ticket = await session.get(Ticket, first.ticket_id)
        assert ticket is not None
        await do_set_status(
            session, ticket, status=TicketStatus.SNOOZED, actor="agent:1", snoozed_until=utcnow() + timedelta(days=1)
        )
    await ingest(mail_db, tmp_path, _out_of_office(Auto_Submitted="auto-replied").replace(b"ooo@", b"ooo2@"))
    async with mail_db.read() as session:
        ticket = await session.get(Ticket, first.ticket_id)
        assert ticket is not None and ticket.status == "snoozed"

    # The customer's own answer still reopens and wakes, as before.
    await ingest(mail_db, tmp_path, mail(subject="Re: Order late", mid="c2@x", In_Reply_To="<c1@example.com>"))
    async with mail_db.read() as session:
        ticket = await session.get(Ticket, first.ticket_id)
        assert ticket is not None and ticket.status == "open" and ticket.waiting_since is not None


async def test_an_out_of_office_starting_a_thread_is_still_a_ticket(mail_db: Database, tmp_path: Path) -> None:
    ooo = await ingest(mail_db, tmp_path, _out_of_office(Auto_Submitted="auto-replied"))
    assert ooo.ticket_created and ooo.message["auto_reply"] == "Auto-Submitted: auto-replied"


# --- answers from the addresses our reply went to ---------------------------------------------


async def _our_reply(db: Database, ticket_id: int, *, sent_to: list[str] | None = None) -> int:
    """An agent's reply on the ticket, sent as "hub.1.2.abc@hub.test";
    ``sent_to``: the addresses the channel kept for it (None: sent before
    the channel kept them)."""
    async with db.write() as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        reply = await do_post_message(session, ticket, body="On its way", author=Author.AGENT)
        reply.status = DeliveryStatus.SENT.value
        reply.external_id = "hub.1.2.abc@hub.test"
        if sent_to is not None:
            reply.extras = {**(reply.extras or {}), SEND_PARTS: sent_to}
        return reply.id


async def test_an_answer_from_the_reply_to_address_we_wrote_to_continues_the_ticket(
    mail_db: Database, tmp_path: Path
) -> None:
    # Sara asks for answers at work; the reply went there (chosen again from
    # her mail, as a reply sent before the channel kept its addresses).
    first = await ingest(mail_db, tmp_path, mail(Reply_To="Sara at work <sara.work@example.com>"))
    await _our_reply(mail_db, first.ticket_id)
    answer = await ingest(
        mail_db,
        tmp_path,
        mail(
            sender="Sara Ahmadi <sara.work@example.com>",
            subject=f"Re: Order late [#{first.ticket_id}]",
            mid="w1@example.com",
            In_Reply_To="<hub.1.2.abc@hub.test>",
        ),
    )
    assert answer.ticket_id == first.ticket_id and not answer.ticket_created
    # On Sara's ticket as hers, from where it came; the address is not made
    # hers (it might as well be a colleague's), and nobody new is a contact.
    assert answer.contact_id == first.contact_id
    assert answer.message["email"]["from"] == "sara.work@example.com"
    assert answer.message["email"]["threaded_by"] == "in-reply-to"
    async with mail_db.read() as session:
        assert (await session.scalars(select(Identity.address))).all() == ["sara@example.com"]
        assert await session.scalar(select(func.count()).select_from(Contact)) == 1
        contact = await session.get(Contact, first.contact_id)
        assert contact is not None and contact.name == "Sara"
        # The next reply answers the latest mail, without Sara's name on it.
        headers = await thread_headers(session, first.ticket_id)
    assert headers["to"] == "sara.work@example.com" and headers["recipient_name"] is None
    assert reply_addresses(headers, "sara@example.com", ["support@hub.test"]).to == "sara.work@example.com"


async def test_a_copied_colleagues_reply_all_continues_the_ticket(mail_db: Database, tmp_path: Path) -> None:
    first = await ingest(mail_db, tmp_path, mail(Cc="Boss <boss@example.com>"))
    await _our_reply(mail_db, first.ticket_id, sent_to=["sara@example.com", "boss@example.com"])
    # Outlook: no In-Reply-To, our reply in References.
    answer = await ingest(
        mail_db,
        tmp_path,
        mail(
            sender="Boss <boss@example.com>",
            subject="RE: Order late",
            mid="b1@example.com",
            References="<c1@example.com> <hub.1.2.abc@hub.test>",
            Cc="sara@example.com",
        ),
    )
    assert answer.ticket_id == first.ticket_id and answer.contact_id == first.contact_id
    assert answer.message["email"]["threaded_by"] == "references"


async def test_only_those_we_sent_our_message_to_get_into_its_ticket(mail_db: Database, tmp_path: Path) -> None:
    first = await ingest(mail_db, tmp_path, mail(Cc="Boss <boss@example.com>"))
    # The server refused the copy to the boss: the channel kept Sara alone.
    await _our_reply(mail_db, first.ticket_id, sent_to=["sara@example.com"])
    for sender, mid in (("boss@example.com", "b1@example.com"), ("mallory@evil.test", "m1@evil.test")):
        answer = await ingest(
            mail_db,
            tmp_path,
            mail(
                sender=sender,
                subject=f"Re: Order late [#{first.ticket_id}]",
                mid=mid,
                In_Reply_To="<hub.1.2.abc@hub.test>",
            ),
        )
        assert answer.ticket_created and answer.ticket_id != first.ticket_id
        assert answer.contact_id != first.contact_id


# --- the mailbox's display name -------------------------------------------------------------


def test_a_display_name_is_one_line(tmp_path: Path) -> None:
    from hub.config import ConfigError

    # YAML's block scalars (">", "|") end the name with a line break.
    assert config(tmp_path, display_name="Acme Support\n").email.mailboxes[0].display_name == "Acme Support"
    assert config(tmp_path, display_name="  \n").email.mailboxes[0].display_name is None
    for name in ("Acme\r\nBcc: evil@x.test", "Acme\tSupport", "Acme\u2028Support"):
        with pytest.raises(ConfigError, match=r"email\.mailboxes\.0\.display_name: .*one line"):
            config(tmp_path, display_name=name)
