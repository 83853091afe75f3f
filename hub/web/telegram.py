"""Telegram's webhook: ``POST /webhooks/telegram/{bot}``. Verify the secret
token, parse, store, answer: 200 only after the update is committed (or for a
real update of a kind the hub does not handle, so Telegram does not resend it);
400 for a body that is not an update; 403 with a wrong secret, storing nothing."""

from __future__ import annotations

import hmac

from aiohttp import web

from channels.base import InvalidPayload
from channels.telegram import SECRET_HEADER
from hub.app import HUB
from hub.errors import BadRequest, Forbidden, NotFound, Unavailable
from hub.telegram import TelegramUnavailable
from hub.web.registry import ROUTES, load_json


@ROUTES.route(
    "POST",
    "/webhooks/telegram/{bot}",
    summary="Telegram updates for one configured bot; the X-Telegram-Bot-Api-Secret-Token header is checked",
    tag="webhooks",
    auth=False,
    errors=(400, 403, 404, 413, 503),
)
async def telegram_webhook(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    name = request.match_info["bot"]
    service = hub.telegram
    bot = service.webhook_bot(name) if service is not None else None
    if service is None or bot is None:
        raise NotFound(f"no Telegram bot named {name!r} takes webhooks here (telegram.bots, webhook mode)")
    given = request.headers.get(SECRET_HEADER, "")
    # Header bytes that are not UTF-8 arrive as surrogate escapes; they are
    # just a wrong secret, not a reason to fail.
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), bot.config.webhook_secret.encode()):
        raise Forbidden(f"the {SECRET_HEADER} header is missing or wrong")
    data = load_json(await request.read())
    try:
        outcome = await service.handle_json(bot, data)
    except InvalidPayload as exc:
        raise BadRequest(str(exc)) from exc
    except TelegramUnavailable as exc:
        # Not acknowledged: Telegram delivers the update again later.
        raise Unavailable(str(exc)) from exc
    return web.json_response({"ok": True, "outcome": outcome})
