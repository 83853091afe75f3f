"""The bot's writes read back: knowledge-base rows, and what the dialog stores on a contact."""

from __future__ import annotations

from sqlalchemy import select

from hub.bot_actions import do_update_lead, load_kb
from hub.core import Channel, InboundMessage, utcnow
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.migrate import upgrade_async
from storage.models import AuditLog, Contact, FaqEntry, Identity, Message


async def test_an_entry_saved_under_looser_rules_still_loads(db: Database, db_url: str) -> None:
    """Tags became limited to 64 characters; an entry saved with a longer one
    before must not stop the bot from building its matcher."""
    await upgrade_async(db_url)
    long_tag = "t" * 100
    async with db.write() as s:
        s.add(
            FaqEntry(
                key="old",
                questions=["how do refunds work", "\u200c"],
                answer={"default": "30 days"},
                tags=[long_tag],
                version=1,
                deleted=False,
                updated_at=utcnow(),
                updated_by="admin:1",
            )
        )
    async with db.read() as s:
        (entry,) = await load_kb(s)
    assert entry.id == "old" and entry.tags == (long_tag,) and entry.answer_in("en") == "30 days"


async def test_a_corrected_name_replaces_only_the_name_the_dialog_gave(db: Database, db_url: str) -> None:
    """ "cancel" stored as the name, then "my name is Ali": the contact shows
    Ali; a name set otherwise (an agent, the channel) is never overwritten."""
    await upgrade_async(db_url)
    async with db.write() as s:
        from_dialog = Contact(name=None, attributes={}, tags=[])
        from_agent = Contact(name="Ali Rezaei", attributes={}, tags=[])
        s.add_all([from_dialog, from_agent])
        await s.flush()
        for contact in (from_dialog, from_agent):
            await do_update_lead(s, contact, attributes={"name": "Sara"}, score=None, stage=None)
        assert (from_dialog.name, from_agent.name) == ("Sara", "Ali Rezaei")
        for contact in (from_dialog, from_agent):
            await do_update_lead(s, contact, attributes={"name": "Sarah"}, score=None, stage=None)
        assert (from_dialog.name, from_agent.name) == ("Sarah", "Ali Rezaei")
        assert from_agent.attributes["name"] == "Sarah"


async def test_an_import_with_replace_and_no_entries_deletes_nothing(db: Database, db_url: str) -> None:
    import pytest

    from bots.kb import KbEntry
    from hub.bot_actions import do_import_faq
    from hub.errors import ValidationFailed

    await upgrade_async(db_url)
    entry = KbEntry.model_validate({"id": "a", "questions": ["q"], "answer": "x"})
    async with db.write() as s:
        await do_import_faq(s, [entry], actor="test")
    with pytest.raises(ValidationFailed, match="an empty import would delete every entry"):
        async with db.write() as s:
            await do_import_faq(s, [], actor="test", replace=True)
    async with db.read() as s:
        assert [e.id for e in await load_kb(s)] == ["a"]


async def test_a_handoff_finds_its_team_in_any_case_and_spacing(db: Database, db_url: str) -> None:
    from sqlalchemy import select

    from hub.actions import do_get_or_create_team
    from hub.bot_actions import do_handoff_team
    from storage.models import Team

    await upgrade_async(db_url)
    async with db.write() as s:
        support = await do_get_or_create_team(s, "Customer Support")
        assert (await do_handoff_team(s, "customer  support")).id == support.id
        assert (await do_handoff_team(s, "Customer Support")).id == support.id
        # A team nobody has is created, as routing creates them.
        await do_handoff_team(s, "Billing")
    async with db.read() as s:
        assert sorted((await s.scalars(select(Team.name))).all()) == ["Billing", "Customer Support"]


async def _identities(db: Database, contact_id: int) -> list[tuple[str, str]]:
    async with db.read() as s:
        rows = await s.execute(
            select(Identity.channel, Identity.address).where(Identity.contact_id == contact_id).order_by(Identity.id)
        )
        return [(r.channel, r.address) for r in rows]


async def test_a_corrected_email_or_phone_takes_back_the_identity_the_dialog_added(db: Database) -> None:
    """ "sara@example.com", then "actually my email is sara.new@example.com":
    whoever owns the mistyped address must not be filed under Sara."""
    async with db.write() as s:
        contact = Contact(name=None, attributes={}, tags=[])
        s.add(contact)
        await s.flush()
        await do_update_lead(s, contact, attributes={"email": "sara@example.com"}, score=None, stage=None)
        await do_update_lead(s, contact, attributes={"phone": "+989121234567"}, score=None, stage=None)
        await do_update_lead(s, contact, attributes={"email": "sara.new@example.com"}, score=None, stage=None)
        await do_update_lead(s, contact, attributes={"phone": "+989127654321"}, score=None, stage=None)
    assert await _identities(db, contact.id) == [("email", "sara.new@example.com"), ("phone", "+989127654321")]
    async with db.read() as s:
        removed = (await s.scalars(select(AuditLog.data).where(AuditLog.action == "contact.identity_removed"))).all()
    assert [(d["channel"], d["address"]) for d in removed] == [
        ("email", "sara@example.com"),
        ("phone", "+989121234567"),
    ]


async def test_a_corrected_address_stays_when_it_is_in_use_or_not_the_dialogs(db: Database) -> None:
    """An identity a message came from, or one the dialog did not add (the
    customer writes from it, an agent added it), is evidence, not a typo."""
    async with db.write() as s:
        (texted,) = await ingest_batch(
            s,
            [InboundMessage(channel=Channel.SMS, inbox="sms:+15550001111", external_id="t1", sender="+15551230000")],
        )
        assert isinstance(texted, IngestResult)
        sms_contact = await s.get(Contact, texted.contact_id)
        by_agent = Contact(name="Ali", attributes={"email": "ali@example.com"}, tags=[])
        s.add(by_agent)
        await s.flush()
        s.add(Identity(contact_id=by_agent.id, channel="email", address="ali@example.com"))
        assert sms_contact is not None
        # The dialog stores the number she texts from, then she corrects it.
        await do_update_lead(s, sms_contact, attributes={"phone": "+15551230000"}, score=None, stage=None)
        await do_update_lead(s, sms_contact, attributes={"phone": "+15559990000"}, score=None, stage=None)
        await do_update_lead(s, by_agent, attributes={"email": "ali@acme.example"}, score=None, stage=None)
        # Added by the dialog, then a reply went to it: in use.
        await do_update_lead(s, sms_contact, attributes={"email": "used@example.com"}, score=None, stage=None)
        await s.flush()
        first = await s.get(Message, texted.message_id)
        assert first is not None
        s.add(
            Message(
                ticket_id=first.ticket_id, contact_id=sms_contact.id, inbox_id=first.inbox_id, channel="email",
                direction="out", author="agent", body="hi", status="sent", extras={"recipient": "used@example.com"},
            )
        )  # fmt: skip
        await s.flush()
        await do_update_lead(s, sms_contact, attributes={"email": "other@example.com"}, score=None, stage=None)
    assert await _identities(db, sms_contact.id) == [
        ("phone", "+15551230000"),
        ("phone", "+15559990000"),
        ("email", "used@example.com"),
        ("email", "other@example.com"),
    ]
    assert await _identities(db, by_agent.id) == [("email", "ali@example.com"), ("email", "ali@acme.example")]
