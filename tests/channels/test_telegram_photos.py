"""Photos Telegram will not show as photos (a long screenshot) still reach the
customer, as files, and do not stop the attachments after them."""

from __future__ import annotations

import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from channels.base import SEND_PARTS
from channels.telegram import BotHandle, TelegramChannel
from hub.core import Attachment, Author, Channel, DeliveryStatus, OutboundMessage
from hub.telegram import make_bot
from tests.channels.fake_telegram import TOKEN, FakeBotAPI, _error


def png(width: int, height: int) -> bytes:
    """A real (grey, one bit per pixel) PNG of that size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def png_size(data: bytes) -> tuple[int, int] | None:
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


class PickyBotAPI(FakeBotAPI):
    """Refuses photos as the Bot API does: width + height over 10,000, or one
    side more than 20 times the other."""

    async def _m_sendPhoto(self, params: dict[str, Any], files: dict[str, Any]) -> web.Response:
        size = png_size(files["photo"][1]) if "photo" in files else None
        if size is not None:
            width, height = size
            if width + height > 10_000 or max(width, height) > 20 * min(width, height):
                return _error(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
        return await super()._m_sendPhoto(params, files)


@pytest.fixture
async def picky() -> AsyncIterator[PickyBotAPI]:
    api = PickyBotAPI(TOKEN)
    api.server = TestServer(api.app())
    await api.server.start_server()
    try:
        yield api
    finally:
        await api.server.close()


async def test_a_photo_telegram_refuses_goes_as_a_file_and_the_rest_follows(picky: PickyBotAPI) -> None:
    stored = {
        "/attachments/k1/screenshot.png": png(400, 12_000),  # a long scrolling screenshot
        "/attachments/k2/invoice.pdf": b"%PDF-1.4 fake",
        "/attachments/k3/receipt.png": png(300, 200),
    }

    async def read(url: str) -> bytes | None:
        return stored.get(url)

    chan = TelegramChannel({"telegram:default": BotHandle("default", make_bot(TOKEN, picky.base_url, 10.0))}, read)
    try:
        message = OutboundMessage(
            message_id=1,
            ticket_id=1,
            channel=Channel.TELEGRAM,
            inbox="telegram:default",
            recipient="777",
            body="Here is what I see",
            author=Author.AGENT,
            attachments=(
                Attachment(url="/attachments/k1/screenshot.png", content_type="image/png", filename="screenshot.png"),
                Attachment(url="/attachments/k2/invoice.pdf", content_type="application/pdf", filename="invoice.pdf"),
                Attachment(url="/attachments/k3/receipt.png", content_type="image/png", filename="receipt.png"),
            ),
        )
        result = await chan.send(message)
    finally:
        await chan.close()
    assert result.status is DeliveryStatus.SENT, result.reason
    assert [c.method for c in picky.calls] == [
        "sendMessage",
        "sendPhoto",  # refused: PHOTO_INVALID_DIMENSIONS
        "sendDocument",  # the same screenshot, as a file
        "sendDocument",
        "sendPhoto",  # an ordinary picture is still a photo
    ]
    documents = [c.files["document"] for c in picky.sent("sendDocument")]
    assert documents == [
        ("screenshot.png", stored["/attachments/k1/screenshot.png"]),
        ("invoice.pdf", b"%PDF-1.4 fake"),
    ]
    assert len(result.extras[SEND_PARTS]) == 4  # the text and three files, each delivered once
