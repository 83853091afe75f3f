"""Which failures count against a message on the way to a placeholder: only
those that are plausibly its own. A database outage or a dropped IMAP
connection delays mail and never degrades it; a message the server refuses,
or that crashes the parser, every time still ends as a placeholder, and a
message too big to fetch in time never blocks the mailbox for good. The IMAP
connection is faked, one fake per connection the poller makes; the database
is real (SQLite and PostgreSQL)."""

from __future__ import annotations

import socket
import sqlite3
import ssl
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, ProtocolError
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

import hub.mail
from channels.email import ParsedEmail, parse_email
from channels.email_imap import Fetched
from hub.config import MailboxConfig
from hub.mail import POISON_AFTER, MailboxPoller, SavedFiles, connection_lost
from storage.db import Database, outage
from storage.ingest import IngestResult
from storage.mail import LeaseLost
from storage.models import Identity, MailboxCheckpoint
from tests.hub.test_mail import mail, mail_db
from tests.hub.test_mail_poller import BrokenImap, _last_uid, _messages, poller

__all__ = ["mail_db", "poller"]  # the fixtures, used by name

EOF = IMAPClientAbortError("socket error: EOF")


def _chained(top: BaseException, cause: BaseException) -> BaseException:
    top.__cause__ = cause
    return top


def _name(value: object) -> str:
    """A test id: the exception's class, or the driver's inside it."""
    if isinstance(value, sa_exc.DBAPIError):
        inner = value.orig and (value.orig.__cause__ or value.orig)
        return f"sqlalchemy.{type(value).__name__}({type(inner).__name__})"
    if isinstance(value, sa_exc.SQLAlchemyError):
        return f"sqlalchemy.{type(value).__name__}"
    return type(value).__name__ if isinstance(value, BaseException) else str(value)


def _asyncpg_error(cls: type[BaseException], message: str) -> sa_exc.DBAPIError:
    """As SQLAlchemy's asyncpg dialect hands an asyncpg error over: a plain
    DBAPIError with the driver's exception as its cause."""
    return sa_exc.DBAPIError("INSERT INTO messages ...", None, _chained(Exception(message), cls(message)))


# --- the classification ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (sa_exc.OperationalError("INSERT ...", None, sqlite3.OperationalError("database is locked")), True),
        (sa_exc.InterfaceError("SELECT ...", None, Exception("connection is closed")), True),
        (sa_exc.DBAPIError("SELECT ...", None, Exception("closed mid-operation"), connection_invalidated=True), True),
        (_asyncpg_error(asyncpg.AdminShutdownError, "terminating connection due to administrator command"), True),
        (_asyncpg_error(asyncpg.CannotConnectNowError, "the database system is starting up"), True),
        (_asyncpg_error(asyncpg.TooManyConnectionsError, "sorry, too many clients already"), True),
        (_asyncpg_error(asyncpg.DeadlockDetectedError, "deadlock detected"), True),
        (sa_exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached"), True),
        (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"), True),
        (TimeoutError(), True),
        (OSError(28, "No space left on device"), True),
        # Failing while a transaction is rolled back after an outage.
        (_chained(RuntimeError("rollback failed"), sa_exc.OperationalError("COMMIT", None, Exception("gone"))), True),
        # The message's own.
        (ValueError("a bug meets a strange message"), False),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), False),
        (sa_exc.IntegrityError("INSERT ...", None, Exception("duplicate key")), False),
        (_asyncpg_error(asyncpg.ProgramLimitExceededError, "null character not permitted"), False),
        (_asyncpg_error(asyncpg.CharacterNotInRepertoireError, "invalid byte sequence for encoding"), False),
        (LeaseLost("mailbox x is polled by another process now"), False),  # the poller's own case
    ],
    ids=_name,
)
def test_what_is_an_outage(exc: BaseException, expected: bool) -> None:
    assert outage(exc) is expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (EOF, True),
        (IMAPClientAbortError("BYE Internal error occurred"), True),
        (TimeoutError("timed out"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), True),
        (socket.gaierror(-3, "Temporary failure in name resolution"), True),
        (EOFError(), True),
        (IMAPClientError("FETCH command error: NO [b'Message is corrupt']"), False),
        (ProtocolError("unexpected response"), False),
        (ValueError("cannot parse FETCH response"), False),
    ],
    ids=_name,
)
def test_what_is_a_lost_connection(exc: BaseException, expected: bool) -> None:
    assert connection_lost(exc) is expected


# --- the database fails while a message is stored ---------------------------------------------

Fail = Callable[[AsyncSession], Awaitable[None]]


async def _terminated(session: AsyncSession) -> None:
    # The database going away mid-transaction: PostgreSQL restarting ends the
    # connection for real; SQLite's file becoming unreadable (a disk failing).
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
    else:
        raise sa_exc.OperationalError("INSERT INTO messages ...", None, sqlite3.OperationalError("disk I/O error"))


async def _locked(session: AsyncSession) -> None:
    raise sa_exc.OperationalError("INSERT INTO messages ...", None, sqlite3.OperationalError("database is locked"))


async def _pool_exhausted(session: AsyncSession) -> None:
    raise sa_exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached, connection timed out, timeout 30.00")


async def _unreachable(session: AsyncSession) -> None:
    raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")


async def _lease_taken(session: AsyncSession) -> None:
    # Another process took the mailbox over meanwhile: moving the checkpoint
    # fails, and everything this transaction wrote is rolled back.
    await session.execute(update(MailboxCheckpoint).values(lease_owner="someone-else"))


class Storing:
    """``do_ingest_email``, failing as ``fail`` says while ``down`` is set."""

    def __init__(self, fail: Fail) -> None:
        self.fail = fail
        self.down = False
        self.failed = 0
        self.real = hub.mail.do_ingest_email

    async def __call__(
        self, session: AsyncSession, parsed: ParsedEmail, files: SavedFiles, box: MailboxConfig
    ) -> IngestResult:
        if self.down:
            self.failed += 1
            await self.fail(session)
        return await self.real(session, parsed, files, box)


@pytest.mark.parametrize("fail", [_terminated, _locked, _pool_exhausted, _unreachable, _lease_taken])
async def test_a_database_outage_never_turns_mail_into_a_placeholder(
    mail_db: Database, poller: MailboxPoller, monkeypatch: pytest.MonkeyPatch, fail: Fail
) -> None:
    storing = Storing(fail)
    monkeypatch.setattr(hub.mail, "do_ingest_email", storing)
    messages = {1: mail(subject="first", mid="1@x"), 2: mail(subject="in flight", mid="2@x")}
    await poller._sync(BrokenImap({1: messages[1]}, broken=set()))  # type: ignore[arg-type]
    storing.down = True
    for _ in range(POISON_AFTER * 2):
        with pytest.raises(Exception) as raised:  # noqa: PT011 - which one depends on the outage
            await poller._sync(BrokenImap(messages, broken=set()))  # type: ignore[arg-type]
        assert isinstance(raised.value, LeaseLost) or outage(raised.value), raised.value
    assert storing.failed == POISON_AFTER * 2
    assert await _last_uid(mail_db) == 1

    storing.down = False  # the database is back
    await poller._sync(BrokenImap(messages, broken=set()))  # type: ignore[arg-type]
    rows = await _messages(mail_db)
    assert set(rows) == {"first", "in flight"}
    assert rows["in flight"].body.strip() == "Where is my order?"
    assert await _last_uid(mail_db) == 2
    assert poller._process_failures == {}


async def test_a_message_that_crashes_the_parser_is_kept_whatever_the_outages_between(
    mail_db: Database, poller: MailboxPoller, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_parse = parse_email

    def parse(raw: bytes) -> ParsedEmail:
        if b"poison" in raw:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return real_parse(raw)

    storing = Storing(_unreachable)
    monkeypatch.setattr(hub.mail, "parse_email", parse)
    monkeypatch.setattr(hub.mail, "do_ingest_email", storing)
    conn = BrokenImap({1: mail(subject="poison", mid="p@x"), 2: mail(subject="fine", mid="f@x")}, broken=set())
    # An outage between the crashes neither counts nor starts the count again.
    for _ in range(POISON_AFTER - 1):
        with pytest.raises(UnicodeDecodeError):
            await poller._sync(conn)  # type: ignore[arg-type]
        storing.down = True
        monkeypatch.setattr(hub.mail, "parse_email", real_parse)
        with pytest.raises(ConnectionRefusedError):
            await poller._sync(conn)  # type: ignore[arg-type]
        storing.down = False
        monkeypatch.setattr(hub.mail, "parse_email", parse)
    await poller._sync(conn)  # type: ignore[arg-type]

    rows = await _messages(mail_db)
    # The placeholder still says who wrote and what about: its header is read
    # as plain text when the parser is what fails, so an agent can answer.
    assert set(rows) == {"poison", "fine"}
    kept = rows["poison"]
    assert "could not be processed" in kept.body and "UnicodeDecodeError" in kept.body
    assert kept.extras["email"]["message_id"] == "p@x"
    async with mail_db.read() as session:
        sender = await session.scalar(select(Identity.address).where(Identity.contact_id == kept.contact_id))
        name = await session.scalar(select(Identity.display_name).where(Identity.contact_id == kept.contact_id))
    assert (sender, name) == ("sara@example.com", "Sara")
    assert await _last_uid(mail_db) == 2


# --- the IMAP connection drops while a message is fetched -----------------------------------------


class Connection(BrokenImap):
    """One connection to the mail server. It drops (raises ``drop``) when
    asked for ``drops_at``, as a network does under whichever message is in
    flight; the server itself has nothing against any message."""

    def __init__(self, messages: dict[int, bytes], *, drops_at: int | None = None, drop: Exception = EOF) -> None:
        super().__init__(messages, broken=set())
        self.drops_at = drops_at
        self.drop = drop

    def fetch(self, uid: int, max_bytes: int) -> Fetched:
        if uid == self.drops_at:
            self.fetches.append(uid)
            raise self.drop
        return super().fetch(uid, max_bytes)


async def test_dropped_connections_during_a_backlog_never_make_a_placeholder(
    mail_db: Database, poller: MailboxPoller, monkeypatch: pytest.MonkeyPatch
) -> None:
    storing = Storing(_unreachable)
    monkeypatch.setattr(hub.mail, "do_ingest_email", storing)
    messages = {uid: mail(subject=f"m{uid}", mid=f"{uid}@x") for uid in (1, 2, 3, 4)}
    # Each run of the poller is a new connection, as after a drop.
    sessions: list[tuple[Connection, bool]] = [
        (Connection(messages, drops_at=2), False),  # 1 comes through, then the link drops under 2
        (Connection(messages, drops_at=2, drop=TimeoutError("timed out")), False),  # 2 first up: counted
        (Connection(messages), True),  # 2 comes through; the database is down meanwhile
        (Connection(messages, drops_at=2, drop=ConnectionResetError(104, "reset")), False),
        (Connection(messages, drops_at=2), False),
        (Connection(messages), False),  # the network and the database are fine again
    ]
    for i, (conn, database_down) in enumerate(sessions):
        storing.down = database_down
        if i < len(sessions) - 1:
            with pytest.raises(Exception) as raised:  # noqa: PT011 - a drop or an outage
                await poller._sync(conn)  # type: ignore[arg-type]
            assert connection_lost(raised.value) or outage(raised.value)
        else:
            await poller._sync(conn)  # type: ignore[arg-type]
    dropped = sum(conn.drops_at == 2 for conn, _ in sessions)
    assert dropped > POISON_AFTER

    rows = await _messages(mail_db)
    assert set(rows) == {"m1", "m2", "m3", "m4"}
    assert all("could not be" not in m.body for m in rows.values())
    assert await _last_uid(mail_db) == 4
    assert poller._fetch_failures == {} and poller._process_failures == {}


@pytest.mark.parametrize(
    "drop",
    [TimeoutError("timed out"), IMAPClientAbortError("command: UID => socket error: EOF")],
    ids=["timeout", "server-hangs-up"],
)
async def test_a_message_too_big_to_fetch_in_time_still_ends_as_a_placeholder(
    mail_db: Database, poller: MailboxPoller, drop: Exception
) -> None:
    messages = {
        1: mail(subject="before", mid="b@x"),
        2: mail(sender="Big Sender <big@example.com>", subject="huge scan", mid="h@x"),
        3: mail(subject="after", mid="a@x"),
    }
    # The first connection drops under it after another message came
    # through (not counted); every later one drops under it first thing.
    for _ in range(POISON_AFTER + 1):
        with pytest.raises(type(drop)):
            await poller._sync(Connection(messages, drops_at=2, drop=drop))  # type: ignore[arg-type]
        assert set(await _messages(mail_db)) == {"before"}
    # Given up: the next connection only asks for its header, then reads on.
    conn = Connection(messages, drops_at=2, drop=drop)
    await poller._sync(conn)  # type: ignore[arg-type]
    assert conn.fetches == [3]

    rows = await _messages(mail_db)
    assert set(rows) == {"before", "huge scan", "after"}
    kept = rows["huge scan"]
    assert "could not be read from the mail server" in kept.body and "UID 2" in kept.body
    assert type(drop).__name__ in kept.body
    async with mail_db.read() as session:
        sender = await session.scalar(select(Identity.address).where(Identity.contact_id == kept.contact_id))
    assert sender == "big@example.com"
    assert await _last_uid(mail_db) == 3
    assert poller._fetch_failures == {}


@pytest.mark.parametrize(
    "refusal",
    [
        IMAPClientError("FETCH command error: NO [b'Message is corrupt']"),
        ProtocolError("unexpected response: b'* 2 FETCH (BODY[] {12'"),
        ValueError("cannot parse the FETCH response"),
    ],
    ids=["no", "protocol-error", "unparseable"],
)
async def test_a_message_the_server_refuses_on_every_connection_ends_as_a_placeholder(
    mail_db: Database, poller: MailboxPoller, refusal: Exception
) -> None:
    messages = {1: mail(subject="before", mid="b@x"), 2: mail(subject="refused", mid="r@x")}
    # Refused behind another message, and on new connections first thing:
    # both count, unlike a drop.
    for _ in range(POISON_AFTER - 1):
        with pytest.raises(type(refusal)):
            await poller._sync(Connection(messages, drops_at=2, drop=refusal))  # type: ignore[arg-type]
    await poller._sync(Connection(messages, drops_at=2, drop=refusal))  # type: ignore[arg-type]
    rows = await _messages(mail_db)
    assert set(rows) == {"before", "refused"}
    assert "could not be read from the mail server" in rows["refused"].body
    assert await _last_uid(mail_db) == 2
