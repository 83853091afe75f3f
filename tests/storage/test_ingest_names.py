"""Names customers give their channels are stored without the bidi controls
that would make agents read them as another name."""

from __future__ import annotations

from sqlalchemy import select

from hub.core import Channel, InboundMessage
from storage.db import Database
from storage.ingest import IngestResult, customer_name, ingest_batch
from storage.models import Contact, Identity


def test_customer_name_drops_only_the_reordering_controls() -> None:
    assert customer_name("Eve \u202eevil") == "Eve evil"
    assert customer_name("\u2067مریم\u2069 \u202aO'Brien\u202c") == "مریم O'Brien"
    # The zero-width non-joiner is part of Persian names; marks do not reorder.
    assert customer_name("نیلو\u200cفر\u200f") == "نیلو\u200cفر\u200f"
    assert customer_name("\u202e\u202d") is None
    assert customer_name(None) is None


async def test_ingest_stores_contact_and_display_names_without_bidi_controls(db: Database) -> None:
    async with db.write() as s:
        (r,) = await ingest_batch(
            s,
            [
                InboundMessage(
                    channel=Channel.WEBCHAT,
                    inbox="webchat",
                    external_id="eve:1",
                    sender="eve",
                    sender_name="Eve <b>x</b> \u202eevil\u2066",
                    body="hello",
                )
            ],
        )
    assert isinstance(r, IngestResult)
    async with db.read() as s:
        contact = await s.get(Contact, r.contact_id)
        identity = (await s.scalars(select(Identity).where(Identity.contact_id == r.contact_id))).one()
    assert contact is not None
    assert contact.name == identity.display_name == "Eve <b>x</b> evil"
