"""A local Twilio: an aiohttp server speaking the parts of Twilio's REST API
the hub uses, for the real ``twilio`` client to be pointed at.

- ``POST /2010-04-01/Accounts/{sid}/Messages.json`` and ``.../Calls.json``: HTTP
  basic auth with the account SID and auth token, Twilio's validation errors
  and JSON shapes (instance on 201; ``{"code", "message", "more_info",
  "status"}`` on errors).
- Opt-outs as Twilio keeps them: after :meth:`FakeTwilio.opt_out` a send to
  that number from that sender fails with 21610.
- Scripted failures (:meth:`FakeTwilio.fail_next`: 429, 500, any code), and
  sends Twilio takes but answers too late (:meth:`FakeTwilio.stall_next`).
- ``GET .../Messages.json``: the account's messages, latest first, filtered
  by ``To`` and ``From``, one page of ``PageSize`` (how the hub checks whether
  an attempt that got no answer went through).
- Status callbacks: after a send with ``StatusCallback``, the fake posts the
  configured statuses there, signed with the account's token like Twilio.
- Media and recordings (``GET``) behind basic auth, for the hub to copy.

Every request is recorded with a monotonic timestamp (``requests``), so a
sender's throttle can be measured, and sends are counted per number.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from twilio.request_validator import RequestValidator

API = "/2010-04-01/Accounts/{account}"


def sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass
class Recorded:
    at: float
    method: str
    path: str
    account: str
    form: dict[str, list[str]]

    def one(self, name: str) -> str | None:
        values = self.form.get(name)
        return values[-1] if values else None


@dataclass
class Failure:
    status: int
    code: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


ERRORS = {
    21610: "Attempt to send to unsubscribed recipient",
    21211: "Invalid 'To' Phone Number",
    21617: "The concatenated message body exceeds the 1600 character limit",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    20003: "Authenticate",
}


class FakeTwilio:
    def __init__(self, accounts: dict[str, str], *, callback_statuses: tuple[str, ...] = ("sent", "delivered")) -> None:
        self.accounts = dict(accounts)
        self.callback_statuses = callback_statuses
        self.requests: list[Recorded] = []
        self.messages: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.callbacks: list[tuple[str, dict[str, str], int]] = []
        self.media: dict[str, tuple[bytes, str]] = {}
        self._failures: list[Failure] = []
        self._stalls: list[float] = []
        self.failing_lookups = 0
        self._opted_out: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        app = web.Application()
        app.router.add_post(API + "/Messages.json", self._create_message)
        app.router.add_get(API + "/Messages.json", self._list_messages)
        app.router.add_post(API + "/Calls.json", self._create_call)
        app.router.add_get("/{tail:.+}", self._media)
        self.server = TestServer(app)

    async def __aenter__(self) -> FakeTwilio:
        await self.server.start_server()
        self._http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http is not None:
            await self._http.close()
        await self.server.close()

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    # --- scripting -------------------------------------------------------------------

    def fail_next(self, status: int, code: int, *, times: int = 1, retry_after: int | None = None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        for _ in range(times):
            self._failures.append(Failure(status, code, ERRORS.get(code, "Error"), headers))

    def stall_next(self, seconds: float, *, times: int = 1) -> None:
        """The next sends are taken (created, counted) but answered only after
        ``seconds``: a client that stops waiting cannot know they went through."""
        self._stalls.extend([seconds] * times)

    @property
    def stalls_pending(self) -> int:
        """Stalls asked for that no send has taken yet."""
        return len(self._stalls)

    def opt_out(self, number: str, sender: str) -> None:
        """As if ``number`` texted STOP to ``sender`` (a number or MG SID) at Twilio."""
        self._opted_out.add((number, sender))

    def add_media(self, account: str, kind: str, data: bytes, content_type: str) -> str:
        """A file Twilio holds (an MMS picture, a recording); returns its URL."""
        path = f"/2010-04-01/Accounts/{account}/{kind}/{sid('ME')}"
        self.media[path] = (data, content_type)
        return self.base_url + path

    def sends_to(self, number: str) -> int:
        return Counter(m["to"] for m in self.messages)[number]

    async def settled(self) -> None:
        """Wait until every status callback the fake scheduled was posted."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- the API -------------------------------------------------------------------------

    def _error(self, status: int, code: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(
            {
                "code": code,
                "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
            status=status,
            headers=headers,
        )

    async def _record(self, request: web.Request, *, scripted: bool = True) -> tuple[Recorded, web.Response | None]:
        form = await request.post()
        values: dict[str, list[str]] = {}
        for k, v in form.items():
            values.setdefault(k, []).append(str(v))
        account = request.match_info.get("account", "")
        rec = Recorded(time.monotonic(), request.method, request.path, account, values)
        self.requests.append(rec)
        auth = request.headers.get("Authorization", "")
        try:
            creds = aiohttp.BasicAuth.decode(auth)
        except ValueError:
            return rec, self._error(401, 20003, ERRORS[20003])
        if self.accounts.get(creds.login) != creds.password or creds.login != account:
            return rec, self._error(401, 20003, ERRORS[20003])
        if scripted and self._failures:
            f = self._failures.pop(0)
            return rec, self._error(f.status, f.code, f.message, f.headers)
        return rec, None

    async def _create_message(self, request: web.Request) -> web.Response:
        rec, failed = await self._record(request)
        if failed is not None:
            return failed
        to, from_, service = rec.one("To"), rec.one("From"), rec.one("MessagingServiceSid")
        body, media = rec.one("Body") or "", rec.form.get("MediaUrl", [])
        if not to:
            return self._error(400, 21604, "A 'To' phone number is required.")
        if not to.startswith("+") or not to[1:].isdigit():
            return self._error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not (from_ or service):
            return self._error(400, 21603, "A 'From' phone number is required.")
        if not body and not media:
            return self._error(400, 21602, "Message body is required.")
        if len(body) > 1600:
            return self._error(400, 21617, ERRORS[21617])
        if (to, service or from_ or "") in self._opted_out:
            return self._error(400, 21610, ERRORS[21610])
        now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        message = {
            "account_sid": rec.account,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": from_,
            "messaging_service_sid": service,
            "num_media": str(len(media)),
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid("MM" if media else "SM"),
            "status": "accepted" if service else "queued",
            "to": to,
            "uri": f"/2010-04-01/Accounts/{rec.account}/Messages/{{sid}}.json",
        }
        message["uri"] = str(message["uri"]).replace("{sid}", str(message["sid"]))
        self.messages.append(message)
        callback = rec.one("StatusCallback")
        if callback and self.callback_statuses:
            params: dict[str, str] = {
                "MessageSid": str(message["sid"]),
                "SmsSid": str(message["sid"]),
                "AccountSid": rec.account,
                "From": from_ or "+15550000000",
                "To": to,
                "ApiVersion": "2010-04-01",
            }
            if service:
                params["MessagingServiceSid"] = service
            task = asyncio.create_task(self._callbacks(callback, params, rec.account))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._stalls:
            await asyncio.sleep(self._stalls.pop(0))
        return web.json_response(message, status=201)

    async def _list_messages(self, request: web.Request) -> web.Response:
        rec, failed = await self._record(request, scripted=False)
        if failed is not None:
            return failed
        if self.failing_lookups:
            self.failing_lookups -= 1
            return self._error(500, 20500, ERRORS[20500])
        to, from_ = request.query.get("To"), request.query.get("From")
        size = int(request.query.get("PageSize", "50"))
        found = [
            m
            for m in reversed(self.messages)
            if m["account_sid"] == rec.account
            and (to is None or m["to"] == to)
            and (from_ is None or m["from"] == from_)
        ][:size]
        uri = request.path_qs
        return web.json_response(
            {
                "messages": found,
                "end": max(len(found) - 1, 0),
                "first_page_uri": uri,
                "next_page_uri": None,
                "page": 0,
                "page_size": size,
                "previous_page_uri": None,
                "start": 0,
                "uri": uri,
            }
        )

    async def _callbacks(self, url: str, base: dict[str, str], account: str) -> None:
        for status in self.callback_statuses:
            params = {**base, "MessageStatus": status, "SmsStatus": status}
            await self.post_webhook(url, params, self.accounts[account])

    async def post_webhook(self, url: str, params: dict[str, str], token: str) -> int:
        """Post a signed webhook as Twilio does; returns the HTTP status."""
        assert self._http is not None
        async with self._http.post(url, data=params, headers={"X-Twilio-Signature": sign(token, url, params)}) as r:
            await r.read()
            self.callbacks.append((url, params, r.status))
            return r.status

    async def _create_call(self, request: web.Request) -> web.Response:
        rec, failed = await self._record(request)
        if failed is not None:
            return failed
        to, from_, url = rec.one("To"), rec.one("From"), rec.one("Url")
        if not to or not from_:
            return self._error(400, 21201, "No 'To' or 'From' number is specified")
        if not url and not rec.one("Twiml"):
            return self._error(400, 21205, "Url parameter is required.")
        call = {
            "account_sid": rec.account,
            "api_version": "2010-04-01",
            "direction": "outbound-api",
            "from": from_,
            "to": to,
            "sid": sid("CA"),
            "status": "queued",
            "uri": "",
        }
        self.calls.append({**call, "url": url, "status_callback": rec.one("StatusCallback")})
        return web.json_response(call, status=201)

    async def _media(self, request: web.Request) -> web.Response:
        path = request.path
        found = self.media.get(path) or self.media.get(path.removesuffix(".mp3"))
        if found is None:
            return self._error(404, 20404, "The requested resource was not found")
        try:
            creds = aiohttp.BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            return self._error(401, 20003, ERRORS[20003])
        if self.accounts.get(creds.login) != creds.password:
            return self._error(401, 20003, ERRORS[20003])
        data, ctype = found
        return web.Response(body=data, content_type=ctype)


def sign(token: str, url: str, params: dict[str, str]) -> str:
    """X-Twilio-Signature of a form POST to ``url``, as Twilio computes it."""
    return str(RequestValidator(token).compute_signature(url, params))


def form_body(params: dict[str, str]) -> str:
    return urlencode(params)
