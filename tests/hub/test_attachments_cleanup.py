"""Files saved for a message that then was not stored (its transaction rolled
back, or another delivery stored it first) are removed, not left on disk
behind URLs nothing points at."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import hub.mail
from channels.email_imap import FolderState
from hub.attachments import AttachmentStore
from hub.mail import MailboxPoller
from hub.stream.base import Event
from hub.telephony.sms import MediaCopier
from storage.db import Database
from storage.mail import claim_mailbox
from tests.hub.test_mail import config, mail, mail_db  # noqa: F401 - mail_db is a fixture
from tests.hub.twilio_helpers import ACCOUNT, eventually, twilio_hub
from tests.hub.web.test_twilio_sms import new_sid, ticket_of

WITH_FILE = (
    b"From: Sara <sara@example.com>\r\nTo: support@hub.test\r\nSubject: photo\r\nMessage-ID: <p1@example.com>\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
    b"--B\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>see</p>\r\n"
    b'--B\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename="p.png"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--B--\r\n"
)


def stored(root: Path) -> list[Path]:
    return sorted(root.rglob("data"))


async def test_delete_removes_a_stored_file_and_nothing_else(tmp_path: Path) -> None:
    store = AttachmentStore(tmp_path, max_bytes=1024)
    keep = await store.save(b"keep", filename="a.txt", content_type="text/plain")
    drop = await store.save(b"drop", filename="b.txt", content_type="text/plain")
    await store.discard([drop.url, None, "https://elsewhere.example.com/x.png", "/attachments/AAAA/b.txt"])
    assert store.read(drop.url) is None and store.resolve(drop.url) is None
    assert store.read(keep.url) == b"keep"
    assert len(stored(tmp_path)) == 1
    assert store.delete(drop.url) is False


@pytest.fixture
async def poller(mail_db: Database, tmp_path: Path) -> Any:  # noqa: F811 - the fixture imported above
    cfg = config(tmp_path)
    store = AttachmentStore(tmp_path / "files", max_bytes=1024 * 1024)
    with ThreadPoolExecutor(max_workers=1) as pool:
        box = MailboxPoller(cfg.email.mailboxes[0], cfg.email, mail_db, store, pool, owner="me")
        async with mail_db.write() as session:
            await claim_mailbox(session, box.key, "INBOX", "me", 60)
        yield box


async def test_a_mail_that_another_poller_stored_first_leaves_no_files(
    poller: MailboxPoller, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = FolderState(uidvalidity=9, uidnext=10, exists=3)
    assert await poller.process(WITH_FILE, uid=1, state=state) == "stored"
    first = stored(tmp_path / "files")
    assert len(first) == 3  # the picture, the HTML page, the original

    # The other poller's commit lands between this one's check and its own.
    async def not_yet(*_: Any) -> bool:
        return False

    monkeypatch.setattr(hub.mail, "email_message_exists", not_yet)
    assert await poller.process(WITH_FILE, uid=2, state=state) == "duplicate"
    assert stored(tmp_path / "files") == first


async def test_a_mail_whose_ingest_fails_leaves_no_files(
    poller: MailboxPoller, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing(*_: Any) -> Any:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(hub.mail, "do_ingest_email", failing)
    with pytest.raises(RuntimeError):
        await poller.process(WITH_FILE, uid=1, state=FolderState(uidvalidity=9, uidnext=10, exists=3))
    assert stored(tmp_path / "files") == []


async def test_an_mms_event_delivered_again_leaves_no_second_copy(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        picture = b"\x89PNG\r\n\x1a\n" + b"x" * 100
        url = t.fake.add_media(ACCOUNT, "Messages/MM1/Media", picture, "image/png")
        assert await t.sms("", sid=new_sid("MM"), NumMedia="1", MediaUrl0=url, MediaContentType0="image/png") == 200
        agent = await t.agent()

        async def copied() -> dict[str, Any] | None:
            message: dict[str, Any] = (await ticket_of(t, agent))["messages"][0]
            atts = message["attachments"]
            return message if atts and atts[0]["url"].startswith("/attachments/") else None

        message = await eventually(copied)
        assert len(stored(t.config.attachments_dir)) == 1
        # The stream hands the same event over again (twice at once, even).
        assert t.hub.twilio is not None
        copier = MediaCopier(t.hub.twilio)
        original = {**message, "attachments": [{"url": url, "content_type": "image/png"}]}
        event = Event(key=str(message["ticket_id"]), payload={"kind": "message.received", "message": original})
        await asyncio.gather(copier.on_received(event), copier.on_received(event))
        assert len(stored(t.config.attachments_dir)) == 1
