"""SMS on the hub's side: quick-reply numbers mapped back before a message is
stored, delivery receipts applied without moving a message backwards, and the
worker steps that run after an SMS is stored (opt-out keywords, HELP, the
inbox's default team, copying MMS media and voicemails into the attachment store)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import aiohttp
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from channels.base import OPT_OUT_CONFIRMATION
from channels.twilio_common import OPT_OUT_CODE, TwilioAccount, text_by_language
from channels.twilio_sms import (
    KEYWORD_HANDLED,
    TWILIO_STOP_WORDS,
    SmsSender,
    classify_keyword,
    is_everyday_answer,
    quick_reply_choice,
)
from hub.actions import SMS_CHANNELS, do_assign, do_get_or_create_team, do_post_message, do_record_delivery
from hub.attachments import AttachmentTooLarge
from hub.core import Author, Channel, DeliveryReceipt, Direction, InboundMessage, QuickReply
from hub.errors import Forbidden
from hub.stream.base import Event
from hub.telephony.ledger import do_set_opt_out
from hub.text import detect_language, keyword
from storage.models import Campaign, CampaignRecipient, Contact, Message, Ticket

if TYPE_CHECKING:
    from hub.telephony.service import TwilioService

log = logging.getLogger(__name__)


def with_quick_reply(inbound: InboundMessage, offered: list[QuickReply]) -> InboundMessage:
    """A numbered reply to offered options as the choice: ``quick_reply`` is its
    id and the body its title (what the customer meant); what they typed stays
    in the extras."""
    choice = quick_reply_choice(inbound.body, offered) if offered else None
    if choice is None:
        return inbound
    return inbound.model_copy(
        update={"quick_reply": choice.id, "body": choice.title, "extras": {**inbound.extras, "typed": inbound.body}}
    )


async def do_record_receipt(
    session: AsyncSession,
    service: TwilioService,
    receipt: DeliveryReceipt,
    *,
    message_id: int | None,
    signed_by: TwilioAccount,
    campaign_recipient_id: int | None = None,
) -> Message | None:
    """Apply a status callback to the message it reports on: found by our id
    (carried in the callback URL) or by Twilio's SID. Returns None when no
    message of ours has that SID (a campaign's, say). A message (or campaign
    send) that another account sent is refused (Forbidden), changing nothing."""
    msg: Message | None = None
    if message_id is not None:
        msg = await session.get(Message, message_id, with_for_update=True)
        if msg is not None and (
            msg.channel not in SMS_CHANNELS
            or msg.direction != Direction.OUT.value
            or msg.external_id not in (None, receipt.external_id)
        ):
            msg = None
    if msg is None:
        msg = await session.scalar(
            select(Message)
            .where(Message.channel.in_(SMS_CHANNELS), Message.external_id == receipt.external_id)
            .with_for_update()
        )
    if msg is None or msg.direction != Direction.OUT.value:
        await check_campaign_receipt_signer(session, service, receipt, campaign_recipient_id, signed_by)
        return None
    sender = check_signer(await service.sender_of_inbox_id(session, msg.inbox_id), signed_by, receipt)
    if msg.external_id is None:
        # The callback overtook the sender's own record of the send.
        msg.external_id = receipt.external_id
    if receipt.error_code:
        msg.extras = {**(msg.extras or {}), "error_code": receipt.error_code}
        recipient = (msg.extras or {}).get("recipient")
        if receipt.error_code == str(OPT_OUT_CODE) and recipient and sender.key:
            await do_set_opt_out(
                session,
                phone=str(recipient),
                sender=sender.key,
                opted_out=True,
                source=f"Twilio error {OPT_OUT_CODE}",
                actor="twilio",
            )
    await session.flush()
    await do_record_delivery(session, msg.id, receipt.status, reason=receipt.reason)
    return msg


def check_signer(sender: SmsSender | None, signed_by: TwilioAccount, receipt: DeliveryReceipt) -> SmsSender:
    """Twilio signs a status callback with the token of the account that sent
    the message. Any configured account's token passes the signature check
    (the From and AccountSid are the caller's to choose), so without this
    whoever holds a subaccount's token could fail or opt out another account's
    messages."""
    if sender is None or sender.account.account_sid != signed_by.account_sid:
        raise Forbidden(
            f"the status callback for {receipt.external_id} is signed by Twilio account {signed_by.account_sid}, "
            "which did not send that message"
            + ("" if sender is not None else " (its sender is no longer configured in twilio.senders)")
        )
    return sender


async def check_campaign_receipt_signer(
    session: AsyncSession,
    service: TwilioService,
    receipt: DeliveryReceipt,
    recipient_id: int | None,
    signed_by: TwilioAccount,
) -> None:
    """:func:`check_signer` for a campaign's send, found the way the campaigns'
    receipt handler finds it (by the id in the callback URL, else by SID)."""
    c = CampaignRecipient
    query = select(c.external_id, Campaign.sender).join(Campaign, Campaign.id == c.campaign_id)
    row = None
    if recipient_id is not None:
        row = (await session.execute(query.where(c.id == recipient_id))).first()
        if row is not None and row.external_id not in (None, receipt.external_id):
            row = None
    if row is None:
        row = (await session.execute(query.where(c.external_id == receipt.external_id))).first()
    if row is not None:
        check_signer(service.sms.sender_by_key(row.sender), signed_by, receipt)


#: How many of a contact's latest messages tell which language they write in.
LANGUAGE_LOOKBACK = 10


async def customer_language(session: AsyncSession, msg: Message, typed: str) -> str:
    """The language to answer a keyword in. The keyword itself says little
    when it is Latin ("HELP" is what the hub tells everyone to text), so then
    the customer's own recent words decide, else the language stored on the
    contact, else English."""
    said = detect_language(typed)
    if said not in (None, "en"):
        return said
    recent = await session.scalars(
        select(Message.body)
        .where(
            Message.contact_id == msg.contact_id,
            Message.direction == Direction.IN.value,
            Message.id != msg.id,
        )
        .order_by(Message.id.desc())
        .limit(LANGUAGE_LOOKBACK)
    )
    words = " ".join(b for b in recent.all() if b and classify_keyword(b) is None)
    written = detect_language(words)
    if written is not None:
        return written
    contact = await session.get(Contact, msg.contact_id)
    stored = (contact.attributes or {}).get("language") if contact is not None else None
    return stored.strip().lower() if isinstance(stored, str) and stored.strip() else "en"


class SmsSteps:
    """Worker steps for stored inbound SMS (registered on ``message.received``,
    before the bot's step: a compliance keyword is marked
    ``extras[KEYWORD_HANDLED]`` by the time the bot looks, and the bot leaves it
    alone)."""

    def __init__(self, service: TwilioService) -> None:
        self.service = service

    async def on_received(self, event: Event) -> None:
        message: dict[str, Any] = event.payload["message"]
        if message.get("channel") != Channel.SMS.value or message.get("direction") != Direction.IN.value:
            return
        sender = self.service.sender_configs.get(message.get("inbox") or "")
        if sender is None:
            return
        async with self.service.db.write() as session:
            msg = await session.get(Message, int(message["id"]), with_for_update=True)
            if msg is None:
                return
            ticket = await session.get(Ticket, msg.ticket_id)
            assert ticket is not None
            if event.payload.get("ticket_created") and sender.team and ticket.team_id is None:
                team = await do_get_or_create_team(session, sender.team)
                await do_assign(session, ticket, agent_id=ticket.assignee_id, team_id=team.id, actor="system")
            extras = dict(msg.extras or {})
            if "keyword" in extras:
                return  # a redelivered event: handled already
            typed = str(extras.get("typed") or msg.body)
            kind = classify_keyword(typed)
            if kind is None:
                return
            phone = str(extras.get("from") or "")
            language = await customer_language(session, msg, typed)
            # STOP and HELP are always the hub's to answer (a reply after STOP
            # would be refused anyway); START unless it was an everyday "Yes".
            handled = True
            if kind == "stop":
                changed = await do_set_opt_out(
                    session, phone=phone, sender=sender.key, opted_out=True, source=f"texted {typed.strip()[:40]!r}"
                )
                if changed:
                    await do_post_message(
                        session,
                        ticket,
                        body=f"{phone} opted out of SMS from {sender.display_name} ({typed.strip()}). "
                        "Nothing more is sent to them from it until they text START.",
                        author=Author.SYSTEM,
                        private=True,
                    )
                    reply = text_by_language(self.service.tw.opt_out.stop_reply, language)
                    if reply and keyword(typed) not in TWILIO_STOP_WORDS:
                        # Only on the change: a second «لغو» is not confirmed again.
                        confirmation = await do_post_message(session, ticket, body=reply, author=Author.SYSTEM)
                        confirmation.extras = {**(confirmation.extras or {}), OPT_OUT_CONFIRMATION: True}
            elif kind == "start":
                changed = await do_set_opt_out(
                    session, phone=phone, sender=sender.key, opted_out=False, source=f"texted {typed.strip()[:40]!r}"
                )
                # A "Yes" that opted nobody back in answers something else (the bot's question).
                handled = changed or not is_everyday_answer(typed)
                reply = text_by_language(self.service.tw.opt_out.start_reply, language)
                if changed:
                    await do_post_message(
                        session,
                        ticket,
                        body=f"{phone} opted back in to SMS from {sender.display_name}.",
                        author=Author.SYSTEM,
                        private=True,
                    )
                    if reply:
                        await do_post_message(session, ticket, body=reply, author=Author.SYSTEM)
            else:
                reply = text_by_language(self.service.tw.opt_out.help_reply, language)
                if reply:
                    await do_post_message(session, ticket, body=reply, author=Author.SYSTEM)
            # Also the mark that the keyword was handled, should the event come again.
            msg.extras = {**extras, "keyword": kind, KEYWORD_HANDLED: handled}


class MediaCopier:
    """Copies media Twilio holds (MMS pictures, voicemail recordings) into the
    attachment store, so agents and the widget can show them without Twilio's
    credentials and they outlive Twilio's copy. The message is stored first with
    Twilio's URLs; a copy that fails keeps them and says why in the extras."""

    def __init__(self, service: TwilioService) -> None:
        self.service = service

    def _twilio_hosted(self, url: str) -> bool:
        return url.startswith(self.service.tw.api_base_url + "/")

    async def on_received(self, event: Event) -> None:
        message: dict[str, Any] = event.payload["message"]
        if message.get("direction") != Direction.IN.value or message.get("channel") not in SMS_CHANNELS:
            return
        original = list(message.get("attachments") or [])
        if not any(self._twilio_hosted(str(a.get("url", ""))) for a in original):
            return
        account = self.service.account_of_inbox(message.get("inbox") or "")
        if account is None:
            return
        if not await self._still_twilios(int(message["id"]), original):
            return  # copied already (a redelivered event): nothing to download
        copied: list[dict[str, Any]] = []
        errors: list[str] = []
        timeout = aiohttp.ClientTimeout(total=max(self.service.tw.request_timeout_seconds * 4, 30))
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for item in original:
                url = str(item.get("url", ""))
                if not self._twilio_hosted(url):
                    copied.append(item)
                    continue
                try:
                    saved = await self._copy(http, account, item)
                except (aiohttp.ClientError, TimeoutError, AttachmentTooLarge, OSError) as exc:
                    errors.append(f"{url}: {exc}")
                    copied.append(item)
                    continue
                copied.append(saved)
        # The copies this run made, which nothing points at unless written below.
        ours = [str(a.get("url")) for a in copied if a not in original]
        store = self.service.attachments
        async with self.service.db.write() as session:
            try:
                msg = await session.get(Message, int(message["id"]), with_for_update=True)
                kept = msg is not None and list(msg.attachments or []) == original
                if msg is not None and kept:
                    msg.attachments = copied
                    extras = {**(msg.extras or {}), "twilio_media": [a.get("url") for a in original]}
                    if errors:
                        extras["media_errors"] = errors
                    msg.extras = extras
            except BaseException:
                # Raised inside the unit of work: it rolls back, the message keeps Twilio's URLs.
                await store.discard(ours)
                raise
        if not kept:
            # Copied already by a redelivery of the event that ran alongside.
            await store.discard(ours)

    async def _still_twilios(self, message_id: int, original: list[dict[str, Any]]) -> bool:
        async with self.service.db.read() as session:
            stored = await session.scalar(select(Message.attachments).where(Message.id == message_id))
        return stored is not None and list(stored) == original

    async def _copy(self, http: aiohttp.ClientSession, account: TwilioAccount, item: dict[str, Any]) -> dict[str, Any]:
        store = self.service.attachments
        # Media URLs need the account's credentials (and redirect to storage,
        # where aiohttp drops the Authorization header, as it must).
        auth = aiohttp.encode_basic_auth(account.account_sid, account.auth_token)
        async with http.get(str(item["url"]), headers={"Authorization": auth}) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(
                    resp.request_info, resp.history, status=resp.status, message=f"HTTP {resp.status}"
                )
            if resp.content_length is not None:
                store.check_size(resp.content_length, item.get("filename"))
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(64 * 1024):
                size += len(chunk)
                store.check_size(size, item.get("filename"))
                chunks.append(chunk)
            ctype = resp.headers.get("Content-Type") or item.get("content_type")
        saved = await store.save(b"".join(chunks), filename=item.get("filename"), content_type=ctype)
        return saved.model_dump(exclude_none=True)
