"""The attachment store: files that came with a message (email parts, Telegram
photos, MMS media, agents' uploads), kept under ``data_dir/attachments``.

Each file gets an unguessable random key, and its URL (``/attachments/<key>/<name>``)
is the capability to read it, the way chat products serve media: the inbox's
``<img>`` tags and a visitor's widget can show it without sending credentials,
and nobody can list or guess other files. Files are written to a temporary
name, flushed and renamed, so a crash never leaves half a file behind a URL; a
file is saved before the message that points at it is stored.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import os
import re
import secrets
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from urllib.parse import unquote, urlsplit

from hub.core import Attachment

log = logging.getLogger(__name__)

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}\Z")
_SAFE_PUNCTUATION = frozenset(".- ()[]")
# ZWNJ (U+200C) is part of Persian spelling (the one in «می‌خواهم»), ZWJ of Indic and Arabic
# shaping; both are joiners, not direction controls, so they cannot reorder what
# an agent sees (unlike U+202E, which would show "exe.pdf" as "fdp.exe").
_JOINERS = frozenset("\u200c\u200d")
# Vowel signs and diacritics: Persian harakat (Mn), Indic vowel signs (Mc).
_MARKS = frozenset(("Mn", "Mc"))

OCTET_STREAM = "application/octet-stream"
# RFC 9110 section 8.3.1: media-type = type "/" subtype parameters.
_TCHAR_RUN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# obs-text is any octet from 0x80; a header decoded to str carries those as
# non-ASCII characters (or surrogate escapes), so they are allowed in quotes.
_QUOTED_STRING = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\U0010ffff]|\\[\t \x21-\x7e\x80-\U0010ffff])*"'
_OWS = r"[ \t]*"
_MEDIA_TYPE = re.compile(
    rf"({_TCHAR_RUN})/({_TCHAR_RUN})(?:{_OWS};{_OWS}(?:{_TCHAR_RUN}=(?:{_TCHAR_RUN}|{_QUOTED_STRING}))?)*"
)


_CHARSET_PARAMETER = re.compile(rf'{_OWS};{_OWS}charset=(?:({_TCHAR_RUN})|"({_TCHAR_RUN})")', re.IGNORECASE)


class AttachmentTooLarge(ValueError):
    def __init__(self, size: int, limit: int, filename: str | None) -> None:
        name = f" {filename!r}" if filename else ""
        super().__init__(f"attachment{name} is {size} bytes; the limit is {limit} bytes (attachments.max_bytes)")
        self.size = size
        self.limit = limit


def parse_content_type(value: str | None) -> str:
    """The lower-cased ``type/subtype`` of a Content-Type value, parameters
    dropped, or application/octet-stream for anything that is not exactly one
    RFC 9110 media type.

    Browsers read ``image/png, text/html`` as HTML (the Fetch standard takes
    the last type of a list), so a value is either one well-formed media type
    or treated as unknown bytes; nothing is guessed from a prefix."""
    match = _MEDIA_TYPE.fullmatch((value or "").strip(" \t"))
    if match is None:
        return OCTET_STREAM
    media_type = f"{match[1]}/{match[2]}".lower()
    # Cutting a longer one to Attachment's 255 characters would name another type.
    return media_type if len(media_type) <= 255 else OCTET_STREAM


def parse_charset(value: str | None) -> str | None:
    """The ``charset`` parameter of a text type's Content-Type value, lower-cased,
    when it names an encoding Python knows (so a mail we send with it can be
    read back), else None.

    Only ``type/subtype`` survives :func:`parse_content_type`; the charset is
    kept beside it because without it a reader takes the RFC default
    (US-ASCII) and shows a Persian or Cyrillic text file as mojibake."""
    if parse_content_type(value).partition("/")[0] != "text":
        return None
    assert value is not None
    found = _CHARSET_PARAMETER.search(value)
    if found is None:
        return None
    label = (found[1] or found[2]).lower()
    try:
        codecs.lookup(label)
    except LookupError:
        return None
    return label


# Direction controls (embeddings, overrides, isolates, marks): in a name they
# only ever serve to make "invoice\u202egpj.exe" look like "invoiceexe.jpg".
_DIRECTION_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def shown_name(filename: str | None) -> str:
    """A file's name as the inbox and the widget show it: as the sender wrote
    it (slashes and all), less control characters and direction controls."""
    kept = (c for c in filename or "" if (c.isprintable() and c not in _DIRECTION_CONTROLS) or c in _JOINERS)
    return "".join(kept).strip()


def _keep_in_filename(char: str) -> bool:
    return (
        char.isalnum()
        or char == "_"
        or char in _SAFE_PUNCTUATION
        or char in _JOINERS
        or unicodedata.category(char) in _MARKS
    )


def safe_filename(name: str | None, default: str = "file") -> str:
    """A filename safe on every filesystem, in a URL path segment and in a
    Content-Disposition header, keeping the letters, marks and joiners of every
    script (Persian names stay readable); anything else (separators, control
    and direction characters, quotes, symbols) becomes ``_``."""
    name = unicodedata.normalize("NFC", (name or "").replace("\\", "/").rsplit("/", 1)[-1])
    name = "".join("".join(run) if keep else "_" for keep, run in groupby(name, _keep_in_filename))
    # Joiners at either end join nothing and would only hide there.
    edges = " ._\u200c\u200d"
    return name.strip(edges)[:150].rstrip(edges) or default


@dataclass(frozen=True, slots=True)
class StoredFile:
    path: Path
    filename: str
    content_type: str
    size: int
    #: The name as the sender wrote it (see :func:`shown_name`); ``filename``
    #: for files stored before it was kept.
    shown: str = ""
    charset: str | None = None
    #: A page the hub itself made and sanitized (an email's HTML part), never
    #: a file from outside: the one kind of HTML the hub may show inline.
    rendered: bool = False


class AttachmentStore:
    def __init__(self, root: Path, *, max_bytes: int, url_prefix: str = "/attachments") -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.url_prefix = url_prefix.rstrip("/")

    def check_size(self, size: int, filename: str | None = None) -> None:
        """Raises :class:`AttachmentTooLarge` before anything is downloaded or written."""
        if size > self.max_bytes:
            raise AttachmentTooLarge(size, self.max_bytes, filename)

    async def save(
        self, data: bytes, *, filename: str | None, content_type: str | None, rendered: bool = False
    ) -> Attachment:
        """Store ``data``. ``rendered``: only for a page the hub made and
        sanitized itself (see :attr:`StoredFile.rendered`)."""
        self.check_size(len(data), filename)
        key = secrets.token_urlsafe(16)  # 22 characters, 128 random bits
        name = safe_filename(filename)
        ctype = parse_content_type(content_type)
        shown = shown_name(filename) or name
        meta: dict[str, object] = {"filename": name, "content_type": ctype, "shown": shown}
        charset = parse_charset(content_type)
        if charset is not None:
            meta["charset"] = charset
        if rendered:
            meta["rendered"] = True
        await asyncio.to_thread(self._write, key, meta, data)
        return Attachment(url=f"{self.url_prefix}/{key}/{name}", content_type=ctype, filename=shown, size=len(data))

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def _write(self, key: str, meta: dict[str, object], data: bytes) -> None:
        folder = self._dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        for target, payload in (
            (folder / "meta.json", json.dumps(meta).encode()),
            (folder / "data", data),
        ):
            tmp = target.with_suffix(".tmp")
            with open(tmp, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)

    def open(self, key: str, name: str) -> StoredFile | None:
        """The stored file behind a URL, or None when the key or the name is not
        one we gave out. Its content type is parsed again: files stored before
        types were parsed may hold any string."""
        if not KEY_PATTERN.match(key):
            return None
        folder = self._dir(key)
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            size = (folder / "data").stat().st_size
        except (OSError, ValueError):
            return None
        if meta.get("filename") != name:
            return None
        stored_type = meta.get("content_type")
        content_type = parse_content_type(stored_type if isinstance(stored_type, str) else None)
        shown = meta.get("shown")
        charset = meta.get("charset")
        return StoredFile(
            folder / "data",
            name,
            content_type,
            size,
            shown=shown if isinstance(shown, str) and shown else name,
            charset=charset if isinstance(charset, str) else None,
            rendered=meta.get("rendered") is True,
        )

    def _locate(self, url: str) -> StoredFile | None:
        prefix = self.url_prefix + "/"
        path = unquote(urlsplit(url).path)
        if not path.startswith(prefix):
            return None
        key, _, name = path[len(prefix) :].partition("/")
        return self.open(key, name)

    def read(self, url: str) -> bytes | None:
        """The bytes behind one of our attachment URLs (for channels that send
        files out, such as email), or None for any other URL."""
        stored = self._locate(url)
        return stored.path.read_bytes() if stored is not None else None

    def charset(self, url: str) -> str | None:
        """The charset the file behind one of our URLs was given in, if known."""
        stored = self._locate(url)
        return stored.charset if stored is not None else None

    def resolve(self, url: str) -> Attachment | None:
        """One of our files as an attachment described by the store (type,
        size and name as stored, whatever a client claims about them), or
        None when ``url`` is not the URL of a stored file: another host, a
        scheme, a query, a key we never gave out.

        Only a path is taken (percent-encoded or not), and the message keeps
        the URL as :meth:`save` gave it, never one a browser would resolve
        elsewhere."""
        parts = urlsplit(url)
        if parts.scheme or parts.netloc or parts.query or parts.fragment:
            return None
        stored = self._locate(parts.path)
        if stored is None:
            return None
        return Attachment(
            url=f"{self.url_prefix}/{stored.path.parent.name}/{stored.filename}",
            content_type=stored.content_type,
            filename=stored.shown,
            size=stored.size,
        )

    def delete(self, url: str) -> bool:
        """Remove the file behind one of our URLs; False when there is none."""
        stored = self._locate(url)
        if stored is None:
            return False
        folder = stored.path.parent
        # The meta first: without it the key resolves to nothing at once.
        for leftover in (folder / "meta.json", stored.path):
            leftover.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # left in place should anything else be in it
        return True

    async def discard(self, urls: Iterable[str | None]) -> None:
        """Remove files saved for a message that was then not stored (its
        transaction rolled back, or it was a copy of one stored already), so
        they do not stay on disk behind URLs nothing points at. Never raises
        for a file it cannot remove: that is only disk space."""
        for url in urls:
            if not url or not url.startswith(self.url_prefix + "/"):
                continue
            try:
                await asyncio.to_thread(self.delete, url)
            except OSError as exc:
                log.warning("attachment %s could not be removed: %s", url, exc)
