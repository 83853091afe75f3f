"""Campaigns in the running hub: built by the composition root when Twilio is
configured; the runner runs in worker processes; receipts, reply attribution
and the reply step plug into the Twilio service and the event processor."""

from __future__ import annotations

from hub.campaigns.runner import CampaignReceipts, CampaignRunner
from hub.config import HubConfig
from hub.core import TicketEventKind
from hub.stream.base import LiveBus
from hub.telephony import TwilioService
from hub.workers import EventProcessor
from storage.db import Database


class CampaignService:
    def __init__(self, config: HubConfig, db: Database, twilio: TwilioService, live: LiveBus, owner: str) -> None:
        self.config = config.campaigns
        self.twilio = twilio
        self.runner = CampaignRunner(db, twilio, config.campaigns, owner=owner, live=live)
        self.receipts = CampaignReceipts(db, twilio, config.campaigns)

    def install(self, processor: EventProcessor) -> None:
        self.twilio.receipt_handlers.append(self.receipts.on_receipt)
        self.twilio.inbound_hooks.append(self.receipts.attribute)
        processor.subscribe(TicketEventKind.MESSAGE_RECEIVED, self.receipts.on_received)
