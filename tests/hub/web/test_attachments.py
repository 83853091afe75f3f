from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from hub.web.attachments import is_inline
from tests.hub.helpers import Agent, add_agent, make_config, running_hub


@pytest.mark.parametrize(
    ("media_type", "inline"),
    [
        ("image/png", True),
        ("image/webp", True),
        ("application/pdf", True),
        ("audio/mpeg", True),
        ("video/mp4", True),
        ("image/svg+xml", False),
        ("text/html", False),
        ("application/octet-stream", False),
        # Never a prefix of the string: these start like an allowed type.
        ("image/png, text/html", False),
        ("image/pngx", False),
        ("application/pdf+html", False),
        ("audiox/mpeg", False),
    ],
)
def test_is_inline(media_type: str, inline: bool) -> None:
    assert is_inline(media_type) is inline


async def test_only_one_allowed_media_type_is_served_inline(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            agent = await Agent.login(http, base, "ana@example.com")

            async def upload(content_type: str, filename: str = "x.png") -> dict[str, str]:
                form = aiohttp.FormData()
                form.add_field("file", b"<script>alert(1)</script>", filename=filename, content_type=content_type)
                async with http.post(f"{base}/api/v1/attachments", data=form, headers=agent.headers) as r:
                    assert r.status == 201, await r.text()
                    uploaded: dict[str, str] = await r.json()
                    return uploaded

            # A browser would render this list as text/html (the last type).
            listed = await upload("image/png, text/html")
            assert listed["content_type"] == "application/octet-stream"
            async with http.get(f"{base}{listed['url']}") as r:
                assert r.headers["Content-Type"] == "application/octet-stream"
                assert r.headers["Content-Disposition"].startswith("attachment;")

            # Served with the parsed type, not the string that came in.
            voice = await upload("Audio/OGG; codecs=opus", filename="voice.ogg")
            async with http.get(f"{base}{voice['url']}") as r:
                assert r.headers["Content-Type"] == "audio/ogg"
                assert r.headers["Content-Disposition"].startswith("inline;")

            # A file stored before types were parsed keeps its odd type on disk.
            old = await upload("image/png")
            key, name = old["url"].split("/")[-2:]
            meta = config.attachments_dir / key[:2] / key / "meta.json"
            meta.write_text(json.dumps({"filename": name, "content_type": "image/png, text/html"}), encoding="utf-8")
            async with http.get(f"{base}{old['url']}") as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == "application/octet-stream"
                assert r.headers["Content-Disposition"].startswith("attachment;")


async def test_persian_names_download_as_written(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            agent = await Agent.login(http, base, "ana@example.com")
            filename = "مِی\u200cخواهم.docx"
            form = aiohttp.FormData()
            form.add_field("file", b"PK docx", filename=filename, content_type="application/octet-stream")
            async with http.post(f"{base}/api/v1/attachments", data=form, headers=agent.headers) as r:
                assert r.status == 201, await r.text()
                att = await r.json()
            assert att["url"].endswith("/" + filename)
            async with http.get(f"{base}{att['url']}") as r:
                assert r.status == 200
                disposition = r.headers["Content-Disposition"]
                assert disposition == f"attachment; filename*=UTF-8''{quote(filename, safe='')}"
