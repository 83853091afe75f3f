"""Knowledge-base rows as the bot reads them back."""

from __future__ import annotations

from hub.bot_actions import do_update_lead, load_kb
from hub.core import utcnow
from storage.db import Database
from storage.migrate import upgrade_async
from storage.models import Contact, FaqEntry


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
