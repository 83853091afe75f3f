"""Uploads that are not whole multipart bodies, HEAD and types on the files
served, and the email's sanitized HTML page opening in the browser."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from channels.email import parse_email
from hub.attachments import AttachmentStore
from hub.mail import save_files
from hub.web.attachments import RENDERED_CSP
from tests.hub.helpers import Agent, add_agent, make_config, running_hub

PART = b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\nContent-Type: text/plain\r\n\r\nhello'


@pytest.mark.parametrize(
    ("content_type", "body", "says"),
    [
        ("multipart/form-data", b"abc", "boundary missed"),
        ("multipart/form-data; boundary=XX", b"garbage", "Could not find starting boundary"),
        # The part never ended: "hello" may be the start of a longer file.
        ("multipart/form-data; boundary=XX", PART, "ended before its closing boundary"),
        ("multipart/form-data; boundary=XX", PART + b"\r\n--XX", "ended before its closing boundary"),
        (
            "multipart/form-data; boundary=XX",
            PART + b'\r\n--XX\r\nContent-Disposition: form-data; name="x"\r\n\r\ny',
            "ended before its closing boundary",
        ),
    ],
)
async def test_a_malformed_upload_is_a_400_and_stores_nothing(
    tmp_path: Path, content_type: str, body: bytes, says: str
) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            agent = await Agent.login(http, base, "ana@example.com")
            headers = {**agent.headers, "Content-Type": content_type}
            async with http.post(f"{base}/api/v1/attachments", data=body, headers=headers) as r:
                assert r.status == 400, await r.text()
                error = (await r.json())["error"]
            assert error["code"] == "bad_request"
            assert error["message"].startswith("malformed multipart body") and says in error["message"]
            assert not list(config.attachments_dir.rglob("data"))
            # The same body with its closing boundary is a file.
            if body.startswith(PART):
                whole = PART + b"\r\n--XX--\r\n"
                async with http.post(f"{base}/api/v1/attachments", data=whole, headers=headers) as r:
                    assert r.status == 201, await r.text()
                    assert (await r.json())["size"] == 5


async def test_files_answer_head_and_keep_a_safe_type(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as http:
            agent = await Agent.login(http, base, "ana@example.com")

            async def upload(data: bytes, name: str, ctype: str) -> str:
                form = aiohttp.FormData()
                form.add_field("file", data, filename=name, content_type=ctype)
                async with http.post(f"{base}/api/v1/attachments", data=form, headers=agent.headers) as r:
                    assert r.status == 201, await r.text()
                    return f"{base}{(await r.json())['url']}"

            served = {
                ("image/png", "x.png"): ("image/png", "inline"),
                ("text/csv", "t.csv"): ("text/csv", "attachment"),
                ("text/calendar", "m.ics"): ("text/calendar", "attachment"),
                ("text/x-vcard", "c.vcf"): ("text/x-vcard", "attachment"),
                ("text/plain; charset=windows-1256", "n.txt"): ("text/plain; charset=windows-1256", "attachment"),
                # Anything a browser could run script in stays bytes to download.
                ("text/html", "x.html"): ("application/octet-stream", "attachment"),
                ("image/svg+xml", "x.svg"): ("application/octet-stream", "attachment"),
                ("application/xhtml+xml", "x.xhtml"): ("application/octet-stream", "attachment"),
                ("text/xml", "x.xml"): ("application/octet-stream", "attachment"),
            }
            for (ctype, name), (served_type, disposition) in served.items():
                url = await upload(b"<script>alert(1)</script>", name, ctype)
                for method in ("HEAD", "GET"):
                    async with http.request(method, url) as r:
                        assert r.status == 200, (method, ctype)
                        assert r.headers["Content-Type"] == served_type, (method, ctype)
                        assert r.headers["Content-Disposition"].startswith(f"{disposition};"), ctype
                        assert r.headers["X-Content-Type-Options"] == "nosniff"
                        assert r.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
            # Every GET route answers HEAD, as HTTP asks.
            async with http.head(f"{base}/healthz") as r:
                assert r.status == 200


HTML_MAIL = (
    b"From: Sara <sara@example.com>\r\nTo: support@hub.test\r\nSubject: logo\r\nMessage-ID: <h1@example.com>\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/related; boundary="R"\r\n\r\n'
    b'--R\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hi <img src="cid:logo@x"></p>'
    b"<script>alert(1)</script>\r\n"
    b"--R\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"iVBORw0KGgo=\r\n--R--\r\n"
)


async def test_the_hubs_own_html_page_of_a_mail_opens_in_the_browser(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_hub(config) as server:
        await add_agent(config, "ana@example.com")
        base = str(server.make_url("")).rstrip("/")
        store = AttachmentStore(config.attachments_dir, max_bytes=config.attachments.max_bytes)
        files = await save_files(store, parse_email(HTML_MAIL), HTML_MAIL, truncated=False)
        assert files.html_url is not None
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}{files.html_url}") as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == "text/html; charset=utf-8"
                assert r.headers["Content-Disposition"].startswith("inline;")
                # Its images (our stored files) and styles show; scripts never run.
                assert r.headers["Content-Security-Policy"] == RENDERED_CSP
                assert "img-src 'self'" in RENDERED_CSP and "allow-scripts" not in RENDERED_CSP
                page = await r.text()
            assert f'src="{files.attachments[0].url}"' in page and "<script" not in page

            # The same bytes uploaded by anyone are a download, whatever they are called.
            agent = await Agent.login(http, base, "ana@example.com")
            form = aiohttp.FormData()
            form.add_field("file", page.encode(), filename="message.html", content_type="text/html")
            async with http.post(f"{base}/api/v1/attachments", data=form, headers=agent.headers) as r:
                uploaded = await r.json()
            async with http.get(f"{base}{uploaded['url']}") as r:
                assert r.headers["Content-Type"] == "application/octet-stream"
                assert r.headers["Content-Disposition"].startswith("attachment;")
                assert r.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
