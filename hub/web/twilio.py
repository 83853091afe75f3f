"""Twilio's webhooks (SMS, status callbacks, voice) and the agents' phone
endpoints. Thin handlers: find the account, verify the signature over the URL
Twilio called, parse (``channels.twilio_*``), persist, answer TwiML fast."""

from __future__ import annotations

import logging

from aiohttp import web
from pydantic import BaseModel
from twilio.twiml.messaging_response import MessagingResponse

from channels.base import InvalidPayload
from channels.twilio_common import (
    FormParams,
    TwilioAccount,
    shared_key_id,
    signature_algorithm,
    verify_signature,
)
from channels.twilio_sms import parse_inbound, parse_status
from channels.twilio_voice import empty_twiml, parse_call
from hub.app import HUB, Hub
from hub.core import IdentityKind
from hub.errors import BadRequest, Forbidden, NotFound, Unavailable
from hub.security import trusted_peer
from hub.telephony import TwilioService
from hub.telephony.sms import do_record_receipt, with_quick_reply
from hub.web.api import API, current_agent, int_param
from hub.web.registry import ROUTES
from storage.queries import MAX_ID, offered_quick_replies, parse_id

log = logging.getLogger(__name__)

TWIML = "text/xml"


def _twiml(xml: str) -> web.Response:
    return web.Response(text=xml, content_type="text/xml", charset="utf-8")


def _service(hub: Hub) -> TwilioService:
    if hub.twilio is None:
        raise NotFound("Twilio is not configured on this hub: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
    return hub.twilio


def called_urls(request: web.Request) -> list[str]:
    """The URLs Twilio may have called to reach this request, as Twilio signed
    them: the configured public URL; the one a trusted reverse proxy forwarded
    (X-Forwarded-Proto / X-Forwarded-Host, believed only from
    ``server.trusted_proxies``); without a public URL, the request's own."""
    hub = request.app[HUB]
    path = request.rel_url.raw_path_qs
    urls: list[str] = []
    if hub.config.server.public_url:
        urls.append(hub.config.server.public_url.rstrip("/") + path)
    if trusted_peer(request.remote, hub.config.server.trusted_proxies):
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
        host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
        if proto or host:
            urls.append(f"{proto or request.scheme}://{host or request.host}{path}")
    if not hub.config.server.public_url:
        urls.append(f"{request.scheme}://{request.host}{path}")
    return urls


async def verified_params(request: web.Request, account: TwilioAccount | None) -> tuple[FormParams, str]:
    """The webhook's form parameters once its signature checks out, and the
    base URL (scheme, host, prefix) it was signed for, for the next TwiML URLs.
    A missing or wrong signature is 403 and nothing is stored."""
    params = await form(request)
    signature = request.headers.get("X-Twilio-Signature")
    if not signature:
        raise Forbidden("X-Twilio-Signature is missing")
    if account is None:
        raise Forbidden("no configured Twilio account or number matches this request")
    settings = request.headers.get("X-Twilio-Webhooks-Signature-Settings")
    try:
        signature_algorithm(settings)
    except InvalidPayload as exc:
        raise Forbidden(str(exc)) from exc
    # Signed with the account's auth token, or with the SharedKey the settings name.
    key_id = shared_key_id(settings)
    secret = account.auth_token
    if key_id is not None:
        found = _service(request.app[HUB]).shared_key(key_id, account)
        if found is None:
            raise Forbidden(
                f"the webhook is signed with SharedKey {key_id[:100]!r}, which is not configured for Twilio account "
                f"{account.account_sid}: add it to twilio.shared_keys with the environment variable holding its secret"
            )
        secret = found
    path = request.rel_url.raw_path_qs
    for url in called_urls(request):
        if verify_signature(secret, [url], params, signature, settings):
            return params, url[: len(url) - len(path)]
    raise Forbidden(
        f"X-Twilio-Signature does not match{f' (SharedKey {key_id[:100]!r})' if key_id else ''}: "
        "check server.public_url (HUB_PUBLIC_URL) is the URL set in Twilio, "
        "and server.trusted_proxies when a reverse proxy is in front"
    )


async def form(request: web.Request) -> FormParams:
    if request.content_type != "application/x-www-form-urlencoded":
        raise BadRequest("Twilio webhooks are application/x-www-form-urlencoded")
    pairs: list[tuple[str, str]] = []
    for name, value in (await request.post()).items():
        if not isinstance(value, str):
            raise BadRequest(f"parameter {name!r} must be text, not a file upload")
        pairs.append((name, value))
    return FormParams(pairs)


# --- SMS ----------------------------------------------------------------------------


@ROUTES.route(
    "POST",
    "/webhooks/twilio/sms",
    summary="Twilio: an incoming SMS/MMS (form-encoded, X-Twilio-Signature); answers empty TwiML once stored",
    tag="webhooks",
    auth=False,
    content_type=TWIML,
    errors=(400, 403, 404, 413),
)
async def twilio_sms(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    service = _service(hub)
    raw = await form(request)
    sender = service.inbound_sender(raw)
    if sender is None:
        await verified_params(request, service.accounts().get(raw.get("AccountSid")))
        raise NotFound(
            f"no SMS inbox is configured for {raw.get('To') or 'this number'}"
            + (f" or Messaging Service {raw.get('MessagingServiceSid')}" if raw.get("MessagingServiceSid") else "")
            + " (twilio.senders, TWILIO_PHONE_NUMBER)"
        )
    params, _ = await verified_params(request, sender.account)
    try:
        inbound = parse_inbound(params, inbox=sender.inbox, default_region=service.region)
    except InvalidPayload as exc:
        raise BadRequest(str(exc)) from exc
    async with hub.db.read() as session:
        offered = await offered_quick_replies(
            session, inbox=sender.inbox, kind=IdentityKind.PHONE, address=inbound.sender, open_only=True
        )
    inbound = with_quick_reply(inbound, offered)
    for hook in service.inbound_hooks:
        inbound = await hook(inbound, sender)
    try:
        await hub.batcher.submit(inbound)
    except (LookupError, ValueError) as exc:
        raise Unavailable(f"the message could not be stored: {exc}") from exc
    # Replies go out through the REST API, after the bot or an agent answers.
    return _twiml(str(MessagingResponse()))


#: The ids the hub puts in a status callback's URL.
_STATUS_IDS = {
    "message": "the hub's message id, put there by the hub when it sent the message",
    "campaign_recipient": "a campaign recipient's id, put there by the campaign runner when it sent the message",
}


@ROUTES.route(
    "POST",
    "/webhooks/twilio/sms/status",
    summary="Twilio: a message status callback (queued ... delivered / undelivered / failed, ErrorCode)",
    tag="webhooks",
    auth=False,
    content_type="text/plain",
    status=204,
    query=_STATUS_IDS,
    errors=(400, 403, 404),
)
async def twilio_sms_status(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    service = _service(hub)
    raw = await form(request)
    account = service.status_account(raw)
    params, _ = await verified_params(request, account)
    assert account is not None  # verified_params refuses a request no account signs
    try:
        receipt = parse_status(params)
    except InvalidPayload as exc:
        raise BadRequest(str(exc)) from exc
    if receipt is None:
        return web.Response(status=204)
    # The ids the hub put in the callback URL are refused here when odd, naming
    # them; the campaigns' receipt handler reads its own the same way.
    ids = {name: _query_int(request.query[name], name) for name in _STATUS_IDS if request.query.get(name)}
    message_id = ids.get("message")
    async with hub.db.write() as session:
        found = await do_record_receipt(
            session,
            service,
            receipt,
            message_id=message_id,
            signed_by=account,
            campaign_recipient_id=ids.get("campaign_recipient"),
        )
    if found is None:
        for handler in service.receipt_handlers:
            if await handler(receipt, dict(request.query)):
                break
        else:
            # Acknowledged all the same: Twilio would only retry something we cannot place.
            log.info("status callback for an unknown message", extra={"sid": receipt.external_id})
    return web.Response(status=204)


# --- voice ------------------------------------------------------------------------------


async def _voice(request: web.Request) -> tuple[Hub, TwilioService, FormParams, str]:
    hub = request.app[HUB]
    service = _service(hub)
    if not service.voice_enabled:
        raise NotFound("phone calls are not enabled (twilio.voice.enabled)")
    raw = await form(request)
    signers = await service.voice_signers(raw)
    refusal: Forbidden | None = None
    for account in signers:
        try:
            params, base = await verified_params(request, account)
        except Forbidden as exc:
            refusal = refusal or exc
            continue
        return hub, service, params, base
    if refusal is None:
        await verified_params(request, None)  # the same 403 as any unsigned request
    raise refusal or Forbidden("no configured Twilio account may sign this call's webhooks")


@ROUTES.route(
    "POST",
    "/webhooks/twilio/voice",
    summary="Twilio: an incoming call; answers the IVR greeting and menu (TwiML)",
    tag="webhooks",
    auth=False,
    content_type=TWIML,
    errors=(400, 403, 404),
)
async def twilio_voice(request: web.Request) -> web.StreamResponse:
    _hub, service, params, base = await _voice(request)
    try:
        call = parse_call(params, default_region=service.region)
    except InvalidPayload as exc:
        raise BadRequest(str(exc)) from exc
    return _twiml(await service.desk.incoming(call, base))


VOICE_STEPS = ("menu", "dial", "answered", "recording", "transcription", "status", "connect")


@ROUTES.route(
    "POST",
    "/webhooks/twilio/voice/{step}",
    summary="Twilio: a step of a call — menu (Digits), dial, answered, recording, transcription, status, connect",
    tag="webhooks",
    auth=False,
    content_type=TWIML,
    query={
        "agent": "answered, connect, status (click-to-call): the agent",
        "ticket": "connect, status (click-to-call): the ticket",
        "direction": "dial: outbound",
    },
    errors=(400, 403, 404),
)
async def twilio_voice_step(request: web.Request) -> web.StreamResponse:
    step = request.match_info["step"]
    if step not in VOICE_STEPS:
        raise NotFound(f"unknown voice step {step!r}; expected one of {', '.join(VOICE_STEPS)}")
    _hub, service, params, base = await _voice(request)
    try:
        call = parse_call(params, default_region=service.region)
    except InvalidPayload as exc:
        raise BadRequest(str(exc)) from exc
    desk = service.desk
    query = request.query
    if step == "menu":
        return _twiml(await desk.menu(call, base))
    if step == "dial":
        return _twiml(await desk.dial(call, base, outbound=query.get("direction") == "outbound"))
    if step == "answered":
        return _twiml(await desk.answered(call, _query_int(query.get("agent"), "agent")))
    if step == "recording":
        return _twiml(await desk.recording(call, base))
    if step == "connect":
        return _twiml(
            await desk.connect(
                call, base, _query_int(query.get("ticket"), "ticket"), _query_int(query.get("agent"), "agent")
            )
        )
    if step == "transcription":
        await desk.transcription(call)
    elif "ticket" in query or "agent" in query:
        # A click-to-call's: its URL names the ticket and the agent.
        await desk.status(
            call, ticket_id=_query_int(query.get("ticket"), "ticket"), agent_id=_query_int(query.get("agent"), "agent")
        )
    else:
        await desk.status(call)
    return _twiml(empty_twiml())


def _query_int(raw: str | None, name: str) -> int:
    """An id the hub put in a callback URL."""
    value = parse_id(raw or "")
    if value is None:
        raise BadRequest(
            f"query parameter {name} must be an id (a whole number up to {MAX_ID}), not {(raw or '')[:40]!r}"
        )
    return value


# --- agents: calls ------------------------------------------------------------------------


class CallOut(BaseModel):
    id: int
    call_sid: str
    ticket_id: int
    contact_id: int
    direction: str
    customer: str
    line: str
    status: str
    live: bool
    menu_choice: str | None
    team_id: int | None
    agent_id: int | None
    voicemail_message_id: int | None
    duration_seconds: int | None
    outcome: str | None
    started_at: str
    answered_at: str | None
    ended_at: str | None


class CallList(BaseModel):
    items: list[CallOut]
    next_cursor: str | None = None


@ROUTES.route(
    "POST",
    f"{API}/tickets/{{id}}/call",
    summary="Click-to-call: Twilio rings your phone, then connects the ticket's customer",
    tag="tickets",
    response=CallOut,
    status=201,
    errors=(404, 422, 502, 503),
)
async def click_to_call(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    agent = await current_agent(request)
    ticket_id = int_param(request, "id")
    service = _service(hub)
    view = await service.desk.click_to_call(ticket_id, agent)
    return web.json_response(view, status=201)


@ROUTES.route(
    "GET",
    f"{API}/tickets/{{id}}/calls",
    summary="The ticket's phone calls, newest first (live ones have live: true)",
    tag="tickets",
    response=CallList,
    errors=(404,),
)
async def ticket_calls(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    await current_agent(request)
    ticket_id = int_param(request, "id")
    service = _service(hub)
    return web.json_response({"items": await service.desk.calls_of_ticket(ticket_id), "next_cursor": None})
