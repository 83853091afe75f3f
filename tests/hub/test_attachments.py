from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from hub.attachments import AttachmentStore, AttachmentTooLarge, safe_filename
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
    ],
)
def test_safe_filename(raw: str | None, safe: str) -> None:
    assert safe_filename(raw) == safe


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
