"""Knowledge-base rows as the bot reads them back."""

from __future__ import annotations

from hub.bot_actions import load_kb
from hub.core import utcnow
from storage.db import Database
from storage.migrate import upgrade_async
from storage.models import FaqEntry


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
