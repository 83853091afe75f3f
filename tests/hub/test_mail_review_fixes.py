"""Fixes from the email review: a deeply nested HTML mail no longer holds
up the mailbox, and the text nested in it is kept; a copied colleague who
answers only us does not take the customer off their own ticket."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import select

from channels.email import MAX_HTML_DEPTH, parse_email, reply_addresses
from hub.actions import do_post_message
from hub.attachments import AttachmentStore
from hub.core import Author
from hub.mail import MailboxPoller
from storage.db import Database
from storage.mail import claim_mailbox, reply_context
from storage.models import Message, Ticket
from tests.hub.test_mail import FakeImap, _our_reply, config, ingest, mail, mail_db

__all__ = ["mail_db"]  # the fixture, used by name

HEAD = b"From: x@attacker.test\r\nTo: support@hub.test\r\nSubject: hi\r\nMessage-ID: <n@x>\r\n"


def nested(levels: int, text: str = "deep words") -> bytes:
    """An HTML-only mail of ``levels`` nested divs around ``text``."""
    return HEAD + b"Content-Type: text/html\r\n\r\n" + b"<div>" * levels + text.encode() + b"</div>" * levels


async def test_a_deeply_nested_html_mail_does_not_hold_up_the_mailbox(mail_db: Database, tmp_path: Path) -> None:
    # About 900 KB: before the fix, sanitizing it alone took minutes.
    cfg = config(tmp_path, first_sync="all")
    store = AttachmentStore(tmp_path / "files", max_bytes=4 * 1024 * 1024)
    conn = FakeImap({1: nested(80_000), 2: mail(subject="customer waiting", mid="f@x")})
    with ThreadPoolExecutor(max_workers=1) as pool:
        poller = MailboxPoller(cfg.email.mailboxes[0], cfg.email, mail_db, store, pool, owner="me")
        async with mail_db.write() as session:
            await claim_mailbox(session, poller.key, "INBOX", "me", 60)
        started = time.monotonic()
        await poller._sync(conn)  # type: ignore[arg-type]
        took = time.monotonic() - started
    async with mail_db.read() as session:
        stored = {m.subject: m for m in (await session.scalars(select(Message))).all()}
    assert took < 5, f"the mailbox waited {took:.1f}s behind one mail"
    assert stored["customer waiting"].body == "Where is my order?"
    # The nested mail is kept, with its text and a note saying what was left out.
    assert stored["hi"].body == "deep words"
    assert any("nested deeper than" in n for n in stored["hi"].extras["email"]["notes"])


def test_text_nested_past_the_parsers_limits_is_kept() -> None:
    # lxml drops text nested past 255 levels; it used to come out empty.
    for levels in (MAX_HTML_DEPTH + 1, 300, 5_000):
        parsed = parse_email(nested(levels))
        assert parsed.body == "deep words", levels
        assert parsed.html is not None and "deep words" in parsed.html
        assert any("nested deeper than" in n for n in parsed.notes)


def test_ordinary_html_is_not_touched() -> None:
    page = "<div>" * 50 + "<p>Hello <b>Sara</b></p><table><tr><td>a</td><td>b</td></tr></table>" + "</div>" * 50
    parsed = parse_email(HEAD + b"Content-Type: text/html\r\n\r\n" + page.encode())
    assert parsed.notes == ()
    assert "<b>Sara</b>" in (parsed.html or "")


def test_an_html_part_too_large_to_lay_out_keeps_its_text() -> None:
    rows = "".join(f"<tr><td>row {i}</td></tr>" for i in range(30_000))
    started = time.monotonic()
    parsed = parse_email(HEAD + b"Content-Type: text/html\r\n\r\n" + f"<table>{rows}</table>".encode())
    assert time.monotonic() - started < 5
    assert "row 0" in parsed.body and "row 29999" in parsed.full_text
    assert any("too large" in n for n in parsed.notes)


async def _next_reply_goes_to(db: Database, ticket_id: int) -> tuple[str, tuple[str, ...]]:
    async with db.write() as session:
        ticket = await session.get(Ticket, ticket_id)
        assert ticket is not None
        reply = await do_post_message(session, ticket, body="Thanks, done", author=Author.AGENT)
        context = await reply_context(session, reply)
        recipient = reply.extras["recipient"]
    chosen = reply_addresses(context["email"], recipient, ["support@hub.test"])
    return chosen.to, chosen.cc


async def test_a_copied_colleague_answering_only_us_keeps_the_customer_on_the_reply(
    mail_db: Database, tmp_path: Path
) -> None:
    first = await ingest(mail_db, tmp_path, mail(Cc="Boss <boss@example.com>"))
    await _our_reply(mail_db, first.ticket_id, sent_to=["sara@example.com", "boss@example.com"])
    # The boss clicks plain "Reply": to us only.
    answer = await ingest(
        mail_db,
        tmp_path,
        mail(
            sender="Boss <boss@example.com>",
            subject="Re: Order late",
            mid="b1@example.com",
            In_Reply_To="<hub.1.2.abc@hub.test>",
        ),
    )
    assert answer.ticket_id == first.ticket_id
    to, cc = await _next_reply_goes_to(mail_db, first.ticket_id)
    assert to == "sara@example.com" and cc == ("boss@example.com",)


async def test_an_answer_from_where_the_customer_asked_replies_to_go_is_replied_to(
    mail_db: Database, tmp_path: Path
) -> None:
    # Not a colleague: the address Sara's Reply-To named answers, and the reply goes back there.
    first = await ingest(mail_db, tmp_path, mail(Reply_To="sara.work@example.org"))
    await _our_reply(mail_db, first.ticket_id, sent_to=["sara.work@example.org"])
    answer = await ingest(
        mail_db,
        tmp_path,
        mail(
            sender="sara.work@example.org",
            subject="Re: Order late",
            mid="w1@example.com",
            In_Reply_To="<hub.1.2.abc@hub.test>",
        ),
    )
    assert answer.ticket_id == first.ticket_id
    to, _ = await _next_reply_goes_to(mail_db, first.ticket_id)
    assert to == "sara.work@example.org"
