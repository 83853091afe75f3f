"""Email: parsing what arrives over IMAP, and sending over SMTP.

Parsing is pure (raw bytes in, :class:`ParsedEmail` out, no I/O) and never
raises for a message however broken: the standard library's ``email`` package
with the modern policy decodes RFC 2047 headers and RFC 2231 parameters, and
where it gives up (it raises on some malformed parameters) the message is read
again with the compat32 policy, part by part, else its header alone, so the
sender and subject are always kept. Addresses are read from headers as
written, never from what an encoded display name decodes to; names lose
control characters and line breaks. Text in any declared charset is decoded
with undecodable bytes replaced (labels mapped the way browsers map them, so
"iso-8859-1" mail written in Windows-1252 reads right); text/plain is
preferred, HTML-only mail is turned into readable text by inscriptis, and the
HTML itself is kept, sanitized by nh3, for display.
The customer's new words are separated from the quoted history and signature
(:mod:`channels.email_quotes`); the hub keeps the raw message, so the full
original is one click away.

Bounces and delivery reports (multipart/report, RFC 3464 and 8098) come out as
:class:`~hub.core.DeliveryReceipt` for the Message-ID we sent; auto-replies and
bulk mail are flagged (with the reason) so the bot never answers them.

Threading keys are extracted here (Message-ID, In-Reply-To, References, our
reply token in the subject "[#123]" or a plus address "support+123@"); the
storage layer decides which ticket they point at.

Sending: :class:`EmailChannel` builds multipart/alternative (plain + HTML,
right-to-left aware) with attachments, From with the inbox's display name,
Reply-To with the token, In-Reply-To / References from the thread, and a
Message-ID derived from our message id, so a resend after a crash carries the
same id and the customer's client shows it once. Like a mail client's "reply
all", it goes to the Reply-To of the customer's latest mail (else its From)
and copies the others on it, never our own mailboxes. Temporary (4xx) SMTP
errors and unreachable servers are retryable; permanent (5xx) ones fail with
the server's words. The SMTP steps are taken one by one, so that a connection
lost (or an answer not given within ten minutes) after the whole message was
written is known for what it is: the message may have been delivered, and it
fails saying so instead of going out twice. A sent message keeps the
addresses it went to (``SEND_PARTS``), which threading uses. Only the customer's address decides: a malformed copy is
left out and a refused one named in the result, and the reply still goes out;
when only the customer's address was refused for now, the retry goes to it
alone. An address the email package cannot write, or an internationalized
one on a server without SMTPUTF8, fails at once with a reason (no retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import html
import mimetypes
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email import policy
from email._header_value_parser import Terminal, TokenList, get_address_list
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser, HeaderParser
from email.utils import format_datetime, getaddresses, parsedate_to_datetime
from typing import Any, ClassVar, Literal

import aiosmtplib
import nh3
from aiosmtplib.email import flatten_message, parse_address
from aiosmtplib.protocol import normalize_message_line_endings
from inscriptis import get_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig

from channels.base import SEND_PARTS, ChannelAdapter
from channels.email_quotes import split_reply
from hub.core import (
    Attachment,
    Author,
    Channel,
    DeliveryReceipt,
    DeliveryStatus,
    InboundMessage,
    OutboundMessage,
    SendResult,
    utcnow,
)

#: Identity address for mail whose sender cannot be read at all. The reserved
#: ".invalid" domain (RFC 2606) makes any reply to it fail with a reason.
UNKNOWN_SENDER = "unknown-sender@invalid"
MAX_BODY_CHARS = 100_000
#: Ends a body cut to :data:`MAX_BODY_CHARS` (and counts in it).
SHORTENED = "\n\n[…]"
MAX_EXTRA_CHARS = 50_000
MAX_REFERENCES = 20
MAX_MIME_DEPTH = 40
MAX_EXTERNAL_ID = 512
#: Copies on one reply: a thread that once went to a whole mailing list or
#: address book must not turn every reply into a mass mailing.
MAX_CC = 20

# --- small helpers -----------------------------------------------------------


def clean_text(value: str) -> str:
    """Text safe to store anywhere: lone surrogates (from undecodable header
    bytes) become U+FFFD, NUL characters (refused by PostgreSQL) are dropped."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\x00", "")


def normalize_msgid(value: str) -> str:
    """A Message-ID as stored: without angle brackets or surrounding space."""
    return value.strip().strip("<>").strip()


_MSGID = re.compile(r"<([^<>\s]+)>")


def msgids(value: str | None) -> list[str]:
    """Every Message-ID in a header such as References, in order, without
    duplicates; bare ids (without brackets) are accepted when they are alone."""
    if not value:
        return []
    found = _MSGID.findall(value)
    if not found and "@" in value and " " not in value.strip():
        found = [value.strip()]
    seen: dict[str, None] = {}
    for mid in found:
        mid = normalize_msgid(mid)
        if mid and len(mid) <= MAX_EXTERNAL_ID:
            seen.setdefault(mid, None)
    return list(seen)


def address_domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


# Labels mapped the way the WHATWG Encoding Standard (and so every browser and
# mail client) maps them, where Python's codec registry does not already:
# senders routinely declare a charset and write in its Windows superset, and
# use labels Python does not know ("x-cp1256", "iso-8859-8-i"). The
# ``webencodings`` package has the full table; it is not a dependency here,
# and the labels Python resolves the same way need no entry. Python's own
# decoder is kept where it reads more than the standard allows (UTF-16 with a
# byte order mark, ISO-2022-KR in old Korean mail).
_WHATWG_LABELS = {
    "utf-8": "unicode-1-1-utf-8 unicode11utf8 unicode20utf8 x-unicode20utf8",
    "iso8859-2": "iso88592",
    "iso8859-3": "iso88593",
    "iso8859-4": "iso88594",
    "iso8859-5": "iso88595",
    "iso8859-6": "csiso88596e csiso88596i iso-8859-6-e iso-8859-6-i iso88596",
    "iso8859-7": "iso88597 sun_eu_greek",
    "iso8859-8": "csiso88598e iso-8859-8-e iso88598 visual csiso88598i iso-8859-8-i logical",
    "iso8859-10": "iso885910",
    "iso8859-13": "iso885913",
    "iso8859-14": "iso885914",
    "iso8859-15": "csisolatin9 iso885915",
    "koi8-r": "koi koi8",
    "koi8-u": "koi8-ru",
    "mac-roman": "csmacintosh mac x-mac-roman",
    "mac-cyrillic": "x-mac-cyrillic x-mac-ukrainian",
    "cp874": "dos-874 iso-8859-11 iso8859-11 iso885911 tis-620 windows-874",
    "cp1250": "x-cp1250",
    "cp1251": "x-cp1251",
    "cp1252": "ansi_x3.4-1968 ascii cp819 csisolatin1 ibm819 iso-8859-1 iso-ir-100 iso8859-1 iso88591 iso_8859-1 "
    "iso_8859-1:1987 l1 latin1 latin-1 us-ascii x-cp1252",
    "cp1253": "x-cp1253",
    "cp1254": "csisolatin5 iso-8859-9 iso-ir-148 iso8859-9 iso88599 iso_8859-9 iso_8859-9:1989 l5 latin5 x-cp1254",
    "cp1255": "x-cp1255",
    "cp1256": "x-cp1256",
    "cp1257": "x-cp1257",
    "cp1258": "x-cp1258",
    "gb18030": "chinese csgb2312 csiso58gb231280 gb2312 gb_2312 gb_2312-80 gbk iso-ir-58 x-gbk",
    "big5hkscs": "big5 cn-big5 csbig5 x-x-big5",
    "euc_jp": "cseucpkdfmtjapanese x-euc-jp",
    "cp932": "csshiftjis shift-jis shift_jis sjis windows-31j x-sjis ms932 ms_kanji",
    "cp949": "cseuckr csksc56011987 euc-kr iso-ir-149 korean ks_c_5601-1987 ks_c_5601-1989 ksc5601 ksc_5601 "
    "windows-949",
    "utf-16-be": "unicodefffe",
    "utf-16-le": "csunicode iso-10646-ucs-2 ucs-2 unicode unicodefeff",
    "utf-7": "unicode-1-1-utf-7",
}
_CHARSET_ALIASES = {label: codec for codec, labels in _WHATWG_LABELS.items() for label in labels.split()}

# An HTML document's own declaration (<meta charset="..."> or <meta
# http-equiv="Content-Type" content="text/html; charset=...">), read from its
# start as browsers do when nothing else declares one.
_META_CHARSET = re.compile(rb"<meta\b[^>]{0,500}?charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:+-]{1,40})", re.IGNORECASE)
_META_PRESCAN_BYTES = 4096


def html_charset(data: bytes) -> str | None:
    """The charset an HTML document declares in a ``<meta>`` tag, or None. A
    UTF-16 declaration in bytes read as ASCII is wrong by definition; the
    Encoding Standard reads such a document as UTF-8."""
    found = _META_CHARSET.search(data[:_META_PRESCAN_BYTES])
    if found is None:
        return None
    label = found.group(1).decode("ascii").lower()
    return "utf-8" if _CHARSET_ALIASES.get(label, label).startswith("utf-16") else label


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in a declared charset to text, never raising: an unknown label
    falls back to UTF-8, undecodable bytes become U+FFFD. Undeclared or ASCII
    text that is in fact UTF-8 (common) is read as UTF-8."""
    label = (charset or "").strip().strip('"').lower()
    if label in ("", "us-ascii", "ascii", "unknown-8bit", "x-unknown", "default"):
        try:
            return clean_text(data.decode("utf-8"))
        except UnicodeDecodeError:
            label = "cp1252"
    codec = _CHARSET_ALIASES.get(label, label)
    try:
        text = data.decode(codec, errors="replace")
    except (LookupError, ValueError, UnicodeError):
        # An unknown label, one Python cannot look up ("utf-8\0"), or a codec
        # that is not a charset and refuses "replace" or raises anyway (idna,
        # punycode, undefined): the text is read as UTF-8 instead.
        text = data.decode("utf-8", errors="replace")
    return clean_text(text)


def _header(msg: Message, name: str) -> str:
    """A header decoded to text (RFC 2047), never raising; "" when absent."""
    try:
        found: object = msg.get(name)
    except Exception:  # noqa: BLE001 - the modern policy raises on some malformed headers
        found = None
    # Also where the compat32 policy hands back an 8-bit header as a Header
    # object: the text as written (raw UTF-8 included) is read instead.
    value = found if isinstance(found, str) else _raw_header(msg, name)
    if value is None:
        return ""
    text = str(value)
    if "=?" in text:
        # Undecodable encoded-words stay as written rather than being lost.
        with contextlib.suppress(Exception):
            text = str(make_header(decode_header(text)))
    return clean_text(" ".join(text.split()))


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _raw_header(msg: Message, name: str) -> str | None:
    """The first ``name`` header as the sender wrote it (encoded-words not
    decoded), unfolded; None when absent."""
    wanted = name.lower()
    for key, value in msg.raw_items():
        if key.lower() == wanted:
            return _LINE_BREAK.sub("", str(value))
    return None


# Control characters (C0, DEL, C1 and the Unicode line and paragraph
# separators) have no place in a name: a name is shown on one line and
# written into headers, where a line break ends the header.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def display_name(value: str) -> str:
    """A person's name as it can be shown and written into a header: control
    characters and line breaks become spaces, runs of spaces one."""
    return " ".join(_CONTROL.sub(" ", clean_text(value)).split())


def _addresses(msg: Message, name: str) -> list[tuple[str, str]]:
    """(display name, lower-case address) pairs of an address header; entries
    without an "@" are dropped.

    Addresses are read from the header as written. Only display names are
    decoded (RFC 2047): text an encoded-word decodes to is never read as an
    address, or ``=?utf-8?q?x=0D=0Ay:_sara@example.com?= <mallory@evil.test>``
    (or ``mallory@=?utf-8?q?example.com?=``) would pass for Sara's mail."""
    raw = _raw_header(msg, name)
    if raw is None:
        return []
    try:
        found = _parsed_addresses(raw)
    except Exception:  # noqa: BLE001 - the modern parser gives up on some malformed lists
        found = _legacy_addresses(raw)
    pairs: list[tuple[str, str]] = []
    for display, spec in found:
        spec = clean_text(spec).strip().lower()
        if "@" in spec and not spec.startswith("@"):
            pairs.append((display_name(display), spec))
    return pairs


def _parsed_addresses(raw: str) -> list[tuple[str, str]]:
    """The header's mailboxes, by the modern parser, minus any whose address
    an encoded-word would make."""
    address_list, _ = get_address_list(raw)
    found: list[tuple[str, str]] = []
    for mailbox in address_list.all_mailboxes:
        if _decodes_into_address(mailbox):
            continue
        local, domain = mailbox.local_part, mailbox.domain
        if not local or not domain:
            continue
        try:
            # Written as the header registry writes it: a local part that is
            # not a dot-atom is quoted.
            spec = Address(username=str(local), domain=str(domain)).addr_spec
        except (ValueError, IndexError, HeaderParseError):
            continue
        found.append((str(mailbox.display_name or ""), spec))
    return found


def _decodes_into_address(token: TokenList | Terminal) -> bool:
    """Whether an encoded-word stands anywhere in the token but its display
    name and comments (the parser decodes one even in a local part or a
    domain)."""
    if token.token_type == "encoded-word":  # noqa: S105 - a token's type, not a password
        return True
    if not isinstance(token, TokenList) or token.token_type in ("display-name", "comment"):
        return False
    return any(_decodes_into_address(sub) for sub in token)


_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
# Stand-ins for encoded-words while the legacy parser reads a header: private
# use characters, which it takes as plain atom text.
_MASK_OPEN, _MASK_CLOSE = "\ue000", "\ue001"
_MASKED = re.compile(f"{_MASK_OPEN}(\\d+){_MASK_CLOSE}")


def _legacy_addresses(raw: str) -> list[tuple[str, str]]:
    """The header's addresses by the tolerant legacy parser, with each
    encoded-word hidden behind a stand-in while it reads: what one decodes to
    (or its specials, such as ":" starting a group) cannot make an address."""
    words: list[str] = []

    def hide(match: re.Match[str]) -> str:
        words.append(match.group(0))
        return f"{_MASK_OPEN}{len(words) - 1}{_MASK_CLOSE}"

    found: list[tuple[str, str]] = []
    for display, spec in getaddresses([_ENCODED_WORD.sub(hide, raw)]):
        if _MASK_OPEN in spec or _MASK_CLOSE in spec:
            continue
        display = _MASKED.sub(lambda m: words[int(m.group(1))], display)
        if "=?" in display:
            with contextlib.suppress(Exception):
                display = str(make_header(decode_header(display)))
        found.append((display, spec))
    return found


# --- the parsed message ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedAttachment:
    data: bytes
    filename: str
    content_type: str
    #: Content-ID of an inline image that the HTML refers to as ``cid:...``.
    content_id: str | None = None
    inline: bool = False


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What a bounce or a delivery/read report says about mail we sent."""

    kind: Literal["bounce", "delayed", "delivered", "read", "other"]
    status: DeliveryStatus | None
    reason: str
    #: Message-IDs of the messages the report is about.
    original_ids: tuple[str, ...]
    recipients: tuple[str, ...] = ()
    #: The recipients ``status`` is about (those that failed, for a bounce);
    #: empty when the report names none. A reply goes to the customer and
    #: copies others: only the customer's address may decide its status.
    status_recipients: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ParsedEmail:
    #: The stable id of this message: its Message-ID, or a hash of the raw
    #: bytes when it has none (so a re-import still finds the same message).
    key: str
    message_id: str | None
    sender: str
    sender_name: str | None
    subject: str
    date: datetime | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    reply_to: tuple[str, ...]
    #: Every address the message was delivered to (To, Cc, Delivered-To,
    #: X-Original-To): where a plus-address reply token is looked for.
    recipients: tuple[str, ...]
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    #: What the customer just wrote; the quoted history and the signature apart.
    body: str
    quoted: str
    signature: str
    #: The whole text (new words, history, signature) as the client sent it.
    full_text: str
    #: The HTML part, sanitized for display; None for plain-text mail.
    html: str | None
    attachments: tuple[ParsedAttachment, ...]
    #: Why this is an automatic message (out-of-office, list, bulk), or None.
    auto_reply: str | None
    report: DeliveryReport | None
    defects: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: The display name of the first Reply-To address.
    reply_to_name: str | None = None

    @property
    def is_report(self) -> bool:
        """Bounces and delivery or read reports are not conversations."""
        return self.report is not None

    def receipts(self) -> list[DeliveryReceipt]:
        if self.report is None or self.report.status is None:
            return []
        return [
            DeliveryReceipt(
                channel=Channel.EMAIL,
                external_id=mid,
                status=self.report.status,
                reason=self.report.reason or None,
            )
            for mid in self.report.original_ids
        ]


_PARSER = BytesParser(policy=policy.default)
#: Reads headers as plain text, so it never gives up on a malformed one; used
#: only where the modern policy (which decodes them far better) raised.
_TOLERANT_PARSER = BytesParser(policy=policy.compat32)


def raw_key(raw: bytes) -> str:
    """The key of a message without a Message-ID: a hash of its bytes, line
    endings normalized (IMAP servers hand back LF-stored mail as CRLF)."""
    return "sha256:" + hashlib.sha256(raw.replace(b"\r\n", b"\n").rstrip()).hexdigest()


def parse_email(raw: bytes) -> ParsedEmail:
    """Parse one message. Never raises: whatever cannot be read is replaced
    or left out and named in ``defects`` or ``notes``.

    The modern policy raises on some malformed headers (a parameter without a
    value, ``name*``), for the whole message or for one part of it. Then the
    message is read again with the compat32 policy, which reads headers as
    plain text, and the reading that lost fewer parts is kept. Should both
    fail, its header alone is read (:func:`read_envelope`): the customer's
    address and subject are kept, and the stored original has the rest."""
    readings: list[tuple[int, ParsedEmail]] = []
    failure: Exception | None = None
    for parser in (_PARSER, _TOLERANT_PARSER):
        try:
            parsed, unread = _parse(raw, parser.parsebytes(raw))
        except Exception as exc:  # noqa: BLE001 - the next parser, or the header alone
            failure = failure or exc
            continue
        if not unread:
            return parsed
        readings.append((unread, parsed))
    if readings:
        # The first of equals: the modern policy's reading.
        return min(readings, key=lambda reading: reading[0])[1]
    envelope = read_envelope(raw)
    error = f"{type(failure).__name__}: {failure}"[:300] if failure else "unknown error"
    return replace(envelope, notes=(*envelope.notes, f"the message could not be read ({error}): only its header was"))


def read_envelope(raw: bytes) -> ParsedEmail:
    """A message's header alone, read as plain text: who wrote it, about what
    and in which thread, with an empty body. Never raises; for mail the full
    parse cannot read, so that what is kept of it still names its sender."""
    try:
        msg: Message = BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
    except Exception:  # noqa: BLE001 - nothing readable: an empty header
        msg = Message()
    return ParsedEmail(
        **_header_fields(msg, raw),
        body="",
        quoted="",
        signature="",
        full_text="",
        html=None,
        attachments=(),
        report=None,
    )


def _header_fields(msg: Message, raw: bytes) -> dict[str, Any]:
    """What the header says (who wrote to whom, about what, in which thread),
    as :class:`ParsedEmail` fields."""
    sender, sender_name = _sender(msg)
    message_id = next(iter(msgids(_header(msg, "Message-ID"))), None)
    to = [a for _, a in _addresses(msg, "To")]
    cc = [a for _, a in _addresses(msg, "Cc")]
    reply_to = _addresses(msg, "Reply-To")
    return {
        "key": message_id or raw_key(raw),
        "message_id": message_id,
        "sender": sender,
        "sender_name": sender_name,
        "subject": _header(msg, "Subject")[:1000],
        "date": _date(msg),
        "to": tuple(to),
        "cc": tuple(cc),
        "reply_to": tuple(a for _, a in reply_to),
        "recipients": _recipients(msg, to, cc),
        "in_reply_to": tuple(msgids(_header(msg, "In-Reply-To"))),
        "references": tuple(msgids(_header(msg, "References"))),
        "auto_reply": auto_reply_reason(msg, sender),
        "reply_to_name": (reply_to[0][0][:512] or None) if reply_to else None,
    }


def _sender(msg: Message) -> tuple[str, str | None]:
    """The sender's address and name: From, else Sender, Reply-To,
    Return-Path, the mbox "From " line; else :data:`UNKNOWN_SENDER` with
    whatever the From header says as the name."""
    for name in ("From", "Sender", "Reply-To", "Return-Path"):
        pairs = _addresses(msg, name)
        if pairs:
            return pairs[0][1][:MAX_EXTERNAL_ID], pairs[0][0][:512] or None
    unix_from = (msg.get_unixfrom() or "").split()
    if len(unix_from) > 1 and "@" in unix_from[1]:
        # Its bytes are whatever the mbox writer had: read like a header.
        return clean_text(unix_from[1]).lower()[:MAX_EXTERNAL_ID], None
    return UNKNOWN_SENDER, display_name(_header(msg, "From"))[:512] or None


def _recipients(msg: Message, to: Sequence[str], cc: Sequence[str]) -> tuple[str, ...]:
    """Every address the message was delivered to, the envelope's first."""
    found: dict[str, None] = {}
    for name in ("Delivered-To", "X-Original-To", "Envelope-To"):
        for _, address in _addresses(msg, name):
            found.setdefault(address, None)
    for address in (*to, *cc):
        found.setdefault(address, None)
    return tuple(found)


def _parse(raw: bytes, msg: Message) -> tuple[ParsedEmail, int]:
    """``msg`` as the hub's parsed email, and how many of its parts could
    not be read."""
    collector = _Collector()
    collector.walk(msg, top=True)
    header = _header_fields(msg, raw)

    full_text = "\n\n".join(t for t in collector.texts if t.strip()).strip("\n")
    if not full_text and collector.html_texts:
        full_text = "\n\n".join(collector.html_texts).strip("\n")
    parts = split_reply(full_text)
    defects = [type(d).__name__ for part in msg.walk() for d in getattr(part, "defects", [])]

    parsed = ParsedEmail(
        **header,
        body=parts.new,
        quoted=parts.quoted,
        signature=parts.signature,
        full_text=full_text,
        html=collector.html,
        attachments=tuple(collector.attachments),
        report=_delivery_report(msg, header["sender"], collector),
        defects=tuple(dict.fromkeys(defects)),
        notes=tuple(collector.notes),
    )
    return parsed, collector.unread


def _date(msg: Message) -> datetime | None:
    value = _header(msg, "Date")
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        # RFC 5322 "-0000": the time is UTC, its zone unknown.
        parsed = parsed.replace(tzinfo=UTC)
    parsed = parsed.astimezone(UTC)
    # A clock far ahead (or a made-up date) must not reorder the conversation.
    if parsed > utcnow() + timedelta(days=1) or parsed.year < 1980:
        return None
    return parsed


# --- the MIME tree -----------------------------------------------------------

_SKIPPED_TYPES = {
    "application/pgp-signature",
    "application/pkcs7-signature",
    "application/x-pkcs7-signature",
    "message/external-body",
}
_REPORT_PARTS = {"message/delivery-status", "message/global-delivery-status", "message/disposition-notification"}


class _Collector:
    """Walks the MIME tree the way a mail client displays it: the text a
    reader sees, the HTML for display, and the files."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.html_texts: list[str] = []
        self.html: str | None = None
        self.attachments: list[ParsedAttachment] = []
        self.notes: list[str] = []
        self.report_parts: list[Message] = []
        self.original_headers: list[Message] = []
        self.depth = 0
        #: Whether a text part was taken as the body (or its HTML) already.
        self.read_text = False
        #: Parts that raised while being read (named in ``notes``).
        self.unread = 0
        #: What the HTML parts cost so far: characters sanitized, tags laid
        #: out as text (see :data:`MAX_HTML_CHARS`, :data:`MAX_HTML_TAGS`).
        self.html_chars = 0
        self.html_tags = 0

    def walk(self, part: Message, *, top: bool = False, want_text: bool = True) -> None:
        self.depth += 1
        try:
            if self.depth > MAX_MIME_DEPTH:
                # Mail nested this deep is built to exhaust parsers; the raw
                # original keeps everything.
                self.notes.append(f"parts nested deeper than {MAX_MIME_DEPTH} levels were not read")
                return
            try:
                self._walk(part, top=top, want_text=want_text)
            except Exception as exc:  # noqa: BLE001 - one part the library cannot read must not cost the others
                self.unread += 1
                error = f"{type(exc).__name__}: {exc}"[:200]
                self.notes.append(f"a {_content_type(part)} part could not be read ({error})")
        finally:
            self.depth -= 1

    def _walk(self, part: Message, *, top: bool, want_text: bool) -> None:
        ctype = part.get_content_type()
        # message/* parts count as multipart to the parser (their payload is
        # a list of messages), so they are told apart first.
        if ctype in ("message/rfc822", "message/global"):
            inner = self._inner_message(part)
            if inner is None:
                return
            if top:
                # The whole message is a forwarded one: show it as the body.
                self.walk(inner, want_text=want_text)
            else:
                self.original_headers.append(inner)
                data = _message_bytes(inner)
                if data is None:
                    self.notes.append(f"the attached message {_eml_name(inner)!r} could not be kept as a file")
                else:
                    self._attach(part, data, _eml_name(inner))
            return
        if ctype in _REPORT_PARTS:
            self.report_parts.append(part)
            return
        if part.is_multipart():
            payload = part.get_payload()
            subparts = [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []
            self._multipart(ctype, subparts, want_text=want_text)
            return
        if ctype == "text/rfc822-headers":
            self.original_headers.append(HeaderParser(policy=policy.default).parsestr(_text_of(part)))
            return
        if ctype in _SKIPPED_TYPES:
            return
        disposition = (part.get_content_disposition() or "").lower()
        if ctype.startswith("multipart/"):
            # A multipart whose boundary never appears: its body is plain text.
            self._text(_text_of(part), want_text)
            return
        # Apple Mail sends attached text files inline, with a filename: after
        # the body's first text part, a named one is a file, not more body.
        # (The HTML alternative of a plain body, read with want_text off, is
        # the same body however it is named.)
        named = want_text and self.read_text and _filename(part) is not None
        as_file = disposition == "attachment" or named
        if not as_file and ctype == "text/plain":
            self._text(_text_of(part), want_text)
            return
        if not as_file and ctype == "text/html":
            self._html(_text_of(part), want_text)
            return
        data = _bytes_of(part)
        if data is None:
            return
        self._attach(part, data, None)

    def _multipart(self, ctype: str, subparts: list[Message], *, want_text: bool) -> None:
        if ctype == "multipart/alternative":
            plain = next((p for p in subparts if p.get_content_type() == "text/plain" and _text_of(p).strip()), None)
            rich = [
                p for p in subparts if p.get_content_type() in ("text/html", "multipart/related", "multipart/mixed")
            ]
            if plain is not None:
                self.walk(plain, want_text=want_text)
                if rich:
                    self.walk(rich[-1], want_text=False)
            elif rich:
                self.walk(rich[-1], want_text=want_text)
            elif subparts:
                self.walk(subparts[-1], want_text=want_text)
            return
        if ctype == "multipart/signed" and subparts:
            self.walk(subparts[0], want_text=want_text)
            return
        if ctype == "multipart/report" and subparts:
            # The human-readable explanation first, then the machine-readable
            # report and the returned message.
            self.walk(subparts[0], want_text=want_text)
            for sub in subparts[1:]:
                self.walk(sub, want_text=False)
            return
        for sub in subparts:
            self.walk(sub, want_text=want_text)

    def _text(self, text: str, want_text: bool) -> None:
        self.read_text = True
        if want_text:
            self.texts.append(text)

    def _html(self, source: str, want_text: bool) -> None:
        self.read_text = True
        texts = self.texts if want_text else self.html_texts
        if self.html_chars + len(source) > MAX_HTML_CHARS:
            # Past what may be parsed at all: the text by a tag strip, no page.
            texts.append(plain_text(source))
            self.notes.append(
                f"an HTML part of {len(source)} characters is too large to show as a page: its text is shown "
                "without the layout, and the original message has it whole"
            )
            return
        self.html_chars += len(source)
        page = bound_html(source)
        if page.flattened:
            self.notes.append(
                f"the HTML was nested deeper than {MAX_HTML_DEPTH} levels: the tags past that depth were left out "
                "and their text kept"
            )
        sanitized = _sanitize(page.html)
        self.html = sanitized if self.html is None else self.html + sanitized
        if self.html_tags + page.tags <= MAX_HTML_TAGS:
            self.html_tags += page.tags
            converted = _layout_text(page.html)
            if not converted.strip():
                # The parser gave up on it (lxml drops what it nests too deep):
                # the text is still shown.
                converted = plain_text(page.html)
        else:
            converted = plain_text(page.html)
            self.notes.append(
                f"an HTML part with {page.tags} tags is too large to lay out: its text is shown without the layout"
            )
        texts.append(converted)

    @staticmethod
    def _inner_message(part: Message) -> Message | None:
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0]
        return None

    def _attach(self, part: Message, data: bytes, fallback_name: str | None) -> None:
        ctype = part.get_content_type()
        name = _filename(part) or fallback_name or _default_name(part, len(self.attachments) + 1)
        cid = normalize_msgid(_header(part, "Content-ID")) or None
        disposition = (part.get_content_disposition() or "").lower()
        self.attachments.append(
            ParsedAttachment(
                data=data,
                filename=name,
                content_type=ctype,
                content_id=cid,
                inline=disposition != "attachment" and cid is not None and ctype.startswith("image/"),
            )
        )


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:  # noqa: BLE001 - a malformed Content-Type
        return "unreadable"


def _message_bytes(inner: Message) -> bytes | None:
    """An attached message as a file. The generator refuses some trees the
    parser builds (a multipart without its boundary around 8-bit text), so
    each way of writing it is tried in turn; None if none works."""
    writers: list[Callable[[], bytes]] = [
        lambda: inner.as_bytes(policy=policy.SMTP),
        lambda: inner.as_bytes(policy=policy.compat32.clone(linesep="\r\n")),
        lambda: inner.as_string(policy=policy.SMTP).encode("utf-8", "surrogateescape"),
    ]
    for write in writers:
        with contextlib.suppress(Exception):
            return write()
    return None


def _param(part: Message, name: str) -> str:
    """A Content-Type parameter in lower case; "" when absent or unreadable."""
    try:
        return str(part.get_param(name) or "").lower()
    except Exception:  # noqa: BLE001 - malformed parameters
        return ""


def _bytes_of(part: Message) -> bytes | None:
    try:
        data = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - a broken transfer encoding: keep what is there
        raw = part.get_payload()
        data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else None
    return data if isinstance(data, bytes) else None


def _text_of(part: Message) -> str:
    data = _bytes_of(part)
    if data is None:
        raw = part.get_payload()
        return clean_text(raw) if isinstance(raw, str) else ""
    try:
        charset = part.get_content_charset()
    except Exception:  # noqa: BLE001 - a malformed Content-Type parameter
        charset = None
    if charset is None and part.get_content_type() == "text/html":
        charset = html_charset(data)
    text = decode_bytes(data, charset).replace("\r\n", "\n")
    if part.get_content_type() == "text/plain" and _param(part, "format") == "flowed":
        text = unflow(text, delsp=_param(part, "delsp") == "yes")
    return text


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:  # noqa: BLE001 - malformed RFC 2231 parameters
        name = None
    if not name:
        try:
            param = part.get_param("name")
        except Exception:  # noqa: BLE001 - malformed parameters: no name then
            param = None
        name = str(param[2]) if isinstance(param, tuple) else param
    if not name:
        return None
    if "=?" in name:
        with contextlib.suppress(Exception):
            name = str(make_header(decode_header(name)))
    name = clean_text(name).replace("/", "_").replace("\\", "_").strip()
    return name[:255] or None


def _default_name(part: Message, index: int) -> str:
    """A name for a nameless part: its description if it has one ("patch1"),
    with the extension its type implies."""
    ctype = part.get_content_type()
    ext = mimetypes.guess_extension(ctype) or (".txt" if ctype.startswith("text/") else ".bin")
    hint = re.sub(r"[^\w\- ]+", "", _header(part, "Content-Description"), flags=re.UNICODE).strip()[:80]
    return f"{hint or f'attachment-{index}'}{ext}"


def _eml_name(inner: Message) -> str:
    subject = _header(inner, "Subject")
    base = re.sub(r"[^\w\- ]+", "", subject, flags=re.UNICODE).strip()[:80]
    return f"{base or 'message'}.eml"


def unflow(text: str, *, delsp: bool = False) -> str:
    """Undo RFC 3676 format=flowed: a line ending in a space continues on the
    next line (of the same quote depth); "-- " is the signature line."""
    out: list[str] = []
    current: str | None = None
    depth_of_current = -1
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing
        if current is not None and depth == depth_of_current:
            current += content
        else:
            if current is not None:
                out.append(">" * depth_of_current + (" " if depth_of_current else "") + current)
            current = content
            depth_of_current = depth
        if content.endswith(" ") and content != "-- ":
            if delsp:
                current = current[:-1]
            continue
        out.append(">" * depth + (" " if depth else "") + current)
        current = None
        depth_of_current = -1
    if current is not None:
        out.append(">" * depth_of_current + (" " if depth_of_current else "") + current)
    return "\n".join(out)


# --- HTML --------------------------------------------------------------------

_TEXT_CONFIG = ParserConfig(css=CSS_PROFILES["strict"], display_links=True)
_TAGS = set(nh3.ALLOWED_TAGS) | {"font", "center"}
_ATTRIBUTES: dict[str, set[str]] = {
    **{tag: {"dir", "lang", "title", "align"} for tag in _TAGS},
    "a": {"href", "dir", "lang", "title"},
    "img": {"src", "alt", "width", "height", "title"},
    "td": {"colspan", "rowspan", "dir", "align", "valign", "width"},
    "th": {"colspan", "rowspan", "dir", "align", "valign", "width"},
    "table": {"dir", "width", "border", "cellpadding", "cellspacing", "align"},
    "font": {"color", "face", "size", "dir"},
    "blockquote": {"dir", "type", "cite"},
    "ol": {"start", "type", "dir"},
}


def sanitize_html(source: str) -> str:
    """HTML safe to show an agent: no scripts, styles, event handlers, forms
    or frames; links open without a referrer; images only from http(s) or the
    message's own inline parts (``cid:``, linked to stored files by the hub).
    Tags nested past :data:`MAX_HTML_DEPTH` are left out (their text kept)."""
    return _sanitize(bound_html(source).html)


def _sanitize(bounded: str) -> str:
    return nh3.clean(
        bounded,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto", "tel", "cid"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


_CID_SRC = re.compile(r'src="cid:([^"]+)"')


def link_inline_images(sanitized: str, urls: Mapping[str, str]) -> str:
    """Point ``cid:`` image sources at the stored files they name."""

    def swap(match: re.Match[str]) -> str:
        url = urls.get(normalize_msgid(html.unescape(match.group(1))))
        return f'src="{html.escape(url)}"' if url else match.group(0)

    return _CID_SRC.sub(swap, sanitized)


def html_to_text(source: str) -> str:
    """Readable text of an HTML part: paragraphs, lists and tables laid out,
    links shown with their targets, scripts and styles dropped. A part with
    more than :data:`MAX_HTML_TAGS` tags gets its text without the layout
    (:func:`plain_text`)."""
    page = bound_html(source)
    if page.tags > MAX_HTML_TAGS:
        return plain_text(page.html)
    return _layout_text(page.html)


def _layout_text(bounded: str) -> str:
    if not bounded.strip():
        return ""
    try:
        text = get_text(bounded, _TEXT_CONFIG)
    except Exception:  # noqa: BLE001 - lxml gives up on some broken documents
        return plain_text(bounded)
    lines = [line.rstrip() for line in text.split("\n")]
    return clean_text(re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n"))


#: Bounds on the work one HTML part may cost. Sanitizing (html5ever, in nh3)
#: takes time growing faster than the square of the nesting depth, and lxml
#: (under inscriptis) drops the text nested past 255 levels: tags deeper than
#: MAX_HTML_DEPTH are left out, their text kept, before either sees the HTML.
#: Laying out text costs per tag (tables most), so a message with more tags
#: than real mail has is read as plain text; one larger still is not kept as
#: a page. Each bound is far beyond ordinary mail (Gmail clips at 102 KB).
MAX_HTML_DEPTH = 200
MAX_HTML_TAGS = 20_000
MAX_HTML_CHARS = 1_000_000

#: A comment, a tag (an end tag or not, and its name), or markup that is no
#: element (<!doctype>, <?xml?>); a "<" before anything else is text.
_TOKEN = re.compile(r"<(?:(!--)|(/?)([A-Za-z][^\s/<>]*)|[!?/])")
#: Elements whose content is text to both html5ever and libxml2.
_RAW_TEXT = {name: re.compile(rf"</{name}", re.IGNORECASE) for name in ("script", "style")}
_VOID = frozenset(
    [
        "area",
        "base",
        "basefont",
        "bgsound",
        "br",
        "col",
        "embed",
        "frame",
        "hr",
        "image",
        "img",
        "input",
        "keygen",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    ]
)
#: Open elements that an opening tag ends when they are the current element,
#: as every HTML parser does (an ``<li>`` ends the ``<li>`` before it). Only
#: the current one: where a parser ends more, more depth is counted, not less.
_ENDS: dict[str, frozenset[str]] = {
    "li": frozenset({"li", "p"}),
    "dt": frozenset({"dt", "dd", "p"}),
    "dd": frozenset({"dt", "dd", "p"}),
    "td": frozenset({"td", "th"}),
    "th": frozenset({"td", "th"}),
    "tr": frozenset({"td", "th", "tr"}),
    "option": frozenset({"option"}),
    "optgroup": frozenset({"option", "optgroup"}),
    **{
        name: frozenset({"p"})
        for name in [
            "address",
            "article",
            "aside",
            "blockquote",
            "center",
            "details",
            "dialog",
            "dir",
            "div",
            "dl",
            "fieldset",
            "figcaption",
            "figure",
            "footer",
            "form",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "header",
            "hgroup",
            "hr",
            "main",
            "menu",
            "nav",
            "ol",
            "p",
            "pre",
            "section",
            "table",
            "ul",
        ]
    },
}


@dataclass(frozen=True, slots=True)
class BoundedHtml:
    """An HTML part as the sanitizer and the text layout may be given it."""

    #: The source, less the tags nested deeper than :data:`MAX_HTML_DEPTH`.
    html: str
    #: How many tags ``html`` has.
    tags: int
    #: Whether tags were left out for their depth.
    flattened: bool


def bound_html(source: str) -> BoundedHtml:
    """``source`` with its nesting bounded, in one pass: tags opened deeper
    than :data:`MAX_HTML_DEPTH` (and their end tags) are left out, the text
    in them is kept; HTML within the bound comes back as it is. Depth is
    counted as parsers build the tree (void elements, implied ends, an end
    tag closing what is still open inside it), erring on the deep side."""
    kept: list[str] = []
    stack: list[str] = []
    open_count: dict[str, int] = {}
    #: Elements left out for their depth and not yet ended, by name.
    dropped: dict[str, int] = {}
    tags = left_out = copied = pos = 0
    find, search = source.find, _TOKEN.search
    while (found := search(source, pos)) is not None:
        lt = found.start()
        if found.group(1):  # a comment, to its end
            close = find("-->", lt + 4)
            if close == -1:
                break
            pos = close + 3
            continue
        gt = find(">", lt + 1)
        if gt == -1:
            break  # no tag ends: the rest is text
        pos = gt + 1
        name = found.group(3)
        if name is None:  # <!doctype>, <?xml?>, </ >: no element
            continue
        tags += 1
        name = name.lower()
        leave_out = False
        if found.group(2):
            if dropped.get(name):
                dropped[name] -= 1
                leave_out = True
            elif open_count.get(name):
                # What is still open inside it ends with it.
                dropped.clear()
                while stack:
                    top = stack.pop()
                    open_count[top] -= 1
                    if top == name:
                        break
        elif name in _RAW_TEXT:
            closing = _RAW_TEXT[name].search(source, pos)
            if closing is None:
                break
            pos = closing.start()
        elif name not in _VOID:
            ends = _ENDS.get(name)
            while ends and stack and stack[-1] in ends:
                open_count[stack.pop()] -= 1
            if len(stack) >= MAX_HTML_DEPTH:
                dropped[name] = dropped.get(name, 0) + 1
                leave_out = True
            else:
                stack.append(name)
                open_count[name] = open_count.get(name, 0) + 1
        if leave_out:
            kept.append(source[copied:lt])
            copied = pos
            left_out += 1
    if not left_out:
        return BoundedHtml(html=source, tags=tags, flattened=False)
    kept.append(source[copied:])
    return BoundedHtml(html="".join(kept), tags=tags - left_out, flattened=True)


# Comments, scripts and styles (to their end, or the end of the document);
# tags that end a line; any other tag. "[^<>]" keeps each a linear scan.
_PLAIN_SKIPPED = re.compile(r"<!--.*?(?:-->|\Z)|<(script|style)\b[^<>]*>.*?(?:</\1\s*>|\Z)", re.DOTALL | re.IGNORECASE)
_PLAIN_BREAK = re.compile(
    r"</?(?:address|article|aside|blockquote|br|center|dd|div|dl|dt|figcaption|figure|footer|h[1-6]|header|hr|li|"
    r"main|nav|ol|p|pre|section|table|tr|ul)\b[^<>]*>",
    re.IGNORECASE,
)
_PLAIN_TAG = re.compile(r"</?[A-Za-z][^<>]*>|<![^<>]*>")


def plain_text(source: str) -> str:
    """The text of HTML by a tag strip (line breaks where blocks end, no
    layout), in linear time: for a part too large to lay out."""
    text = _PLAIN_SKIPPED.sub("", source)
    text = _PLAIN_BREAK.sub("\n", text)
    text = _PLAIN_TAG.sub(" ", text)
    lines = [" ".join(line.split()) for line in html.unescape(text).split("\n")]
    return clean_text(re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n"))


# --- automatic mail ----------------------------------------------------------

_AUTO_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[\s-]*(reply|response|antwort)|out of (the )?office|abwesenheitsnotiz|"
    r"réponse automatique|respuesta automática|autosvar|پاسخ خودکار|خارج از دفتر|رد تلقائي|"
    # A bare "Auto:" is a person's car in German, Dutch, Italian and Spanish
    # ("Auto: Termin für die Inspektion"): only with an absence after it.
    r"auto:\s*(out of (the )?office|abwesen|afwezig|absent|absence|fuera de (la )?oficina|assente|ausente))",
    re.IGNORECASE,
)
_NO_REPLY_LOCAL = re.compile(r"^(mailer-daemon|postmaster|no-?reply|do-?not-?reply|noreply-.*|bounces?(\+.*)?)$", re.I)


def auto_reply_reason(msg: Message, sender: str) -> str | None:
    """Why ``msg`` was sent by a machine (RFC 3834 and the headers real
    autoresponders, list servers and bulk senders use), or None. Such mail is
    stored like any other but never answered automatically, which is what
    breaks mail loops between two autoresponders."""
    auto_submitted = _header(msg, "Auto-Submitted").lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return f"Auto-Submitted: {auto_submitted}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-AutoReply-From", "X-Mail-Autoreply"):
        if _header(msg, name):
            return f"{name} header"
    # X-Auto-Response-Suppress is not among them: it asks the other side not
    # to answer automatically, and Exchange adds it to mail people write.
    if _header(msg, "X-Autogenerated").lower() == "reply" or _header(msg, "X-FC-MachineGenerated").lower() == "true":
        return "autogenerated reply"
    for name in ("Precedence", "X-Precedence"):
        value = _header(msg, name).lower()
        if value in ("bulk", "junk", "list", "auto_reply"):
            return f"{name}: {value}"
    if _header(msg, "List-Id") or _header(msg, "List-Unsubscribe"):
        return "mailing list (List-Id / List-Unsubscribe)"
    if _header(msg, "Return-Path").replace(" ", "") == "<>":
        return "null sender (Return-Path: <>)"
    if _NO_REPLY_LOCAL.match(sender.partition("@")[0]):
        return f"automated sender {sender}"
    if _AUTO_SUBJECT.match(_header(msg, "Subject")):
        return "automatic reply subject"
    return None


# --- bounces and delivery reports ---------------------------------------------

_BOUNCE_SUBJECT = re.compile(
    r"(undeliver|returned mail|delivery (status notification|has failed|failure|notification)|"
    r"failure notice|mail delivery failed|non.?delivery|could not be delivered|undelivered mail|"
    r"returned to sender|rejected|banned file)",
    re.IGNORECASE,
)
_TEXT_MSGID = re.compile(r"^\s*(?:original-)?message-id:\s*(<[^>\s]+>)", re.IGNORECASE | re.MULTILINE)


def _delivery_report(msg: Message, sender: str, collector: _Collector) -> DeliveryReport | None:
    ctype = msg.get_content_type()
    report_type = str(msg.get_param("report-type") or "").lower() if ctype == "multipart/report" else ""
    local = sender.partition("@")[0]
    # Not mail whose sender cannot be read: a customer's broken mail client
    # or a web form writes that too, and a report is never a conversation.
    from_daemon = bool(re.match(r"^(mailer-daemon|postmaster)$", local, re.I))
    null_sender = _header(msg, "Return-Path").replace(" ", "") == "<>"
    subject = _header(msg, "Subject")
    looks_bounced = (from_daemon or null_sender) and (
        bool(_BOUNCE_SUBJECT.search(subject)) or bool(collector.original_headers)
    )
    if ctype != "multipart/report" and not looks_bounced:
        return None

    originals = _original_ids(msg, collector)
    if report_type == "disposition-notification" or any(
        p.get_content_type() == "message/disposition-notification" for p in collector.report_parts
    ):
        return _read_report(collector, originals)

    recipients: list[str] = []
    reasons: list[str] = []
    actions: list[str] = []
    acted: list[tuple[str, str]] = []
    for part in collector.report_parts:
        for block in _status_blocks(part):
            action = _header(block, "Action").lower()
            code = _header(block, "Status")
            diagnostic = re.sub(r"^\s*smtp;\s*", "", _header(block, "Diagnostic-Code"), flags=re.I)
            # Original-Recipient is the address we wrote to when the server
            # expanded it (an alias, a forward) into the Final-Recipient.
            named = list(
                dict.fromkeys(
                    a
                    for a in (
                        _report_address(_header(block, "Final-Recipient")),
                        _report_address(_header(block, "Original-Recipient")),
                    )
                    if a
                )
            )
            rcpt = named[0] if named else ""
            if not (action or code or diagnostic or rcpt):
                continue
            if action:
                actions.append(action)
            for address in named:
                recipients.append(address)
                acted.append((action, address))
            detail = diagnostic or code
            if detail:
                reasons.append(f"{detail} ({rcpt})" if rcpt and rcpt not in detail.lower() else detail)
    if not actions:
        # A bounce in plain words (qmail's "failure notice", Exim's "Mail
        # delivery failed"): the addresses it names, with the server's words.
        actions = ["failed"]
        acted = [("failed", r) for _, r in acted]
        for address, words in _text_failures(msg, collector):
            recipients.append(address)
            acted.append(("failed", address))
            reasons.append(f"{words} ({address})" if words and address not in words.lower() else words or address)
        reasons = reasons or [_text_reason(collector) or subject or "the message could not be delivered"]
    failed: tuple[str, ...] = ("failed",)
    delivered: tuple[str, ...] = ("delivered", "relayed", "expanded")
    if any(a.startswith(failed) for a in actions):
        kind: Literal["bounce", "delayed", "delivered", "read", "other"] = "bounce"
        status: DeliveryStatus | None = DeliveryStatus.FAILED
        decisive = failed
    elif any(a.startswith(delivered) for a in actions):
        kind, status, decisive = "delivered", DeliveryStatus.DELIVERED, delivered
    elif any(a.startswith("delayed") for a in actions):
        kind, status, decisive = "delayed", None, ()
    else:
        kind, status, decisive = "other", None, ()
    reason = "; ".join(dict.fromkeys(reasons)) or subject
    return DeliveryReport(
        kind=kind,
        status=status,
        reason=clean_text(reason)[:2000],
        original_ids=tuple(originals),
        recipients=tuple(dict.fromkeys(recipients)),
        status_recipients=tuple(dict.fromkeys(r for a, r in acted if decisive and a.startswith(decisive))),
    )


def _report_address(value: str) -> str:
    """The address of a DSN recipient field ("rfc822; <sara@example.com>")."""
    address = value.partition(";")[2] if ";" in value else value
    return address.strip().strip("<>").strip().lower()


#: Where a plain-text bounce's explanation ends and the returned message
#: begins (qmail "--- Below this line is a copy of the message.", Exim
#: "------ This is a copy of the message, including all the headers. ------").
_COPY_FOLLOWS = re.compile(r"^\s*-{3,}")
#: qmail names each failed recipient on a line of its own: "<sara@example.com>:".
_QMAIL_RECIPIENT = re.compile(r"^<([^<>\s@]+@[^<>\s@]+)>:\s*$")
_SMTP_CODE = re.compile(r"\b[45]\d\d[ -][45]\.\d{1,3}\.\d{1,3}\b|\b[45]\d\d\s|#[45]\.\d{1,3}\.\d{1,3}")
#: How much of a plain-text bounce is read: the explanation is at its top.
_BOUNCE_LINES = 400
_BOUNCE_ADDRESSES = 50


def _explanation(collector: _Collector) -> list[str]:
    """The lines of a plain-text bounce before the returned message."""
    lines: list[str] = []
    for line in "\n".join(collector.texts).split("\n")[:_BOUNCE_LINES]:
        if _COPY_FOLLOWS.match(line):
            break
        lines.append(line)
    return lines


def _text_failures(msg: Message, collector: _Collector) -> list[tuple[str, str]]:
    """The recipients a plain-text bounce names as failed (its
    X-Failed-Recipients header, qmail's "<address>:" lines), each with the
    server's words about it ("" when it says none)."""
    lines = _explanation(collector)
    named: dict[str, None] = {a: None for _, a in _addresses(msg, "X-Failed-Recipients")}
    for line in lines:
        if found := _QMAIL_RECIPIENT.match(line.strip()):
            named.setdefault(found.group(1).lower(), None)
    return [(address, _words_about(lines, address)) for address in list(named)[:_BOUNCE_ADDRESSES]]


def _words_about(lines: Sequence[str], address: str) -> str:
    """What follows the line that names ``address`` alone (qmail's
    "<address>:", Exim's indented address), up to a blank line."""
    for i, line in enumerate(lines):
        if line.strip().rstrip(":").strip().strip("<>").lower() != address:
            continue
        words: list[str] = []
        for follow in lines[i + 1 : i + 11]:
            if not follow.strip():
                break
            words.append(follow.strip())
        return clean_text(" ".join(words))[:500]
    return ""


def _text_reason(collector: _Collector) -> str:
    """The first line of a plain-text bounce that carries an SMTP code."""
    return next((line.strip()[:500] for line in _explanation(collector) if _SMTP_CODE.search(line)), "")


def _read_report(collector: _Collector, originals: list[str]) -> DeliveryReport:
    dispositions: list[str] = []
    for part in collector.report_parts:
        for block in _status_blocks(part):
            value = _header(block, "Disposition").lower()
            if value:
                dispositions.append(value)
            originals.extend(m for m in msgids(_header(block, "Original-Message-ID")) if m not in originals)
    displayed = any("displayed" in d for d in dispositions)
    return DeliveryReport(
        kind="read" if displayed else "other",
        status=DeliveryStatus.READ if displayed else None,
        reason="; ".join(dispositions),
        original_ids=tuple(originals),
    )


def _status_blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status part (per message, then one per
    recipient), whether the parser split them or left them as text."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and all(isinstance(p, Message) for p in payload):
        return list(payload)
    text = payload if isinstance(payload, str) else decode_bytes(_bytes_of(part) or b"", None)
    parser = HeaderParser(policy=policy.default)
    return [parser.parsestr(block.strip() + "\n") for block in re.split(r"\n\s*\n", text.strip()) if block.strip()]


def _original_ids(msg: Message, collector: _Collector) -> list[str]:
    found: dict[str, None] = {}
    for headers in collector.original_headers:
        for mid in msgids(_header(headers, "Message-ID")):
            found.setdefault(mid, None)
    if not found:
        for text in collector.texts:
            for raw in _TEXT_MSGID.findall(text):
                for mid in msgids(raw):
                    found.setdefault(mid, None)
    if not found:
        for mid in msgids(_header(msg, "In-Reply-To")) + msgids(_header(msg, "References"))[-1:]:
            found.setdefault(mid, None)
    return list(found)


# --- threading keys ------------------------------------------------------------

_SUBJECT_TOKEN = re.compile(r"\[#(\d{1,18})\]")
_REPLY_PREFIX = re.compile(
    r"^\s*((re|aw|sv|antw|odp|rif|r|رد|پاسخ|جواب|ответ|yan[ıi]t)\s*(\[\d+\]|\(\d+\))?\s*[:：]\s*)+", re.I
)
_ANY_PREFIX = re.compile(
    r"^\s*((re|fwd?|aw|wg|sv|vs|antw|odp|rif|r|tr|enc|رد|پاسخ|جواب|بازارسال|هدایت|ответ|fw|ynt)\s*"
    r"(\[\d+\]|\(\d+\))?\s*[:：]\s*)+",
    re.I,
)


def subject_token(ticket_id: int) -> str:
    return f"[#{ticket_id}]"


def subject_tokens(subject: str) -> list[int]:
    return [int(t) for t in _SUBJECT_TOKEN.findall(subject)]


def plus_address(address: str, ticket_id: int) -> str:
    local, _, domain = address.partition("@")
    return f"{local}+{ticket_id}@{domain}"


def plus_tokens(recipients: Iterable[str], address: str) -> list[int]:
    """Ticket ids in plus addresses of our mailbox (``support+123@...``)."""
    local, _, domain = address.lower().partition("@")
    pattern = re.compile(rf"^{re.escape(local)}\+(\d{{1,18}})@{re.escape(domain)}$")
    return [int(m.group(1)) for r in recipients if (m := pattern.match(r.lower()))]


def is_own_address(address: str, own: Iterable[str]) -> bool:
    """Whether ``address`` is one of ``own`` or a plus address of one
    (``support+123@``, ``support+anything@``): mail to it comes back to us."""
    local, _, domain = address.strip().lower().rpartition("@")
    for mine in own:
        my_local, _, my_domain = mine.lower().rpartition("@")
        if domain == my_domain and (local == my_local or local.startswith(f"{my_local}+")):
            return True
    return False


def sent_on_behalf(parsed: ParsedEmail, own: Iterable[str]) -> ParsedEmail | None:
    """Mail from one of our own addresses written for someone else, as from
    them: a website's contact form sends from the support address with the
    visitor in Reply-To. None when ``parsed`` is not from us, or is from us
    for nobody else (our own mail coming back: a copy, a loop)."""
    own = list(own)
    if not is_own_address(parsed.sender, own):
        return None
    visitor = next((a for a in parsed.reply_to if not is_own_address(a, own)), None)
    if visitor is None:
        return None
    return replace(
        parsed,
        sender=visitor[:MAX_EXTERNAL_ID],
        sender_name=parsed.reply_to_name if parsed.reply_to and parsed.reply_to[0] == visitor else None,
        notes=(*parsed.notes, f"sent from our address {parsed.sender} for {visitor} (its Reply-To)"),
    )


def is_reply_subject(subject: str) -> bool:
    return bool(_REPLY_PREFIX.match(subject))


def normalize_subject(subject: str) -> str:
    """A subject without reply/forward prefixes (in many languages), our
    token, and case or spacing differences: what a thread's messages share."""
    text = _SUBJECT_TOKEN.sub(" ", subject)
    previous = None
    while previous != text:
        previous = text
        text = _ANY_PREFIX.sub("", text)
    return " ".join(text.split()).casefold()


# --- into the hub --------------------------------------------------------------


def to_inbound(
    parsed: ParsedEmail,
    *,
    inbox: str,
    attachments: Sequence[Attachment] = (),
    original_url: str | None = None,
    html_url: str | None = None,
    notes: Sequence[str] = (),
    threaded_by: str | None = None,
) -> InboundMessage:
    """The hub's message for ``parsed``. The stored files (attachments, the
    sanitized HTML, the raw original) are saved by the hub first; their URLs
    come in here. Everything email-specific travels in ``extras["email"]``."""
    body = parsed.body
    all_notes = [*parsed.notes, *notes]
    if len(body) > MAX_BODY_CHARS:
        # The marker counts against the limit: a body past it is refused by
        # InboundMessage, and the whole mail would end up a placeholder.
        body = body[: MAX_BODY_CHARS - len(SHORTENED)] + SHORTENED
        all_notes.append(
            "the text was shortened; the full text is in the original message"
            if original_url
            else "the text was shortened, and the original message could not be stored: the rest is lost"
        )
    email_extras: dict[str, Any] = {
        "message_id": parsed.message_id,
        "from": parsed.sender,
        "to": list(parsed.to),
        "cc": list(parsed.cc),
        "reply_to": list(parsed.reply_to),
        "in_reply_to": list(parsed.in_reply_to),
        "references": list(parsed.references[-MAX_REFERENCES:]),
        "quoted": parsed.quoted[:MAX_EXTRA_CHARS],
        "signature": parsed.signature[:MAX_EXTRA_CHARS],
        "original_url": original_url,
        "html_url": html_url,
    }
    if parsed.date is not None:
        email_extras["date"] = parsed.date.isoformat()
    if all_notes:
        email_extras["notes"] = all_notes
    if threaded_by:
        email_extras["threaded_by"] = threaded_by
    extras: dict[str, Any] = {"email": email_extras}
    if parsed.auto_reply:
        extras["auto_reply"] = parsed.auto_reply
    return InboundMessage(
        channel=Channel.EMAIL,
        inbox=inbox,
        external_id=parsed.key[:MAX_EXTERNAL_ID],
        sender=parsed.sender,
        sender_name=parsed.sender_name,
        body=body,
        attachments=tuple(attachments),
        subject=parsed.subject or None,
        received_at=parsed.date or utcnow(),
        extras=extras,
    )


# --- sending -----------------------------------------------------------------

Security = Literal["starttls", "tls", "none"]


@dataclass(frozen=True, slots=True)
class SmtpServer:
    host: str
    port: int
    security: Security = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    #: How long to wait for the server's answer to the end of the message
    #: (RFC 5321 4.5.3.2.6: ten minutes); never shorter than ``timeout``.
    data_timeout: float = 600.0
    validate_certs: bool = True
    ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One configured mailbox, as the channel needs it (built from the config
    by the composition root: channels do not read the hub's configuration)."""

    inbox: str
    address: str
    display_name: str | None
    smtp: SmtpServer
    plus_token: bool = False
    subject_token: bool = True


def reply_subject(ticket_subject: str | None, ticket_id: int, *, with_token: bool) -> str:
    subject = (ticket_subject or "").strip() or "Your message"
    if not is_reply_subject(subject):
        subject = f"Re: {subject}"
    if with_token and subject_token(ticket_id) not in subject:
        subject = f"{subject} {subject_token(ticket_id)}"
    return subject


def body_html(text: str) -> str:
    """The HTML alternative of a plain reply: paragraphs and line breaks kept,
    each paragraph's direction taken from its own text (Persian and English
    in one reply both read right)."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    rendered = "\n".join(
        f'<p dir="auto">{"<br>".join(html.escape(line) for line in p.split(chr(10)))}</p>' for p in paragraphs
    )
    return f'<!DOCTYPE html>\n<html><body><div dir="auto">\n{rendered}\n</div></body></html>\n'


def _undeliverable(address: str) -> bool:
    return "@" not in address or address_domain(address) == "invalid"


class UnwritableAddress(ValueError):
    """An address the email package cannot write into a message (or aiosmtplib
    onto the SMTP envelope): sending to it can never work."""


def header_address(address: str, display_name: str = "") -> Address:
    """``address`` as a header's :class:`~email.headerregistry.Address`;
    raises :class:`UnwritableAddress` naming it and saying why not. A
    non-ASCII local part (RFC 6531) is accepted; the message then needs
    SMTPUTF8."""
    local, at, domain = address.rpartition("@")
    try:
        if local.isascii():
            found = Address(display_name=display_name, addr_spec=address)
        else:
            # The email package refuses every non-ASCII local part, even where
            # SMTPUTF8 allows one: its shape is checked with ASCII stand-ins,
            # and it is written as it is.
            probe = "".join(c if c.isascii() else "x" for c in local)
            if not at or Address(addr_spec=f"{probe}@{domain}").username != probe:
                raise UnwritableAddress(f"{address!r} is not an email address we can write to")
            found = Address(display_name=display_name, username=local, domain=domain)
        spec = found.addr_spec
        if parse_address(spec) != spec or spec.startswith("@") or _undeliverable(spec):
            raise UnwritableAddress(f"{address!r} is not an email address we can write to")
    except UnwritableAddress:
        raise
    except (ValueError, IndexError, HeaderParseError) as exc:  # the email package's several ways to say "malformed"
        raise UnwritableAddress(f"{address!r} is not an email address we can write to: {exc}") from exc
    return found


def _recipient(address: str, name: str, header_policy: policy.Policy) -> Address:
    """The To address with the contact's name, on one line (a name typed over
    two lines in the web chat is still the name). A name the header still
    refuses is left out: the reply matters, not the name on it. Raises
    :class:`UnwritableAddress` only for the address."""
    name = display_name(name)
    if name:
        with contextlib.suppress(UnwritableAddress, ValueError, IndexError, HeaderParseError, UnicodeError):
            found = header_address(address, name)
            # Written now, as the message will be: a name that cannot be
            # written fails here rather than when the reply is sent.
            probe = EmailMessage(policy=header_policy)
            probe["To"] = found
            header_policy.fold_binary("To", probe["To"])
            return found
    return header_address(address)


def _needs_utf8(addresses: Iterable[str]) -> bool:
    return not all(a.isascii() for a in addresses)


def _sendable(address: str, *, utf8: bool) -> str | None:
    """``address`` as both a header the email package writes and an envelope
    address aiosmtplib sends, or None. Without ``utf8`` it must be ASCII: one
    internationalized copy would make the whole message need SMTPUTF8, which
    the server may not offer, and so cost the customer their reply."""
    if _undeliverable(address) or not (utf8 or address.isascii()):
        return None
    try:
        return header_address(address).addr_spec
    except UnwritableAddress:
        return None


@dataclass(frozen=True, slots=True)
class ReplyAddresses:
    to: str
    cc: tuple[str, ...] = ()


def reply_addresses(thread: Mapping[str, Any], recipient: str, own: Iterable[str]) -> ReplyAddresses:
    """Where a reply goes, as a mail client's "reply all" would send it, from
    what :func:`storage.mail.reply_context` found in the customer's latest
    mail: to its first Reply-To address, else to the address the customer
    wrote from (``to``, else ``recipient``); copied to its other Reply-To, To
    and Cc addresses. Our own addresses (and their plus addresses) are never
    chosen, as the mail would come back in as a new message from ourselves;
    a malformed Reply-To is passed over, and malformed copies are dropped, as
    are those past :data:`MAX_CC`."""
    own = [a for a in own if a]
    reply_to = [str(a).strip() for a in thread.get("reply_to") or [] if a]
    to = str(thread.get("to") or recipient).strip()
    asked = _sendable(reply_to[0], utf8=True) if reply_to else None
    if asked is not None and not is_own_address(asked, own):
        to = asked
    seen = {to.lower()}
    cc: list[str] = []
    for candidate in (*reply_to[1:], *(str(a).strip() for a in thread.get("cc") or [] if a)):
        address = _sendable(candidate, utf8=not to.isascii())
        if address is None or address.lower() in seen or is_own_address(address, own):
            continue
        seen.add(address.lower())
        cc.append(address)
        if len(cc) == MAX_CC:
            break
    return ReplyAddresses(to=to, cc=tuple(cc))


def build_message(
    out: OutboundMessage,
    box: Mailbox,
    *,
    message_id: str,
    files: Sequence[tuple[Attachment, bytes]] = (),
    now: datetime | None = None,
    cc: Sequence[str] = (),
) -> EmailMessage:
    """The MIME message for ``out``, to ``out.recipient`` and copied (``Cc``)
    to ``cc``, both as :func:`reply_addresses` chose them. Threading comes
    from the sender in ``out.extras["email"]``: ``subject`` (the ticket's),
    ``in_reply_to``, ``references`` and ``recipient_name``, the contact's name
    for the To header, used only when the reply goes to the address the
    customer wrote from (``to``): a Reply-To may be a colleague or a list.
    Raises :class:`UnwritableAddress` for an address it cannot write (never
    for a name: see :func:`_recipient`)."""
    thread: Mapping[str, Any] = out.extras.get("email") or {}
    # An internationalized address is written as it is (RFC 6531); the
    # sender offers such a message only to a server with SMTPUTF8.
    msg = EmailMessage(policy=policy.SMTPUTF8 if _needs_utf8((out.recipient, *cc)) else policy.SMTP)
    msg["From"] = Address(display_name=box.display_name or "", addr_spec=box.address)
    to_sender = str(thread.get("to") or out.recipient).strip().lower() == out.recipient.lower()
    name = str(thread.get("recipient_name") or "") if to_sender else ""
    msg["To"] = _recipient(out.recipient, name, msg.policy)
    if cc:
        msg["Cc"] = [header_address(address) for address in cc]
    if box.plus_token:
        msg["Reply-To"] = Address(
            display_name=box.display_name or "", addr_spec=plus_address(box.address, out.ticket_id)
        )
    msg["Subject"] = out.subject or reply_subject(thread.get("subject"), out.ticket_id, with_token=box.subject_token)
    msg["Date"] = format_datetime(now or utcnow())
    msg["Message-ID"] = f"<{message_id}>"
    in_reply_to = [m for m in thread.get("in_reply_to") or [] if m]
    references = [m for m in thread.get("references") or [] if m][-MAX_REFERENCES:]
    if in_reply_to:
        msg["In-Reply-To"] = " ".join(f"<{m}>" for m in in_reply_to[:1])
    if references:
        msg["References"] = " ".join(f"<{m}>" for m in references)
    if out.author in (Author.BOT, Author.SYSTEM):
        # RFC 3834: an automatic answer (the bot's, or an automation rule's
        # canned reply). Autoresponders must not answer it, and Exchange is
        # asked not to, which breaks loops with other helpdesks at both ends.
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(out.body, subtype="plain", charset="utf-8")
    msg.add_alternative(body_html(out.body), subtype="html", charset="utf-8")
    for attachment, data in files:
        _attach(msg, attachment, data)
    return msg


def _attach(msg: EmailMessage, attachment: Attachment, data: bytes) -> None:
    """``data`` as an attachment of ``msg``, written as mail readers read it.
    ``attachment.content_type`` may carry a ``charset`` parameter (the one the
    file was stored with)."""
    filename = attachment.filename or attachment.url.rsplit("/", 1)[-1]
    header = Message()
    header["Content-Type"] = attachment.content_type or "application/octet-stream"
    maintype, subtype = header.get_content_maintype(), header.get_content_subtype()
    if header.get_content_type() != attachment.content_type.partition(";")[0].strip().lower():
        # Not one media type: the email package would take it for text/plain.
        maintype, subtype = "application", "octet-stream"
    if (maintype, subtype) == ("message", "rfc822"):
        # RFC 2046 5.2.1: an embedded message is 7bit or 8bit, never base64;
        # readers take base64 text for the message itself, headers and all.
        inner = BytesParser(policy=policy.default).parsebytes(data)
        msg.add_attachment(inner, filename=filename, cte="7bit" if data.isascii() else "8bit")
        return
    params: dict[str, str] = {}
    if maintype == "text":
        # Without a charset readers take US-ASCII (RFC 2046 4.1.2) and show
        # any other text as mojibake.
        charset = header.get_content_charset()
        if charset is None and _is_utf8(data):
            charset = "utf-8"
        if charset is not None:
            params["charset"] = charset
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename, params=params)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


ReadAttachment = Callable[[str], bytes | None]
#: The charset a stored text file came in, when it was declared.
ReadCharset = Callable[[str], str | None]


class EmailChannel(ChannelAdapter):
    channel: ClassVar[Channel] = Channel.EMAIL
    max_body_chars: ClassVar[int | None] = MAX_BODY_CHARS
    supports_attachments: ClassVar[bool] = True

    def __init__(
        self,
        mailboxes: Sequence[Mailbox],
        read_attachment: ReadAttachment,
        id_secret: str,
        read_charset: ReadCharset | None = None,
    ) -> None:
        self.mailboxes = {box.inbox: box for box in mailboxes}
        self._read = read_attachment
        self._charset = read_charset
        self._secret = id_secret.encode()

    def message_id(self, out: OutboundMessage, box: Mailbox) -> str:
        """The same id for every attempt at one message (a resend after a crash
        is one message to the customer's client), unguessable across installs."""
        tag = hmac.new(self._secret, f"{out.message_id}".encode(), hashlib.sha256).hexdigest()[:16]
        return f"hub.{out.ticket_id}.{out.message_id}.{tag}@{address_domain(box.address)}"

    async def send(self, message: OutboundMessage) -> SendResult:
        box = self.mailboxes.get(message.inbox)
        if box is None:
            return SendResult(
                status=DeliveryStatus.FAILED, reason=f"no mailbox is configured for inbox {message.inbox!r}"
            )
        thread: Mapping[str, Any] = message.extras.get("email") or {}
        addresses = reply_addresses(thread, message.recipient, (b.address for b in self.mailboxes.values()))
        recipient = addresses.to
        if _undeliverable(recipient):
            return SendResult(
                status=DeliveryStatus.FAILED, reason=f"{recipient!r} is not an email address we can write to"
            )
        files: list[tuple[Attachment, bytes]] = []
        for attachment in message.attachments:
            data = await asyncio.to_thread(self._read, attachment.url)
            if data is None:
                name = attachment.filename or attachment.url
                return SendResult(status=DeliveryStatus.FAILED, reason=f"attachment {name!r} is not stored any more")
            charset = await asyncio.to_thread(self._charset, attachment.url) if self._charset is not None else None
            if charset is not None and attachment.content_type.startswith("text/"):
                attachment = attachment.model_copy(
                    update={"content_type": f"{attachment.content_type}; charset={charset}"}
                )
            files.append((attachment, data))
        mid = self.message_id(message, box)
        try:
            mime = build_message(
                message.model_copy(update={"recipient": recipient}), box, message_id=mid, files=files, cc=addresses.cc
            )
        except (ValueError, HeaderParseError) as exc:
            # The same message fails the same way on every attempt: no retry,
            # so the ticket's later replies do not wait behind it.
            return SendResult(status=DeliveryStatus.FAILED, reason=f"the reply could not be written as an email: {exc}")
        smtp = box.smtp
        # Copies the server took on an earlier attempt (when the customer's
        # address was refused for now) already have the reply: a retry is
        # for the others, with the same headers, so it is one mail to all.
        accepted_before = [str(a) for a in message.extras.get(SEND_PARTS) or [] if isinstance(a, str)]
        done = {a.lower() for a in accepted_before}
        envelope = [recipient, *(a for a in addresses.cc if a.lower() not in done)]
        try:
            refused = await _transact(smtp, box.address, envelope, mime)
        except MaybeDelivered as exc:
            # The whole message was written and the server's verdict on it
            # never came. It may well have queued it (a slow spam filter, a
            # dropped connection after the 250), and sending it again would
            # give the customer two copies: the agent decides, not a retry.
            # The Message-ID is kept, so a bounce, a delivery report or the
            # customer's answer still finds the message, and so are the
            # addresses it went to, as for mail the server took.
            cause = exc.__cause__
            return SendResult(
                status=DeliveryStatus.FAILED,
                external_id=mid,
                reason=(
                    f"SMTP server {smtp.host}:{smtp.port} did not confirm the message after it was sent "
                    f"({type(cause).__name__}: {cause}); it may have been delivered, so it was not sent again: "
                    "check with the customer before sending it again"
                ),
                extras={SEND_PARTS: [*accepted_before, *envelope]},
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = next((r for r in exc.recipients if r.recipient == recipient), None)
            first = first or (exc.recipients[0] if exc.recipients else None)
            code = first.code if first is not None else 550
            text = first.message if first is not None else str(exc)
            return _smtp_failure(code, text, smtp)
        except aiosmtplib.SMTPResponseException as exc:
            return _smtp_failure(exc.code, exc.message, smtp)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            wide = [a for a in (recipient, *addresses.cc) if not a.isascii()]
            if isinstance(exc, aiosmtplib.SMTPNotSupported) and wide and "SMTPUTF8" in str(exc):
                # Asking this server again will not help.
                return SendResult(
                    status=DeliveryStatus.FAILED,
                    reason=(
                        f"{', '.join(wide)}: an address with non-ASCII characters needs SMTPUTF8, "
                        f"which the SMTP server {smtp.host}:{smtp.port} does not offer"
                    ),
                )
            # Unreachable, disconnected, TLS not offered: the server (or its
            # configuration) may be back soon, and it has not been given the
            # message yet, so try again with backoff.
            return SendResult(
                status=DeliveryStatus.FAILED,
                reason=f"SMTP server {smtp.host}:{smtp.port}: {type(exc).__name__}: {exc}",
                retryable=True,
            )
        # aiosmtplib raises only when every recipient is refused; otherwise
        # the server took the message for the others, and which one it
        # refused decides whether the customer has the reply.
        if recipient in refused:
            failed = _smtp_failure(refused[recipient].code, refused[recipient].message, smtp)
            accepted = [*accepted_before, *(a for a in envelope if a not in refused)]
            return failed.model_copy(
                update={"reason": f"{failed.reason} (only the copies were sent)", "extras": {SEND_PARTS: accepted}}
            )
        # Kept with the sent message: who was sent it, so that an answer from
        # one of them (a Reply-To address, a copied colleague) is let into
        # the ticket (see hub.mail.do_ingest_email).
        sent_to = {SEND_PARTS: [*accepted_before, *(a for a in envelope if a not in refused)]}
        if refused:
            lost = "; ".join(f"{a}: {r.code} {' '.join(r.message.split())}" for a, r in refused.items())
            return SendResult(
                status=DeliveryStatus.SENT,
                external_id=mid,
                reason=f"the server refused copies to {lost}",
                extras=sent_to,
            )
        return SendResult(status=DeliveryStatus.SENT, external_id=mid, extras=sent_to)


class MaybeDelivered(Exception):
    """The connection failed (timed out, dropped) after the whole message
    had been written to the SMTP server: it may have been delivered. The
    failure is its ``__cause__``."""


async def _transact(
    smtp: SmtpServer, sender: str, recipients: Sequence[str], mime: EmailMessage
) -> dict[str, aiosmtplib.SMTPResponse]:
    """Send ``mime`` to ``recipients`` in one SMTP transaction, step by step,
    so that a failure is known to come before or after the server was given
    the message. Returns the recipients the server refused (it took the
    message for the others); raises :class:`MaybeDelivered` for a failure
    once the message was written, aiosmtplib's errors before that."""
    client = aiosmtplib.SMTP(
        hostname=smtp.host,
        port=smtp.port,
        username=smtp.username,
        password=smtp.password,
        use_tls=smtp.security == "tls",
        start_tls=smtp.security == "starttls",
        validate_certs=smtp.validate_certs,
        cert_bundle=smtp.ca_file,
        timeout=smtp.timeout,
    )
    await client.connect()  # with STARTTLS and AUTH as configured
    try:
        if client.is_ehlo_or_helo_needed:
            # The server's extensions (SMTPUTF8, 8BITMIME, SIZE) decide how
            # the message is written; without STARTTLS nothing asked yet.
            try:
                await client.ehlo()
            except aiosmtplib.SMTPHeloError:
                await client.helo()
        utf8 = _needs_utf8((sender, *recipients))
        if utf8 and not client.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server")
        eight_bit = client.supports_extension("8bitmime")
        payload = flatten_message(mime, utf8=utf8, cte_type="8bit" if eight_bit else "7bit")
        # As sent after DATA (RFC 5321 4.5.2: lines starting with a period
        # are doubled), ending with the line that ends the message.
        payload = _PERIOD_AT_LINE_START.sub(b"..", normalize_message_line_endings(payload)) + b".\r\n"
        options = [f"SIZE={len(payload)}"] if client.supports_extension("size") else []
        options += ["SMTPUTF8"] if utf8 else []
        options += ["BODY=8BITMIME"] if eight_bit else []
        encoding = "utf-8" if utf8 else "ascii"
        await client.mail(sender, options=options, encoding=encoding)
        refused: dict[str, aiosmtplib.SMTPRecipientRefused] = {}
        for address in recipients:
            try:
                await client.rcpt(address, encoding=encoding)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused[address] = exc
        if len(refused) == len(recipients):
            raise aiosmtplib.SMTPRecipientsRefused(list(refused.values()))
        start = await client.execute_command(b"DATA")
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        protocol = client.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("the connection was lost before the message was sent")
        try:
            protocol.write(payload)
            # RFC 5321 4.5.3.2.6: a server may take ten minutes to answer the
            # end of the message (filters, delivery to a slow store); giving
            # up sooner is how the same mail reaches a customer twice.
            reply = await protocol.read_response(timeout=max(smtp.data_timeout, smtp.timeout))
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise MaybeDelivered() from exc
        if reply.code != 250:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)
        return {a: aiosmtplib.SMTPResponse(exc.code, exc.message) for a, exc in refused.items()}
    finally:
        # The server has the message (or refused it): a failed goodbye changes nothing.
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            if client.is_connected:
                await client.quit()
        client.close()


_PERIOD_AT_LINE_START = re.compile(rb"(?m)^\.")


def _smtp_failure(code: int, text: str, smtp: SmtpServer) -> SendResult:
    reason = f"{code} {' '.join(str(text).split())}".strip()
    if 400 <= code < 500:
        return SendResult(status=DeliveryStatus.FAILED, reason=f"temporary SMTP error: {reason}", retryable=True)
    if code in (530, 534, 535, 538):
        # Authentication is the operator's to fix; the message itself is fine.
        return SendResult(
            status=DeliveryStatus.FAILED,
            reason=f"SMTP login to {smtp.host} failed: {reason} (check the mailbox's smtp.user and password)",
            retryable=True,
        )
    return SendResult(status=DeliveryStatus.FAILED, reason=reason)
