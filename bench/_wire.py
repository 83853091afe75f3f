"""Lean HTTP/1.1 and websocket clients for the load generator.

They run on bare ``asyncio.Protocol`` objects, so that the client costs as
little CPU per frame as possible and the figures measure the server, not the
load generator. The bare ceiling and the hub are driven by these same clients.

Only what the benchmark needs: one request at a time per HTTP connection
(keep-alive, no pipelining, ``Content-Length`` bodies), and websocket text
frames (client frames use the all-zero masking key, which every server
accepts and which leaves the payload as it is), pings answered, close honoured.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Callable
from typing import cast

_HEAD_END = b"\r\n\r\n"
_ZERO_MASK = b"\x00\x00\x00\x00"

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


class WireError(Exception):
    """The peer answered something this client does not expect."""


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _status(head: bytes) -> int:
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise WireError(f"not an HTTP response: {head[:80]!r}")
    return int(parts[1])


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; ``request`` sends prepared bytes and
    returns the status once the whole response (with its body) has arrived."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self._need = -1  # body bytes still expected, -1 while reading the head
        self._code = 0
        self.lost = False
        # When set, every response's status goes here (see ``send``) instead
        # of to the future of ``request``.
        self.on_response: Callable[[int], None] | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(cls, host, port)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the interface without subclassing asyncio's.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while True:
            if self._need < 0:
                end = buf.find(_HEAD_END)
                if end < 0:
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._code = _status(head)
                self._need = _content_length(head)
            if len(buf) < self._need:
                return
            del buf[: self._need]
            self._need = -1
            if self.on_response is not None:
                self.on_response(self._code)
            else:
                waiter, self._waiter = self._waiter, None
                if waiter is not None and not waiter.done():
                    waiter.set_result(self._code)
            if not buf:
                return

    def request(self, raw: bytes) -> asyncio.Future[int]:
        if self._transport is None or self.lost:
            raise ConnectionError("connection is closed")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiter = fut
        self._transport.write(raw)
        return fut

    def send(self, raw: bytes) -> None:
        """Send a request whose answer goes to ``on_response``."""
        if self._transport is None or self.lost:
            raise ConnectionError("connection is closed")
        self._transport.write(raw)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def http_request(
    method: str, host: str, port: int, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: keep-alive"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def text_frame(payload: bytes) -> bytes:
    """A masked (zero key) client text frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return header + _ZERO_MASK + payload


def _control_frame(opcode: int, payload: bytes) -> bytes:
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + _ZERO_MASK + payload


OnText = Callable[[bytes], None]


class WsConnection(asyncio.Protocol):
    """A websocket client connection. Every complete text message is passed to
    ``on_text`` (bytes, UTF-8 JSON in practice) from ``data_received``."""

    def __init__(self, on_text: OnText) -> None:
        self.on_text = on_text
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._upgraded = False
        self._handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fragments: list[bytes] = []
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_reason = ""
        self.on_close: Callable[[str], None] | None = None

    @classmethod
    async def open(
        cls, host: str, port: int, path: str, on_text: OnText, headers: dict[str, str] | None = None
    ) -> WsConnection:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: cls(on_text), host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = {"Upgrade": "websocket", "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13", **(headers or {})}
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: Upgrade"]
        lines += [f"{k}: {v}" for k, v in extra.items()]
        assert proto._transport is not None
        proto._transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await proto._handshake
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the interface without subclassing asyncio's.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self.close_reason or f"connection lost: {exc}"
        self.close_reason = reason
        if not self._handshake.done():
            self._handshake.set_exception(ConnectionError(reason))
        if not self.closed.done():
            self.closed.set_result(None)
        if self.on_close is not None:
            self.on_close(reason)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._upgraded:
            end = buf.find(_HEAD_END)
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            code = _status(head)
            if code != 101:
                self.close_reason = f"websocket upgrade refused with HTTP {code}"
                if not self._handshake.done():
                    self._handshake.set_exception(WireError(f"{self.close_reason}: {head[:200]!r}"))
                assert self._transport is not None
                self._transport.close()
                return
            self._upgraded = True
            self._handshake.set_result(None)
        if buf.startswith(b"HTTP/1."):
            # The server wrote an HTTP response on the upgraded connection: its
            # handler failed after the upgrade and the error became a page.
            self.close_reason = f"the server answered HTTP inside the websocket: {bytes(buf[:300])!r}"
            assert self._transport is not None
            self._transport.close()
            return
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            at = pos + 2
            if length == 126:
                if size - at < 2:
                    break
                length = (buf[at] << 8) | buf[at + 1]
                at += 2
            elif length == 127:
                if size - at < 8:
                    break
                (length,) = struct.unpack_from("!Q", buf, at)
                at += 8
            if b1 & 0x80:  # a masked server frame: not allowed, but cheap to honour
                if size - at < 4:
                    break
                mask = bytes(buf[at : at + 4])
                at += 4
            else:
                mask = b""
            if size - at < length:
                break
            payload = bytes(buf[at : at + length])
            pos = at + length
            if mask:
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
            self._frame(b0 & 0x80 != 0, b0 & 0x0F, payload)
        if pos:
            del buf[:pos]

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode in (OP_TEXT, OP_BINARY):
            if fin:
                self.on_text(payload)
            else:
                self._fragments = [payload]
        elif opcode == OP_CONT:
            self._fragments.append(payload)
            if fin:
                whole, self._fragments = b"".join(self._fragments), []
                self.on_text(whole)
        elif opcode == OP_PING:
            self._write(_control_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self.close_reason = f"closed by the server ({code} {payload[2:].decode(errors='replace')})"
        else:
            # Not a websocket frame: the server wrote something else on the
            # upgraded connection (an HTTP error page after a handler failed).
            self.close_reason = f"not a websocket frame (opcode {opcode:#x}); the server sent {payload[:120]!r}"
            if self._transport is not None:
                self._transport.close()
            self._write(_control_frame(OP_CLOSE, payload[:2]))
            if self._transport is not None:
                self._transport.close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def send(self, payload: bytes) -> None:
        """Send one text frame (the payload must be UTF-8)."""
        if self._transport is None or self._transport.is_closing():
            raise ConnectionError(self.close_reason or "websocket is closed")
        self._transport.write(text_frame(payload))

    async def aclose(self, timeout: float = 2.0) -> None:
        if self._transport is None or self.closed.done():
            return
        self._write(_control_frame(OP_CLOSE, struct.pack("!H", 1000)))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except TimeoutError:
            pass
        finally:
            self._transport.close()
