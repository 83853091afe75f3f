"""Everything Twilio, built once from the ``twilio`` config section by the
composition root: the SMS and voice channel adapters, the opt-out ledger, the
voice desk, the worker steps, and which account signs which webhook.

Other parts plug in here: campaigns send through ``service.sms.send_sms`` (the
same ledger, the same client) and add a ``receipt_handlers`` entry for status
callbacks of messages that are not ticket messages; routing replaces
``desk.is_open`` / ``desk.available_agents`` with its calendars and presence.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from twilio.rest import Client

from channels.base import ChannelAdapter
from channels.twilio_common import FormParams, TwilioAccount
from channels.twilio_sms import SmsSender, TwilioSmsChannel
from channels.twilio_voice import TwilioVoiceChannel
from hub.actions import SMS_CHANNELS, do_ensure_inbox, do_get_or_create_team
from hub.attachments import AttachmentStore
from hub.config import HubConfig, TwilioSenderConfig
from hub.core import Channel, DeliveryReceipt, InboundMessage, TicketEventKind
from hub.telephony.ledger import SqlOptOutLedger
from hub.telephony.sms import MediaCopier, SmsSteps
from hub.telephony.voice import VoiceDesk, online_agents_with_phone, weekly_hours
from hub.workers import EventProcessor
from storage.db import Database
from storage.models import Call, CampaignRecipient, Inbox, Message

log = logging.getLogger(__name__)

#: Handles a status callback for a message that is not a ticket message (a
#: campaign's): returns True when it knew the message. Gets the receipt and the
#: callback URL's query parameters.
ReceiptHandler = Callable[[DeliveryReceipt, Mapping[str, str]], Awaitable[bool]]
#: Sees an incoming SMS before it is stored and may add to its extras (a
#: campaign's reply attribution); gets the sender it was written to.
InboundHook = Callable[[InboundMessage, SmsSender], Awaitable[InboundMessage]]


class TwilioService:
    def __init__(self, config: HubConfig, db: Database, attachments: AttachmentStore) -> None:
        tw = config.twilio
        self.config = config
        self.tw = tw
        self.db = db
        self.attachments = attachments
        self.region = config.phone.default_region
        self.ledger = SqlOptOutLedger(db)
        self.sender_configs: dict[str, TwilioSenderConfig] = {s.inbox: s for s in tw.senders}
        self.senders = [
            SmsSender(
                inbox=s.inbox,
                account=TwilioAccount(*tw.credentials(s)),
                number=s.number,
                messaging_service_sid=s.messaging_service_sid,
                messages_per_second=s.messages_per_second,
            )
            for s in tw.senders
        ]
        # Only an explicitly configured public URL is one Twilio can reach: the
        # default (http://host:port) is where the hub listens, usually localhost.
        self.public_base = config.server.public_url.rstrip("/") if config.server.public_url else None
        self.sms = TwilioSmsChannel(
            self.senders,
            self.ledger,
            api_base_url=tw.api_base_url,
            public_url=self.public_base,
            timeout=tw.request_timeout_seconds,
            known_sids=self.known_sids,
        )
        main = TwilioAccount(*tw.credentials()) if tw.account_sid and tw.auth_token else None
        self.main_account = main
        self.voice_account = main or (self.senders[0].account if self.senders else None)
        self.voice_enabled = tw.voice.enabled and self.voice_account is not None
        # Only a phone number can place a call: not a short code or an alphanumeric sender ID.
        self.caller_id = tw.voice.caller_id or next(
            (s.number for s in self.senders if s.number and s.number.startswith("+")), None
        )
        reply_sender = next((s for s in self.senders if s.number and s.number == self.caller_id), None) or (
            self.senders[0] if self.senders else None
        )
        self.voice_channel = TwilioVoiceChannel(self.sms if self.senders else None, reply_sender)
        self.desk = VoiceDesk(self, weekly_hours(tw.voice.hours), online_agents_with_phone(db))
        self.receipt_handlers: list[ReceiptHandler] = []
        self.inbound_hooks: list[InboundHook] = []
        self._inbox_senders: dict[int, SmsSender | None] = {}
        if self.senders and self.public_base is None:
            log.warning(
                "server.public_url is not set: Twilio gets no status callback URL, so SMS stay 'sent' "
                "(never 'delivered'), and MMS attachments of replies cannot be fetched by Twilio"
            )

    @property
    def channels(self) -> dict[Channel, ChannelAdapter]:
        out: dict[Channel, ChannelAdapter] = {}
        if self.senders:
            out[Channel.SMS] = self.sms
        if self.voice_enabled:
            out[Channel.VOICE] = self.voice_channel
        return out

    def client(self, account: TwilioAccount) -> Client:
        return self.sms.client(account)

    def install(self, processor: EventProcessor, submit: Any) -> None:
        """Worker steps for stored messages, after routing's."""
        processor.subscribe(TicketEventKind.MESSAGE_RECEIVED, SmsSteps(self).on_received)
        if self.tw.fetch_media:
            processor.subscribe(TicketEventKind.MESSAGE_RECEIVED, MediaCopier(self).on_received)
        self.desk.submit = submit

    async def sync_inboxes(self, session: AsyncSession) -> None:
        for s in self.tw.senders:
            inbox = await do_ensure_inbox(
                session, key=s.inbox, channel=Channel.SMS, name=s.display_name, bot_enabled=s.bot
            )
            if s.team:
                inbox.default_team_id = (await do_get_or_create_team(session, s.team)).id
        if self.voice_enabled:
            voice = self.tw.voice
            inbox = await do_ensure_inbox(session, key=voice.inbox, channel=Channel.VOICE, name=voice.inbox_name)
            if voice.default_team:
                inbox.default_team_id = (await do_get_or_create_team(session, voice.default_team)).id

    # --- who signed a webhook ---------------------------------------------------------

    def accounts(self) -> dict[str, TwilioAccount]:
        out = {s.account.account_sid: s.account for s in self.senders}
        if self.main_account is not None:
            out[self.main_account.account_sid] = self.main_account
        return out

    def _sender(self, service_sid: str, number: str) -> SmsSender | None:
        """By Messaging Service first: in a pool the number varies."""
        if service_sid:
            found = next((s for s in self.senders if s.messaging_service_sid == service_sid), None)
            if found is not None:
                return found
        if number:
            return next((s for s in self.senders if s.number == number), None)
        return None

    def inbound_sender(self, params: FormParams) -> SmsSender | None:
        """The sender (and inbox) an incoming SMS was written to."""
        return self._sender(params.get("MessagingServiceSid"), params.get("To"))

    async def known_sids(self, sids: Collection[str]) -> dict[str, int | None]:
        """Which of these Twilio message SIDs are already a message or a
        campaign send of ours: SID -> the message's id (None: a campaign's)."""
        wanted = list(sids)
        if not wanted:
            return {}
        async with self.db.read() as session:
            sent = await session.scalars(
                select(CampaignRecipient.external_id).where(CampaignRecipient.external_id.in_(wanted))
            )
            owners: dict[str, int | None] = {sid: None for sid in sent.all() if sid}
            mine = await session.execute(
                select(Message.external_id, Message.id).where(
                    Message.channel.in_(SMS_CHANNELS), Message.external_id.in_(wanted)
                )
            )
            owners.update({sid: message_id for sid, message_id in mine.all() if sid})
            return owners

    def shared_key(self, key_id: str, account: TwilioAccount) -> str | None:
        """The secret of the SharedKey ``key_id`` when it is configured for
        ``account`` (``twilio.shared_keys``); None otherwise."""
        return self.tw.shared_key(key_id, account.account_sid)

    def status_account(self, params: FormParams) -> TwilioAccount | None:
        """The account whose token signs a status callback of a message we sent."""
        sender = self._sender(params.get("MessagingServiceSid"), params.get("From"))
        if sender is not None:
            return sender.account
        return self.accounts().get(params.get("AccountSid"))

    async def voice_signers(self, params: FormParams) -> list[TwilioAccount]:
        """The accounts that may sign a voice webhook. Any configured account's
        token passes the signature check, and To, From and AccountSid are the
        caller's to write, so the AccountSid named is never taken at its word:
        a call the hub has a row for is its account's alone; a new inbound call
        is the voice line's or that of the sender whose number is To or From;
        a call the hub placed (click-to-call) the voice line's, which places them."""
        sids = [sid for sid in (params.get("CallSid"), params.get("ParentCallSid")) if sid]
        if sids:
            async with self.db.read() as session:
                rows = {r.call_sid: r for r in (await session.scalars(select(Call).where(Call.call_sid.in_(sids))))}
            # An agent's leg of an inbound call's <Dial> is signed by the account of the call it belongs to.
            row = next((rows[sid] for sid in sids if sid in rows), None)
            if row is not None:
                account = self.call_account(row)
                return [account] if account is not None else []
        found: list[TwilioAccount] = []
        if not params.get("Direction", "").startswith("outbound"):
            for number in (params.get("To"), params.get("From")):
                sender = self._sender("", number)
                if sender is not None:
                    found.append(sender.account)
        if self.voice_account is not None:
            found.append(self.voice_account)
        return list(dict.fromkeys(found))

    def call_account(self, row: Call) -> TwilioAccount | None:
        """The account a recorded call belongs to: click-to-calls are placed
        with the voice line's; an inbound call is the account's whose number was called."""
        if row.direction == "inbound":
            sender = self._sender("", row.line)
            if sender is not None:
                return sender.account
        return self.voice_account

    def account_of_inbox(self, inbox: str) -> TwilioAccount | None:
        sender = next((s for s in self.senders if s.inbox == inbox), None)
        if sender is not None:
            return sender.account
        return self.voice_account if inbox == self.tw.voice.inbox else None

    async def sender_of_inbox_id(self, session: AsyncSession, inbox_id: int) -> SmsSender | None:
        """The SMS sender whose number and account an inbox's replies go out
        from (a phone inbox's go out from the voice channel's SMS sender)."""
        if inbox_id not in self._inbox_senders:
            key = await session.scalar(select(Inbox.key).where(Inbox.id == inbox_id))
            sender = self.sms.senders.get(key or "")
            if sender is None and key == self.tw.voice.inbox:
                sender = self.voice_channel.reply_sender
            self._inbox_senders[inbox_id] = sender
        return self._inbox_senders[inbox_id]
