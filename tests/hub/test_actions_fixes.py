"""Receipts, status changes, merges and labels: what each may (not) change."""

from __future__ import annotations

from sqlalchemy import select

from hub.actions import (
    check_ticket,
    do_ensure_inbox,
    do_merge_contacts,
    do_post_message,
    do_record_delivery,
    do_set_labels,
    do_set_status,
)
from hub.core import Author, Channel, DeliveryStatus, InboundMessage, TicketStatus
from storage import queries
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import AuditLog, Contact, Message, OutboxRow, TicketEventRow, TicketLabel

SMS_INBOX = "sms:+15550001111"


def sms(sender: str, external_id: str) -> InboundMessage:
    return InboundMessage(channel=Channel.SMS, inbox=SMS_INBOX, external_id=external_id, sender=sender, body="hi")


async def sms_tickets(db: Database, *senders: str) -> list[IngestResult]:
    async with db.write() as s:
        await do_ensure_inbox(s, key=SMS_INBOX, channel=Channel.SMS, name="sms")
        results = await ingest_batch(s, [sms(sender, f"x{i}") for i, sender in enumerate(senders)])
    out = [r for r in results if isinstance(r, IngestResult)]
    assert len(out) == len(senders)
    return out


async def sms_reply(db: Database, ticket_id: int) -> int:
    async with db.write() as s:
        ticket = await check_ticket(s, ticket_id, lock=True)
        return (await do_post_message(s, ticket, body="reply", author=Author.AGENT)).id


async def test_a_web_chat_receipt_leaves_the_contacts_sms_reply_alone(db: Database) -> None:
    """The widget's "read" for the id of the contact's queued SMS reply marked it
    read, and the sender (it claims only queued messages) never sent it."""
    (r,) = await sms_tickets(db, "+15550000001")
    mid = await sms_reply(db, r.ticket_id)
    async with db.write() as s:
        got = await do_record_delivery(s, mid, DeliveryStatus.READ, contact_id=r.contact_id, channel=Channel.WEBCHAT)
        assert got is None
    async with db.write() as s:
        # The SMS provider's own receipt still counts.
        assert await do_record_delivery(s, mid, DeliveryStatus.DELIVERED, channel=Channel.SMS) is not None
    async with db.read() as s:
        msg = await s.get(Message, mid)
        assert msg is not None and msg.status == "delivered"


async def test_a_delivery_after_a_failure_drops_the_failures_reason(db: Database) -> None:
    (r,) = await sms_tickets(db, "+15550000001")
    mid = await sms_reply(db, r.ticket_id)
    async with db.write() as s:
        await do_record_delivery(s, mid, DeliveryStatus.FAILED, reason="carrier rejected")
    async with db.write() as s:
        await do_record_delivery(s, mid, DeliveryStatus.DELIVERED)
    async with db.read() as s:
        msg = await s.get(Message, mid)
        assert msg is not None and (msg.status, msg.status_reason) == ("delivered", None)


async def test_setting_the_same_status_again_changes_nothing(db: Database) -> None:
    """Resolving a resolved ticket stamped a new resolved_at and announced
    resolved -> resolved; open -> open started a new SLA cycle."""
    (r,) = await sms_tickets(db, "+15550000001")
    async with db.write() as s:
        ticket = await check_ticket(s, r.ticket_id, lock=True)
        await do_set_status(s, ticket, status=TicketStatus.OPEN, actor="agent:1")
        await do_set_status(s, ticket, status=TicketStatus.RESOLVED, actor="agent:1")
        first = ticket.resolved_at
    async with db.write() as s:
        ticket = await check_ticket(s, r.ticket_id, lock=True)
        await do_set_status(s, ticket, status=TicketStatus.RESOLVED, actor="agent:2")
        assert ticket.resolved_at == first
    async with db.read() as s:
        events = (
            await s.scalars(select(TicketEventRow.data).where(TicketEventRow.kind == "ticket.status_changed"))
        ).all()
        assert events == [{"from": "open", "to": "resolved"}]
        audits = (await s.scalars(select(AuditLog.actor).where(AuditLog.action == "ticket.status"))).all()
        assert audits == ["agent:1"]


async def test_a_merge_keeps_the_sources_segment_and_audits_what_it_dropped(db: Database) -> None:
    a, b = await sms_tickets(db, "+15550000001", "+15550000002")
    async with db.write() as s:
        target, source = await s.get(Contact, a.contact_id), await s.get(Contact, b.contact_id)
        assert target is not None and source is not None
        target.name, target.attributes = "Alice", {"city": "Tehran"}
        source.name, source.segment, source.attributes = "Bob", "enterprise", {"city": "Shiraz", "plan": "pro"}
    async with db.write() as s:
        target, source = await s.get(Contact, a.contact_id), await s.get(Contact, b.contact_id)
        assert target is not None and source is not None
        await do_merge_contacts(s, target, source, actor="agent:1")
    async with db.read() as s:
        merged = await s.get(Contact, a.contact_id)
        assert merged is not None
        assert (merged.name, merged.segment) == ("Alice", "enterprise")
        assert merged.attributes == {"city": "Tehran", "plan": "pro"}
        data = (await s.scalars(select(AuditLog.data).where(AuditLog.action == "contact.merged"))).one()
        assert data["discarded"] == {"name": "Bob", "attributes": {"city": "Shiraz"}}


async def test_labels_differing_in_case_or_spacing_are_one_label(db: Database) -> None:
    (r,) = await sms_tickets(db, "+15550000001")
    async with db.write() as s:
        ticket = await check_ticket(s, r.ticket_id, lock=True)
        await do_set_labels(s, ticket, ["VIP", "vip", " Vip ", "a  b", "a\tb", "Cafe\u0301", "caf\u00e9"], actor="x")
    async with db.read() as s:
        assert sorted((await s.scalars(select(TicketLabel.label))).all()) == ["Caf\u00e9", "VIP", "a b"]
    async with db.write() as s:
        # The ticket's own spelling stays when a label is given again otherwise.
        ticket = await check_ticket(s, r.ticket_id, lock=True)
        await do_set_labels(s, ticket, ["vip", "new"], actor="x")
    async with db.read() as s:
        assert sorted((await s.scalars(select(TicketLabel.label))).all()) == ["VIP", "new"]
        for wanted in ("vip", " VIP", "Vip"):
            found, _ = await queries.list_tickets(s, queries.TicketFilter(label=wanted), cursor=None, limit=10)
            assert [t["id"] for t in found] == [r.ticket_id], wanted
        found, _ = await queries.list_tickets(s, queries.TicketFilter(label="vi"), cursor=None, limit=10)
        assert found == []


async def test_a_label_change_is_audited_with_what_it_replaced(db: Database) -> None:
    (r,) = await sms_tickets(db, "+15550000001")
    for labels in (["vip"], ["VIP "], ["vip", "refund"]):
        async with db.write() as s:
            ticket = await check_ticket(s, r.ticket_id, lock=True)
            await do_set_labels(s, ticket, labels, actor="x")
    async with db.read() as s:
        audits = (
            await s.scalars(select(AuditLog.data).where(AuditLog.action == "ticket.labels").order_by(AuditLog.id))
        ).all()
        assert audits == [{"from": [], "labels": ["vip"]}, {"from": ["vip"], "labels": ["refund", "vip"]}]


async def test_a_label_change_records_a_ticket_event_and_a_live_event(db: Database) -> None:
    """Other agents' inboxes learn the new labels, and the timeline shows the
    change; setting the labels the ticket already has records nothing."""
    (r,) = await sms_tickets(db, "+15550000001")

    async def recorded() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        async with db.read() as s:
            events = (
                await s.scalars(
                    select(TicketEventRow.data)
                    .where(TicketEventRow.kind == "ticket.labels_changed")
                    .order_by(TicketEventRow.id)
                )
            ).all()
            payloads = (await s.scalars(select(OutboxRow.payload).order_by(OutboxRow.id))).all()
        return list(events), [p for p in payloads if p["kind"] == "ticket.labels_changed"]

    async with db.write() as s:
        ticket = await check_ticket(s, r.ticket_id, lock=True)
        await do_set_labels(s, ticket, ["vip", "refund"], actor="agent:1")
    events, live = await recorded()
    assert events == [{"from": [], "to": ["refund", "vip"]}]
    assert len(live) == 1
    assert live[0]["data"] == {"from": [], "to": ["refund", "vip"]}
    assert live[0]["actor"] == "agent:1"
    assert live[0]["ticket"]["id"] == r.ticket_id  # type: ignore[index]
    assert sorted(live[0]["ticket"]["labels"]) == ["refund", "vip"]  # type: ignore[index]

    for same in (["refund", "vip"], ["VIP", " refund "]):
        async with db.write() as s:
            ticket = await check_ticket(s, r.ticket_id, lock=True)
            await do_set_labels(s, ticket, same, actor="agent:1")
    assert await recorded() == (events, live)

    async with db.write() as s:
        ticket = await check_ticket(s, r.ticket_id, lock=True)
        await do_set_labels(s, ticket, [], actor="agent:2")
    events, live = await recorded()
    assert events[-1] == {"from": ["refund", "vip"], "to": []}
    assert len(live) == 2 and live[-1]["data"] == {"from": ["refund", "vip"], "to": []}
