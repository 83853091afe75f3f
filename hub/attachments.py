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
from datetime import datetime, timedelta
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from sqlalchemy import Text, cast, delete, func, select, tuple_

from hub.core import Attachment, utcnow
from storage.models import Message, Upload

if TYPE_CHECKING:
    from storage.db import Database

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


# Where a file's meta.json goes while the upload sweeper decides whether to
# remove it: not found by URL, and still there to put back.
_HIDDEN_META = "meta.hidden"


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

    @staticmethod
    def new_key() -> str:
        return secrets.token_urlsafe(16)  # 22 characters, 128 random bits

    async def save(
        self,
        data: bytes,
        *,
        filename: str | None,
        content_type: str | None,
        rendered: bool = False,
        key: str | None = None,
    ) -> Attachment:
        """Store ``data``. ``rendered``: only for a page the hub made and
        sanitized itself (see :attr:`StoredFile.rendered`). ``key``: one from
        :meth:`new_key`, when the caller recorded it before the file exists."""
        self.check_size(len(data), filename)
        if key is None:
            key = self.new_key()
        elif not KEY_PATTERN.match(key):
            raise ValueError(f"not an attachment key: {key!r}")
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

    def key_of(self, url: str) -> str | None:
        """The key in one of our attachment URLs (as a message stores it,
        percent-encoded or not, relative or absolute), else None."""
        path = unquote(urlsplit(url).path)
        at = path.find(self.url_prefix + "/")
        if at < 0:
            return None
        key = path[at + len(self.url_prefix) + 1 :].partition("/")[0]
        return key if KEY_PATTERN.match(key) else None

    def hide(self, key: str) -> bool:
        """Make the file behind ``key`` unreadable by URL (it resolves to
        nothing) while keeping it, so it can still be brought back with
        :meth:`unhide`. False when there is no such file, hidden or not."""
        folder = self._dir(key)
        try:
            os.replace(folder / "meta.json", folder / _HIDDEN_META)
        except FileNotFoundError:
            # Hidden already: by another sweeper now, or by one that stopped
            # before it finished.
            return (folder / _HIDDEN_META).exists() and (folder / "data").exists()
        return True

    def unhide(self, key: str) -> None:
        folder = self._dir(key)
        if (folder / "data").exists():
            with contextlib.suppress(FileNotFoundError):
                os.replace(folder / _HIDDEN_META, folder / "meta.json")

    def remove(self, key: str) -> None:
        """Remove whatever is stored under ``key``, hidden or half written."""
        if not KEY_PATTERN.match(key):
            return
        folder = self._dir(key)
        for name in ("meta.json", _HIDDEN_META, "data", "meta.tmp", "data.tmp"):
            (folder / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()

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


# --- uploads no message used ------------------------------------------------------

# How long a file stays hidden before it is removed: a reply or a visitor's
# message that found the file just before it was hidden is committed by then,
# and is seen when the references are read again.
SETTLE_SECONDS = 10.0
_BATCH = 500
_PAGE = 1000


async def record_upload(
    db: Database, key: str, *, size: int, agent_id: int | None = None, visitor_id: str | None = None
) -> None:
    """Record an upload before its file is written: a file then never exists
    without a row, so the sweeper finds every one (a row whose file never
    came is dropped by it)."""
    async with db.write() as session:
        last = await session.scalar(select(func.max(Message.id)))
        session.add(
            Upload(
                key=key,
                size=size,
                agent_id=agent_id,
                visitor_id=visitor_id,
                after_message_id=last or 0,
                created_at=utcnow(),
            )
        )


class UploadSweeper:
    """Removes uploaded files that no message took within the grace period,
    and drops the record of those a message did take.

    Several processes may sweep at once. A file is first hidden (it stops
    resolving, so no new reply can take it), then, after
    :data:`SETTLE_SECONDS`, the messages are read again; only the process
    whose own transaction deletes the row removes the file, and a file a
    message took meanwhile is put back. A sweeper stopped half way leaves the
    row, so the next sweep finishes the work."""

    def __init__(
        self,
        db: Database,
        store: AttachmentStore,
        *,
        grace_seconds: float,
        interval_seconds: float,
        settle_seconds: float | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.grace = timedelta(seconds=grace_seconds)
        self.interval = interval_seconds
        self.settle = SETTLE_SECONDS if settle_seconds is None else settle_seconds

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("upload sweep failed")
            await asyncio.sleep(self.interval)

    async def sweep(self, now: datetime | None = None) -> int:
        """One pass over the uploads older than the grace period; the number of
        files removed."""
        cutoff = (now or utcnow()) - self.grace
        removed = 0
        after: tuple[datetime, str] | None = None
        while True:
            query = select(Upload.key, Upload.after_message_id, Upload.created_at).where(Upload.created_at < cutoff)
            if after is not None:
                # Rows of files put back stay behind; go on past them.
                query = query.where(tuple_(Upload.created_at, Upload.key) > tuple_(*after))
            query = query.order_by(Upload.created_at, Upload.key).limit(_BATCH)
            async with self.db.read() as session:
                rows = (await session.execute(query)).all()
            if not rows:
                return removed
            removed += await self._sweep_batch({r.key: r.after_message_id for r in rows}, cutoff)
            if len(rows) < _BATCH:
                return removed
            after = (rows[-1].created_at, rows[-1].key)

    async def _sweep_batch(self, candidates: dict[str, int], cutoff: datetime) -> int:
        since = min(candidates.values())
        used = await self._referenced(since, set(candidates))
        if used:
            async with self.db.write() as session:
                await session.execute(delete(Upload).where(Upload.key.in_(used)))
        unused = [key for key in candidates if key not in used]
        hidden: list[str] = []
        for key in unused:
            try:
                present = await asyncio.to_thread(self.store.hide, key)
            except OSError as exc:
                log.warning("uploaded file %s could not be hidden for removal: %s", key, exc)
                continue
            if present:
                hidden.append(key)
            else:
                # Its file is gone (or was never written): only the row is left.
                async with self.db.write() as session:
                    await session.execute(delete(Upload).where(Upload.key == key))
                await asyncio.to_thread(self.store.remove, key)
        if not hidden:
            return 0
        await asyncio.sleep(self.settle)
        late = await self._referenced(since, set(hidden))
        removed = 0
        for key in hidden:
            async with self.db.write() as session:
                claimed = (await session.execute(delete(Upload).where(Upload.key == key))).rowcount  # type: ignore[attr-defined]
            if key in late:
                await asyncio.to_thread(self.store.unhide, key)
                log.warning("uploaded file %s was sent in a message while it was being removed; kept", key)
            elif claimed:
                # Committed before the file goes: another sweeper that finds
                # no row leaves the file to this one.
                try:
                    await asyncio.to_thread(self.store.remove, key)
                except OSError as exc:
                    log.warning("unused uploaded file %s could not be removed: %s", key, exc)
                    continue
                removed += 1
        if removed:
            log.info("removed %d uploaded files no message used", removed)
        return removed

    async def _referenced(self, after_message_id: int, keys: set[str]) -> set[str]:
        """Which of ``keys`` a message stored after ``after_message_id`` carries
        in its attachments (a queued reply as much as a sent one)."""
        found: set[str] = set()
        last = after_message_id
        while True:
            query = (
                select(Message.id, Message.attachments)
                .where(Message.id > last, cast(Message.attachments, Text) != "[]")
                .order_by(Message.id)
                .limit(_PAGE)
            )
            async with self.db.read() as session:
                rows = (await session.execute(query)).all()
            for row in rows:
                for item in row.attachments if isinstance(row.attachments, list) else ():
                    url = item.get("url") if isinstance(item, dict) else None
                    key = self.store.key_of(url) if isinstance(url, str) else None
                    if key in keys:
                        found.add(key)
            if len(rows) < _PAGE:
                return found
            last = rows[-1].id
