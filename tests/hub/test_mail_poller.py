"""The poller's handling of mail that does not go the usual way: messages the
server will not hand over, files over the attachment limit, mail sent from our
own address for someone else. Without servers (the IMAP connection is faked),
on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from imapclient.exceptions import IMAPClientError
from sqlalchemy import select

import hub.mail
from channels.email import parse_email
from channels.email_imap import Fetched, FolderState
from hub.actions import do_post_message
from hub.attachments import AttachmentStore
from hub.core import Author, DeliveryStatus
from hub.mail import MailboxPoller, original_store, save_files
from storage.db import Database
from storage.mail import claim_mailbox
from storage.models import Contact, Identity, MailboxCheckpoint, Message, Ticket
from tests.channels.test_email_hostile import HOSTILE, WORDS
from tests.channels.test_email_inbound import FORM_FORWARD, NO_SENDER, QMAIL, dsn
from tests.hub.test_mail import FakeImap, config, ingest, mail, mail_db

__all__ = ["mail_db"]  # the fixture, used by name

STATE = FolderState(uidvalidity=9, uidnext=100, exists=3)


class BrokenImap(FakeImap):
    """A server that errors on fetching some messages, and maybe on their
    headers too."""

    def __init__(self, messages: dict[int, bytes], broken: set[int], *, headers: bool = True) -> None:
        super().__init__(messages)
        self.broken = broken
        self.headers = headers
        self.fetches: list[int] = []

    def fetch(self, uid: int, max_bytes: int) -> Fetched:
        self.fetches.append(uid)
        if uid in self.broken:
            raise IMAPClientError("FETCH command error: BAD [b'Message is corrupt']")
        return super().fetch(uid, max_bytes)

    def fetch_header(self, uid: int) -> bytes | None:
        if not self.headers:
            raise IMAPClientError("FETCH command error: BAD [b'Message is corrupt']")
        head, _, _ = self.messages[uid].partition(b"\r\n\r\n")
        return head + b"\r\n\r\n"


@pytest.fixture
async def poller(mail_db: Database, tmp_path: Path) -> AsyncIterator[MailboxPoller]:
    cfg = config(tmp_path, first_sync="all")
    store = AttachmentStore(tmp_path / "files", max_bytes=1024 * 1024)
    with ThreadPoolExecutor(max_workers=1) as pool:
        found = MailboxPoller(cfg.email.mailboxes[0], cfg.email, mail_db, store, pool, owner="me")
        async with mail_db.write() as session:
            await claim_mailbox(session, found.key, "INBOX", "me", 60)
        yield found


async def _messages(db: Database) -> dict[str | None, Message]:
    async with db.read() as session:
        return {m.subject: m for m in (await session.scalars(select(Message))).all()}


async def _last_uid(db: Database) -> int | None:
    async with db.read() as session:
        return await session.scalar(select(MailboxCheckpoint.last_uid))


# --- a message the server will not hand over -------------------------------------


@pytest.mark.parametrize("headers", [True, False])
async def test_a_message_the_server_will_not_hand_over_is_noted_and_passed(
    mail_db: Database, poller: MailboxPoller, headers: bool
) -> None:
    conn = BrokenImap(
        {1: mail(subject="broken", mid="b@x"), 2: mail(subject="fine", mid="f@x")}, broken={1}, headers=headers
    )
    for _ in range(hub.mail.POISON_AFTER - 1):
        with pytest.raises(IMAPClientError):
            await poller._sync(conn)  # type: ignore[arg-type]
        assert await _last_uid(mail_db) == 0
    await poller._sync(conn)  # type: ignore[arg-type]

    rows = await _messages(mail_db)
    subject = "broken" if headers else "unreadable message UID 1"
    assert set(rows) == {subject, "fine"}
    kept = rows[subject]
    assert "could not be read from the mail server" in kept.body and "UID 1" in kept.body
    assert "Message is corrupt" in kept.body
    async with mail_db.read() as session:
        ticket = await session.get(Ticket, kept.ticket_id)
        sender = await session.scalar(select(Identity.address).where(Identity.contact_id == kept.contact_id))
    assert ticket is not None and ticket.status == "open"
    assert sender == ("sara@example.com" if headers else "unknown-sender@invalid")
    assert await _last_uid(mail_db) == 2
    # Passed for good: the next sync does not ask for it again.
    conn.fetches.clear()
    await poller._sync(conn)  # type: ignore[arg-type]
    assert conn.fetches == []


async def test_a_fetch_that_fails_once_is_only_retried(mail_db: Database, poller: MailboxPoller) -> None:
    conn = BrokenImap({1: mail(subject="late", mid="l@x")}, broken={1})
    with pytest.raises(IMAPClientError):
        await poller._sync(conn)  # type: ignore[arg-type]
    conn.broken.clear()
    await poller._sync(conn)  # type: ignore[arg-type]
    assert set(await _messages(mail_db)) == {"late"}
    # The count starts again for a later failure of the same UID.
    assert poller._fetch_failures == {}


# --- files over the attachment limit ------------------------------------------------


def _with_file(size: int) -> bytes:
    return (
        b"From: sara@example.com\r\nSubject: big\r\nMessage-ID: <big@x>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhere\r\n'
        b"--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=big.bin\r\n\r\n"
        + b"A" * size
        + b"\r\n--B--\r\n"
    )


async def test_a_file_over_the_limit_is_kept_in_the_stored_original(tmp_path: Path) -> None:
    raw = _with_file(2000)
    store = AttachmentStore(tmp_path / "f", max_bytes=1500)
    cfg = config(tmp_path).email
    files = await save_files(store, parse_email(raw), raw, truncated=False, originals=original_store(store, cfg))
    assert files.attachments == []
    # The mail was within email.max_message_bytes, so its original is kept,
    # and the agent is told the truth about where the file is.
    assert files.original_url is not None and store.read(files.original_url) == raw
    (note,) = files.notes
    assert "big.bin" in note and "it is in the original message" in note


async def test_without_a_stored_original_the_note_does_not_promise_one(tmp_path: Path) -> None:
    raw = _with_file(2000)
    store = AttachmentStore(tmp_path / "f", max_bytes=1500)
    files = await save_files(store, parse_email(raw), raw, truncated=False)
    assert files.attachments == [] and files.original_url is None
    assert any("the original message was not stored" in n for n in files.notes)
    (about_file,) = [n for n in files.notes if "big.bin" in n]
    assert "only in the mailbox" in about_file and "it is in the original message" not in about_file


async def test_the_poller_keeps_the_original_of_a_mail_within_max_message_bytes(
    mail_db: Database, tmp_path: Path
) -> None:
    cfg = config(tmp_path, first_sync="all")
    store = AttachmentStore(tmp_path / "files", max_bytes=1500)
    raw = _with_file(2000)
    with ThreadPoolExecutor(max_workers=1) as pool:
        poller = MailboxPoller(cfg.email.mailboxes[0], cfg.email, mail_db, store, pool, owner="me")
        async with mail_db.write() as session:
            await claim_mailbox(session, poller.key, "INBOX", "me", 60)
        assert await poller.process(raw, uid=1, state=STATE) == "stored"
    stored = (await _messages(mail_db))["big"]
    extras = (stored.extras or {})["email"]
    assert store.read(extras["original_url"]) == raw
    assert any("big.bin" in n and "in the original message" in n for n in extras["notes"])


# --- mail from our own address, for someone else --------------------------------------


async def test_a_contact_form_sent_from_our_address_is_from_its_reply_to(
    mail_db: Database, poller: MailboxPoller
) -> None:
    form = mail(
        sender="Acme Website <support@hub.test>",
        subject="Contact form: refund request",
        mid="form1@hub.test",
        Reply_To="Sara Ahmadi <Sara@Example.com>",
        body="Name: Sara\nMessage: I want a refund for order 5512",
    )
    assert await poller.process(form, uid=1, state=STATE) == "stored"
    stored = (await _messages(mail_db))["Contact form: refund request"]
    assert "order 5512" in stored.body
    async with mail_db.read() as session:
        contact = await session.get(Contact, stored.contact_id)
        address = await session.scalar(select(Identity.address).where(Identity.contact_id == stored.contact_id))
    assert address == "sara@example.com"
    assert contact is not None and contact.name == "Sara Ahmadi"
    extras: dict[str, Any] = (stored.extras or {})["email"]
    assert extras["from"] == "sara@example.com"
    assert any("support@hub.test" in n for n in extras["notes"])


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Reply_To": "support@hub.test"},
        {"Reply_To": "Support <support+12@hub.test>"},
    ],
)
async def test_our_own_mail_is_still_ignored(mail_db: Database, poller: MailboxPoller, headers: dict[str, str]) -> None:
    ours = mail(sender="Acme Support <support@hub.test>", subject="Re: Order late", mid="hub.1.2@hub.test", **headers)
    assert await poller.process(ours, uid=1, state=STATE) == "own"
    assert await _messages(mail_db) == {}
    assert await _last_uid(mail_db) == 1


# --- bounces about a reply that went to the customer and a copy --------------------------


async def _reply_with_a_copy(db: Database, tmp_path: Path) -> int:
    """Sara copied her boss; our reply went to her and copies him."""
    first = await ingest(db, tmp_path, mail(Cc="Boss <boss@example.org>"))
    async with db.write() as session:
        ticket = await session.get(Ticket, first.ticket_id)
        assert ticket is not None
        reply = await do_post_message(session, ticket, body="On its way", author=Author.AGENT)
        reply.status = DeliveryStatus.SENT.value
        reply.external_id = "hub.out.7@hub.test"
        return reply.id


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        ("Final-Recipient: rfc822;<sara@example.com>\r\nAction: failed\r\nStatus: 5.1.1\r\n", "5.1.1"),
        (
            "Final-Recipient: rfc822; sara.real@mailhost.example.com\r\n"
            "Original-Recipient: rfc822;sara@example.com\r\nAction: failed\r\nStatus: 5.2.2\r\n"
            "Diagnostic-Code: smtp; 552 5.2.2 mailbox full\r\n",
            "552 5.2.2 mailbox full",
        ),
    ],
    ids=["angle-brackets", "alias"],
)
async def test_the_customers_own_bounce_fails_the_reply(
    mail_db: Database, tmp_path: Path, poller: MailboxPoller, block: str, reason: str
) -> None:
    reply_id = await _reply_with_a_copy(mail_db, tmp_path)
    assert await poller.process(dsn(block, "hub.out.7@hub.test"), uid=1, state=STATE) == "report"
    async with mail_db.read() as session:
        reply = await session.get(Message, reply_id)
    assert reply is not None and reply.status == "failed"
    assert reply.status_reason is not None and reason in reply.status_reason


async def test_a_plain_text_bounce_for_the_copy_leaves_the_reply_sent(
    mail_db: Database, tmp_path: Path, poller: MailboxPoller
) -> None:
    reply_id = await _reply_with_a_copy(mail_db, tmp_path)
    assert await poller.process(QMAIL.encode(), uid=1, state=STATE) == "report"
    async with mail_db.read() as session:
        reply = await session.get(Message, reply_id)
    assert reply is not None and reply.status == "sent"
    assert reply.status_reason is not None
    assert "boss@example.org" in reply.status_reason and "no mailbox here" in reply.status_reason


# --- mail the standard library's parser gives up on -------------------------------------


@pytest.mark.parametrize("name", HOSTILE)
async def test_hostile_mail_is_stored_from_its_sender_with_its_words(
    mail_db: Database, poller: MailboxPoller, name: str
) -> None:
    # Such mail used to fail three times and end as a placeholder from
    # unknown-sender@invalid, without a subject: nobody to answer, nothing read.
    raw = HOSTILE[name].encode()
    await poller._sync(FakeImap({1: raw}))  # type: ignore[arg-type]
    (kept,) = (await _messages(mail_db)).values()
    async with mail_db.read() as session:
        sender = await session.scalar(select(Identity.address).where(Identity.contact_id == kept.contact_id))
    assert sender == "sara@example.com" and kept.subject == "Order late"
    assert WORDS in kept.body and "could not be processed" not in kept.body
    assert poller.store.read(kept.extras["email"]["original_url"]) == raw
    assert poller._process_failures == {} and await _last_uid(mail_db) == 1


# --- what only looks like a report, or is about mail we never sent -------------------------


async def test_mail_without_a_sender_that_looks_like_a_bounce_is_kept(mail_db: Database, poller: MailboxPoller) -> None:
    assert await poller.process(NO_SENDER, uid=1, state=STATE) == "stored"
    assert await poller.process(FORM_FORWARD, uid=2, state=STATE) == "stored"
    kept = await _messages(mail_db)
    assert "rejected twice" in kept["My refund was rejected"].body
    assert "See the attached mail" in kept["Fwd: invoice"].body
    assert await _last_uid(mail_db) == 2


async def test_a_report_about_mail_we_never_sent_is_kept_as_a_message(mail_db: Database, poller: MailboxPoller) -> None:
    # A bounce of mail someone sent from the mailbox in their own mail client:
    # no reply of ours to mark, and the server's words must not be lost.
    block = "Final-Recipient: rfc822;<ali@example.org>\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    assert await poller.process(dsn(block, "outlook.123@hub.test"), uid=1, state=STATE) == "stored"
    kept = (await _messages(mail_db))["Undelivered Mail Returned to Sender"]
    assert kept.body.startswith("Sorry.")
    assert kept.extras["auto_reply"]  # a mailer-daemon's: never answered
    assert await _last_uid(mail_db) == 1
