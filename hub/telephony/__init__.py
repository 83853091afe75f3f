"""SMS and phone over Twilio, on the hub's side: the opt-out ledger, the
actions and worker steps for messages, receipts and calls, and the service the
composition root builds from the ``twilio`` config section."""

from hub.telephony.service import TwilioService

__all__ = ["TwilioService"]
