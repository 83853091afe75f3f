"""The hub's side of Telegram: configured bots, what to do with each update,
files fetched from Telegram, webhook registration and the getUpdates poller.

An update is acknowledged (the webhook answers 2xx, the poller advances its
offset) only after what it carries is committed. Updates are handled
idempotently: a message is stored once per (bot, chat, message id), a
pressed button once per callback query id, an edit once (edits in edit time
order, then update_id order for two in the same second), and a message's
contact signals (``/start`` source, shared phone) once per message. One
process handles one chat's updates one at a time, in the order they came.

Polling: each bot has a row in ``telegram_bot_state`` holding the next
``update_id`` to fetch and a lease naming the process that polls it. A process
polls only while it holds the lease, renews it with every offset it saves, and
gives it up when it stops; a process that dies loses it after
``telegram.poll_lease_seconds``. So exactly one process polls a bot at a time,
on SQLite and PostgreSQL alike, and a restart continues at the saved offset:
updates confirmed to Telegram were committed first (none lost), and an update
committed just before a crash is fetched again but stored once (none repeated).
An update that cannot be stored however often it is tried (not an update, or
failing :data:`POISON_ATTEMPTS` times while Telegram and the database answer)
would hold back every later one: it is logged as an error, kept whole in the
audit log (``telegram.update_dead_lettered``) and passed; ``crm-hub telegram
replay`` (:mod:`hub.telegram_cli`) stores it once the cause is fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from telegram import Bot
from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, RetryAfter, TelegramError
from telegram.request import HTTPXRequest
from telegram.warnings import PTBUserWarning

from channels.base import InvalidPayload
from channels.telegram import (
    ALLOWED_UPDATES,
    BotHandle,
    MediaRef,
    TelegramChannel,
    TelegramUpdate,
    UpdateKind,
    bot_urls,
    is_hashed_id,
    parse_update,
    resolve_callback,
    retry_seconds,
)
from hub.attachments import AttachmentStore, AttachmentTooLarge
from hub.channel_actions import (
    do_contact_signals,
    do_edit_inbound_message,
    do_move_location,
    do_set_reachability,
    notify_message_updated,
)
from hub.config import HubConfig, TelegramBotConfig
from hub.core import Attachment, Channel, IdentityKind, InboundMessage, utcnow
from hub.text import InvalidPhoneNumber, parse_phone
from storage.db import Database
from storage.ingest import IngestResult, UnknownInbox, dialect_insert, ingest_batch
from storage.models import AuditLog, Identity, Inbox, Message, TelegramBotState, Ticket
from storage.queries import offered_quick_replies

log = logging.getLogger(__name__)

Ingest = Callable[[InboundMessage], Awaitable[IngestResult]]

#: How often the poller tries an update that fails in a way that does not
#: pass (not Telegram or the database being unreachable) before passing it.
POISON_ATTEMPTS = 5
DEAD_LETTER_ACTION = "telegram.update_dead_lettered"

#: Message extras: Telegram's unique ids of the message's files, in order.
FILE_IDS = "file_unique_ids"

#: The longest wait between two tries of a refused setWebhook.
WEBHOOK_RETRY_CAP_SECONDS = 300.0

#: The longest a poller or setWebhook waits on Telegram's flood control
#: (a 429's retry_after): a wait this long is a ban to be noticed in the log,
#: not slept through for hours. Shutdown cancels the wait at once.
FLOOD_WAIT_CAP_SECONDS = 600.0

#: How many of the latest messages to a chat are searched for the quick reply
#: a long id's button stands for (older buttons stay pressable on Telegram).
OFFERED_LOOKBACK = 50

# getUpdates is called through do_api_request to get the raw JSON, so that one
# malformed update is skipped on its own instead of failing the whole batch in
# Update.de_list; python-telegram-bot suggests its typed method for that.
warnings.filterwarnings("ignore", message=r"Please use 'Bot\.getUpdates'", category=PTBUserWarning)


class TelegramUnavailable(Exception):
    """Telegram (or the network) failed in a way that may pass: the update is
    not acknowledged, so it comes again (not before ``retry_after`` seconds,
    when Telegram's flood control named them)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class TelegramBot:
    config: TelegramBotConfig
    mode: str
    bot: Bot

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def inbox(self) -> str:
        return self.config.inbox_key


class Backoff:
    """Exponential, with jitter, reset after a success."""

    def __init__(self, base: float = 1.0, cap: float = 60.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        delay = min(self.cap, self.base * 2 ** (self.failures - 1))
        return float(delay * random.uniform(0.5, 1.0))

    def reset(self) -> None:
        self.failures = 0

    def after(self, retry_after: float | None) -> float:
        """The next delay, but no sooner than Telegram's ``retry_after``."""
        delay = self.next()
        return delay if retry_after is None else min(FLOOD_WAIT_CAP_SECONDS, max(retry_after, delay))


def make_bot(token: str, api_base_url: str, timeout: float) -> Bot:
    base_url, base_file_url = bot_urls(api_base_url)
    return Bot(
        token,
        base_url=base_url,
        base_file_url=base_file_url,
        # Replies to many chats go out concurrently; the default pool is small.
        request=HTTPXRequest(
            connection_pool_size=32,
            read_timeout=timeout,
            write_timeout=timeout,
            connect_timeout=min(timeout, 10.0),
            pool_timeout=timeout,
            media_write_timeout=max(timeout, 60.0),
        ),
        get_updates_request=HTTPXRequest(connection_pool_size=2, read_timeout=timeout, connect_timeout=10.0),
    )


class TelegramService:
    def __init__(
        self,
        config: HubConfig,
        db: Database,
        attachments: AttachmentStore,
        ingest: Ingest,
    ) -> None:
        self.config = config
        self.tg = config.telegram
        self.db = db
        self.attachments = attachments
        self.ingest = ingest
        self.bots: dict[str, TelegramBot] = {}
        # (bot, update_id) -> failures so far of an update the poller is stuck on.
        self._failures: dict[tuple[str, int], int] = {}
        self._chat_turns = _Turns()
        # (bot, file_id) -> failed downloads of a file that getFile lists.
        self._download_failures: dict[tuple[str, str], int] = {}
        for bc in self.tg.bots:
            bot = make_bot(bc.token, self.tg.api_base_url, self.tg.request_timeout_seconds)
            self.bots[bc.name] = TelegramBot(config=bc, mode=self.tg.mode_of(bc), bot=bot)
        self.channel = TelegramChannel(
            {b.inbox: BotHandle(b.name, b.bot) for b in self.bots.values()},
            read_attachment=lambda url: asyncio.to_thread(attachments.read, url),
        )

    def webhook_bot(self, name: str) -> TelegramBot | None:
        bot = self.bots.get(name)
        return bot if bot is not None and bot.mode == "webhook" else None

    def webhook_url(self, bot: TelegramBot) -> str:
        return f"{self.config.public_url}/webhooks/telegram/{bot.name}"

    # --- one update -----------------------------------------------------------------

    async def handle_json(self, bot: TelegramBot, data: Any) -> str:
        """Raises :class:`InvalidPayload` for what is not an update."""
        return await self.handle(bot, parse_update(data, bot=bot.name, inbox=bot.inbox))

    async def handle(self, bot: TelegramBot, upd: TelegramUpdate) -> str:
        """Store what ``upd`` carries; returns what happened ("stored",
        "duplicate", "edited", "moved" (a live location), "blocked",
        "unblocked", "ignored: <why>"). Raises
        when it could not be stored, so the update is delivered again."""
        if upd.kind is UpdateKind.IGNORED:
            if upd.callback_query_id:
                await self._answer(bot, upd.callback_query_id)
            return f"ignored: {upd.reason}"
        # One chat's updates in the order they came: a photo still being
        # fetched would otherwise be stored after the text sent after it, and
        # an edit would look for an original not stored yet. Other chats go on.
        async with self._chat_turns.turn((bot.name, upd.chat_id)):
            return await self._handle(bot, upd)

    async def _handle(self, bot: TelegramBot, upd: TelegramUpdate) -> str:
        if upd.kind in (UpdateKind.BLOCKED, UpdateKind.UNBLOCKED):
            assert upd.chat_id is not None
            async with self.db.write() as session:
                applied = await do_set_telegram_reachability(
                    session,
                    inbox=bot.inbox,
                    chat_id=upd.chat_id,
                    reason=upd.reason if upd.kind is UpdateKind.BLOCKED else None,
                    changed_at=upd.changed_at,
                    sequence=upd.update_id,
                    actor="contact",
                )
            return upd.kind.value if applied else f"ignored: {upd.kind.value} older than the last change applied"
        message = upd.message
        assert message is not None
        if upd.kind is UpdateKind.EDIT and await self._apply_edit(bot, upd, message):
            return "moved" if upd.moved_location is not None else "edited"
        # An edit of a message the hub never stored (sent before the bot was
        # connected): the customer's words are kept as a message of their own.
        saved: list[str] = []
        if upd.media:
            with_files = await self._with_files(bot, message, upd.media)
            saved = [a.url for a in with_files.attachments if a not in message.attachments]
            message = with_files
        if upd.kind is UpdateKind.CALLBACK and message.quick_reply and _needs_choice(message):
            message = await self._with_choice(bot, message, message.quick_reply)
        try:
            result = await self.ingest(message)
        except BaseException:
            # The update comes again and fetches its files again: these would
            # stay behind, a copy per try, with nothing pointing at them.
            await asyncio.shield(self._discard_unless_stored(message.external_id, saved))
            raise
        if result.duplicate:
            # The message was stored meanwhile (a redelivery racing this one, or
            # another web process), with files of its own: these are nobody's.
            await self.attachments.discard(saved)
        if upd.kind is UpdateKind.EDIT and result.duplicate and await self._apply_edit(bot, upd, message):
            # The original was stored while this edit looked for it (it was
            # fetching its files): the edit applies to it, not lost as a duplicate.
            return "moved" if upd.moved_location is not None else "edited"
        await self._after_ingest(bot, upd, result)
        if upd.callback_query_id:
            await self._answer(bot, upd.callback_query_id)
        return "duplicate" if result.duplicate else "stored"

    async def _discard_unless_stored(self, external_id: str, saved: list[str]) -> None:
        """Remove the files saved for a message whose ingest failed, except
        those it was stored with after all (a commit whose answer was lost).
        When the database cannot say, they are kept: a file too many is only
        disk space, one too few is a customer's photo gone."""
        if not saved:
            return
        try:
            async with self.db.read() as session:
                stored = await session.scalar(
                    select(Message.attachments).where(
                        Message.channel == Channel.TELEGRAM.value, Message.external_id == external_id
                    )
                )
        except Exception as exc:  # noqa: BLE001 - the failure being handled is the one to report
            log.warning(
                "telegram: files of message %s kept; the database could not say if it is stored: %s", external_id, exc
            )
            return
        kept = {a.get("url") for a in stored or [] if isinstance(a, dict)}
        await self.attachments.discard(url for url in saved if url not in kept)

    async def _apply_edit(self, bot: TelegramBot, upd: TelegramUpdate, message: InboundMessage) -> bool:
        """Whether the edited message is stored (and the edit applied, unless
        a later one already was)."""
        assert upd.edited_at is not None
        async with self.db.write() as session:
            if upd.moved_location is not None:
                # A live location sends an edit every few seconds for
                # hours: a position, not a new version of the message.
                edited = await do_move_location(
                    session,
                    channel=Channel.TELEGRAM,
                    external_id=message.external_id,
                    body=message.body,
                    location=upd.moved_location,
                    moved_at=upd.edited_at,
                    sequence=upd.update_id,
                )
            else:
                # update_id orders two edits within the same second (edit_date has whole seconds).
                edited = await do_edit_inbound_message(
                    session,
                    channel=Channel.TELEGRAM,
                    external_id=message.external_id,
                    body=message.body,
                    edited_at=upd.edited_at,
                    sequence=upd.update_id,
                )
            stored_files = (edited.extras or {}).get(FILE_IDS) if edited is not None else None
            latest = edited is not None and (edited.extras or {}).get("edit_sequence") == upd.update_id
        if edited is None:
            return False
        if upd.media and latest and stored_files != [ref.unique_id for ref in upd.media]:
            await self._replace_files(bot, upd, message)
        return True

    async def _replace_files(self, bot: TelegramBot, upd: TelegramUpdate, message: InboundMessage) -> None:
        """The customer replaced the photo or file of a message they sent: the
        agent sees the new one; the old ones stay in ``extras["replaced_files"]``."""
        saved, errors = await self._fetch_all(bot, upd.media)
        async with self.db.write() as session:
            msg = await session.scalar(
                select(Message)
                .where(Message.channel == Channel.TELEGRAM.value, Message.external_id == message.external_id)
                .with_for_update()
            )
            extras = dict(msg.extras or {}) if msg is not None else {}
            if msg is None or extras.get("edit_sequence") != upd.update_id:
                # A later edit came in meanwhile: its files are the message's.
                await self.attachments.discard(a.url for a in saved)
                return
            assert upd.edited_at is not None
            replaced = {"attachments": list(msg.attachments or []), "replaced_at": upd.edited_at.isoformat()}
            extras["replaced_files"] = [*(extras.get("replaced_files") or []), replaced]
            extras[FILE_IDS] = [ref.unique_id for ref in upd.media]
            extras.pop("attachment_errors", None)
            if errors:
                extras["attachment_errors"] = errors
            msg.attachments = [a.model_dump(exclude_none=True) for a in saved]
            msg.extras = extras
            await session.flush()
            await notify_message_updated(session, msg)

    async def _with_choice(self, bot: TelegramBot, message: InboundMessage, token: str) -> InboundMessage:
        """A button whose quick reply id was too long for Telegram carried a
        token, or one on an old message came without its keyboard: the id and
        title it stands for, from what the hub offered this chat."""
        async with self.db.read() as session:
            offered = await offered_quick_replies(
                session,
                inbox=bot.inbox,
                kind=IdentityKind.TELEGRAM,
                address=message.sender,
                channel=Channel.TELEGRAM,
                messages=OFFERED_LOOKBACK,
            )
        choice = resolve_callback(token, offered)
        if choice is None:
            log.info("telegram: button data %s matches no quick reply offered to chat %s", token, message.sender)
            return message
        body = choice.title if message.body == token else message.body
        return message.model_copy(update={"quick_reply": choice.id, "body": body})

    async def _after_ingest(self, bot: TelegramBot, upd: TelegramUpdate, result: IngestResult) -> None:
        phone: str | None = None
        if upd.shared_phone:
            raw = upd.shared_phone.strip()
            try:
                # Telegram gives the number in international form, usually without "+".
                phone = parse_phone(raw if raw.startswith("+") else f"+{raw}")
            except InvalidPhoneNumber as exc:
                log.warning("telegram: a shared phone number could not be read: %s", exc)
        source = upd.start_payload or None
        if source or phone:
            async with self.db.write() as session:
                await do_contact_signals(session, result.message_id, source=source, phone=phone)
        if upd.chat_id is not None and upd.kind is not UpdateKind.CALLBACK:
            # Writing again proves the customer can be reached (they unblocked the bot).
            async with self.db.read() as session:
                blocked = await telegram_blocked(session, inbox=bot.inbox, chat_id=upd.chat_id)
            if blocked:
                async with self.db.write() as session:
                    await do_set_telegram_reachability(
                        session,
                        inbox=bot.inbox,
                        chat_id=upd.chat_id,
                        reason=None,
                        ticket_id=result.ticket_id,
                        actor="contact",
                    )

    async def _answer(self, bot: TelegramBot, query_id: str) -> None:
        """Stops the spinner on the customer's button. Best effort: the choice is
        stored already, and Telegram refuses answers to queries older than a few
        minutes (a redelivered update)."""
        try:
            await bot.bot.answer_callback_query(query_id)
        except TelegramError as exc:
            log.info("telegram: callback query %s not answered: %s", query_id, exc)

    async def _with_files(
        self, bot: TelegramBot, message: InboundMessage, media: tuple[MediaRef, ...]
    ) -> InboundMessage:
        """The message with its files fetched into the attachment store; a file
        that cannot be kept is listed in ``extras["attachment_errors"]`` with the
        reason, and the text is stored all the same."""
        async with self.db.read() as session:
            stored = await session.scalar(
                select(Message.id).where(
                    Message.channel == Channel.TELEGRAM.value, Message.external_id == message.external_id
                )
            )
        if stored is not None:
            return message  # a redelivery: ingest answers with the stored message
        saved, errors = await self._fetch_all(bot, media)
        extras = dict(message.extras)
        extras[FILE_IDS] = [ref.unique_id for ref in media]
        if errors:
            extras["attachment_errors"] = errors
        return message.model_copy(update={"attachments": tuple(saved), "extras": extras})

    async def _fetch_all(
        self, bot: TelegramBot, media: tuple[MediaRef, ...]
    ) -> tuple[list[Attachment], list[dict[str, Any]]]:
        saved: list[Attachment] = []
        errors: list[dict[str, Any]] = []
        for ref in media:
            try:
                saved.append(await self._fetch(bot, ref))
            except (AttachmentTooLarge, FileRefused) as exc:
                errors.append({"filename": ref.filename, "kind": ref.kind, "size": ref.size, "reason": str(exc)})
        return saved, errors

    async def _fetch(self, bot: TelegramBot, ref: MediaRef) -> Attachment:
        # Checked before anything is downloaded: Telegram says how big it is.
        if ref.size is not None:
            self.attachments.check_size(ref.size, ref.filename)
        try:
            file = await bot.bot.get_file(ref.file_id)
        except RetryAfter as exc:
            wait = retry_seconds(exc)
            raise TelegramUnavailable(
                f"Telegram's flood control refused getFile: retry in {wait:g} s", retry_after=wait
            ) from exc
        except BadRequest as exc:
            # "file is too big" (over the Bot API's 20 MB), an expired file id.
            raise FileRefused(f"Telegram did not give the file: {exc.message}") from exc
        except InvalidToken as exc:
            raise TelegramUnavailable("Telegram rejected the bot's token while fetching a file") from exc
        except TelegramError as exc:
            raise TelegramUnavailable(f"fetching a file from Telegram failed: {exc.message}") from exc
        if file.file_size is not None:
            self.attachments.check_size(file.file_size, ref.filename)
        path = file.file_path or ""
        try:
            if os.path.isabs(path) and await asyncio.to_thread(os.path.isfile, path):
                # A Bot API server of one's own in --local mode names a file
                # on its disk (shared with the hub) instead of serving it.
                data = await asyncio.to_thread(Path(path).read_bytes)
            else:
                data = bytes(await file.download_as_bytearray())
        except (BadRequest, Forbidden, InvalidToken) as exc:
            # getFile worked with this token, so a 4xx here is about the file
            # (a server that does not serve it: 404 reads as InvalidToken):
            # asking again gets the same answer, and the text must not wait.
            raise FileRefused(f"Telegram listed the file but refused to send it: {exc.message}") from exc
        except OSError as exc:
            raise FileRefused(f"the Bot API server's local file could not be read: {exc}") from exc
        except TelegramError as exc:
            # getFile answered, so Telegram is up; its file server may never
            # serve this file (a 5xx every time). Retried a few times, then
            # the message is stored without it rather than held back for good.
            key = (bot.name, ref.file_id)
            self._download_failures[key] = self._download_failures.get(key, 0) + 1
            if self._download_failures[key] < POISON_ATTEMPTS:
                raise TelegramUnavailable(f"downloading a file from Telegram failed: {exc.message}") from exc
            del self._download_failures[key]
            raise FileRefused(f"Telegram did not serve the file in {POISON_ATTEMPTS} tries: {exc.message}") from exc
        self._download_failures.pop((bot.name, ref.file_id), None)
        return await self.attachments.save(data, filename=ref.filename, content_type=ref.content_type)

    # --- start-up, webhooks and polling -----------------------------------------------

    async def run(self, *, web: bool, worker: bool, owner: str) -> None:
        """Everything Telegram needs in the background of one process: webhook
        registration where webhooks are served, pollers where workers run."""
        async with asyncio.TaskGroup() as tg:
            for bot in self.bots.values():
                tg.create_task(self._introduce(bot), name=f"telegram-getme-{bot.name}")
                if bot.mode == "webhook" and web:
                    tg.create_task(self._register_webhook(bot), name=f"telegram-webhook-{bot.name}")
                elif bot.mode == "polling" and worker:
                    tg.create_task(self.poll(bot, owner), name=f"telegram-poll-{bot.name}")

    async def _introduce(self, bot: TelegramBot) -> None:
        """getMe: a wrong token is reported at start-up, not at the first reply."""
        try:
            me = await bot.bot.get_me()
        except InvalidToken:
            log.error("telegram bot %s: Telegram rejected the token in $%s", bot.name, bot.config.token_env)
        except TelegramError as exc:
            log.warning("telegram bot %s: getMe failed: %s", bot.name, exc.message)
        else:
            log.info("telegram bot %s is @%s (inbox %s, %s mode)", bot.name, me.username, bot.inbox, bot.mode)

    async def _register_webhook(self, bot: TelegramBot) -> None:
        if not self.config.server.public_url:
            log.warning(
                "telegram bot %s: webhook mode, but server.public_url (HUB_PUBLIC_URL) is not set, so Telegram cannot "
                "be told where to post; updates are accepted at /webhooks/telegram/%s once a webhook points there. "
                "Set HUB_PUBLIC_URL to the hub's public https URL, or use polling (HUB_TELEGRAM_MODE=polling).",
                bot.name,
                bot.name,
            )
            return
        url = self.webhook_url(bot)
        backoff = Backoff(cap=WEBHOOK_RETRY_CAP_SECONDS)
        while True:
            try:
                await bot.bot.set_webhook(
                    url=url,
                    secret_token=bot.config.webhook_secret,
                    allowed_updates=list(ALLOWED_UPDATES),
                )
            except InvalidToken as exc:
                log.error("telegram bot %s: setWebhook to %s was refused: %s", bot.name, url, exc.message)
                return  # the token only changes with a restart
            except RetryAfter as exc:
                # Asking before the time Telegram named can lengthen the ban.
                delay = backoff.after(retry_seconds(exc))
                log.warning("telegram bot %s: setWebhook hit flood control; again in %.1f s", bot.name, delay)
                await asyncio.sleep(delay)
                continue
            except (BadRequest, Forbidden) as exc:
                # Telegram checks the URL as it is set: "bad webhook: Failed to
                # resolve host" while DNS or a certificate is still being set
                # up. Nothing else would set it, so it is tried until it works.
                delay = backoff.next()
                log.error(
                    "telegram bot %s: setWebhook to %s was refused: %s; trying again in %.0f s",
                    bot.name,
                    url,
                    exc.message,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            except TelegramError as exc:
                delay = backoff.next()
                log.warning("telegram bot %s: setWebhook failed (%s); again in %.1f s", bot.name, exc.message, delay)
                await asyncio.sleep(delay)
                continue
            log.info("telegram bot %s: webhook set to %s", bot.name, url)
            return

    async def poll(self, bot: TelegramBot, owner: str) -> None:
        """getUpdates until cancelled, while this process holds the bot's lease."""
        backoff = Backoff()
        webhook_removed = False
        try:
            while True:
                try:
                    offset = await self._claim(bot.name, owner)
                    if offset is None:
                        # Another process polls this bot; be ready to take over.
                        await asyncio.sleep(self.tg.poll_lease_seconds / 4 * random.uniform(0.8, 1.2))
                        continue
                    if not webhook_removed:
                        # getUpdates is refused (409) while a webhook is set.
                        await bot.bot.delete_webhook(drop_pending_updates=False)
                        webhook_removed = True
                    await self._poll_once(bot, owner, offset)
                    backoff.reset()
                except asyncio.CancelledError:
                    raise
                except _LostLease:
                    log.info("telegram bot %s: another process took over polling", bot.name)
                except RetryAfter as exc:
                    # Asking before the time Telegram named can lengthen the ban.
                    delay = backoff.after(retry_seconds(exc))
                    log.warning("telegram bot %s: flood control (%s); again in %.1f s", bot.name, exc.message, delay)
                    await asyncio.sleep(delay)
                except Conflict as exc:
                    # Someone set a webhook after this poller removed its own
                    # (an old replica in webhook mode, a script): getUpdates is
                    # refused until it is removed again.
                    webhook_removed = "webhook" not in exc.message.lower()
                    delay = backoff.next()
                    log.warning(
                        "telegram bot %s: getUpdates refused (%s); again in %.1f s", bot.name, exc.message, delay
                    )
                    await asyncio.sleep(delay)
                except Exception as exc:  # noqa: BLE001 - any failure: log, back off, poll again
                    # A file's getFile under flood control names its own wait.
                    delay = backoff.after(exc.retry_after if isinstance(exc, TelegramUnavailable) else None)
                    log.warning("telegram bot %s: polling failed (%s); again in %.1f s", bot.name, exc, delay)
                    await asyncio.sleep(delay)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._release(bot.name, owner))

    async def _poll_once(self, bot: TelegramBot, owner: str, offset: int) -> None:
        timeout = self.tg.poll_timeout_seconds
        raw = await bot.bot.do_api_request(
            "getUpdates",
            api_kwargs={"offset": offset, "timeout": timeout, "allowed_updates": list(ALLOWED_UPDATES)},
            read_timeout=timeout + self.tg.request_timeout_seconds,
        )
        for item in raw if isinstance(raw, list) else []:
            update_id = item.get("update_id") if isinstance(item, dict) else None
            try:
                outcome = await self.handle_json(bot, item)
            except InvalidPayload as exc:
                # Not an update we can read (a webhook would answer 400); Telegram
                # would send it the same way again, so it is kept and passed.
                await self._dead_letter(bot, item, f"not a valid update: {exc}")
                outcome = "invalid"
            except Exception as exc:
                if not isinstance(update_id, int) or _may_pass(exc):
                    raise
                key = (bot.name, update_id)
                self._failures[key] = self._failures.get(key, 0) + 1
                if self._failures[key] < POISON_ATTEMPTS:
                    raise
                # The same update failed every time while others would be
                # waiting behind it: kept for an operator, so the bot moves on.
                await self._dead_letter(
                    bot, item, f"handling failed {self._failures[key]} times: {type(exc).__name__}: {exc}"
                )
                outcome = "dead-lettered"
            if isinstance(update_id, int):
                self._failures.pop((bot.name, update_id), None)
            log.debug("telegram bot %s: update %s %s", bot.name, update_id, outcome)
            if isinstance(update_id, int) and not await self._advance(bot.name, owner, update_id + 1):
                raise _LostLease()

    async def _dead_letter(self, bot: TelegramBot, item: Any, error: str) -> None:
        """An update the poller passes without storing what it carries: the
        whole update (its JSON text) and the reason go to the audit log (action
        ``telegram.update_dead_lettered``). The error logged names the row;
        once the cause is fixed, ``crm-hub telegram replay <row id>`` stores
        the update through :meth:`handle_json`, as if it came now."""
        update_id = item.get("update_id") if isinstance(item, dict) else None
        async with self.db.write() as session:
            row = AuditLog(
                actor="system",
                action=DEAD_LETTER_ACTION,
                entity="telegram_update",
                entity_id=update_id if isinstance(update_id, int) else None,
                # As text: a malformed update may hold what the JSON column
                # cannot (integers over 64 bits).
                data={
                    "bot": bot.name,
                    "error": error[:2000],
                    "update": json.dumps(item, ensure_ascii=False, default=str),
                },
            )
            session.add(row)
            await session.flush()
            row_id = row.id
        log.error(
            "telegram bot %s: update %s passed without being stored: %s (kept in audit log row %s; "
            "replay it with `crm-hub telegram replay %s` once the cause is fixed)",
            bot.name,
            update_id,
            error,
            row_id,
            row_id,
        )

    async def _claim(self, name: str, owner: str) -> int | None:
        """Take or renew the lease on polling ``name``; the offset to poll from, or
        None when another live process holds it."""
        now = utcnow()
        async with self.db.write() as session:
            row = await session.scalar(select(TelegramBotState).where(TelegramBotState.bot == name).with_for_update())
            if row is None:
                await session.execute(
                    dialect_insert(session, TelegramBotState)
                    .values(bot=name, update_offset=0, updated_at=now)
                    .on_conflict_do_nothing(index_elements=["bot"])
                )
                row = await session.scalar(
                    select(TelegramBotState)
                    .where(TelegramBotState.bot == name)
                    .with_for_update()
                    .execution_options(populate_existing=True)
                )
                assert row is not None
            if row.poller not in (None, owner) and row.lease_until is not None and row.lease_until > now:
                return None
            row.poller = owner
            row.lease_until = now + timedelta(seconds=self.tg.poll_lease_seconds)
            row.updated_at = now
            return int(row.update_offset)

    async def _advance(self, name: str, owner: str, offset: int) -> bool:
        now = utcnow()
        async with self.db.write() as session:
            done = await session.execute(
                update(TelegramBotState)
                .where(TelegramBotState.bot == name, TelegramBotState.poller == owner)
                .values(
                    update_offset=offset,
                    lease_until=now + timedelta(seconds=self.tg.poll_lease_seconds),
                    updated_at=now,
                )
                .returning(TelegramBotState.bot)
                .execution_options(synchronize_session=False)
            )
            return done.scalar_one_or_none() is not None

    async def _release(self, name: str, owner: str) -> None:
        async with self.db.write() as session:
            await session.execute(
                update(TelegramBotState)
                .where(TelegramBotState.bot == name, TelegramBotState.poller == owner)
                .values(poller=None, lease_until=None, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )


def _may_pass(exc: Exception) -> bool:
    """Failures of Telegram, the network or the database, or a missing inbox:
    every update fails the same way until they pass, so none is given up on."""
    return isinstance(
        exc,
        TelegramUnavailable
        | TelegramError
        | OSError
        | TimeoutError
        | UnknownInbox
        | sa_exc.OperationalError
        | sa_exc.InterfaceError
        | sa_exc.TimeoutError,
    )


class FileRefused(Exception):
    """A file that will never be fetched (too big for the Bot API, gone, not served)."""


class _LostLease(Exception):
    pass


class _Turns:
    """A first-come-first-served lock per key, kept only while in use."""

    def __init__(self) -> None:
        self._locks: dict[Any, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, key: Any) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]


def _needs_choice(message: InboundMessage) -> bool:
    """A pressed button whose quick reply is not known from the update alone:
    a long id's token, or a button on a message too old for Telegram to
    include (then its keyboard, with the title, is not in the update)."""
    data = message.quick_reply or ""
    return is_hashed_id(data) or message.body == data


# --- who is blocked on which bot ---------------------------------------------------

#: Audit rows holding whether a Telegram chat can be reached through one bot
#: (its inbox): the entity is the chat's identity, the latest row per inbox
#: is the state, and a block or unblock from Telegram carries its date.
CHAT_STATE_ACTION = "telegram.chat_reachability"
CHAT_STATE_ENTITY = "telegram_chat"
# One row per change; a chat does not block and unblock a bot this often.
_STATE_LOOKBACK = 200


async def _chat_states(session: AsyncSession, identity_id: int) -> list[dict[str, Any]]:
    """The chat's reachability rows, newest first."""
    rows = await session.scalars(
        select(AuditLog.data)
        .where(
            AuditLog.entity == CHAT_STATE_ENTITY,
            AuditLog.entity_id == identity_id,
            AuditLog.action == CHAT_STATE_ACTION,
        )
        .order_by(AuditLog.id.desc())
        .limit(_STATE_LOOKBACK)
    )
    return [dict(r) for r in rows.all()]


def _latest_by_inbox(states: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for state in states:
        latest.setdefault(str(state.get("inbox")), state)
    return latest


async def telegram_blocked(session: AsyncSession, *, inbox: str, chat_id: str) -> bool:
    """Whether the chat is marked unreachable through ``inbox``'s bot (or at all)."""
    ident = await session.scalar(
        select(Identity).where(Identity.channel == IdentityKind.TELEGRAM.value, Identity.address == chat_id)
    )
    if ident is None:
        return False
    if ident.unreachable_at is not None:
        return True
    state = _latest_by_inbox(await _chat_states(session, ident.id)).get(inbox)
    return state is not None and state.get("reason") is not None


async def do_set_telegram_reachability(
    session: AsyncSession,
    *,
    inbox: str,
    chat_id: str,
    reason: str | None,
    changed_at: datetime | None = None,
    sequence: int | None = None,
    ticket_id: int | None = None,
    actor: str = "system",
) -> bool:
    """The chat blocked (``reason``) or can be reached again (None) through
    the bot of ``inbox``. Bots are blocked one by one, so the contact's
    identity is marked unreachable only while every bot they talk to is
    blocked. ``changed_at`` and ``sequence`` (Telegram's date and update_id
    of a block or unblock) order the changes Telegram reports: an older one
    than the last applied (a redelivery) changes nothing and returns False."""
    if reason is None and changed_at is None and not await telegram_blocked(session, inbox=inbox, chat_id=chat_id):
        return True  # every delivered reply asks: almost always nothing to clear
    ident = await session.scalar(
        select(Identity)
        .where(Identity.channel == IdentityKind.TELEGRAM.value, Identity.address == chat_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if ident is None:
        return True
    states = await _chat_states(session, ident.id)
    latest = _latest_by_inbox(states)
    if changed_at is not None:
        stamp = (changed_at.timestamp(), sequence if sequence is not None else -1)
        last = next(
            (s for s in states if s.get("inbox") == inbox and s.get("changed_at") is not None),
            None,
        )
        if last is not None and stamp <= (float(last["changed_at"]), int(last.get("sequence", -1))):
            return False
    current = latest.get(inbox)
    was_blocked = current is not None and current.get("reason") is not None
    if changed_at is not None or was_blocked != (reason is not None):
        state: dict[str, Any] = {"inbox": inbox, "reason": reason}
        if changed_at is not None:
            state |= {"changed_at": changed_at.timestamp(), "sequence": sequence if sequence is not None else -1}
        session.add(
            AuditLog(actor=actor, action=CHAT_STATE_ACTION, entity=CHAT_STATE_ENTITY, entity_id=ident.id, data=state)
        )
        latest[inbox] = state
    # The bots the customer talks to: those with a ticket, and any that said
    # something about the chat.
    talked = await session.scalars(
        select(Inbox.key)
        .join(Ticket, Ticket.inbox_id == Inbox.id)
        .where(Ticket.contact_id == ident.contact_id, Ticket.channel == Channel.TELEGRAM.value)
        .distinct()
    )
    inboxes = set(talked.all()) | set(latest)
    blocked = {k for k, st in latest.items() if st.get("reason") is not None}
    overall = None
    if blocked and inboxes <= blocked:
        overall = reason if reason is not None else str(latest[min(blocked)]["reason"])
    await do_set_reachability(
        session, kind=IdentityKind.TELEGRAM, address=chat_id, reason=overall, ticket_id=ticket_id, actor=actor
    )
    return True


def direct_ingest(db: Database) -> Ingest:
    """Ingest in a transaction of its own, for processes without the web
    role's group-commit batcher (a worker that polls)."""

    async def ingest(message: InboundMessage) -> IngestResult:
        async with db.write() as session:
            (result,) = await ingest_batch(session, [message])
        if isinstance(result, Exception):
            raise result
        return result

    return ingest


def build_telegram(
    config: HubConfig, db: Database, attachments: AttachmentStore, ingest: Ingest
) -> TelegramService | None:
    if not config.telegram.bots:
        return None
    return TelegramService(config, db, attachments, ingest)
