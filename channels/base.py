"""The shape every channel module has (errbot's backends, apprise's plugins):
class-level metadata that drives behaviour, ``send`` of an
:class:`~hub.core.OutboundMessage` returning a :class:`~hub.core.SendResult`,
and pure parsing functions of plain data (headers, body, frames) into core
types. Adapters import the core types only: no storage, no routing, no aiohttp
application objects."""

from __future__ import annotations

import abc
from typing import ClassVar

from hub.core import Channel, OutboundMessage, SendResult

# SendResult.extras keys the sender understands. SEND_PARTS: provider ids of the
# parts of a split message delivered so far; kept on the message and handed back
# on a retry, so an adapter resumes where it stopped instead of repeating parts.
SEND_PARTS = "sent_parts"
# A stored message's extras mark, handed to its channel in OutboundMessage.extras:
# the one message confirming an opt-out the provider does not confirm itself
# («لغو»), which the SMS channel sends although the number just opted out.
OPT_OUT_CONFIRMATION = "opt_out_confirmation"
# RECIPIENT_UNREACHABLE: why the channel refuses this address for good (a user
# blocked the bot); the sender marks the identity unreachable with that reason.
RECIPIENT_UNREACHABLE = "recipient_unreachable"
# OutboundMessage.extras key the sender sets: which attempt this is (1, 2, ...). A
# retry may follow an attempt whose outcome is unknown (no answer in time, the
# connection dropped, the process died mid-send): an adapter whose provider can
# be asked checks whether that attempt went through before sending again.
SEND_ATTEMPT = "attempt"


class InvalidPayload(ValueError):
    """The provider's (or client's) input is not what this channel accepts. The
    message names what is wrong; the hub answers it as a 4xx and stores nothing."""


class ChannelAdapter(abc.ABC):
    channel: ClassVar[Channel]
    #: Longest body the channel takes in one message (None: no limit).
    max_body_chars: ClassVar[int | None] = None
    #: Sends per second the provider allows from one inbox (one bot, one sending
    #: number); None: no limit. ``hub/sender.py`` paces each inbox to it, per process.
    rate_per_second: ClassVar[float | None] = None
    supports_attachments: ClassVar[bool] = False

    @abc.abstractmethod
    async def send(self, message: OutboundMessage) -> SendResult:
        """Deliver ``message``. Never raises for a delivery problem: failures come
        back as a status with a reason, ``retryable`` when trying again may help."""

    async def close(self) -> None:  # noqa: B027 - optional hook: most adapters hold nothing to release
        """Release connections; called when the hub stops."""
