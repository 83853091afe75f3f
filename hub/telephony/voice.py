"""The phone line: what each Twilio Voice webhook does and answers.

A call is a ``calls`` row on the caller's ticket (opened when the phone rings)
and ``call`` events in the ticket's timeline, which also reach the agents'
inbox live. The IVR greets, offers the menu (digits -> teams), and then rings
every available agent of the chosen team at once (<Dial>) during business
hours, or takes a voicemail (<Record> with transcription). A call that reached
nobody and left no message puts a call-back task on the ticket for the team.
A caller who withheld their number is a contact of their own for that one call
(never one shared by every hidden caller), who cannot be called or texted back.

Business hours and agent availability belong to routing; they are injected as
``is_open(team_id, at)`` and ``available_agents(team_id)`` (see
:mod:`hub.telephony.service` for today's defaults).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import aiohttp
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException

from channels.twilio_common import NOT_REACHED, error_reason, send_failure
from channels.twilio_voice import (
    CALL_STATUS_RANK,
    DIAL_ANSWERED,
    FINAL_STATUSES,
    MAX_DIAL_NUMBERS,
    CallParams,
    Speech,
    call_view,
    connect_twiml,
    dial_twiml,
    empty_twiml,
    goodbye_twiml,
    hangup_twiml,
    is_withheld,
    menu_twiml,
    voicemail_twiml,
)
from hub.actions import audit, check_ticket, do_assign, do_get_or_create_team, do_post_message, record_ticket_event
from hub.channel_actions import notify_message_updated
from hub.config import VoiceHoursConfig
from hub.core import Attachment, Author, Channel, IdentityKind, InboundMessage, Presence, TicketEventKind, utcnow
from hub.errors import HubError, Unavailable, ValidationFailed
from storage.db import Database
from storage.ingest import IngestResult, current_ticket, dialect_insert
from storage.models import Agent, Call, Identity, Message, TeamMember, Ticket, TicketLabel
from storage.views import iso

if TYPE_CHECKING:
    from hub.telephony.service import TwilioService

log = logging.getLogger(__name__)

IsOpen = Callable[[int | None, datetime], Awaitable[bool]]
AvailableAgents = Callable[[int | None], Awaitable[list[tuple[int, str]]]]
Submit = Callable[[InboundMessage], Awaitable[IngestResult]]

CALL_BACK_LABEL = "call-back"
# Call extras: the id of the call-back note the call left, and that it was
# settled (a voicemail arrived after the call was counted as missed).
CALL_BACK_NOTE = "call_back_note_id"
CALL_BACK_SETTLED = "call_back_settled"
# Call extras: how the <Dial> ended (DialCallStatus), once recorded.
DIAL_STATUS = "dial_status"
UNANSWERED = ("missed", "abandoned")
# Outcomes of a click-to-call the customer did not pick up that someone should
# try again (failed: a number that cannot be called; canceled: the agent gave up).
CUSTOMER_UNANSWERED = ("no-answer", "busy")
# Call extras: when the agent picked up their leg of a click-to-call
# (answered_at is the customer's answer, as for an inbound call).
AGENT_ANSWERED_AT = "agent_answered_at"
# Longer than Twilio lets a call last (4 hours): a call row still "live" past
# this lost its final status callback, and does not keep its agent busy.
LIVE_CALL_LIMIT = timedelta(hours=4)
# A click-to-call Twilio may have placed although the hub never learnt its SID
# (the request timed out) is a row under this made-up SID, status UNCONFIRMED,
# until a webhook of an outbound call to that agent's phone claims it within
# CLAIM_WINDOW; one left unclaimed was never placed.
UNCONFIRMED_PREFIX = "unconfirmed:"
UNCONFIRMED = "unconfirmed"
CLAIM_WINDOW = timedelta(minutes=10)
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
VOICE_PATH = "/webhooks/twilio/voice"


class ProviderError(HubError):
    status = 502
    code = "provider_error"


def weekly_hours(hours: VoiceHoursConfig | None) -> IsOpen:
    """``twilio.voice.hours`` as an ``is_open``: the same calendar for every
    team; always open when it is not configured."""

    async def is_open(team_id: int | None, at: datetime) -> bool:
        if hours is None:
            return True
        local = at.astimezone(ZoneInfo(hours.timezone))
        return _WEEKDAYS[local.weekday()] in hours.days and hours.open <= f"{local:%H:%M}" < hours.close

    return is_open


def online_agents_with_phone(db: Database) -> AvailableAgents:
    """Agents of the team who are online, active and have a phone, the one who
    waited longest since an assignment first (the team's other agents if the
    call has no team)."""

    async def available(team_id: int | None) -> list[tuple[int, str]]:
        stmt = select(Agent.id, Agent.phone).where(
            Agent.active.is_(True), Agent.presence == "online", Agent.phone.is_not(None)
        )
        if team_id is not None:
            stmt = stmt.join(TeamMember, TeamMember.agent_id == Agent.id).where(TeamMember.team_id == team_id)
        stmt = stmt.order_by(Agent.last_assigned_at.is_not(None), Agent.last_assigned_at, Agent.id)
        async with db.read() as session:
            return [(aid, str(phone)) for aid, phone in (await session.execute(stmt)).all()]

    return available


def call_row_view(row: Call) -> dict[str, Any]:
    return {
        "id": row.id,
        "call_sid": row.call_sid,
        "ticket_id": row.ticket_id,
        "contact_id": row.contact_id,
        "direction": row.direction,
        "customer": row.customer,
        "line": row.line,
        "status": row.status,
        "live": _is_live(row.status),
        "menu_choice": row.menu_choice,
        "team_id": row.team_id,
        "agent_id": row.agent_id,
        "voicemail_message_id": row.voicemail_message_id,
        "duration_seconds": row.duration_seconds,
        "outcome": (row.extras or {}).get("outcome"),
        "started_at": iso(row.started_at),
        "answered_at": iso(row.answered_at),
        "ended_at": iso(row.ended_at),
    }


class VoiceDesk:
    def __init__(self, service: TwilioService, is_open: IsOpen, available_agents: AvailableAgents) -> None:
        self.service = service
        self.db = service.db
        self.voice = service.tw.voice
        self.speech = Speech(self.voice.languages, self.voice.say_language)
        self.is_open = is_open
        self.available_agents = available_agents
        # The ingest batcher's submit; set by the composition root.
        self.submit: Submit | None = None

    # --- rows and events ---------------------------------------------------------

    async def _call(
        self, session: AsyncSession, params: CallParams, *, direction: str = "inbound", ticket: Ticket | None = None
    ) -> tuple[Call, Ticket, bool]:
        """The call's row and ticket (the caller's phone ticket unless given),
        created on the first webhook that names the call."""
        row = await session.scalar(select(Call).where(Call.call_sid == params.call_sid).with_for_update())
        if row is not None:
            return row, await check_ticket(session, row.ticket_id), False
        if ticket is None:
            ticket, _ = await current_ticket(
                session, channel=Channel.VOICE, inbox=self.voice.inbox, address=params.caller, name=params.caller_name
            )
        now = utcnow()
        inserted = await session.scalar(
            dialect_insert(session, Call)
            .values(
                call_sid=params.call_sid,
                ticket_id=ticket.id,
                contact_id=ticket.contact_id,
                direction=direction,
                customer=params.customer,
                line=params.called,
                status=params.status or "ringing",
                started_at=now,
                extras={},
            )
            .on_conflict_do_nothing(index_elements=["call_sid"])
            .returning(Call.id)
        )
        row = await session.scalar(select(Call).where(Call.call_sid == params.call_sid).with_for_update())
        assert row is not None
        # A copy of the webhook that raced this one may have inserted the row
        # first: only the one whose insert took effect records the call's start.
        return row, await check_ticket(session, row.ticket_id), inserted is not None

    async def _event(self, session: AsyncSession, ticket: Ticket, row: Call, actor: str, **data: Any) -> None:
        await record_ticket_event(
            session, ticket, TicketEventKind.CALL, actor, {"call_id": row.id, "call_sid": row.call_sid, **data}
        )

    # --- the inbound call ------------------------------------------------------------

    async def incoming(self, params: CallParams, base: str) -> str:
        async with self.db.write() as session:
            row, ticket, created = await self._call(session, params)
            if created:
                await self._event(session, ticket, row, "contact", event="incoming", **call_view(params))
        return menu_twiml(
            self.voice.greeting, [m.prompt for m in self.voice.menu], self.speech, action=f"{base}{VOICE_PATH}/menu"
        )

    async def menu(self, params: CallParams, base: str) -> str:
        item = next((m for m in self.voice.menu if m.digit == params.digits), None)
        team_name = item.team if item is not None else self.voice.default_team
        team_id: int | None = None
        if team_name:
            # Committed before routing is asked about it: routing reads teams
            # on its own connection.
            async with self.db.write() as session:
                team_id = (await do_get_or_create_team(session, team_name)).id
        now = utcnow()
        open_now = await self.is_open(team_id, now)
        agents = await self.available_agents(team_id) if open_now else []
        async with self.db.write() as session:
            row, ticket, _ = await self._call(session, params)
            owner_id = ticket.assignee_id
            if open_now and owner_id is not None:
                # Routing may already have given this caller's ticket to an agent
                # (whose capacity it now fills): ring them first, so that they
                # are among the few a <Dial> can ring.
                listed = [a for a in agents if a[0] == owner_id]
                if not listed:
                    owner = await session.get(Agent, owner_id)
                    if owner is not None and owner.active and owner.phone and owner.presence == Presence.ONLINE.value:
                        listed = [(owner.id, owner.phone)]
                agents = [*listed, *(a for a in agents if a[0] != owner_id)]
            if agents:
                on_a_call = await _agents_on_live_calls(session, {a for a, _ in agents}, but=row.id)
                agents = [(a, phone) for a, phone in agents if a not in on_a_call][:MAX_DIAL_NUMBERS]
            first_time = row.menu_choice is None
            row.menu_choice = params.digits or "none"
            row.team_id = team_id
            row.extras = {**(row.extras or {}), "dialed": [a for a, _ in agents]}
            if ticket.team_id is None and ticket.assignee_id is None and team_id is not None:
                await do_assign(session, ticket, agent_id=None, team_id=team_id, actor="ivr")
            if first_time:
                await self._event(
                    session,
                    ticket,
                    row,
                    "contact",
                    event="menu",
                    digit=params.digits,
                    team=team_name,
                    team_id=team_id,
                    next="dial" if agents else "voicemail",
                    reason=None if agents else ("closed" if not open_now else "no agent available"),
                )
        if agents:
            return dial_twiml(
                self.voice.connecting,
                self.speech,
                agents,
                caller_id=None,  # the agents see who is calling
                action=f"{base}{VOICE_PATH}/dial",
                answered_url=f"{base}{VOICE_PATH}/answered",
                timeout=self.voice.dial_timeout_seconds,
            )
        return self._voicemail(base, closed=not open_now)

    def _voicemail(self, base: str, *, closed: bool) -> str:
        return voicemail_twiml(
            self.voice.closed if closed else self.voice.no_agent,
            self.voice.goodbye,
            self.speech,
            action=f"{base}{VOICE_PATH}/recording",
            transcribe_callback=f"{base}{VOICE_PATH}/transcription",
            max_length=self.voice.max_voicemail_seconds,
        )

    async def answered(self, params: CallParams, agent_id: int) -> str:
        """An agent picked up (the <Number url> of the dial): the ticket is theirs."""
        parent = params.parent_call_sid or params.call_sid
        async with self.db.write() as session:
            row = await session.scalar(select(Call).where(Call.call_sid == parent).with_for_update())
            agent = await session.get(Agent, agent_id)
            if row is not None and row.status in FINAL_STATUSES:
                # The caller hung up before this (late or retried) request: the
                # agent picked up a call that is over, and it stays over.
                log.info("call %s was answered after it ended", parent)
            elif row is not None and agent is not None and row.answered_at is None:
                ticket = await check_ticket(session, row.ticket_id, lock=True)
                row.answered_at = utcnow()
                row.agent_id = agent.id
                row.status = "in-progress"
                # Every phone of the team rang, including that of the agent
                # routing had already given the ticket to; whoever talks to the
                # caller is the one who follows up.
                if ticket.assignee_id != agent.id and agent.active:
                    await do_assign(session, ticket, agent_id=agent.id, team_id=ticket.team_id, actor="ivr")
                    ticket.queued_at = None
                await self._event(session, ticket, row, f"agent:{agent.id}", event="answered", agent_id=agent.id)
        return empty_twiml()

    async def dial(self, params: CallParams, base: str, *, outbound: bool) -> str:
        """The end of a <Dial>: inbound, nobody answered -> voicemail; click-to-call:
        whether the customer answered."""
        async with self.db.write() as session:
            row = await session.scalar(select(Call).where(Call.call_sid == params.call_sid).with_for_update())
            # Twilio retries an action it got no answer to: the outcome is
            # recorded once, the TwiML answered again.
            if row is not None and DIAL_STATUS not in (row.extras or {}):
                ticket = await check_ticket(session, row.ticket_id)
                status = params.dial_status or "unknown"
                row.extras = {**(row.extras or {}), DIAL_STATUS: status}
                if outbound:
                    if status in DIAL_ANSWERED and row.answered_at is None:
                        # The action comes when the customer's leg ends, DialCallDuration after they answered.
                        row.answered_at = utcnow() - timedelta(seconds=params.duration or 0)
                    await self._event(session, ticket, row, "system", event="customer_leg", dial_status=status)
                    if "outcome" in (row.extras or {}):
                        # The final status overtook this action: its outcome lacked the customer's answer.
                        await self._outbound_outcome(session, ticket, row)
                elif status not in DIAL_ANSWERED:
                    await self._event(session, ticket, row, "system", event="no_answer", dial_status=status)
        if outbound or params.dial_status in DIAL_ANSWERED:
            return hangup_twiml()
        return self._voicemail(base, closed=False)

    async def recording(self, params: CallParams, base: str) -> str:
        if params.recording_url and (params.recording_duration or 0) > 0:
            await self._voicemail_message(params)
        return goodbye_twiml(self.voice.goodbye, self.speech)

    async def _voicemail_message(self, params: CallParams) -> int:
        """Store the voicemail as the caller's message (once per call) and
        link it to the call."""
        assert self.submit is not None, "the voice desk needs the ingest batcher"
        assert params.recording_url is not None
        async with self.db.read() as session:
            linked = await session.scalar(select(Call.voicemail_message_id).where(Call.call_sid == params.call_sid))
        if linked is not None:
            # The recording step, the transcription and the final status all
            # carry the recording; the first of them stored it.
            return linked
        inbound = InboundMessage(
            channel=Channel.VOICE,
            inbox=self.voice.inbox,
            # The <Record> action, the transcription and the final status all
            # carry the recording, not all of them its RecordingSid, and they
            # can arrive at once: keyed by the call (which records one
            # voicemail), the ingest stores it once whichever comes first.
            external_id=f"{params.call_sid}:voicemail",
            sender=params.caller,
            sender_name=params.caller_name,
            body="",
            attachments=(
                Attachment(url=params.recording_url + ".mp3", content_type="audio/mpeg", filename="voicemail.mp3"),
            ),
            extras={
                "call_sid": params.call_sid,
                "recording_sid": params.recording_sid,
                "duration_seconds": params.recording_duration,
                "transcription": "pending",
            },
        )
        result = await self.submit(inbound)
        async with self.db.write() as session:
            row = await session.scalar(select(Call).where(Call.call_sid == params.call_sid).with_for_update())
            if row is not None and row.voicemail_message_id is None:
                ticket = await check_ticket(session, row.ticket_id)
                await self._link_voicemail(session, ticket, row, result.message_id, params.recording_duration)
        return result.message_id

    async def _link_voicemail(
        self, session: AsyncSession, ticket: Ticket, row: Call, message_id: int, duration: int | None
    ) -> None:
        row.voicemail_message_id = message_id
        counted_as = (row.extras or {}).get("outcome")
        corrected: dict[str, Any] = {}
        if counted_as in UNANSWERED:
            # Twilio may post the final status before the <Record> action: the
            # call was counted as unanswered and left a call-back task that the
            # voicemail makes moot.
            row.extras = {**(row.extras or {}), "outcome": "voicemail"}
            corrected = {"outcome": "voicemail", "corrected_from": counted_as}
        await self._event(
            session,
            ticket,
            row,
            "contact",
            event="voicemail",
            message_id=message_id,
            duration_seconds=duration,
            **corrected,
        )
        if corrected:
            await self._settle_call_back(session, ticket, row)

    async def _settle_call_back(self, session: AsyncSession, ticket: Ticket, row: Call) -> None:
        """The call's call-back task is moot: its note says so and the label
        goes, unless another call on the ticket still waits for a call back."""
        extras = dict(row.extras or {})
        if extras.get(CALL_BACK_SETTLED):
            return
        row.extras = {**extras, CALL_BACK_SETTLED: True}
        others = (await session.scalars(select(Call).where(Call.ticket_id == ticket.id, Call.id != row.id))).all()
        if not any(_awaits_call_back(other) for other in others):
            await session.execute(
                delete(TicketLabel).where(TicketLabel.ticket_id == ticket.id, TicketLabel.label == CALL_BACK_LABEL)
            )
        await session.flush()
        note_id = extras.get(CALL_BACK_NOTE)
        note = await session.get(Message, note_id, with_for_update=True) if isinstance(note_id, int) else None
        if note is not None:
            note.body = f"{note.body}\n\nNo call back needed: they left a voicemail."
            note.extras = {**(note.extras or {}), "resolved": "voicemail"}
            await session.flush()
            await notify_message_updated(session, note)

    async def transcription(self, params: CallParams) -> None:
        """The voicemail's text: it becomes the message's body. The callback
        carries the recording too, so it stores the voicemail if the recording
        step never did."""
        if not params.recording_url:
            return
        message_id = await self._voicemail_message(params)
        if params.transcription_status == "in-progress":
            return  # the text comes in a later callback
        async with self.db.write() as session:
            msg = await session.get(Message, message_id, with_for_update=True)
            if msg is None or (msg.extras or {}).get("transcription") in ("completed", "failed"):
                return
            done = params.transcription_status == "completed" and bool(params.transcription_text)
            if done:
                msg.body = params.transcription_text or ""
            msg.extras = {**(msg.extras or {}), "transcription": "completed" if done else "failed"}
            await session.flush()
            if done:
                # The agents' screens show the voicemail as "" until told.
                await notify_message_updated(session, msg)
            row = await session.scalar(select(Call).where(Call.call_sid == params.call_sid))
            ticket = await check_ticket(session, msg.ticket_id)
            if row is not None:
                await self._event(
                    session,
                    ticket,
                    row,
                    "system",
                    event="transcription",
                    message_id=msg.id,
                    status="completed" if done else "failed",
                )

    async def status(self, params: CallParams, *, ticket_id: int | None = None, agent_id: int | None = None) -> None:
        """A call status callback: the call moves forward only (callbacks can
        arrive out of order); at its end, a call that reached nobody and left no
        voicemail gets a call-back task. ``ticket_id`` and ``agent_id``: a
        click-to-call's, from the callback URL the hub gave Twilio."""
        if not params.status:
            return
        if (
            params.status in FINAL_STATUSES
            and params.direction == "inbound"
            and params.recording_url
            and (params.recording_duration or 0) > 0
        ):
            # The final status can come before the <Record> action; stored now,
            # the voicemail decides the outcome below.
            voicemail_id: int | None = await self._voicemail_message(params)
        else:
            voicemail_id = None
        async with self.db.write() as session:
            existing = await session.scalar(select(Call).where(Call.call_sid == params.call_sid))
            if existing is None and params.direction != "inbound":
                # A webhook of the same call that claimed it at the same time
                # may have committed meanwhile: then the row is there by SID.
                claimed = await self._claim_unconfirmed(session, params, ticket_id=ticket_id, agent_id=agent_id)
                existing = claimed or await session.scalar(select(Call).where(Call.call_sid == params.call_sid))
                if existing is None:
                    return  # a leg we did not start (e.g. the dialled agent's)
            row, ticket, _ = await self._call(session, params)
            if voicemail_id is not None and row.voicemail_message_id is None:
                # The first webhook of this call: there was no row to link it to.
                await self._link_voicemail(session, ticket, row, voicemail_id, params.recording_duration)
            if row.status in FINAL_STATUSES or CALL_STATUS_RANK[params.status] <= CALL_STATUS_RANK.get(row.status, 0):
                return
            row.status = params.status
            now = utcnow()
            if params.status not in FINAL_STATUSES:
                await self._event(session, ticket, row, "system", event="status", status=params.status)
                return
            row.ended_at = now
            row.duration_seconds = params.duration
            if row.direction == "outbound":
                row.extras = {**(row.extras or {}), "agent_leg": params.status}
                outcome = await self._outbound_outcome(session, ticket, row, report=False)
            elif row.answered_at is not None:
                outcome = "answered"
            elif row.voicemail_message_id is not None:
                outcome = "voicemail"
            else:
                outcome = "missed" if (row.extras or {}).get("dialed") else "abandoned"
            row.extras = {**(row.extras or {}), "outcome": outcome}
            # An agent who did not pick up their own click-to-call rang nobody.
            customer_rung = row.direction == "outbound" and DIAL_STATUS in row.extras
            await self._event(
                session,
                ticket,
                row,
                "system",
                event="ended",
                status=params.status,
                outcome=outcome,
                duration_seconds=params.duration,
                agent_id=row.agent_id,
            )
            if outcome in UNANSWERED or (customer_rung and outcome in CUSTOMER_UNANSWERED):
                await self._call_back_task(session, ticket, row, outcome)

    async def _outbound_outcome(self, session: AsyncSession, ticket: Ticket, row: Call, *, report: bool = True) -> str:
        """A click-to-call's outcome: the customer's leg (DialCallStatus) says
        whether a conversation happened; without one, the agent's leg never
        reached the customer (the agent did not pick up). ``report``: the
        outcome was recorded before, and is corrected (with its call-back task)."""
        extras = dict(row.extras or {})
        dial_status = extras.get(DIAL_STATUS)
        if dial_status is None:
            outcome = str(extras.get("agent_leg") or row.status)
        else:
            outcome = "completed" if dial_status in DIAL_ANSWERED else str(dial_status)
        before = extras.get("outcome")
        row.extras = {**extras, "outcome": outcome}
        if report and before != outcome:
            await self._event(session, ticket, row, "system", event="outcome", outcome=outcome, corrected_from=before)
            if outcome in CUSTOMER_UNANSWERED and CALL_BACK_NOTE not in extras:
                await self._call_back_task(session, ticket, row, outcome)
        return outcome

    async def _call_back_task(self, session: AsyncSession, ticket: Ticket, row: Call, outcome: str) -> None:
        team_name = None
        if row.team_id is None and self.voice.default_team:
            team = await do_get_or_create_team(session, self.voice.default_team)
            row.team_id = team.id
            team_name = team.name
        if ticket.team_id is None and ticket.assignee_id is None and row.team_id is not None:
            await do_assign(session, ticket, agent_id=None, team_id=row.team_id, actor="ivr")
        what = "hung up before reaching anyone" if outcome == "abandoned" else "was not answered"
        if row.direction == "outbound":
            # Nobody is waiting on us: the task is only to try them again.
            note = await do_post_message(
                session,
                ticket,
                body=f"Call back {row.customer}: our call at {row.started_at:%Y-%m-%d %H:%M} UTC was not answered "
                f"({outcome}). Call them with POST /api/v1/tickets/{ticket.id}/call.",
                author=Author.SYSTEM,
                private=True,
            )
            row.extras = {**(row.extras or {}), CALL_BACK_NOTE: note.id}
            if await session.get(TicketLabel, (ticket.id, CALL_BACK_LABEL)) is None:
                session.add(TicketLabel(ticket_id=ticket.id, label=CALL_BACK_LABEL))
            return
        choice = f", chose {row.menu_choice}" if row.menu_choice and row.menu_choice != "none" else ""
        of_team = f" (team {team_name})" if team_name else ""
        if is_withheld(row.customer):
            # Nobody can call a hidden number: the team learns of the call, but
            # gets no task it cannot do.
            await do_post_message(
                session,
                ticket,
                body=f"Missed call from a caller who withheld their number: their call at "
                f"{row.started_at:%Y-%m-%d %H:%M} UTC {what}{choice}{of_team}. They cannot be called back.",
                author=Author.SYSTEM,
                private=True,
            )
            return
        note = await do_post_message(
            session,
            ticket,
            body=f"Call back {row.customer}: their call at {row.started_at:%Y-%m-%d %H:%M} UTC {what}{choice}"
            f"{of_team}. Call them with POST /api/v1/tickets/{ticket.id}/call.",
            author=Author.SYSTEM,
            private=True,
        )
        row.extras = {**(row.extras or {}), CALL_BACK_NOTE: note.id}
        if await session.get(TicketLabel, (ticket.id, CALL_BACK_LABEL)) is None:
            session.add(TicketLabel(ticket_id=ticket.id, label=CALL_BACK_LABEL))
        if ticket.waiting_since is None:
            ticket.waiting_since = utcnow()
        ticket.last_message_at = utcnow()

    # --- click-to-call ------------------------------------------------------------------

    async def click_to_call(self, ticket_id: int, agent: Agent) -> dict[str, Any]:
        """Twilio rings the agent's phone; when they answer, the connect step
        dials the customer (agents never dial customers from their own phone)."""
        service = self.service
        base = service.public_base
        account = service.voice_account
        line = service.caller_id
        if account is None or not self.voice.enabled:
            raise ValidationFailed("phone calls are not configured: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        if base is None:
            raise ValidationFailed("server.public_url (HUB_PUBLIC_URL) must be set so that Twilio can reach the hub")
        if line is None:
            raise ValidationFailed("no number to call from: set twilio.voice.caller_id or TWILIO_PHONE_NUMBER")
        if not agent.phone:
            raise ValidationFailed("you have no phone number to be rung on; an admin sets it (agent phone)")
        async with self.db.read() as session:
            ticket = await check_ticket(session, ticket_id)
            customer = await _number_to_call(session, ticket.contact_id)
        timeout = service.tw.request_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                created = await service.client(account).calls.create_async(
                    to=agent.phone,
                    from_=line,
                    url=f"{base}{VOICE_PATH}/connect?ticket={ticket_id}&agent={agent.id}",
                    method="POST",
                    # The ids say whose attempt it is, should Twilio's answer
                    # to this request be lost (see _claim_unconfirmed).
                    status_callback=f"{base}{VOICE_PATH}/status?ticket={ticket_id}&agent={agent.id}",
                    status_callback_method="POST",
                    status_callback_event=["initiated", "ringing", "answered", "completed"],
                    timeout=self.voice.dial_timeout_seconds,
                )
        except (TwilioRestException, TwilioServiceException) as exc:
            detail = exc.msg if isinstance(exc, TwilioRestException) else exc.detail
            raise ProviderError(f"Twilio refused the call: {error_reason(exc.code, str(detail or ''))}") from exc
        except (TimeoutError, OSError, aiohttp.ClientError, TwilioException, ValueError) as exc:
            failure = send_failure(exc, timeout)
            if failure.extras.get(NOT_REACHED):
                raise Unavailable(f"{failure.reason}; no call was placed, try again") from exc
            # Twilio may have placed the call all the same: the ticket keeps the
            # attempt, which the call's first webhook claims (connect() also
            # finds the ticket in its URL when the agent answers).
            log.warning("click-to-call on ticket %s: no answer from Twilio: %s", ticket_id, failure.reason)
            await self._unconfirmed_click_to_call(ticket_id, agent.id, customer, line, failure.reason)
            raise ProviderError(
                f"{failure.reason}; the call may still have been placed: if your phone rings, answer it to be "
                "connected to the customer, otherwise try again in a minute"
            ) from exc
        async with self.db.write() as session:
            ticket = await check_ticket(session, ticket_id, lock=True)
            params = CallParams(
                call_sid=str(created.sid),
                account_sid=account.account_sid,
                caller=customer,
                called=line,
                status=str(created.status or "queued"),
                direction="outbound-api",
            )
            row, ticket, _ = await self._call(session, params, direction="outbound", ticket=ticket)
            await self._click_to_call_started(session, ticket, row, agent.id, customer)
            return call_row_view(row)

    async def _click_to_call_started(
        self, session: AsyncSession, ticket: Ticket, row: Call, agent_id: int, customer: str, **data: Any
    ) -> None:
        row.agent_id = agent_id
        row.team_id = ticket.team_id
        await self._event(
            session, ticket, row, f"agent:{agent_id}", event="click_to_call", agent_id=agent_id, to=customer, **data
        )
        await audit(session, f"agent:{agent_id}", "call.started", "ticket", ticket.id, {"call_sid": row.call_sid})

    async def connect(self, params: CallParams, base: str, ticket_id: int, agent_id: int) -> str:
        """The agent answered a click-to-call: dial the customer."""
        async with self.db.write() as session:
            row = await session.scalar(select(Call).where(Call.call_sid == params.call_sid).with_for_update())
            if row is None:
                row = await self._claim_unconfirmed(session, params, ticket_id=ticket_id, agent_id=agent_id)
            if row is None:
                row = await self._unrecorded_click_to_call(session, params, ticket_id, agent_id)
            if row is None or row.ticket_id != ticket_id or row.agent_id != agent_id or is_withheld(row.customer):
                return goodbye_twiml(self.voice.goodbye, self.speech)
            if row.status in FINAL_STATUSES:
                # A late or retried request for a call that has ended.
                return goodbye_twiml(self.voice.goodbye, self.speech)
            ticket = await check_ticket(session, row.ticket_id)
            if AGENT_ANSWERED_AT not in (row.extras or {}):
                row.extras = {**(row.extras or {}), AGENT_ANSWERED_AT: utcnow().isoformat()}
                row.status = "in-progress"
                await self._event(session, ticket, row, f"agent:{agent_id}", event="agent_answered", agent_id=agent_id)
            customer, line = row.customer, row.line
        return connect_twiml(
            customer,
            caller_id=line,
            action=f"{base}{VOICE_PATH}/dial?direction=outbound",
            timeout=self.voice.dial_timeout_seconds,
        )

    async def _unconfirmed_click_to_call(
        self, ticket_id: int, agent_id: int, customer: str, line: str, reason: str | None
    ) -> None:
        async with self.db.write() as session:
            ticket = await check_ticket(session, ticket_id, lock=True)
            params = CallParams(
                call_sid=f"{UNCONFIRMED_PREFIX}{secrets.token_hex(16)}",
                account_sid="",
                caller=customer,
                called=line,
                status=UNCONFIRMED,
                direction="outbound-api",
            )
            row, ticket, _ = await self._call(session, params, direction="outbound", ticket=ticket)
            await self._click_to_call_started(session, ticket, row, agent_id, customer, unconfirmed=reason)

    async def _claim_unconfirmed(
        self, session: AsyncSession, params: CallParams, *, ticket_id: int | None = None, agent_id: int | None = None
    ) -> Call | None:
        """The oldest recent unconfirmed click-to-call to the phone this
        outbound call rings (Twilio places calls in the order asked), now known
        by the call's SID. Only a call the hub asked Twilio for: the agent legs
        of an inbound call's <Dial> ring the same phones."""
        if params.direction != "outbound-api":
            return None
        stmt = (
            select(Call)
            .join(Agent, Agent.id == Call.agent_id)
            .where(
                Call.call_sid.startswith(UNCONFIRMED_PREFIX),
                Call.status == UNCONFIRMED,
                Call.started_at > utcnow() - CLAIM_WINDOW,
                Agent.phone == params.called,
            )
            .order_by(Call.id)
            .limit(1)
            .with_for_update(of=Call)
        )
        if ticket_id is not None:
            stmt = stmt.where(Call.ticket_id == ticket_id)
        if agent_id is not None:
            stmt = stmt.where(Call.agent_id == agent_id)
        row = await session.scalar(stmt)
        if row is None:
            return None
        row.call_sid = params.call_sid
        row.status = "queued"
        await session.flush()
        return row

    async def _unrecorded_click_to_call(
        self, session: AsyncSession, params: CallParams, ticket_id: int, agent_id: int
    ) -> Call | None:
        """A click-to-call whose request to Twilio timed out: Twilio placed it
        but the hub never learnt its SID. The signed URL names the ticket and
        the agent, so the call is recorded now that the agent answered."""
        if not params.direction.startswith("outbound"):
            return None
        ticket = await session.scalar(select(Ticket).where(Ticket.id == ticket_id).with_for_update())
        agent = await session.get(Agent, agent_id)
        if ticket is None or agent is None or not agent.active:
            return None
        try:
            customer = await _number_to_call(session, ticket.contact_id)
        except ValidationFailed:
            return None
        line = self.service.caller_id or params.caller
        recorded = CallParams(
            call_sid=params.call_sid,
            account_sid=params.account_sid,
            caller=customer,
            called=line,
            status="queued",
            direction="outbound-api",
        )
        row, ticket, _ = await self._call(session, recorded, direction="outbound", ticket=ticket)
        await self._click_to_call_started(session, ticket, row, agent_id, customer, recorded_late=True)
        return row

    async def calls_of_ticket(self, ticket_id: int) -> list[dict[str, Any]]:
        async with self.db.read() as session:
            await check_ticket(session, ticket_id)
            rows = await session.scalars(select(Call).where(Call.ticket_id == ticket_id).order_by(Call.id.desc()))
            return [call_row_view(r) for r in rows.all()]


async def _number_to_call(session: AsyncSession, contact_id: int) -> str:
    """The contact's newest phone number that can be called."""
    addresses = (
        await session.scalars(
            select(Identity.address)
            .where(Identity.contact_id == contact_id, Identity.channel == IdentityKind.PHONE.value)
            .order_by(Identity.id.desc())
        )
    ).all()
    callable_ = next((a for a in addresses if a.startswith("+") and not is_withheld(a)), None)
    if callable_ is not None:
        return callable_
    if any(is_withheld(a) for a in addresses):
        raise ValidationFailed(
            f"contact {contact_id} called with their number withheld (an anonymous call): there is no number "
            "to call back"
        )
    raise ValidationFailed(f"contact {contact_id} has no phone number to call")


def _awaits_call_back(row: Call) -> bool:
    extras = row.extras or {}
    return (
        extras.get("outcome") in (*UNANSWERED, *CUSTOMER_UNANSWERED)
        and CALL_BACK_NOTE in extras
        and not extras.get(CALL_BACK_SETTLED)
    )


def _is_live(status: str) -> bool:
    return status in CALL_STATUS_RANK and status not in FINAL_STATUSES


async def _agents_on_live_calls(session: AsyncSession, agent_ids: set[int], *, but: int) -> set[int]:
    """Those of ``agent_ids`` on another call now: one they answered, or a
    click-to-call of theirs."""
    rows = await session.scalars(
        select(Call.agent_id).where(
            Call.agent_id.in_(agent_ids),
            Call.id != but,
            Call.status.in_([s for s in CALL_STATUS_RANK if _is_live(s)]),
            Call.started_at > utcnow() - LIVE_CALL_LIMIT,
        )
    )
    return {a for a in rows.all() if a is not None}
