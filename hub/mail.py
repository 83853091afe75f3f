"""The email channel in the running hub: one IMAP poller per configured
mailbox (in worker processes), the SMTP adapter, the inbox set-up, and the
actions that store what arrives.

A poller holds a lease on its mailbox's checkpoint row, so of several worker
processes exactly one polls a mailbox; a lease row rather than a PostgreSQL
advisory lock because it works the same on SQLite, needs no connection held
open per mailbox, shows who polls what, and fences a process that stalled
past its lease: its checkpoint update finds the lease gone and its
transaction (the message with it) rolls back.

Each message is committed together with the checkpoint that moves past it,
so a restart re-imports nothing and loses nothing. Its files (attachments,
the sanitized HTML, the raw original) are written first: a crash in between
leaves an unreferenced file, never a message pointing at nothing. When the
folder's UIDVALIDITY changes, the poller reads the folder again from the start
and the Message-ID (a hash of the message when it has none) tells which
messages are already stored; with ``first_sync: new``, messages that arrived
(IMAP INTERNALDATE) before the hub first connected are passed over, as the
hub never stored them. When that was is kept in the inbox's settings.

A message that fails is retried with the connection; only failures that are
plausibly the message's own bring it closer to a placeholder (see
:func:`storage.db.outage` and the fetch loop in :meth:`MailboxPoller._sync`): a database
restart or a flaky network delays mail, it never degrades it.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import logging
import os
import random
import secrets
import socket
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from channels.base import SEND_PARTS
from channels.email import (
    MAX_BODY_CHARS,
    UNKNOWN_SENDER,
    EmailChannel,
    Mailbox,
    ParsedEmail,
    SmtpServer,
    is_own_address,
    is_reply_subject,
    link_inline_images,
    normalize_subject,
    parse_email,
    plus_tokens,
    read_envelope,
    reply_addresses,
    sent_on_behalf,
    subject_tokens,
    to_inbound,
)
from channels.email_imap import FolderState, ImapConnection, ImapErrors, ImapServer
from hub import metrics
from hub.actions import audit, do_ensure_inbox, do_get_or_create_team, do_set_status
from hub.attachments import AttachmentStore, AttachmentTooLarge
from hub.config import EmailConfig, HubConfig, MailboxConfig
from hub.core import (
    Attachment,
    Channel,
    DeliveryReceipt,
    DeliveryStatus,
    Direction,
    InboundMessage,
    TicketEventKind,
    TicketStatus,
    status_advances,
    utcnow,
)
from hub.errors import Conflict
from storage.db import Database, outage
from storage.ingest import IngestResult, add_outbox, ingest_batch, outbox_row
from storage.mail import (
    HistoryCutoff,
    LeaseLost,
    advance_checkpoint,
    claim_mailbox,
    contact_address,
    email_message_exists,
    find_thread,
    first_connection,
    history_cutoff,
    release_mailbox,
    remember_first_connection,
    renew_lease,
    reply_context,
    sent_email_exists,
    start_history_cutoff,
    store_automatic,
    thread_key_for,
)
from storage.models import Inbox, Message, Ticket
from storage.views import message_view

log = logging.getLogger(__name__)

#: Failures of one message, each plausibly its own doing, before a
#: placeholder is stored for it.
POISON_AFTER = 3

#: How much earlier than the first connection a message must have arrived to
#: be passed over as history in a re-read: INTERNALDATE has whole seconds and
#: the mail server's clock is not ours, and letting a minute of old mail in
#: is better than losing a new one.
HISTORY_MARGIN = timedelta(minutes=1)

T = TypeVar("T")


# --- failures ---------------------------------------------------------------------


class Failures(NamedTuple):
    """How often a message failed in a way that counts against it, and how
    it failed the last time."""

    times: int
    last: Exception


def connection_lost(exc: BaseException) -> bool:
    """Whether a failed IMAP command lost the connection (dropped, reset,
    timed out, closed by the server) rather than being answered: imaplib
    raises ``IMAP4.abort`` for a connection it gave up on (a BYE, an EOF) and
    lets socket errors and timeouts through. An answer of NO or BAD is
    ``IMAP4.error``, a response imapclient cannot read is its ProtocolError
    or another exception: those are about the message asked for."""
    return isinstance(exc, imaplib.IMAP4.abort | OSError | EOFError)


# --- actions --------------------------------------------------------------------


async def do_ingest_email(
    session: AsyncSession,
    parsed: ParsedEmail,
    inbound_files: SavedFiles,
    box: MailboxConfig,
) -> IngestResult:
    """Store one customer email on the ticket its thread belongs to (reopening
    a resolved one), or on a new ticket. Automatic mail (an out-of-office
    answering our reply) is stored on its thread's ticket without reopening,
    waking or otherwise changing it: nobody wrote it, so it is no reason for
    an agent to act (see :func:`storage.mail.store_automatic`).

    Mail answering ours from an address we sent it to that is not the
    ticket's contact's (the Reply-To the customer asked for, a colleague
    they copied) goes on that ticket, as the contact's message with the
    real sender in ``email.from``, as a helpdesk shows a copied person's
    answer on the requester's ticket. The address is not made one of the
    contact's: a colleague is not the customer, and would otherwise reach
    all the customer's tickets."""
    inbox_id = await session.scalar(select(Inbox.id).where(Inbox.key == box.inbox_key))
    if inbox_id is None:
        raise LookupError(f"inbox {box.inbox_key!r} does not exist; the hub creates it at start-up")
    tokens = plus_tokens(parsed.recipients, box.address) if box.plus_addressing else []
    tokens += subject_tokens(parsed.subject)

    async def sent_to(message: Message) -> list[str]:
        # This mailbox's address is enough: the set only admits senders who
        # are not the contact, and mail from our own addresses never gets here.
        return await _sent_to(session, message, [box.address])

    choice = await find_thread(
        session,
        inbox_id=inbox_id,
        sender=parsed.sender,
        message_key=parsed.key,
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
        tokens=tokens,
        reply_subject=normalize_subject(parsed.subject) if is_reply_subject(parsed.subject) else None,
        normalize=normalize_subject,
        sent_to=sent_to,
    )
    ticket = choice.ticket
    as_contact: str | None = None
    notes = list(inbound_files.notes)
    if ticket is not None and choice.by_recipient:
        as_contact = await contact_address(session, ticket)
        if as_contact is None:
            # A contact without an email address cannot own an email.
            ticket, choice = None, replace(choice, ticket=None, thread_key=thread_key_for(parsed.key), how="new")
        else:
            notes.append(f"from {parsed.sender}, who was sent the message it answers")
    inbound = to_inbound(
        parsed,
        inbox=box.inbox_key,
        attachments=inbound_files.attachments,
        original_url=inbound_files.original_url,
        html_url=inbound_files.html_url,
        notes=notes,
        threaded_by=choice.how,
    )
    if as_contact is not None:
        # Their name is not the contact's either.
        inbound = inbound.model_copy(update={"sender": as_contact, "sender_name": None})
    if ticket is not None and parsed.auto_reply:
        return await store_automatic(session, ticket, inbound)
    if ticket is not None and ticket.status == TicketStatus.RESOLVED.value:
        await _reopen(session, ticket)
    # An answer to a reply sent by email from a conversation on another channel continues it.
    elsewhere = ticket.inbox_id if ticket is not None and ticket.inbox_id != inbox_id else None
    (result,) = await ingest_batch(session, [inbound], threads=[choice.thread_key], ticket_inboxes=[elsewhere])
    if isinstance(result, Exception):
        raise result
    return result


async def _sent_to(session: AsyncSession, message: Message, own: Iterable[str]) -> list[str]:
    """The addresses a message we sent went to: as the channel kept them
    when it sent it, else (sent before it kept them) chosen again as the
    channel chose them, from the thread before it."""
    kept = (message.extras or {}).get(SEND_PARTS)
    if isinstance(kept, list) and kept:
        return [str(a) for a in kept]
    context = await reply_context(session, message)
    recipient = str((message.extras or {}).get("recipient") or "")
    chosen = reply_addresses(context.get("email") or {}, recipient, own)
    return [chosen.to, *chosen.cc]


async def _reopen(session: AsyncSession, ticket: Ticket) -> None:
    # Conflict: the thread already continues in another open ticket (which
    # ingest then finds); nothing to reopen.
    with contextlib.suppress(Conflict):
        await do_set_status(session, ticket, status=TicketStatus.OPEN, actor="contact")


async def do_record_receipt(
    session: AsyncSession,
    receipt: DeliveryReceipt,
    *,
    recipients: Sequence[str] = (),
    own: Iterable[str] = (),
) -> Message | None:
    """A provider's report about a message we sent (a bounce, a delivery or
    read report), found by the id the provider knows it by. Never moves a
    message backwards; a failure keeps the provider's reason. Returns the
    message when it changed.

    ``recipients``: the addresses the report is about, when it names them.
    A reply goes to the customer and copies the others on their mail; only
    the customer's address decides its status, so a report about copies
    alone leaves the status and, for a failure, adds a note to the message's
    ``status_reason``. ``own``: our mailboxes' addresses, which a reply never
    goes to (as the channel chose the customer's address when it sent)."""
    msg = await session.scalar(
        select(Message)
        .where(
            Message.channel == receipt.channel.value,
            Message.external_id == receipt.external_id,
            Message.direction == Direction.OUT.value,
        )
        .with_for_update()
    )
    if msg is None or msg.private:
        return None
    about = {a for r in recipients if (a := r.strip().strip("<>").strip().lower())}
    if about:
        customer = await _reply_recipient(session, msg, own)
        if customer and customer.lower() not in about:
            if receipt.status not in (DeliveryStatus.FAILED, DeliveryStatus.UNDELIVERED):
                return None
            note = f"the copy to {', '.join(sorted(about))} could not be delivered: {receipt.reason or 'bounced'}"
            if note in (msg.status_reason or ""):
                return None  # the same report read again
            msg.status_reason = f"{msg.status_reason}; {note}" if msg.status_reason else note
            return await _announce_receipt(session, msg, receipt, note=note)
    if not status_advances(DeliveryStatus(msg.status), receipt.status):
        return None
    msg.status = receipt.status.value
    if receipt.status in (DeliveryStatus.FAILED, DeliveryStatus.UNDELIVERED):
        msg.status_reason = receipt.reason or "the provider reported a delivery failure"
    elif msg.delivered_at is None:
        msg.delivered_at = receipt.at
    return await _announce_receipt(session, msg, receipt)


async def _reply_recipient(session: AsyncSession, msg: Message, own: Iterable[str]) -> str:
    """The address a reply was sent to (not copied to): chosen again as the
    channel chose it, from the customer's mail before it."""
    context = await reply_context(session, msg)
    recipient = str((msg.extras or {}).get("recipient") or "")
    return reply_addresses(context.get("email") or {}, recipient, own).to.strip()


async def _announce_receipt(
    session: AsyncSession, msg: Message, receipt: DeliveryReceipt, *, note: str | None = None
) -> Message:
    await session.flush()
    inbox_key = await session.scalar(select(Inbox.key).where(Inbox.id == msg.inbox_id))
    await add_outbox(
        session,
        [outbox_row(TicketEventKind.MESSAGE_STATUS.value, msg.ticket_id, {"message": message_view(msg, inbox_key)})],
    )
    await audit(
        session,
        "system",
        "message.receipt",
        "message",
        msg.id,
        {"status": receipt.status.value, "reason": receipt.reason}
        | ({"status_kept": msg.status, "note": note} if note else {}),
    )
    return msg


async def sync_email_inboxes(session: AsyncSession, config: EmailConfig) -> None:
    for box in config.mailboxes:
        inbox = await do_ensure_inbox(
            session,
            key=box.inbox_key,
            channel=Channel.EMAIL,
            name=box.name or box.display_name or box.address,
            bot_enabled=box.bot_enabled,
        )
        # Locked and merged: the pollers keep their own state here too.
        await session.refresh(inbox, ["settings"], with_for_update=True)
        inbox.settings = {**(inbox.settings or {}), "address": box.address, "display_name": box.display_name}
        if box.default_team:
            team = await do_get_or_create_team(session, box.default_team)
            inbox.default_team_id = team.id


# --- files ----------------------------------------------------------------------


class SavedFiles:
    """What was saved in the attachment store for one message."""

    def __init__(self) -> None:
        self.attachments: list[Attachment] = []
        self.original_url: str | None = None
        self.html_url: str | None = None
        self.notes: list[str] = []

    def urls(self) -> list[str | None]:
        return [*(a.url for a in self.attachments), self.original_url, self.html_url]


def original_store(store: AttachmentStore, config: EmailConfig) -> AttachmentStore:
    """Where the raw original of a mail is kept: ``store``, with the limit
    of ``email.max_message_bytes`` when that is the larger one. The poller
    fetched the message whole because it was within that limit, so the
    original is kept at that size: it is the one copy of everything the
    attachment limit left out."""
    limit = max(store.max_bytes, config.max_message_bytes)
    if limit == store.max_bytes:
        return store
    return AttachmentStore(store.root, max_bytes=limit, url_prefix=store.url_prefix)


async def save_files(
    store: AttachmentStore,
    parsed: ParsedEmail,
    raw: bytes,
    *,
    truncated: bool,
    originals: AttachmentStore | None = None,
) -> SavedFiles:
    """Store a mail's attachments and sanitized HTML in ``store``, and its
    raw original in ``originals`` (see :func:`original_store`; ``store``
    when not given)."""
    files = SavedFiles()
    cids: dict[str, str] = {}
    too_large: list[str] = []
    for part in parsed.attachments:
        try:
            saved = await store.save(part.data, filename=part.filename, content_type=part.content_type)
        except AttachmentTooLarge as exc:
            too_large.append(str(exc))
            continue
        files.attachments.append(saved)
        if part.content_id:
            cids[part.content_id] = saved.url
    if parsed.html is not None:
        page = link_inline_images(parsed.html, cids)
        document = f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body>{page}</body></html>\n'
        with contextlib.suppress(AttachmentTooLarge):
            files.html_url = (
                await store.save(document.encode(), filename="message.html", content_type="text/html", rendered=True)
            ).url
    try:
        files.original_url = (
            await (originals or store).save(raw, filename="original.eml", content_type="message/rfc822")
        ).url
    except AttachmentTooLarge as exc:
        files.notes.append(f"the original message was not stored: {exc}")
    # Only now is it known whether the original, which has the file, is kept.
    where = (
        "it is in the original message"
        if files.original_url and not truncated
        else "it is only in the mailbox, as the original message was not stored whole"
    )
    files.notes.extend(f"{note}; it was not stored as a file ({where})" for note in too_large)
    if truncated:
        files.notes.append("the message is larger than email.max_message_bytes: only its headers were read")
    return files


# --- the service ------------------------------------------------------------------


def _smtp(box: MailboxConfig, config: EmailConfig) -> SmtpServer:
    smtp = box.smtp
    return SmtpServer(
        host=smtp.host,
        port=smtp.effective_port,
        security=smtp.security,
        username=smtp.user,
        password=config.passwords.get(smtp.password_env) if smtp.password_env else None,
        timeout=smtp.timeout_seconds,
        validate_certs=smtp.validate_certs,
        ca_file=str(smtp.ca_file) if smtp.ca_file else None,
    )


def _imap(box: MailboxConfig, config: EmailConfig) -> ImapServer:
    imap = box.imap
    return ImapServer(
        host=imap.host,
        port=imap.effective_port,
        username=imap.user,
        password=config.passwords.get(imap.password_env, ""),
        security=imap.security,
        folder=imap.folder,
        timeout=imap.timeout_seconds,
        validate_certs=imap.validate_certs,
        ca_file=str(imap.ca_file) if imap.ca_file else None,
    )


class EmailService:
    """Built once per process by the composition root when mailboxes are
    configured: the channel adapter for the sender, and (in worker processes)
    the pollers."""

    def __init__(self, config: HubConfig, db: Database, store: AttachmentStore) -> None:
        self.config = config.email
        self.db = db
        self.store = store
        self.channel = EmailChannel(
            [
                Mailbox(
                    inbox=box.inbox_key,
                    address=box.address,
                    display_name=box.display_name,
                    smtp=_smtp(box, self.config),
                    plus_token=box.plus_addressing,
                    subject_token=box.subject_token,
                )
                for box in self.config.mailboxes
            ],
            read_attachment=store.read,
            id_secret=config.secret_key,
            read_charset=store.charset,
        )
        self._pool: ThreadPoolExecutor | None = None
        self.pollers: list[MailboxPoller] = []

    async def reply_context(self, session: AsyncSession, message: Message) -> dict[str, Any]:
        return await reply_context(session, message)

    def start(self, supervise: Callable[[Callable[[], Coroutine[Any, Any, Any]], str], None]) -> None:
        """Start a poller per mailbox through ``supervise``, which runs it again
        should it ever end: a mailbox nobody polls loses no mail but answers no
        customer either."""
        threads = min(len(self.config.mailboxes), self.config.max_imap_threads)
        self._pool = ThreadPoolExecutor(max_workers=max(threads, 1), thread_name_prefix="imap")
        for box in self.config.mailboxes:
            poller = MailboxPoller(box, self.config, self.db, self.store, self._pool, owner=owner_id())
            self.pollers.append(poller)
            supervise(poller.run, f"imap:{box.inbox_key}")

    def stop(self) -> None:
        for poller in self.pollers:
            poller.interrupt()
        self.pollers.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def owner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Backoff:
    """Exponential reconnect delays with jitter, reset after a success."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next(self) -> float:
        delay = min(self.initial * 2**self.failures, self.maximum)
        self.failures += 1
        return float(delay * random.uniform(0.5, 1.0))

    def reset(self) -> None:
        self.failures = 0


class MailboxPoller:
    def __init__(
        self,
        box: MailboxConfig,
        config: EmailConfig,
        db: Database,
        store: AttachmentStore,
        pool: ThreadPoolExecutor,
        *,
        owner: str,
    ) -> None:
        self.box = box
        self.config = config
        self.db = db
        self.store = store
        self.pool = pool
        self.owner = owner
        self.server = _imap(box, config)
        self.key = box.inbox_key
        self.backoff = Backoff(config.reconnect_backoff_seconds, config.reconnect_backoff_max_seconds)
        self._conn: ImapConnection | None = None
        #: Messages stored by this poller (for logs and tests).
        self.imported = 0
        # Per (UIDVALIDITY, UID): failures that count against the message so
        # far and the latest of them, for fetching it and for storing it.
        self._fetch_failures: dict[tuple[int, int], Failures] = {}
        self._process_failures: dict[tuple[int, int], Failures] = {}
        # The connection a message was last asked of. Held, not just its id,
        # so that a new connection can never be taken for it.
        self._fetching_on: object | None = None
        self._state: FolderState | None = None

    @property
    def slice_seconds(self) -> float:
        """How long one wait lasts before the lease is renewed."""
        return max(self.config.lease_seconds / 3, 1.0)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def interrupt(self) -> None:
        if self._conn is not None:
            self._conn.interrupt()

    async def run(self) -> None:
        try:
            while True:
                try:
                    async with self.db.write() as session:
                        claimed = await claim_mailbox(
                            session, self.key, self.box.imap.folder, self.owner, self.config.lease_seconds
                        )
                    if claimed is None:
                        # Another worker polls it; stand by to take over if it dies.
                        await asyncio.sleep(self.slice_seconds * random.uniform(1.0, 1.5))
                        continue
                    await self._poll()
                except LeaseLost as exc:
                    log.info("%s", exc)
                except Exception as exc:  # noqa: BLE001 - any failure: reconnect with backoff, never give up
                    delay = self.backoff.next()
                    log.warning("mailbox %s: %s: %s; reconnecting in %.1f s", self.key, type(exc).__name__, exc, delay)
                    await asyncio.sleep(delay)
        finally:
            self.interrupt()
            with contextlib.suppress(Exception):
                async with self.db.write() as session:
                    await release_mailbox(session, self.key, self.owner)

    async def _poll(self) -> None:
        conn = ImapConnection(self.server)
        self._conn = conn
        self._state = None
        try:
            await self._call(conn.connect)
            idle = self.box.imap.idle and await self._call(lambda: conn.supports_idle)
            log.info("mailbox %s connected (%s)", self.key, "IDLE" if idle else "polling")
            await self._sync(conn, reselect=True)
            self.backoff.reset()
            loop = asyncio.get_running_loop()
            last_select = last_look = loop.time()
            interval = self.box.imap.poll_interval_seconds
            while True:
                if idle:
                    await self._call(conn.wait, self.slice_seconds)
                else:
                    await asyncio.sleep(min(interval, self.slice_seconds))
                    await self._call(conn.noop)
                now = loop.time()
                # With IDLE, look after every wait (one UID SEARCH): a message
                # that lands between a search and the next IDLE raises no event.
                # The folder is selected again every poll interval, which also
                # notices a folder recreated under the same name.
                reselect = now - last_select >= interval
                if idle or reselect or now - last_look >= interval:
                    await self._sync(conn, reselect=reselect)
                    last_look = now
                    if reselect:
                        last_select = now
                else:
                    async with self.db.write() as session:
                        await renew_lease(session, self.key, self.owner, self.config.lease_seconds)
        finally:
            self._conn = None
            if _cancelling():
                conn.interrupt()  # the hub is stopping: do not wait for a polite logout
            else:
                # RuntimeError: the thread pool was shut down meanwhile.
                with contextlib.suppress(*ImapErrors, RuntimeError):
                    await self._call(conn.close)

    async def _sync(self, conn: ImapConnection, *, reselect: bool = True) -> None:
        """Store every message after the checkpoint, one transaction each."""
        if reselect or self._state is None:
            self._state = await self._call(conn.select)
        state = self._state
        async with self.db.write() as session:
            checkpoint = await claim_mailbox(
                session, self.key, self.box.imap.folder, self.owner, self.config.lease_seconds
            )
            if checkpoint is None:
                raise LeaseLost(f"mailbox {self.key} is polled by another process now")
            last = checkpoint.last_uid
            folder = self.box.imap.folder
            if checkpoint.uidvalidity != state.uidvalidity or checkpoint.folder != folder:
                if checkpoint.uidvalidity is None:
                    await remember_first_connection(session, self.key, utcnow())
                if checkpoint.uidvalidity is None and self.box.first_sync == "new":
                    last = await self._call(conn.highest_uid, state)
                    log.info("mailbox %s: first connection, reading mail after UID %d", self.key, last)
                elif checkpoint.uidvalidity is None:
                    log.info("mailbox %s: first connection, reading the whole folder", self.key)
                    last = 0
                else:
                    log.warning(
                        "mailbox %s: UIDVALIDITY changed (%s -> %s); reading the folder again, "
                        "messages already stored are recognised by their Message-ID",
                        self.key,
                        checkpoint.uidvalidity,
                        state.uidvalidity,
                    )
                    last = 0
                    if self.box.first_sync == "new":
                        # Mail from before the hub first connected was never
                        # stored, so no Message-ID recognises it: without
                        # this, a rebuilt folder's whole history would come
                        # in as new tickets.
                        await start_history_cutoff(
                            session,
                            self.key,
                            HistoryCutoff(
                                uidvalidity=state.uidvalidity,
                                folder=folder,
                                until_uid=await self._call(conn.highest_uid, state),
                                before=await first_connection(session, self.key, checkpoint),
                            ),
                        )
                await self._advance(state, last, session)
            cutoff = await history_cutoff(session, self.key, uidvalidity=state.uidvalidity, folder=folder)
        uids = await self._call(conn.uids_after, last)
        recent: set[int] | None = None
        if cutoff is not None and uids and uids[0] <= cutoff.until_uid:
            # A day's margin: SEARCH SINCE compares dates in the server's zone.
            day = (cutoff.before - timedelta(days=1)).date()
            recent = set(await self._call(conn.uids_since, last, day))
        passed_over = 0
        for uid in uids:
            history = cutoff is not None and uid <= cutoff.until_uid
            if history and recent is not None and uid not in recent:
                passed_over = uid  # checkpointed with the next message read, or below
                continue
            key = (state.uidvalidity, uid)
            given_up = self._fetch_failures.get(key)
            if given_up is not None and given_up.times >= POISON_AFTER:
                # Its last fetch lost the connection: the placeholder is made
                # on this new one, which can still give its header.
                self._fetching_on = conn
                await self._unfetchable(conn, uid=uid, state=state, failures=given_up)
                continue
            first = self._fetching_on is not conn
            self._fetching_on = conn
            try:
                fetched = await self._call(conn.fetch, uid, self.config.max_message_bytes)
            except Exception as exc:
                lost = connection_lost(exc)
                if lost and not first:
                    # Other messages came through this connection before it
                    # dropped: a network drops a connection under whichever
                    # message is in flight, and a long backlog sync gives it
                    # many chances, so that message is not blamed. The next
                    # connection starts with it, and a message that cannot
                    # be fetched in time (too big, or the server hangs up on
                    # it) fails first thing there again: that does count, as
                    # the connection had carried nothing else and had just
                    # answered the search that found the message. Losing
                    # POISON_AFTER connections in a row that way by chance
                    # takes a network that drops most connections within
                    # one message's fetch.
                    raise
                failures = self._count(self._fetch_failures, key, exc)
                if failures.times < POISON_AFTER:
                    if lost:
                        log.warning(
                            "mailbox %s: the connection was lost fetching UID %d, the first message asked of it "
                            "(%d of %d before a placeholder)",
                            self.key,
                            uid,
                            failures.times,
                            POISON_AFTER,
                        )
                    raise
                if lost:
                    raise  # the placeholder is stored on the next connection, above
                await self._unfetchable(conn, uid=uid, state=state, failures=failures)
                continue
            # Fetched: whatever failed before was not about fetching it.
            self._fetch_failures.pop(key, None)
            if fetched is None:
                await self._advance_alone(state, uid)  # expunged since the search
                continue
            if (
                history
                and cutoff
                and fetched.internal_date is not None
                and fetched.internal_date < cutoff.before - HISTORY_MARGIN
            ):
                await self._advance_alone(state, uid)
                continue
            try:
                await self.process(fetched.raw, uid=uid, state=state, truncated=fetched.truncated)
            except LeaseLost:
                raise
            except Exception as exc:
                if outage(exc):
                    raise  # retried with the connection, for as long as the outage lasts
                # A message that keeps failing must not block the mailbox.
                failures = self._count(self._process_failures, key, exc)
                if failures.times < POISON_AFTER:
                    raise
                log.exception(
                    "mailbox %s: UID %d failed %d times; storing it as an unreadable message",
                    self.key,
                    uid,
                    failures.times,
                )
                await self.process_unreadable(fetched.raw, uid=uid, state=state, error=exc)
            self._process_failures.pop(key, None)
        if passed_over and passed_over == uids[-1]:
            await self._advance_alone(state, passed_over)

    @staticmethod
    def _count(table: dict[tuple[int, int], Failures], key: tuple[int, int], exc: Exception) -> Failures:
        """One more failure of a message that counts against it."""
        before = table.get(key)
        table[key] = Failures(times=(before.times if before else 0) + 1, last=exc)
        return table[key]

    async def _unfetchable(self, conn: ImapConnection, *, uid: int, state: FolderState, failures: Failures) -> None:
        error = failures.last
        log.error(
            "mailbox %s: fetching UID %d failed %d times (%s: %s); storing a placeholder for it",
            self.key,
            uid,
            failures.times,
            type(error).__name__,
            error,
            exc_info=error,
        )
        await self.process_unfetchable(conn, uid=uid, state=state, error=error)
        self._fetch_failures.pop((state.uidvalidity, uid), None)

    async def _advance_alone(self, state: FolderState, uid: int) -> None:
        async with self.db.write() as session:
            await self._advance(state, uid, session)

    async def _advance(self, state: FolderState, uid: int, session: AsyncSession) -> None:
        await advance_checkpoint(
            session,
            self.key,
            self.owner,
            folder=self.box.imap.folder,
            uidvalidity=state.uidvalidity,
            last_uid=uid,
            lease_seconds=self.config.lease_seconds,
        )

    async def process(self, raw: bytes, *, uid: int, state: FolderState, truncated: bool = False) -> str:
        """Store one message and move the checkpoint past it. Returns what
        happened: stored, duplicate, report, own."""
        parsed = await asyncio.to_thread(parse_email, raw)
        own = {b.address for b in self.config.mailboxes}
        if is_own_address(parsed.sender, own):
            relayed = sent_on_behalf(parsed, own)
            if relayed is None:
                # Our own mail (a copy in the inbox, a loop): never a conversation.
                await self._advance_alone(state, uid)
                return "own"
            parsed = relayed
        if parsed.report is not None:
            report = parsed.report
            async with self.db.write() as session:
                ours = await sent_email_exists(session, report.original_ids)
                if ours:
                    about = report.status_recipients
                    for receipt in parsed.receipts():
                        await do_record_receipt(session, receipt, recipients=about, own=own)
                    await self._advance(state, uid, session)
            if ours:
                return "report"
            # Not about mail we sent (or a customer's mail that only looks
            # like a report): kept as a message, as nothing delivered to the
            # mailbox may be lost.
            log.info(
                "mailbox %s: %s report about %s matches no message we sent; storing it as a message",
                self.key,
                report.kind,
                ", ".join(report.original_ids) or "nothing",
            )
        async with self.db.read() as session:
            duplicate = await email_message_exists(session, parsed.key)
        if duplicate:
            await self._advance_alone(state, uid)
            return "duplicate"
        files = await save_files(
            self.store, parsed, raw, truncated=truncated, originals=original_store(self.store, self.config)
        )
        async with self.db.write() as session:
            try:
                result = await do_ingest_email(session, parsed, files, self.box)
                await self._advance(state, uid, session)
            except BaseException:
                # Raised inside the unit of work, so it rolls back and nothing
                # points at the files; a retry of the UID saves them again.
                # (A failed commit is not this case: it may have gone through.)
                await self.store.discard(files.urls())
                raise
        if result.duplicate:
            # Another poller stored this mail meanwhile, with files of its own.
            await self.store.discard(files.urls())
        metrics.INGESTED.labels(Channel.EMAIL.value).inc()
        self.imported += 1
        return "duplicate" if result.duplicate else "stored"

    async def process_unreadable(self, raw: bytes, *, uid: int, state: FolderState, error: Exception) -> None:
        """Keep a message the hub could not process: a new ticket with a note
        and the raw message attached, from its sender and with its subject.
        Should the parser be what fails, the header alone is read as plain
        text for them: a placeholder from nobody about nothing loses who
        wrote and what about, and leaves no one to answer."""
        try:
            parsed = parse_email(raw)
        except Exception:  # noqa: BLE001 - this message is the parser's failure: its header alone then
            parsed = read_envelope(raw)
        key, sender, name, subject = parsed.key, parsed.sender, parsed.sender_name, parsed.subject or None
        message_id = parsed.message_id
        files: list[Attachment] = []
        with contextlib.suppress(AttachmentTooLarge):
            files.append(
                await original_store(self.store, self.config).save(
                    raw, filename="original.eml", content_type="message/rfc822"
                )
            )
        note = f"processing failed: {type(error).__name__}: {error}"
        body = f"(This email could not be processed: {type(error).__name__}: {error}. The original is attached.)"
        if not files:
            body = f"(This email could not be processed: {type(error).__name__}: {error}. It is still in the mailbox.)"
        await self._store_placeholder(
            key=key,
            message_id=message_id,
            sender=sender,
            name=name,
            subject=subject,
            body=body,
            note=note,
            files=files,
            state=state,
            uid=uid,
        )

    async def process_unfetchable(
        self, conn: ImapConnection, *, uid: int, state: FolderState, error: Exception
    ) -> None:
        """Keep a trace of a message the mail server would not hand over: a
        new ticket saying so, from its sender and with its subject when the
        server gives its header at least. The message stays in the mailbox
        (the hub never changes it), where an agent can read it."""
        folder = self.box.imap.folder
        header: bytes | None = None
        with contextlib.suppress(Exception):
            header = await self._call(conn.fetch_header, uid)
        sender, name, subject, message_id = UNKNOWN_SENDER, None, f"unreadable message UID {uid}", None
        files: list[Attachment] = []
        if header:
            with contextlib.suppress(Exception):
                parsed = parse_email(header)
                sender, name, subject = parsed.sender, parsed.sender_name, parsed.subject or subject
                message_id = parsed.message_id
            with contextlib.suppress(AttachmentTooLarge):
                files.append(await self.store.save(header, filename="headers.txt", content_type="text/plain"))
        reason = f"{type(error).__name__}: {error}"
        await self._store_placeholder(
            # Keyed by the UID, not a Message-ID: should the server hand the
            # message over after a re-read, it is imported, not taken for this.
            key=f"imap-unreadable:{state.uidvalidity}:{uid}:{folder}",
            message_id=message_id,
            sender=sender,
            name=name,
            subject=subject,
            body=(
                f"(This email could not be read from the mail server: {reason}. It is still in the mailbox, "
                f"folder {folder}, UID {uid}: read it there.)"
            ),
            note=f"fetching UID {uid} failed {POISON_AFTER} times: {reason}",
            files=files,
            state=state,
            uid=uid,
        )

    async def _store_placeholder(
        self,
        *,
        key: str,
        message_id: str | None,
        sender: str,
        name: str | None,
        subject: str | None,
        body: str,
        note: str,
        files: Sequence[Attachment],
        state: FolderState,
        uid: int,
    ) -> None:
        inbound = InboundMessage(
            channel=Channel.EMAIL,
            inbox=self.key,
            external_id=key[:512],
            sender=sender,
            sender_name=name[:512] if name else None,
            subject=subject[:1000] if subject else None,
            body=body[:MAX_BODY_CHARS],
            attachments=tuple(files),
            # The Message-ID, when known, is what our reply's In-Reply-To names.
            extras={"email": {"message_id": message_id, "notes": [note[:2000]]}},
        )
        async with self.db.write() as session:
            await ingest_batch(session, [inbound], threads=[thread_key_for(key)])
            await self._advance(state, uid, session)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
