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
import json
import os
import re
import secrets
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from hub.core import Attachment

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}\Z")
_UNSAFE = re.compile(r"[^\w.\- ()\[\]]+", re.UNICODE)


class AttachmentTooLarge(ValueError):
    def __init__(self, size: int, limit: int, filename: str | None) -> None:
        name = f" {filename!r}" if filename else ""
        super().__init__(f"attachment{name} is {size} bytes; the limit is {limit} bytes (attachments.max_bytes)")
        self.size = size
        self.limit = limit


def safe_filename(name: str | None, default: str = "file") -> str:
    """A filename safe on every filesystem and in a URL path segment, keeping
    letters of every script (Persian names stay readable)."""
    name = unicodedata.normalize("NFC", (name or "").replace("\\", "/").rsplit("/", 1)[-1])
    name = _UNSAFE.sub("_", name).strip(" ._")
    return name[:150] or default


@dataclass(frozen=True, slots=True)
class StoredFile:
    path: Path
    filename: str
    content_type: str
    size: int


class AttachmentStore:
    def __init__(self, root: Path, *, max_bytes: int, url_prefix: str = "/attachments") -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.url_prefix = url_prefix.rstrip("/")

    def check_size(self, size: int, filename: str | None = None) -> None:
        """Raises :class:`AttachmentTooLarge` before anything is downloaded or written."""
        if size > self.max_bytes:
            raise AttachmentTooLarge(size, self.max_bytes, filename)

    async def save(self, data: bytes, *, filename: str | None, content_type: str | None) -> Attachment:
        self.check_size(len(data), filename)
        key = secrets.token_urlsafe(16)  # 22 characters, 128 random bits
        name = safe_filename(filename)
        ctype = (content_type or "application/octet-stream").split(";")[0].strip().lower()[:255]
        await asyncio.to_thread(self._write, key, name, ctype, data)
        return Attachment(
            url=f"{self.url_prefix}/{key}/{name}",
            content_type=ctype or "application/octet-stream",
            filename=filename or name,
            size=len(data),
        )

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def _write(self, key: str, name: str, content_type: str, data: bytes) -> None:
        folder = self._dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        for target, payload in (
            (folder / "meta.json", json.dumps({"filename": name, "content_type": content_type}).encode()),
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
        one we gave out."""
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
        return StoredFile(folder / "data", name, str(meta.get("content_type") or "application/octet-stream"), size)

    def read(self, url: str) -> bytes | None:
        """The bytes behind one of our attachment URLs (for channels that send
        files out, such as email), or None for any other URL."""
        prefix = self.url_prefix + "/"
        path = unquote(urlsplit(url).path)
        if not path.startswith(prefix):
            return None
        key, _, name = path[len(prefix) :].partition("/")
        stored = self.open(key, name)
        return stored.path.read_bytes() if stored is not None else None
