"""Real mail servers for the email tests: Dovecot (IMAP) started from a config
of our own as an unprivileged server on free localhost ports, and aiosmtpd
(SMTP) receiving what the hub sends.

Dovecot runs with ``-c <our config>``, so the system's /etc/dovecot is never
read and nothing needs root at run time: everything (config, passwd-file,
Maildir, sockets, logs) lives in one temporary directory. When the tests do
run as root (CI), Dovecot insists on dropping privileges, so its login and
mail processes run as "nobody". The directory is made with ``mkdtemp`` under
the system temp dir rather than in pytest's tmp_path because UNIX socket paths
are limited to 108 bytes and pytest's paths are long and not traversable by
"nobody".
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from imapclient import IMAPClient

from tests import services

USER = "support@hub.test"
PASSWORD = "mail-secret-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dovecot_binary() -> str:
    found = shutil.which("dovecot") or ("/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None)
    if found is None:
        services.unavailable(
            "Dovecot (Debian package dovecot-imapd; .ci/run installs it)", FileNotFoundError("dovecot")
        )
        raise AssertionError("unreachable")
    return found


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost / 127.0.0.1 made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        services.unavailable("the openssl command", FileNotFoundError("openssl"))
        raise AssertionError("unreachable")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class Dovecot:
    """One Dovecot instance with one user (``USER`` / ``PASSWORD``), plain IMAP
    on ``port`` and IMAP over TLS on ``tls_port``."""

    def __init__(self) -> None:
        self.binary = dovecot_binary()
        self.root = Path(tempfile.mkdtemp(prefix="hub-dovecot-"))
        self.root.chmod(0o755)
        self.port = free_port()
        self.tls_port = free_port()
        self.cert, self.key = self_signed_cert(self.root)
        self.config = self.root / "dovecot.conf"
        self.log = self.root / "dovecot.log"
        self._write_config()

    def _write_config(self) -> None:
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            login_user, uid, gid = "nobody", nobody.pw_uid, nobody.pw_gid
            internal_group = grp.getgrgid(gid).gr_name
        else:
            me = pwd.getpwuid(os.getuid())
            login_user, uid, gid = me.pw_name, me.pw_uid, me.pw_gid
            internal_group = grp.getgrgid(gid).gr_name
        home = self.root / "home"
        (home / USER).mkdir(parents=True)
        if os.geteuid() == 0:
            for path in (home, home / USER):
                os.chown(path, uid, gid)
        (self.root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
        self.key.chmod(0o600)
        self.config.write_text(
            f"""
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.log}
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.key}
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {login_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = {min(uid, 500) or 1}
first_valid_gid = {min(gid, 500) or 1}
mail_location = maildir:{home}/%u/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home}/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {self.port}
  }}
  inet_listener imaps {{
    port = {self.tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"""
        )

    def start(self) -> None:
        # The master daemonizes: its output goes to a file, or run() would wait
        # for the daemon to close our pipes.
        with open(self.root / "start.out", "w+") as out:
            result = subprocess.run([self.binary, "-c", str(self.config)], stdout=out, stderr=out, text=True)
            out.seek(0)
            if result.returncode != 0:
                raise RuntimeError(f"dovecot did not start: {out.read()}\n{self.logs()}")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        raise RuntimeError(f"dovecot did not listen on {self.port}\n{self.logs()}")

    def _master_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.root / "run" / "master.pid").read_text().strip())
        return None

    def stop(self) -> None:
        """Stop the instance we started (by its master's pid) and wait until
        its port is closed."""
        pid = self._master_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    def logs(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text()[-4000:]
        return ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- as a mail client ---------------------------------------------------

    @contextlib.contextmanager
    def client(self) -> Iterator[IMAPClient]:
        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=10)
        client.login(USER, PASSWORD)
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        with self.client() as c:
            if not c.folder_exists(folder):
                c.create_folder(folder)
            c.append(folder, raw)

    def recreate(self, folder: str) -> None:
        """Delete and create a folder: its messages are gone and it gets a new
        UIDVALIDITY, as after a server migration or a restored backup."""
        with self.client() as c:
            if c.folder_exists(folder):
                c.delete_folder(folder)
            c.create_folder(folder)

    def uidvalidity(self, folder: str = "INBOX") -> int:
        with self.client() as c:
            return int(c.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"])

    async def append_async(self, raw: bytes, folder: str = "INBOX") -> None:
        await asyncio.to_thread(self.append, raw, folder)


@dataclass
class SmtpSink:
    """What the aiosmtpd server received, and how it should answer next."""

    messages: list[tuple[Envelope, EmailMessage]] = field(default_factory=list)
    #: Replies to give to the next DATA commands instead of accepting ("451 ...").
    data_replies: list[str] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    logins: list[str] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        parsed = message_from_bytes(content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((envelope, parsed))
        return "250 Message accepted for delivery"

    def authenticate(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.login == USER.encode() and data.password == PASSWORD.encode()
        if ok:
            self.logins.append(mechanism)
        return AuthResult(success=ok)


class SmtpServer:
    """aiosmtpd in its own thread on a free port; with ``tls``, STARTTLS and
    AUTH are required."""

    def __init__(self, *, tls: tuple[Path, Path] | None = None) -> None:
        self.sink = SmtpSink()
        self.port = free_port()
        kwargs: dict[str, Any] = {}
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            kwargs = {
                "tls_context": ctx,
                "require_starttls": True,
                "authenticator": self.sink.authenticate,
                "auth_required": True,
            }
        else:
            kwargs = {"authenticator": self.sink.authenticate, "auth_require_tls": False}
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port, **kwargs)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.controller.stop()

    async def received(self, count: int, timeout: float = 30) -> list[EmailMessage]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.sink.messages) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the SMTP server received {len(self.sink.messages)} messages, not {count}")
            await asyncio.sleep(0.05)
        return [m for _, m in self.sink.messages]


async def eventually(check: Any, timeout: float = 30, what: str = "condition") -> Any:
    """Wait until ``await check()`` is truthy (the hub works in the background)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s (last: {value!r})")
        await asyncio.sleep(0.1)
