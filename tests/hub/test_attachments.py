from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from hub.attachments import AttachmentStore, AttachmentTooLarge, parse_content_type, safe_filename
from tests.hub.helpers import Agent, add_agent, make_config, running_hub


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\evil.exe", "evil.exe"),
        ("فاکتور خرید.pdf", "فاکتور خرید.pdf"),
        ("a<b>c?.txt", "a_b_c_.txt"),
        ("", "file"),
        ("...", "file"),
        (None, "file"),
        ("a__b (1).txt", "a__b (1).txt"),
        # Persian spelling needs the zero-width non-joiner and the diacritics.
        ("مِی\u200cخواهم.docx", "مِی\u200cخواهم.docx"),
        ("نامهٔ اداری.pdf", "نامهٔ اداری.pdf"),
        ("हिंदी.txt", "हिंदी.txt"),
        # Joiners at the edges join nothing.
        ("\u200cنامه.pdf\u200c", "نامه.pdf"),
        # Direction controls would show "invoice\u202egpj.exe" as "invoiceexe.jpg".
        ("invoice\u202egpj.exe", "invoice_gpj.exe"),
        ("photo\u2067exe.\u2069jpg", "photo_exe._jpg"),
        ("a\u200fb\u200e.pdf", "a_b_.pdf"),
        ('a"b;c\r\nd\x00.pdf', "a_b_c_d_.pdf"),
    ],
)
def test_safe_filename(raw: str | None, safe: str) -> None:
    assert safe_filename(raw) == safe


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("image/png", "image/png"),
        ("Image/PNG", "image/png"),
        (" image/jpeg ; charset=binary", "image/jpeg"),
        ('image/png; name="a, text/html; b=\\"c\\""', "image/png"),
        ('image/png; name="عکس.png"', "image/png"),
        ("image/png;", "image/png"),
        ("audio/ogg; codecs=opus", "audio/ogg"),
        ("image/svg+xml", "image/svg+xml"),
        # Browsers take the last type of a list (Fetch), so a list is no type.
        ("image/png, text/html", "application/octet-stream"),
        ("image/png; a=b, text/html", "application/octet-stream"),
        ("image/png;text/html", "application/octet-stream"),
        ("image/png; name", "application/octet-stream"),
        ('image/png; name="open', "application/octet-stream"),
        ("image/png\r\ntext/html", "application/octet-stream"),
        ("image/png\x00", "application/octet-stream"),
        ("image /png", "application/octet-stream"),
        ("image", "application/octet-stream"),
        ("image/", "application/octet-stream"),
        ("a/" + "b" * 300, "application/octet-stream"),
        ("", "application/octet-stream"),
        (None, "application/octet-stream"),
    ],
)
def test_parse_content_type(raw: str | None, parsed: str) -> None:
    assert parse_content_type(raw) == parsed


async def test_a_type_that_is_not_one_media_type_is_stored_as_bytes(tmp_path: Path) -> None:
    store = AttachmentStore(tmp_path, max_bytes=1024)
    att = await store.save(b"<script>alert(1)</script>", filename="x.png", content_type="image/png, text/html")
    assert att.content_type == "application/octet-stream"
    _, _, key, name = att.url.split("/")
    stored = store.open(key, name)
    assert stored is not None and stored.content_type == "application/octet-stream"


async def test_open_parses_a_type_stored_before_types_were_parsed(tmp_path: Path) -> None:
    store = AttachmentStore(tmp_path, max_bytes=1024)
    att = await store.save(b"<script>alert(1)</script>", filename="x.png", content_type="image/png")
    _, _, key, name = att.url.split("/")
    meta = next(tmp_path.rglob("meta.json"))
    meta.write_text(json.dumps({"filename": name, "content_type": "image/png, text/html"}), encoding="utf-8")
    stored = store.open(key, name)
    assert stored is not None and stored.content_type == "application/octet-stream"


async def test_save_open_and_read_back(tmp_path: Path) -> None:
    store = AttachmentStore(tmp_path, max_bytes=1024)
    att = await store.save(b"%PDF-1.4 data", filename="فاکتور.pdf", content_type="Application/PDF; name=x")
    assert att.content_type == "application/pdf" and att.size == 13 and att.filename == "فاکتور.pdf"
    _, _, key, name = att.url.split("/")
    stored = store.open(key, name)
    assert stored is not None and stored.path.read_bytes() == b"%PDF-1.4 data"
    assert store.read(att.url) == b"%PDF-1.4 data"
    assert store.read(f"https://hub.example.com{att.url}") == b"%PDF-1.4 data"
    # A guessed key, another name for the same key, or a path trick find nothing.
    assert store.open("A" * 22, name) is None
    assert store.open(key, "other.pdf") is None
    assert store.open("../" + key[3:], name) is None
    assert store.read("https://elsewhere.example.com/x.png") is None
    assert not list(tmp_path.rglob("*.tmp"))


async def test_too_large_is_refused_and_nothing_written(tmp_path: Path) -> None:
    store = AttachmentStore(tmp_path, max_bytes=1024)
    with pytest.raises(AttachmentTooLarge, match="2048 bytes; the limit is 1024"):
        await store.save(b"x" * 2048, filename="big.bin", content_type=None)
    assert not any(tmp_path.iterdir())


async def test_upload_then_serve_safely(tmp_path: Path) -> None:
    config = make_config(tmp_path, **{"attachments.max_bytes": 2048})
    async with running_hub(config) as server:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            agent = await Agent.login(http, base, "ana@example.com")
            form = aiohttp.FormData()
            form.add_field("file", b"\x89PNG fake", filename="عکس.png", content_type="image/png")
            async with http.post(f"{base}/api/v1/attachments", data=form, headers=agent.headers) as r:
                assert r.status == 201, await r.text()
                att = await r.json()
            assert att["content_type"] == "image/png" and att["filename"] == "عکس.png"
            async with http.get(f"{base}{att['url']}") as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == "image/png"
                assert r.headers["Content-Disposition"].startswith("inline")
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert await r.read() == b"\x89PNG fake"

            # HTML from a customer is downloaded, never rendered in our origin.
            form = aiohttp.FormData()
            form.add_field("file", b"<script>alert(1)</script>", filename="x.html", content_type="text/html")
            async with http.post(f"{base}/api/v1/attachments", data=form, headers=agent.headers) as r:
                html = await r.json()
            async with http.get(f"{base}{html['url']}") as r:
                assert r.headers["Content-Type"] == "application/octet-stream"
                assert r.headers["Content-Disposition"].startswith("attachment")

            form = aiohttp.FormData()
            form.add_field("file", b"x" * 4096, filename="big.bin")
            async with http.post(f"{base}/api/v1/attachments", data=form, headers=agent.headers) as r:
                assert r.status == 413
                assert "2048" in (await r.json())["error"]["message"]
            async with http.post(f"{base}/api/v1/attachments", json={"file": "x"}, headers=agent.headers) as r:
                assert r.status == 400
            async with http.post(f"{base}/api/v1/attachments", data=aiohttp.FormData({"x": "1"})) as r:
                assert r.status == 401
            async with http.get(f"{base}/attachments/{'A' * 22}/nothing.png") as r:
                assert r.status == 404
                assert (await r.json())["error"]["code"] == "not_found"


async def test_the_name_shown_loses_direction_controls_only(tmp_path: Path) -> None:
    """The inbox shows the sender's name for a file: with U+202E in it,
    "invoice\u202egpj.exe" is shown as "invoiceexe.jpg"."""
    store = AttachmentStore(tmp_path, max_bytes=1024)
    att = await store.save(b"MZ", filename="invoice\u202egpj.exe", content_type="application/octet-stream")
    assert att.filename == "invoicegpj.exe"
    att = await store.save(b"x", filename="Q1/Q2 نامه\u200cها.pdf", content_type="application/pdf")
    assert att.filename == "Q1/Q2 نامه\u200cها.pdf"
