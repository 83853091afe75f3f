"""A local Telegram Bot API server for tests: the methods the hub uses, answered
the way api.telegram.org answers them (``{"ok": true, "result": ...}``, errors
as ``{"ok": false, "error_code", "description", "parameters"}``), so the real
python-telegram-bot client can be pointed at it with ``base_url``.

It keeps what it was sent (``calls``), serves files by ``file_path`` (or
refuses to, with ``download_status``), keeps a
queue of updates for ``getUpdates`` with Telegram's offset semantics (an offset
confirms every earlier update), refuses ``getUpdates`` while a webhook is set,
and answers scripted failures (429 with ``retry_after``, 403 for a user who
blocked the bot) before the normal answers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

TOKEN = "123456:TEST-token_for-the-fake"
BOT_USER = {"id": 123456, "is_bot": True, "first_name": "Hub", "username": "hub_test_bot"}
# Parameters python-telegram-bot sends JSON-encoded inside the form.
JSON_FIELDS = {"reply_markup", "allowed_updates", "entities", "caption_entities", "link_preview_options"}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    files: dict[str, tuple[str | None, bytes]] = field(default_factory=dict)


class FakeBotAPI:
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.updates: list[dict[str, Any]] = []
        self.files: dict[str, tuple[str, bytes]] = {}  # file_id -> (file_path, data)
        self.failures: dict[str, list[tuple[int, str, dict[str, Any] | None]]] = {}
        self.blocked_chats: set[int] = set()
        # file_id -> the HTTP status its download gets although getFile lists it
        # (a file server that is down, or a Bot API server that does not serve files).
        self.download_status: dict[str, int] = {}
        self.download_delay = 0.0  # seconds each file download takes
        self.webhook: dict[str, Any] | None = None
        self.polling = 0
        self.max_polling = 0
        self._new_updates = asyncio.Event()
        self._message_ids = itertools.count(5000)
        self._last_update_id = 900_000
        self.server: TestServer | None = None

    # --- test controls ----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def fail(self, method: str, status: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        """The next call of ``method`` gets this error."""
        self.failures.setdefault(method, []).append((status, description, parameters))

    def flood(self, method: str, retry_after: int) -> None:
        self.fail(method, 429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after})

    def add_file(self, file_id: str, data: bytes, path: str | None = None) -> None:
        self.files[file_id] = (path or f"documents/{file_id}.bin", data)

    def push(self, payload: dict[str, Any]) -> int:
        """Queue an update for getUpdates; returns its update_id."""
        update_id = int(payload.pop("update_id", None) or self._last_update_id + 1)
        self._last_update_id = max(self._last_update_id, update_id)
        self.updates.append({"update_id": update_id, **payload})
        self._new_updates.set()
        return update_id

    def sent(self, method: str = "sendMessage") -> list[Call]:
        return [c for c in self.calls if c.method == method]

    # --- the API ----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        return app

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params, files = await _read_params(request)
        self.calls.append(Call(method, params, files))
        scripted = self.failures.get(method)
        if scripted:
            status, description, parameters = scripted.pop(0)
            return _error(status, description, parameters)
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return _error(404, "Not Found: method not found")
        result: web.Response = await handler(params, files)
        return result

    async def _m_getMe(self, params: dict[str, Any], files: Any) -> web.Response:
        return _ok({**BOT_USER, "can_join_groups": True, "can_read_all_group_messages": False})

    async def _m_setWebhook(self, params: dict[str, Any], files: Any) -> web.Response:
        self.webhook = params
        return _ok(True, description="Webhook was set")

    async def _m_deleteWebhook(self, params: dict[str, Any], files: Any) -> web.Response:
        self.webhook = None
        return _ok(True, description="Webhook was deleted")

    async def _m_getUpdates(self, params: dict[str, Any], files: Any) -> web.Response:
        if self.webhook is not None:
            return _error(409, "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook first")
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        # An offset confirms every update before it: Telegram forgets them.
        self.updates = [u for u in self.updates if u["update_id"] >= offset]
        self.polling += 1
        self.max_polling = max(self.max_polling, self.polling)
        try:
            deadline = time.monotonic() + min(timeout, 1.0)
            while not self.updates and time.monotonic() < deadline:
                self._new_updates.clear()
                try:
                    await asyncio.wait_for(self._new_updates.wait(), max(deadline - time.monotonic(), 0.01))
                except TimeoutError:
                    break
        finally:
            self.polling -= 1
        limit = int(params.get("limit") or 100)
        return _ok(self.updates[:limit])

    def _message(self, chat_id: int, **content: Any) -> dict[str, Any]:
        return {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private", "first_name": "Customer"},
            "from": BOT_USER,
            **content,
        }

    def _blocked(self, params: dict[str, Any]) -> web.Response | None:
        chat_id = int(params["chat_id"])
        if chat_id in self.blocked_chats:
            return _error(403, "Forbidden: bot was blocked by the user")
        return None

    async def _m_sendMessage(self, params: dict[str, Any], files: Any) -> web.Response:
        text = params.get("text") or ""
        if not text:
            return _error(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > 4096:
            return _error(400, "Bad Request: message is too long")
        if params.get("parse_mode"):
            return _error(400, "Bad Request: the hub must not send parse_mode")
        if (refused := self._blocked(params)) is not None:
            return refused
        buttons = [b for row in (params.get("reply_markup") or {}).get("inline_keyboard") or [] for b in row]
        if any(not 1 <= len(str(b.get("callback_data", "x")).encode()) <= 64 for b in buttons):
            # Telegram's limit is 1-64 bytes of UTF-8, not characters.
            return _error(400, "Bad Request: BUTTON_DATA_INVALID")
        extra = {"reply_markup": params["reply_markup"]} if params.get("reply_markup") else {}
        return _ok(self._message(int(params["chat_id"]), text=text, **extra))

    async def _m_sendPhoto(self, params: dict[str, Any], files: dict[str, Any]) -> web.Response:
        if (refused := self._blocked(params)) is not None:
            return refused
        if "photo" not in files and not params.get("photo"):
            return _error(400, "Bad Request: there is no photo in the request")
        size = len(files["photo"][1]) if "photo" in files else 0
        photo = [{"file_id": "sent-photo", "file_unique_id": "sp", "width": 10, "height": 10, "file_size": size}]
        return _ok(self._message(int(params["chat_id"]), photo=photo))

    async def _m_sendDocument(self, params: dict[str, Any], files: dict[str, Any]) -> web.Response:
        if (refused := self._blocked(params)) is not None:
            return refused
        if "document" not in files and not params.get("document"):
            return _error(400, "Bad Request: there is no document in the request")
        name = files["document"][0] if "document" in files else None
        doc = {"file_id": "sent-doc", "file_unique_id": "sd", "file_name": name or "file"}
        return _ok(self._message(int(params["chat_id"]), document=doc))

    async def _m_getFile(self, params: dict[str, Any], files: Any) -> web.Response:
        file_id = str(params.get("file_id") or "")
        if file_id not in self.files:
            return _error(400, "Bad Request: wrong file_id or the file is temporarily unavailable")
        path, data = self.files[file_id]
        if len(data) > 20 * 1024 * 1024:
            return _error(400, "Bad Request: file is too big")
        return _ok({"file_id": file_id, "file_unique_id": f"u-{file_id}", "file_size": len(data), "file_path": path})

    async def _m_answerCallbackQuery(self, params: dict[str, Any], files: Any) -> web.Response:
        return _ok(True)

    async def _file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        await asyncio.sleep(self.download_delay)
        for file_id, (path, data) in self.files.items():
            if path == request.match_info["path"]:
                if file_id in self.download_status:
                    return web.Response(status=self.download_status[file_id], text="refused")
                return web.Response(body=data, content_type="application/octet-stream")
        return web.Response(status=404)


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, tuple[str | None, bytes]]]:
    params: dict[str, Any] = {}
    files: dict[str, tuple[str | None, bytes]] = {}
    if request.content_type == "application/json":
        params = await request.json()
    elif request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not hasattr(part, "read"):
                continue
            data = await part.read()  # type: ignore[union-attr]
            if part.filename:  # type: ignore[union-attr]
                files[str(part.name)] = (part.filename, bytes(data))  # type: ignore[union-attr]
            else:
                params[str(part.name)] = bytes(data).decode()  # type: ignore[union-attr]
    elif request.can_read_body:
        params = dict(await request.post())
    for key in list(params):
        if key in JSON_FIELDS and isinstance(params[key], str):
            params[key] = json.loads(params[key])
    return params, files


def _ok(result: Any, description: str | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": True, "result": result}
    if description:
        body["description"] = description
    return web.json_response(body)


def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=status)


@asynccontextmanager
async def fake_bot_api(token: str = TOKEN) -> AsyncIterator[FakeBotAPI]:
    fake = FakeBotAPI(token)
    fake.server = TestServer(fake.app())
    await fake.server.start_server()
    try:
        yield fake
    finally:
        await fake.server.close()
