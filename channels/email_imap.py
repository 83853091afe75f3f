"""Reading a mailbox over IMAP with imapclient.

imapclient is blocking, so every method here runs in a worker thread (the
hub's poller calls them through a bounded thread pool); nothing here touches
storage. The folder is opened read-only and messages are fetched with
``BODY.PEEK[]``: the hub never changes the mailbox (no flags, no moves, no
deletes), so people and other tools can keep using it, and the poller's
checkpoint (UIDVALIDITY + last UID, kept by the hub) is the only record of
what was read.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from imapclient.util import to_bytes

Security = Literal["tls", "starttls", "none"]

#: What a broken connection or a refusing server raises, for the poller to
#: reconnect with backoff.
ImapErrors: tuple[type[BaseException], ...] = (IMAPClientError, OSError, ssl.SSLError, EOFError)


@dataclass(frozen=True, slots=True)
class ImapServer:
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    security: Security = "tls"
    folder: str = "INBOX"
    timeout: float = 60.0
    validate_certs: bool = True
    ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class FolderState:
    uidvalidity: int
    uidnext: int | None
    exists: int


@dataclass(frozen=True, slots=True)
class Fetched:
    raw: bytes
    size: int
    #: True when only the headers were fetched (the message is over the limit).
    truncated: bool = False
    #: When the server received it (IMAP INTERNALDATE), if it said.
    internal_date: datetime | None = None


def tls_context(server: ImapServer) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=server.ca_file)
    if not server.validate_certs:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ImapConnection:
    """One logged-in connection with the folder selected."""

    def __init__(self, server: ImapServer) -> None:
        self.server = server
        self._client: IMAPClient | None = None

    @property
    def client(self) -> IMAPClient:
        if self._client is None:
            raise ConnectionError("not connected")
        return self._client

    def connect(self) -> FolderState:
        s = self.server
        ctx = tls_context(s) if s.security != "none" else None
        client = IMAPClient(s.host, port=s.port, ssl=s.security == "tls", ssl_context=ctx, timeout=s.timeout)
        self._client = client
        if s.security == "starttls":
            client.starttls(ctx)
        client.login(s.username, s.password)
        return self.select()

    def select(self) -> FolderState:
        """(Re)select the folder: a fresh UIDVALIDITY, even when the folder
        was deleted and recreated under the same name while we were idle."""
        info: dict[bytes, Any] = self.client.select_folder(self.server.folder, readonly=True)
        uidnext = info.get(b"UIDNEXT")
        return FolderState(
            uidvalidity=int(info[b"UIDVALIDITY"]),
            uidnext=int(uidnext) if uidnext is not None else None,
            exists=int(info.get(b"EXISTS", 0)),
        )

    @property
    def supports_idle(self) -> bool:
        return bool(self.client.has_capability("IDLE"))

    def uids_after(self, last_uid: int) -> list[int]:
        # "n:*" always includes the highest UID, even when it is below n.
        found = self.client.search(["UID", f"{last_uid + 1}:*"])
        return sorted(int(u) for u in found if int(u) > last_uid)

    def uids_since(self, last_uid: int, day: date) -> list[int]:
        """UIDs after ``last_uid`` of the messages the server received on
        ``day`` or later (IMAP SEARCH SINCE compares dates only, in the
        server's time zone: the caller gives a day's margin and checks each
        message's :attr:`Fetched.internal_date`)."""
        found = self.client.search(["UID", f"{last_uid + 1}:*", "SINCE", day])
        return sorted(int(u) for u in found if int(u) > last_uid)

    def highest_uid(self, state: FolderState) -> int:
        if state.uidnext is not None:
            return max(state.uidnext - 1, 0)
        found = self.client.search(["ALL"])
        return max((int(u) for u in found), default=0)

    def fetch(self, uid: int, max_bytes: int) -> Fetched | None:
        """The raw message, or only its headers when it is larger than
        ``max_bytes``; None when it was expunged meanwhile."""
        sizes = self.client.fetch([uid], ["RFC822.SIZE", "INTERNALDATE"])
        if uid not in sizes:
            return None
        size = int(sizes[uid].get(b"RFC822.SIZE", 0))
        received = sizes[uid].get(b"INTERNALDATE")
        # imapclient gives it as naive local time; astimezone() reads it so.
        internal_date = received.astimezone(UTC) if isinstance(received, datetime) else None
        if size > max_bytes:
            part = "BODY.PEEK[HEADER]"
            key = b"BODY[HEADER]"
        else:
            part, key = "BODY.PEEK[]", b"BODY[]"
        data = self.client.fetch([uid], [part])
        if uid not in data:
            return None
        raw = data[uid].get(key)
        if raw is None:
            return None
        return Fetched(raw=to_bytes(raw), size=size, truncated=size > max_bytes, internal_date=internal_date)

    def fetch_header(self, uid: int) -> bytes | None:
        """Only the message's header, for a message whose full fetch keeps
        failing: enough to tell an agent who sent what. None when the server
        has no header for it either."""
        data = self.client.fetch([uid], ["BODY.PEEK[HEADER]"])
        raw = data.get(uid, {}).get(b"BODY[HEADER]")
        return to_bytes(raw) if raw is not None else None

    def wait(self, seconds: float) -> None:
        """IDLE for up to ``seconds``, returning early when the server reports
        a change (the caller then looks for new messages either way)."""
        client = self.client
        client.idle()
        try:
            client.idle_check(timeout=seconds)
        finally:
            client.idle_done()

    def noop(self) -> None:
        self.client.noop()

    def interrupt(self) -> None:
        """Unblock a thread waiting on this connection (the hub is stopping)."""
        client = self._client
        if client is None:
            return
        with contextlib.suppress(OSError):
            client.socket().shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(*ImapErrors):
            client.logout()
        with contextlib.suppress(*ImapErrors):
            client.shutdown()
