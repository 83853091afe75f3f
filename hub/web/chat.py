"""The visitor's side of web chat: ``/chat/ws`` and ``/widget.js``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute

from channels.base import InvalidPayload
from channels.webchat import MAX_CLIENT_ID, decode_frame, frame_limit, message_frame, parse_message, visitor_channel
from hub import codec, metrics
from hub.actions import check_reply_attachments, do_record_visitor_receipt
from hub.app import HUB, WEBSOCKETS, Hub
from hub.core import Channel, DeliveryStatus, IdentityKind, is_unicode
from hub.errors import Forbidden, HubError, TooManyRequests, Unauthorized, ValidationFailed
from hub.security import client_address
from hub.web.attachments import receive_upload
from hub.web.events import FEED_INTERRUPTED
from hub.web.registry import ROUTES
from hub.web.schemas import AttachmentOut
from hub.workers import AGENTS_CHANNEL
from storage import queries
from storage.ingest import identity_contacts

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent.parent / "static"

# Close codes the widget acts on: a bad token (start over), a site the hub does
# not serve (stop: retrying cannot help), too many sockets (back off).
INVALID_TOKEN = 4401
ORIGIN_NOT_ALLOWED = 4403
RATE_LIMITED = 4429

# Origins already warned about: a refused site reconnects on every page view,
# and the log should say it once. Bounded, since the header is the client's.
_WARNED_ORIGINS: set[str] = set()
_MAX_WARNED_ORIGINS = 1000


# Extensions, registered by other route modules on import: more visitor frame
# types (the widget's forms), and more keys in the session frame (its settings).
VisitorFrameHandler = Callable[[Hub, web.WebSocketResponse, str, dict[str, Any], dict[str, Any]], Awaitable[None]]
SessionExtra = Callable[[Hub, str, "int | None"], Awaitable[dict[str, Any]]]
VISITOR_FRAMES: dict[str, VisitorFrameHandler] = {}
SESSION_EXTRAS: list[SessionExtra] = []


def _origin_allowed(hub: Hub, origin: str | None) -> bool:
    allowed = hub.config.webchat.allowed_origins
    return "*" in allowed or (origin is not None and origin.rstrip("/") in {o.rstrip("/") for o in allowed})


@ROUTES.route(
    "GET",
    "/chat/ws",
    summary="The web chat visitor's websocket",
    tag="webchat",
    auth=False,
    websocket=True,
    query={"token": "the visitor token from an earlier session frame, to resume that conversation"},
    errors=(),
)
async def visitor_socket(request: web.Request) -> web.StreamResponse:
    """JSON text frames, each with a `type`. The server sends `session` first
    (with the `visitor_token` to keep), then the recent history as `message`
    frames. The visitor sends `message` (`text`, `client_id`), `typing`, and
    `ack` / `read` (`id`) for messages it has shown. A `message` frame that
    was not stored is answered with an `error` frame carrying its `client_id`:
    codes `invalid_frame` and `rejected` mean it never will be (do not resend
    it), any other code that it may be sent again with the same `client_id`.
    A token that is not valid (forged, or signed with an old secret key) gets
    an `error` frame with code `invalid_token` and the socket closes (code
    4401): connect without a token to start a new conversation. A site
    not in `webchat.allowed_origins` gets `origin_not_allowed` and code 4403
    (final: do not retry). Too many sockets or new visitors from one address
    get `rate_limited` (with `retry_after` seconds) and code 4429; a frame
    over the visitor's limits gets `rate_limited` too (a `message` frame's
    with its `client_id`: send it again after `retry_after`)."""
    hub = request.app[HUB]
    origin = request.headers.get("Origin")
    limits = hub.config.webchat.limits
    address = client_address(request.remote, request.headers.get("X-Forwarded-For"), hub.config.server.trusted_proxies)
    token = request.query.get("token")
    visitor_id = hub.visitor_tokens.verify(token) if token else None

    limit = frame_limit(hub.config.webchat.max_message_chars)
    # aiohttp closes the socket on a frame past its limit, before we see it:
    # twice ours, so a frame somewhat too large is answered with an error
    # naming its client_id instead (the widget shows it as not sent).
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=2 * limit)
    # Every refusal below comes after the upgrade: a browser's WebSocket
    # cannot read the status or body of a refused handshake, so the widget
    # could only retry blindly; a frame and a close code tell it what to do.
    await ws.prepare(request)
    if not _origin_allowed(hub, origin):
        _warn_origin(origin)
        await _error(
            ws,
            "origin_not_allowed",
            f"this site ({origin or 'no origin'}) may not open the chat: the hub's webchat.allowed_origins "
            "does not list it",
        )
        await ws.close(code=ORIGIN_NOT_ALLOWED, message=b"origin not allowed")
        return ws
    wait = await _over_limit(hub, RateLimitItemPerMinute(limits.connections_per_minute), "open", address)
    if wait is None and not token:
        wait = await _over_limit(hub, RateLimitItemPerHour(limits.new_visitors_per_hour), "new", address)
    if wait is not None:
        await _error(ws, "rate_limited", "too many chats from this address; try again later", retry_after=wait)
        await ws.close(code=RATE_LIMITED, message=b"rate limited")
        return ws
    if not token:
        visitor_id, token = hub.visitor_tokens.issue()
    if visitor_id is None:
        # The widget drops the token and starts a new conversation.
        await _error(
            ws, "invalid_token", "the visitor token is not valid; connect without one to start a new conversation"
        )
        await ws.close(code=INVALID_TOKEN, message=b"invalid visitor token")
        return ws
    request.app[WEBSOCKETS].add(ws)
    metrics.LIVE_CONNECTIONS.labels("visitor").inc()
    conn_id = secrets.token_hex(8)
    try:
        # Subscribed before the history is read, so a reply published meanwhile
        # is not missed; it waits in the feed until the history has gone out.
        async with hub.live.listen(visitor_channel(visitor_id)) as feed:
            async with hub.db.read() as session:
                contact_id, ticket_id, history = await queries.visitor_conversation(
                    session, IdentityKind.WEBCHAT.value, visitor_id, limit=hub.config.webchat.history_limit
                )
            session_frame: dict[str, Any] = {
                "type": "session",
                "visitor_token": token,
                "visitor_id": visitor_id,
                "contact_id": contact_id,
                "ticket_id": ticket_id,
                # The widget refuses a larger file before uploading it.
                "max_file_bytes": hub.attachments.max_bytes,
            }
            for extra in SESSION_EXTRAS:
                session_frame.update(await extra(hub, visitor_id, contact_id))
            await ws.send_str(codec.dumps(session_frame))
            for m in history:
                await ws.send_str(codec.dumps(message_frame(m)))
            forward = asyncio.create_task(_forward(ws, feed, conn_id, shown={m["id"] for m in history}))
            try:
                state = {"contact_id": contact_id, "ticket_id": ticket_id}
                async for msg in ws:
                    if msg.type != WSMsgType.TEXT:
                        if msg.type == WSMsgType.BINARY:
                            await _error(ws, "invalid_frame", "frames must be JSON text, not binary")
                        continue
                    frame: dict[str, Any] | None = None
                    try:
                        frame = decode_frame(msg.data, limit)
                        await _on_frame(hub, ws, visitor_id, conn_id, frame, state)
                    except InvalidPayload as exc:
                        await _error(ws, "invalid_frame", str(exc), client_id=_client_id(frame))
                    except Exception:  # the visitor must hear that nothing was stored
                        log.exception("web chat frame failed", extra={"visitor": visitor_id})
                        await _error(
                            ws,
                            "internal_error",
                            "the frame could not be handled; send it again (same client_id)",
                            client_id=_client_id(frame),
                        )
            finally:
                forward.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await forward
    finally:
        request.app[WEBSOCKETS].discard(ws)
        metrics.LIVE_CONNECTIONS.labels("visitor").dec()
    return ws


@ROUTES.route(
    "POST",
    "/chat/attachments",
    summary="A web chat visitor uploads a file (multipart field 'file') to send in a message",
    tag="webchat",
    auth=False,
    query={"token": "the visitor token from the session frame"},
    response=AttachmentOut,
    status=201,
    errors=(400, 401, 403, 413, 429),
)
async def visitor_upload(request: web.Request) -> web.Response:
    """The object returned goes in a `message` frame's `attachments`. The same
    store and size limit (`attachments.max_bytes`) as the agents' upload, the
    same sites as the socket (`webchat.allowed_origins`), and
    `webchat.limits.uploads_per_hour` (per visitor) and
    `address_uploads_per_hour` (per client address). A plain multipart POST
    with the token in the query: a browser sends it across sites without a
    preflight, and every answer allows the site to read it."""
    hub = request.app[HUB]
    origin = request.headers.get("Origin")
    cors = {"Access-Control-Allow-Origin": origin.rstrip("/"), "Vary": "Origin"} if origin else {}
    try:
        if not _origin_allowed(hub, origin):
            _warn_origin(origin)
            cors = {}
            raise Forbidden(
                f"this site ({origin or 'no origin'}) may not send files to the chat: the hub's "
                "webchat.allowed_origins does not list it"
            )
        limits = hub.config.webchat.limits
        address = client_address(
            request.remote, request.headers.get("X-Forwarded-For"), hub.config.server.trusted_proxies
        )
        # Counted before the token is read: forged tokens count too.
        wait = await _over_limit(hub, RateLimitItemPerHour(limits.address_uploads_per_hour), "upload-from", address)
        if wait is not None:
            raise TooManyRequests("too many files sent from this address; try again later", retry_after=wait)
        token = request.query.get("token")
        visitor_id = hub.visitor_tokens.verify(token) if token else None
        if visitor_id is None:
            raise Unauthorized(
                "a valid visitor token is needed (?token=, the visitor_token of the chat's session frame): "
                "open the chat first"
            )
        wait = await _over_limit(hub, RateLimitItemPerHour(limits.uploads_per_hour), "upload", visitor_id)
        if wait is not None:
            raise TooManyRequests("too many files sent; try again later", retry_after=wait)
        attachment = await receive_upload(request, hub.attachments, visitor_id=visitor_id)
    except HubError as exc:
        # Without these the widget could not read why (too large, too many).
        exc.headers.update(cors)
        raise
    return web.json_response(attachment.model_dump(exclude_none=True), status=201, headers=cors)


def _warn_origin(origin: str | None) -> None:
    key = origin or ""
    if key in _WARNED_ORIGINS or len(_WARNED_ORIGINS) >= _MAX_WARNED_ORIGINS:
        return
    _WARNED_ORIGINS.add(key)
    # Nobody else learns of it: the visitor's browser hides the reason.
    log.warning(
        "web chat refused a page on %r: that origin is not in webchat.allowed_origins", origin or "(no Origin header)"
    )


async def _over_limit(hub: Hub, item: RateLimitItem, *key: str, here: bool = False) -> float | None:
    """Seconds to wait when ``key`` is over ``item``, else None (and counted).
    The login throttle's windows, so scale mode counts across web processes;
    ``here``: in this process only (see :meth:`hub.security.LoginThrottle.over_limit`)."""
    return await hub.login_throttle.over_limit(item, "webchat", *key, here=here)


async def _error(
    ws: web.WebSocketResponse,
    code: str,
    message: str,
    *,
    client_id: str | None = None,
    retry_after: float | None = None,
    field: str | None = None,
) -> None:
    error: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if client_id is not None:
        error["client_id"] = client_id
    if field is not None:
        error["field"] = field
    if retry_after is not None:
        error["retry_after"] = round(retry_after, 1)
    await ws.send_str(codec.dumps(error))


def _client_id(frame: dict[str, Any] | None) -> str | None:
    """The ``client_id`` of a message frame that failed, so the widget knows
    which of its unsent messages the error is about (and whether to keep it)."""
    if frame is None or frame.get("type") != "message":
        return None
    client_id = frame.get("client_id")
    if not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID or not is_unicode(client_id):
        return None
    return client_id


async def _on_frame(
    hub: Hub, ws: web.WebSocketResponse, visitor_id: str, conn_id: str, frame: dict[str, Any], state: dict[str, Any]
) -> None:
    kind = frame["type"]
    limits = hub.config.webchat.limits
    per_minute = {
        "message": limits.messages_per_minute,
        "identify": limits.identify_per_minute,
        "typing": limits.typing_per_minute,
    }.get(kind)
    if per_minute is not None:
        # Every frame: counted by the web process holding the socket. A Redis
        # round trip per frame cost scale mode a sixth of its throughput; a
        # visitor with tabs on several web processes gets the limit on each.
        wait = await _over_limit(hub, RateLimitItemPerMinute(per_minute), kind, visitor_id, here=True)
        if wait is not None:
            # A typing notice is stale by the time it could be resent: dropped.
            if kind != "typing":
                await _error(
                    ws, "rate_limited", "too many messages; slow down", client_id=_client_id(frame), retry_after=wait
                )
            return
    if kind == "message":
        inbound = parse_message(
            frame, visitor_id=visitor_id, inbox=hub.config.webchat.inbox, max_chars=hub.config.webchat.max_message_chars
        )
        if inbound.attachments:
            try:
                files = await check_reply_attachments(hub.attachments, inbound.attachments)
            except ValidationFailed as exc:
                field = exc.details[0]["field"]
                await _error(
                    ws,
                    "invalid_frame",
                    f"{field}: not a file uploaded with POST /chat/attachments; upload it there and send the "
                    "object it returns",
                    client_id=inbound.extras["client_id"],
                    field=field,
                )
                return
            inbound = inbound.model_copy(update={"attachments": tuple(files)})
        try:
            result = await hub.batcher.submit(inbound)
        except (LookupError, ValueError) as exc:
            await _error(ws, "rejected", str(exc), client_id=inbound.extras["client_id"])
            return
        state.update(contact_id=result.contact_id, ticket_id=result.ticket_id)
        out = message_frame(result.message, client_id=inbound.extras["client_id"])
        # The acknowledgement: sent only after the commit that stored it.
        await ws.send_str(codec.dumps(out))
        # The visitor's other tabs see it too; best effort, since it is stored
        # and they get it from the history when they reconnect. Skipped when
        # the bus knows this socket is the only one listening.
        channel = visitor_channel(visitor_id)
        try:
            if hub.live.listeners(channel) != 1:
                await hub.live.publish(channel, {**out, "origin": conn_id})
        except Exception:  # the message is safe; only the echo to other tabs is lost
            log.warning("could not echo a visitor message to their other tabs", exc_info=True)
    elif kind == "typing":
        if state.get("ticket_id") is not None:
            await hub.live.publish(
                AGENTS_CHANNEL,
                {
                    "type": "typing",
                    "ticket_id": state["ticket_id"],
                    "contact_id": state["contact_id"],
                    "author": "contact",
                },
            )
    elif kind in ("ack", "read"):
        message_id = queries.json_id(frame.get("id"))
        if message_id is None or state.get("contact_id") is None:
            raise InvalidPayload(f"{kind} frame needs the integer 'id' of a message of this conversation")
        status = DeliveryStatus.DELIVERED if kind == "ack" else DeliveryStatus.READ
        key = (IdentityKind.WEBCHAT.value, visitor_id)
        async with hub.db.write() as session:
            # Asked afresh, not taken from the connection: an agent may have
            # merged the visitor into another contact since, which the replies
            # now belong to.
            contact_id = (await identity_contacts(session, [key])).get(key)
            if contact_id is not None:
                state["contact_id"] = contact_id
                # Everything above it was on screen too: the widget sends
                # only the newest reply it showed.
                await do_record_visitor_receipt(
                    session, message_id, status, contact_id=contact_id, channel=Channel.WEBCHAT
                )
    elif kind == "ping":
        await ws.send_str(codec.dumps({"type": "pong"}))
    elif kind in VISITOR_FRAMES:
        await VISITOR_FRAMES[kind](hub, ws, visitor_id, frame, state)
    else:
        known = ", ".join(["message", "typing", "ack", "read", "ping", *VISITOR_FRAMES])
        raise InvalidPayload(f"unknown frame type {kind!r}; expected one of {known}")


async def _forward(
    ws: web.WebSocketResponse, feed: AsyncIterator[dict[str, Any]], conn_id: str, *, shown: set[int]
) -> None:
    async for frame in feed:
        if frame.get("origin") == conn_id or ws.closed:
            continue
        # Published between the subscription and the history read: sent already.
        if frame.get("type") == "message" and frame.get("id") in shown:
            continue
        frame = {k: v for k, v in frame.items() if k != "origin"}
        try:
            await ws.send_str(codec.dumps(frame))
        except ConnectionError:
            return
    # The feed ended: the live bus closed, or it missed messages (its Redis
    # connection dropped). Left open, the socket would stay silent; closed, the
    # widget reconnects and the session resends the recent history.
    await ws.close(code=FEED_INTERRUPTED, message=b"live events were interrupted; reconnect")


@ROUTES.route(
    "GET",
    "/widget.js",
    summary="The embeddable web chat widget (one <script> tag)",
    tag="webchat",
    auth=False,
    content_type="application/javascript",
)
async def widget_js(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(
        STATIC / "widget.js",
        headers={"Content-Type": "application/javascript; charset=utf-8", "Cache-Control": "public, max-age=300"},
    )


@ROUTES.route(
    "GET", "/", summary="A demo page with the widget on it", tag="webchat", auth=False, content_type="text/html"
)
async def demo_page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "demo.html", headers={"Content-Type": "text/html; charset=utf-8"})
