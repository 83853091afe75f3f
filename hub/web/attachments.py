"""Serving stored attachments, and agents' uploads for their replies."""

from __future__ import annotations

import contextlib
from urllib.parse import quote, unquote

from aiohttp import BodyPartReader, web

from hub.app import HUB
from hub.attachments import OCTET_STREAM, AttachmentStore, AttachmentTooLarge, parse_content_type, record_upload
from hub.core import Attachment
from hub.errors import BadRequest, NotFound, PayloadTooLarge
from hub.web.api import API, current_agent
from hub.web.registry import ROUTES
from hub.web.schemas import AttachmentOut

# Shown in the browser; anything else (HTML, SVG, scripts) is downloaded, so a
# customer's file can never run in the hub's origin. Compared with the parsed
# type, never as a prefix of the stored string: "image/png, text/html" starts
# like an image but a browser renders it as HTML.
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf"})
# Every subtype of these plays in the browser's media player (voicemail,
# Telegram voice notes, MMS video), and none is a document that runs script.
INLINE_TOP_LEVEL_TYPES = frozenset({"audio", "video"})
# Downloaded, but under their own type rather than application/octet-stream:
# a provider fetching the file checks it (Twilio refuses MMS media whose
# Content-Type it does not accept). None of them is a document a browser
# runs script in, and nosniff with the sandbox CSP keeps them from being
# rendered as anything else; HTML, SVG, XML and the like stay octet-stream.
TYPED_DOWNLOADS = frozenset(
    {
        "text/plain",
        "text/csv",
        "text/vcard",
        "text/x-vcard",
        "text/directory",
        "text/calendar",
        "image/bmp",
        "image/tiff",
    }
)
ATTACHMENT_CSP = "default-src 'none'; sandbox"
# The hub's own sanitized rendering of an email: shown as a page, with the
# mail's inline images (stored files, same origin) and its inline styles,
# still without scripts (a sandbox without allow-scripts), forms or frames.
RENDERED_CSP = "sandbox; default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; base-uri 'none'"


def is_inline(media_type: str) -> bool:
    """Whether a parsed ``type/subtype`` (see :func:`parse_content_type`) is
    shown in the browser rather than downloaded."""
    top_level, _, _ = media_type.partition("/")
    return media_type in INLINE_TYPES or top_level in INLINE_TOP_LEVEL_TYPES


def served_type(media_type: str) -> str:
    """The Content-Type a stored file of parsed type ``media_type`` is served with."""
    return media_type if is_inline(media_type) or media_type in TYPED_DOWNLOADS else OCTET_STREAM


@ROUTES.route(
    "GET",
    "/attachments/{key}/{name}",
    summary="A stored attachment; its unguessable URL is the permission to read it",
    tag="attachments",
    auth=False,
    content_type="application/octet-stream",
    errors=(404,),
)
async def get_attachment(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    stored = hub.attachments.open(request.match_info["key"], request.match_info["name"])
    if stored is None:
        raise NotFound("no such attachment")
    # Parsed here as well, whatever open() did: this is the check that keeps a
    # file stored with any odd type (older rows included) from rendering.
    media_type = parse_content_type(stored.content_type)
    csp = ATTACHMENT_CSP
    if stored.rendered and media_type == "text/html":
        inline, content_type, csp = True, "text/html; charset=utf-8", RENDERED_CSP
    else:
        inline, content_type = is_inline(media_type), served_type(media_type)
        if stored.charset and content_type.startswith("text/"):
            content_type = f"{content_type}; charset={stored.charset}"
    disposition = "inline" if inline else "attachment"
    return web.FileResponse(
        stored.path,
        headers={
            "Content-Type": content_type,
            "Content-Disposition": f"{disposition}; filename*=UTF-8''{_quote(stored.filename)}",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": csp,
            # The URL is the permission to read the file: a link followed
            # from an email's page must not hand it to the site linked.
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "private, max-age=31536000, immutable",
        },
    )


def _quote(name: str) -> str:
    return quote(name, safe="")


@ROUTES.route(
    "POST",
    f"{API}/attachments",
    summary="Upload a file (multipart field 'file') to attach to a reply",
    tag="attachments",
    response=AttachmentOut,
    status=201,
    content_type="application/json",
    errors=(400, 413),
)
async def upload_attachment(request: web.Request) -> web.Response:
    agent = await current_agent(request)
    attachment = await receive_upload(request, request.app[HUB].attachments, agent_id=agent.id)
    return web.json_response(attachment.model_dump(exclude_none=True), status=201)


async def receive_upload(
    request: web.Request, store: AttachmentStore, *, agent_id: int | None = None, visitor_id: str | None = None
) -> Attachment:
    """The file in the multipart field ``file`` of ``request``, saved in
    ``store``: the agents' upload and the web chat visitors' read it alike.
    It is recorded as uploaded by ``agent_id`` or ``visitor_id``, so that it
    is removed should no message use it (see ``UploadSweeper``).
    Raises BadRequest (not multipart, malformed, no such field) or
    PayloadTooLarge (over ``attachments.max_bytes``)."""
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("send the file as multipart/form-data in a field named 'file'")
    try:
        part, data = await _read_file_field(request, store.max_bytes)
    except ValueError as exc:
        # aiohttp's reader says what it found wrong (no boundary parameter,
        # no starting boundary, a body that ended inside it).
        if "after EOF" in str(exc):
            raise BadRequest(
                "malformed multipart body: it ended before its closing boundary (the upload was cut off); "
                "nothing was stored"
            ) from exc
        raise BadRequest(f"malformed multipart body: {exc}; nothing was stored") from exc
    # Browsers send UTF-8 names as they are; some clients (aiohttp's own)
    # percent-encode them inside the quotes.
    filename = part.filename
    if filename and "%" in filename:
        with contextlib.suppress(UnicodeDecodeError):
            filename = unquote(filename, errors="strict")
    try:
        store.check_size(len(data), filename)
    except AttachmentTooLarge as exc:
        raise PayloadTooLarge(str(exc)) from exc
    key = store.new_key()
    await record_upload(request.app[HUB].db, key, size=len(data), agent_id=agent_id, visitor_id=visitor_id)
    return await store.save(data, filename=filename, content_type=part.headers.get("Content-Type"), key=key)


async def _read_file_field(request: web.Request, limit: int) -> tuple[BodyPartReader, bytes]:
    """The part named ``file`` and its bytes, read up to ``limit``. Raises
    ValueError for a body that is not well-formed multipart, including one
    that stops before its closing boundary: the bytes that came are not
    known to be the whole file."""
    reader = await request.multipart()
    part = await reader.next()
    while part is not None and not (isinstance(part, BodyPartReader) and part.name == "file"):
        part = await reader.next()
    if not isinstance(part, BodyPartReader):
        raise BadRequest("the multipart body has no field named 'file'")
    chunks: list[bytes] = []
    size = 0
    # Streamed with the attachment limit, not the JSON body limit.
    while chunk := await part.read_chunk(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the file is larger than {limit} bytes (attachments.max_bytes)")
        chunks.append(chunk)
    # Read on to the closing boundary, which is what says the file ended
    # where the client meant it to; aiohttp raises for a body without one.
    while (rest := await reader.next()) is not None:
        await rest.release()
    return part, b"".join(chunks)
