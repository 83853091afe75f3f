"""The composition root: ``create_app(config, role)`` builds every service once,
stores them under typed app keys, and starts and stops the background work
with ``cleanup_ctx``. Nothing is created at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from aiohttp import web

from channels.base import ChannelAdapter
from channels.webchat import WebchatChannel
from hub.actions import do_ensure_inbox, dummy_hash
from hub.attachments import AttachmentStore, UploadSweeper
from hub.batcher import IngestBatcher
from hub.bot_step import BotService
from hub.campaigns.service import CampaignService
from hub.config import ConfigError, HubConfig, check_folders, ensure_secret_key
from hub.core import Channel, TicketEventKind
from hub.mail import EmailService, sync_email_inboxes
from hub.relay import OutboxRelay
from hub.router import Router
from hub.security import LoginThrottle, VisitorTokens, throttle_prefix
from hub.sender import Sender
from hub.stream.base import LiveBus, Stream, check_cancelled
from hub.stream.memory import InProcessLiveBus, InProcessStream
from hub.telegram import TelegramService, build_telegram, direct_ingest
from hub.telephony import TwilioService
from hub.workers import EventProcessor
from storage.db import Database

log = logging.getLogger(__name__)

Role = Literal["all", "web", "worker"]


@dataclass
class Hub:
    """Everything a request handler or a worker needs, built once per process."""

    config: HubConfig
    role: Role
    db: Database
    stream: Stream
    live: LiveBus
    relay: OutboxRelay
    sender: Sender
    processor: EventProcessor
    batcher: IngestBatcher
    visitor_tokens: VisitorTokens
    channels: dict[Channel, ChannelAdapter]
    attachments: AttachmentStore
    bot: BotService
    router: Router
    # SMS and phone over Twilio; None when Twilio is not configured.
    twilio: TwilioService | None = None
    telegram: TelegramService | None = None
    email: EmailService | None = None
    # Bulk SMS campaigns; None without Twilio.
    campaigns: CampaignService | None = None
    login_throttle: LoginThrottle = field(default_factory=lambda: LoginThrottle(None))
    consumer_name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    # Background tasks that died and are not running now: name -> why (for /readyz).
    down: dict[str, str] = field(default_factory=dict)


HUB = web.AppKey("hub", Hub)
# Open websockets, closed politely at shutdown.
WEBSOCKETS = web.AppKey("websockets", set[web.WebSocketResponse])


def build_hub(config: HubConfig, role: Role = "all") -> Hub:
    if role != "all" and config.redis.url is None:
        raise ConfigError(
            f"redis.url: --role {role} needs Redis (HUB_REDIS_URL) so that separate web and worker "
            "processes share one stream; without it run --role all"
        )
    if role != "all" and config.is_sqlite:
        raise ConfigError(
            f"database.url: --role {role} runs several processes, which needs PostgreSQL (HUB_DATABASE_URL); "
            "SQLite serves one process (--role all)"
        )
    if role != "all" and not config.secret_key:
        # A key generated here would be this process's own (in its own data
        # folder, or racing others for a shared one): a visitor token signed by
        # one web process would be refused by the next.
        raise ConfigError(
            f"secret_key: --role {role} runs several processes, which must share one secret key: "
            "set HUB_SECRET_KEY (the same value for every process)"
        )
    check_folders(config)
    config = ensure_secret_key(config, folders_checked=True)
    db = Database(config.database_url, pool_size=config.database.pool_size, echo=config.database.echo)
    stream: Stream
    live: LiveBus
    if config.redis.url:
        from hub.stream.redis import RedisLiveBus, RedisStream

        stream = RedisStream(
            config.redis.url,
            config.redis.stream,
            max_deliveries=config.workers.max_deliveries,
            claim_idle_seconds=config.workers.claim_idle_seconds,
        )
        live = RedisLiveBus(config.redis.url, config.redis.live_channel)
    else:
        stream = InProcessStream(max_deliveries=config.workers.max_deliveries)
        live = InProcessLiveBus()
    relay = OutboxRelay(db, stream)
    db.outbox_lease_seconds = relay.lease_seconds
    db.on_commit = relay.committed
    if isinstance(stream, InProcessStream):
        stream.on_dead = relay.dead_letter
    channels: dict[Channel, ChannelAdapter] = {Channel.WEBCHAT: WebchatChannel(live.publish)}
    attachments = AttachmentStore(config.attachments_dir, max_bytes=config.attachments.max_bytes)
    twilio = TwilioService(config, db, attachments) if config.twilio.configured else None
    if twilio is not None:
        channels.update(twilio.channels)
    batcher = IngestBatcher(db.write)
    # Worker processes have no batcher; their pollers ingest one by one.
    telegram = build_telegram(config, db, attachments, batcher.submit if role in ("all", "web") else direct_ingest(db))
    if telegram is not None:
        channels[Channel.TELEGRAM] = telegram.channel
    sender = Sender(db, channels, config.workers)
    email = EmailService(config, db, attachments) if config.email.mailboxes else None
    if email is not None:
        channels[Channel.EMAIL] = email.channel
        sender.context[Channel.EMAIL] = email.reply_context
    router = Router(db, config.routing, vip_tag=config.bot.vip_tag)
    processor = EventProcessor(db, live, sender, router)
    router.subscribe(processor)
    hub = Hub(
        config=config,
        role=role,
        db=db,
        stream=stream,
        live=live,
        relay=relay,
        sender=sender,
        processor=processor,
        batcher=batcher,
        visitor_tokens=VisitorTokens(config.secret_key),
        login_throttle=LoginThrottle(config.redis.url, key_prefix=throttle_prefix(config.redis.stream)),
        channels=channels,
        attachments=attachments,
        bot=BotService(db, config.bot, rasa_tries=min(3, config.workers.max_deliveries)),
        router=router,
        twilio=twilio,
        telegram=telegram,
        email=email,
    )
    if twilio is not None:
        # The IVR asks routing who can take a call, and whether the team is open:
        # by its routing calendar and, when set, the phone line's own hours.
        line_open = twilio.desk.is_open

        async def is_open(team_id: int | None, at: datetime) -> bool:
            return await line_open(team_id, at) and await router.is_team_open(team_id, at)

        twilio.desk.is_open = is_open
        twilio.desk.available_agents = router.phone_agents
        twilio.install(hub.processor, hub.batcher.submit)
        hub.campaigns = CampaignService(config, db, twilio, live, hub.consumer_name)
        hub.campaigns.install(processor)
    # After routing's own step, which gives new tickets to the bot, and after the
    # channels' steps (an SMS opt-out is applied before the bot could answer).
    processor.subscribe(TicketEventKind.MESSAGE_RECEIVED, hub.bot.on_message)
    return hub


async def sync_inboxes(hub: Hub) -> None:
    """The configured inboxes exist in the database (created or updated)."""
    async with hub.db.write() as session:
        await do_ensure_inbox(
            session,
            key=hub.config.webchat.inbox,
            channel=Channel.WEBCHAT,
            name=hub.config.webchat.inbox_name,
            bot_enabled=hub.config.bot.enabled,
        )
        if hub.twilio is not None:
            await hub.twilio.sync_inboxes(session)
        for bot in hub.config.telegram.bots:
            await do_ensure_inbox(
                session,
                key=bot.inbox_key,
                channel=Channel.TELEGRAM,
                name=bot.inbox_name,
                bot_enabled=hub.config.bot.enabled,
            )
        await sync_email_inboxes(session, hub.config.email)


# A background task that dies is started again after this long, doubling up to
# the maximum while it keeps dying.
RESTART_DELAY = 1.0
RESTART_DELAY_MAX = 60.0


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _supervise(hub: Hub, start: Callable[[], Coroutine[Any, Any, Any]], name: str, *, forever: bool = True) -> None:
    """Run ``start()`` in the background and start it again, with backoff,
    whenever it dies (or, when it should run ``forever``, returns): a stopped
    consumer or relay would otherwise leave events unhandled while the process
    looks healthy. While it is down, /readyz names it."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            began = loop.time()
            try:
                await start()
            except Exception as exc:
                check_cancelled()  # a stop that ended it in an error is still a stop
                error = _describe(exc)
                log.error("background task %s died; restarting it", name, exc_info=exc)
            else:
                check_cancelled()  # it may have swallowed the stop (see there)
                if not forever:
                    return
                error = "stopped"
                log.error("background task %s stopped; restarting it", name)
            if loop.time() - began >= RESTART_DELAY_MAX:
                failures = 0  # it ran well for a while: not a crash loop
            delay = min(RESTART_DELAY_MAX, RESTART_DELAY * 2 ** min(failures, 16))
            failures += 1
            hub.down[name] = f"died ({error}); restarting in {delay:g} s"
            try:
                await asyncio.sleep(delay)
            finally:
                hub.down.pop(name, None)

    hub.tasks.append(asyncio.create_task(run(), name=name))


async def start_hub(hub: Hub) -> None:
    await hub.stream.start()
    await hub.live.start()
    await sync_inboxes(hub)
    await hub.router.setup()
    if hub.role in ("all", "web"):
        await hub.batcher.start()
        await asyncio.to_thread(dummy_hash)
    # Every process writes outbox rows (web: messages; worker: statuses), so
    # every process relays; SKIP LOCKED keeps them from publishing a row twice.
    _supervise(hub, hub.relay.run, "outbox-relay")
    if hub.role in ("all", "worker"):
        _supervise(
            hub, lambda: hub.stream.consume("workers", hub.consumer_name, hub.processor.handle), "stream-consumer"
        )
        _supervise(hub, hub.sender.run_sweeper, "sender-sweeper")
        _supervise(hub, hub.router.run_sweeper, "routing-sweeper")
        # Workers share the attachments directory with web processes (see the
        # README), so they can remove what web processes stored.
        uploads = UploadSweeper(
            hub.db,
            hub.attachments,
            grace_seconds=hub.config.attachments.unused_grace_seconds,
            interval_seconds=hub.config.attachments.sweep_interval_seconds,
        )
        _supervise(hub, uploads.run, "upload-sweeper")
        hub.bot.start()
        if hub.email is not None:
            hub.email.start(lambda start, name: _supervise(hub, start, name))
        campaigns = hub.campaigns
        if campaigns is not None:
            _supervise(hub, campaigns.runner.run, "campaigns")
    telegram = hub.telegram
    if telegram is not None:
        web, worker = hub.role in ("all", "web"), hub.role in ("all", "worker")
        # It ends by itself where it only registers webhooks.
        _supervise(
            hub, lambda: telegram.run(web=web, worker=worker, owner=hub.consumer_name), "telegram", forever=False
        )


async def stop_hub(hub: Hub) -> None:
    if hub.role in ("all", "web"):
        await hub.batcher.stop()
    for task in hub.tasks:
        task.cancel()
    for task in hub.tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    hub.tasks.clear()
    if hub.email is not None:
        hub.email.stop()
    for adapter in hub.channels.values():
        await adapter.close()
    if hub.twilio is not None:
        await hub.twilio.sms.close()  # click-to-call uses its client without SMS senders
    await hub.bot.close()
    await hub.login_throttle.close()
    await hub.live.close()
    await hub.stream.close()
    await hub.db.dispose()


def create_app(config: HubConfig, role: Role = "all", *, hub: Hub | None = None) -> web.Application:
    # Imported here: the route modules import this module for the app keys.
    from hub.web.middleware import error_middleware
    from hub.web.routes import registry

    hub = hub or build_hub(config, role)
    app = web.Application(client_max_size=hub.config.server.max_body_bytes, middlewares=[error_middleware])
    app[HUB] = hub
    app[WEBSOCKETS] = set()

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await start_hub(hub)
        yield
        await stop_hub(hub)

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(_close_websockets)
    registry.install(app, web_routes=role in ("all", "web"))
    return app


async def _close_websockets(app: web.Application) -> None:
    sockets: set[web.WebSocketResponse] = app[WEBSOCKETS]
    for ws in list(sockets):
        with contextlib.suppress(Exception):
            await ws.close(code=1001, message=b"server shutting down")
