"""Separating what a customer just wrote from the history their mail client
quoted below it, and from their signature.

Hand-written on purpose. The maintained library for this (``mail-parser-reply``)
was tried: it knows no Persian or Arabic attribution lines, strips every line's
indentation, and treats any line starting with "Thanks," or "Best," as the start
of a signature, cutting off whatever the customer wrote after it. Here a cut is
made only where a mail client's own markers say the history starts, and when in
doubt nothing is cut: the agent always has the full text one click away.

What is recognised:
- attribution lines ("On <date>, <name> wrote:") in English, Persian
  ("در تاریخ ... نوشت:"), Arabic, German, French, Spanish, Portuguese, Italian,
  Dutch, Russian and Turkish, also wrapped over up to three lines (Gmail, Apple
  Mail, Thunderbird), when a mail client's hand shows: an address in the
  line, a full date and time of day followed by nothing but a name, or
  quoted history right after it (">" lines or a header block); a date and a
  time alone are not enough (a customer's own "On 12 May at 10:30 your
  courier told me on the phone and wrote:" and what he wrote are theirs);
- Outlook's header blocks ("From: / Sent: / To: / Subject:", and their
  translations, "از: / ارسال شده: ..."; From and two of the others, with an
  address in the From line, or Outlook's "Sent:" with a time of day and a
  Subject: a customer's own flight "From: Tehran / To: Istanbul / Date: ...
  10:30" or bank transfer with its Subject has neither), after a line of
  underscores or not, and "-----Original Message-----";
- a trailing block of ">"-quoted lines;
- signatures after the standard "-- " line (exactly that: a bare "--" may be
  the customer's own divider), and the mobile clients' one-line "Sent from my
  iPhone" footers.

Forwarded messages are not history: a customer who forwards something wants us
to read it, so "---------- Forwarded message ---------" never cuts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Bidirectional controls that Gmail wraps around names and addresses in
# right-to-left attribution lines; they would break the patterns below.
_BIDI = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")

# "<prefix> ... <verb>:" attribution lines. Each pattern must match the whole
# (joined) line; ".{0,400}" keeps a pathological line from costing much.
_ATTRIBUTION = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"on\b.{0,400}\b(wrote|writes|said)\s*:",
        r"در(\s+تاریخ)?\b.{0,400}نوشت(ه\s+است|ه)?\s*:",
        r"(في|فى)\b.{0,400}كتب(ت)?\s*:",
        r"am\b.{0,400}\bschrieb\b.{0,200}:",
        r"le\b.{0,400}\ba\s+écrit\s*:",
        r"el\b.{0,400}\bescribió\s*:",
        r"em\b.{0,400}\bescreveu\s*:",
        r"il\b.{0,400}\bha\s+scritto\s*:",
        r"op\b.{0,400}\bschreef\b.{0,200}:",
        r".{0,400}\bнаписал(а)?\s*:",
        r".{0,400}\btarihinde\b.{0,400}\byazdı\s*:",
    )
]
_DATE_OR_ADDRESS = re.compile(r"\d|@")
# What only a mail client writes into an attribution: an address, or a date
# with its year (or all in digits) and the time of day ("On Tue, Mar 4, 2025
# at 9:00 AM", "Am 03.03.2025 um 10:12"). \d matches Persian digits too.
_ADDRESS = re.compile(r"\S@\S")
_TIME_OF_DAY = re.compile(r"(?<!\d)\d{1,2}:\d{2}(?!\d)")
_FULL_DATE = re.compile(
    r"(?<!\d)\d{1,4}[./-]\d{1,2}[./-]\d{1,4}(?!\d)|(?<![\d:])(19|20|13|14|۱۳|۱۴|۱۹|۲۰|١٣|١٤|١٩|٢٠)\d{2}(?![\d:])"
)
# A line that may begin a wrapped attribution (Gmail breaks long ones).
_ATTRIBUTION_START = re.compile(r"^(on|در|في|فى|am|le|el|em|il|op)\b|^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}", re.IGNORECASE)

_FROM_FIELD = re.compile(r"^\*?(from|de|von|van|da|från|od|от|از|من|kimden)\s*:\*?\s*\S", re.IGNORECASE)
# The other fields of Outlook's header block, by kind: a block needs two kinds
# (a date, the addressee, the subject) besides From; "sent" counts as a date.
_HEADER_FIELDS = {
    kind: re.compile(rf"^\*?({names})\s*:", re.IGNORECASE)
    for kind, names in {
        # Outlook's own word for the date, apart: with a time of day in it,
        # it marks Outlook's block as no "Date:" a customer types does.
        "sent": "sent|envoyé|gesendet|enviado|enviada|verzonden|inviato|отправлено|ارسال شده|أرسل|gönderildi",
        "date": "date|datum|data|fecha|تاریخ|التاريخ|tarih",
        "to": "to|à|an|para|aan|a|إلى|به|кому|kime",
        "subject": "subject|objet|betreff|asunto|assunto|onderwerp|oggetto|tema|тема|موضوع|الموضوع|konu",
        "cc": "cc|bcc|رونوشت|نسخه",
    }.items()
}
_SEPARATOR = re.compile(
    r"^(_{20,}|-{2,}\s*(original message|ursprüngliche nachricht|message d'origine|mensaje original|"
    r"messaggio originale|oorspronkelijk bericht|исходное сообщение|پیام اصلی|الرسالة الأصلية)\s*-{2,})$",
    re.IGNORECASE,
)
_FORWARD = re.compile(
    r"^(-{2,}\s*(forwarded message|weitergeleitete nachricht|message transféré|mensaje reenviado|"
    r"پیام (بازارسال|هدایت) شده|رسالة مُعاد توجيهها)\s*-{2,}|begin forwarded message:)$",
    re.IGNORECASE,
)
# RFC 3676's "-- " only: a bare "--" is as often a customer's own divider.
_SIGNATURE_DELIMITER = re.compile(r"^-- $")
_MOBILE_FOOTER = re.compile(
    r"^(sent from my \w+|sent from (mail|outlook) for \w+|get outlook for \w+|sent from yahoo mail.*|"
    r"sent from samsung mobile|envoyé de mon \w+|von meinem \w+ gesendet|enviado desde mi \w+|"
    r"ارسال[\s\u200c]?شده از .{1,40}|فرستاده شده از .{1,40}|أرسلت من .{1,40})\.?$",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class ReplyParts:
    """``new``: what the customer just wrote; ``quoted``: the history below it;
    ``signature``: their signature or mobile footer. ``new`` is never empty
    when the text is not: if nothing is left after a cut, nothing is cut."""

    new: str
    quoted: str
    signature: str


def split_reply(text: str) -> ReplyParts:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    cut = _history_start(lines)
    head, quoted = lines[:cut], lines[cut:]
    sig_at = _signature_start(head)
    body, signature = head[:sig_at], head[sig_at:]
    new = "\n".join(body).strip("\n").rstrip()
    if not new.strip():
        # A message that is all quote or all signature (a bare forward, a
        # one-line "Sent from my phone"): show it whole.
        return ReplyParts(new=text.strip("\n").rstrip(), quoted="", signature="")
    return ReplyParts(new=new, quoted="\n".join(quoted).strip("\n"), signature="\n".join(signature).strip())


def _plain(line: str) -> str:
    return _BIDI.sub("", line).strip()


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _history_start(lines: list[str]) -> int:
    """Index of the first line of quoted history, or ``len(lines)``."""
    n = len(lines)
    # Answered once for every start here rather than by re-reading the rest of
    # the text at each candidate line: that re-read made a body full of
    # header-like lines cost quadratic time, enough to stall a mailbox.
    history_after = _history_only_from(lines)
    next_text = _next_text(lines)
    for i in range(n):
        plain = _plain(lines[i])
        if not plain or _is_quoted(lines[i]):
            continue
        if _FORWARD.match(plain):
            # What follows was forwarded to us to read.
            return n
        end = _attribution_end(lines, i)
        if end is not None and history_after[end] and _attributes_history(lines, i, end, next_text[end]):
            return i
        if _SEPARATOR.match(plain) and history_after[i + 1]:
            return i
        if _FROM_FIELD.match(plain) and _outlook_block(lines, i) and history_after[i + 1]:
            return i
    return _trailing_quote_start(lines)


def _attribution_end(lines: list[str], i: int) -> int | None:
    """If an attribution line (possibly wrapped over three lines) starts at
    ``i``, the index just after it."""
    first = _plain(lines[i])
    if not (_ATTRIBUTION_START.search(first) or first.endswith(":")):
        return None
    joined = ""
    for j in range(i, min(i + 3, len(lines))):
        part = _plain(lines[j])
        if not part:
            break
        joined = f"{joined} {part}".strip()
        if len(joined) > 600:
            return None
        # A date or an address in it, so that a customer's own "On Monday I
        # wrote:" is not taken for a mail client's attribution.
        if joined.endswith(":") and _DATE_OR_ADDRESS.search(joined) and any(p.fullmatch(joined) for p in _ATTRIBUTION):
            return j + 1
    return None


def _attributes_history(lines: list[str], i: int, end: int, follows: int) -> bool:
    """Whether the attribution at ``lines[i:end]`` is a mail client's, above
    the history it quotes, and not a sentence of the customer's ("On 12 May
    at 10:30 your courier said:" and what he said): an address in the line,
    or the client's template (:func:`_dated_like_a_client`), or what follows
    it is quoted history, ">"-quoted or, from HTML mail converted to text,
    the header block of the message it quotes."""
    joined = " ".join(_plain(line) for line in lines[i:end])
    if _ADDRESS.search(joined) or _dated_like_a_client(joined):
        return True
    if follows >= len(lines):
        return False
    if _is_quoted(lines[follows]):
        return True
    plain = _plain(lines[follows])
    return bool(_SEPARATOR.match(plain) or (_FROM_FIELD.match(plain) and _outlook_block(lines, follows)))


# What stands around the name in a dated attribution, and the verbs.
_AROUND_NAME = re.compile(r"\b(am|pm|at|um|à|alle|om|saatinde)\b|ق\.?ظ|ب\.?ظ|[,،:]", re.IGNORECASE)
_WROTE = re.compile(
    r"\b(wrote|writes|said|a\s+écrit|escribió|escreveu|ha\s+scritto|schrieb|schreef|написала?|yazdı)\b|"
    r"نوشته\s+است|نوشته|نوشت|كتبت|كتب",
    re.IGNORECASE,
)
_AND = re.compile(r"^(and|und|et|y|e|en|и|ve|و)$", re.IGNORECASE)
_NAME_WORDS = 4


def _dated_like_a_client(joined: str) -> bool:
    """An attribution without an address written the way clients write one
    (Thunderbird's "On 3/3/25 10:12 AM, John Smith wrote:"): a full date,
    the time of day, then nothing but a name. A date and a time do not make
    it a client's on their own: "در تاریخ ... ساعت ۱۰:۳۰ همکار شما تلفنی
    گفت و نوشت:" (on ... at 10:30 your colleague said on the phone and
    wrote:) is a customer telling what happened, and what follows is theirs."""
    times = list(_TIME_OF_DAY.finditer(joined))
    if not times or not _FULL_DATE.search(joined):
        return False
    name = _AROUND_NAME.sub(" ", _WROTE.sub(" ", joined[times[-1].end() :])).split()
    return 0 < len(name) <= _NAME_WORDS and not any(_AND.match(word) for word in name)


def _next_text(lines: list[str]) -> list[int]:
    """For each index (``0`` to ``len(lines)``): the first line from there on
    that is not blank, or ``len(lines)``."""
    found = [len(lines)] * (len(lines) + 1)
    for k in range(len(lines) - 1, -1, -1):
        found[k] = k if _plain(lines[k]) else found[k + 1]
    return found


def _outlook_block(lines: list[str], i: int) -> bool:
    """A "From:" line followed within five lines by fields of at least two
    more kinds (a date, the addressee, the subject), as Outlook writes above
    the message it answers, and with the mail client's hand showing: an
    address in the From line, or Outlook's "Sent:" with its time of day and
    a Subject. A customer's own "From: / To: / Date:" lines (a flight, a
    bank transfer with its Subject) have neither. (Below a separator line,
    "____" or "-----Original Message-----", the separator marks the history.)"""
    kinds: set[str] = set()
    sent_at = False
    for j in range(i + 1, min(i + 6, len(lines))):
        plain = _plain(lines[j])
        kind = next((k for k, pattern in _HEADER_FIELDS.items() if pattern.match(plain)), None)
        if kind is None:
            if plain:
                break
            continue
        kinds.add("date" if kind == "sent" else kind)
        sent_at = sent_at or (kind == "sent" and bool(_TIME_OF_DAY.search(plain)))
    if len(kinds - {"cc"}) < 2:
        return False
    if _ADDRESS.search(_plain(lines[i])):
        return True
    return "subject" in kinds and sent_at


def _history_only_from(lines: list[str]) -> list[bool]:
    """For each start index (``0`` to ``len(lines)``): true unless the
    customer's own words resume after a quoted block from there on
    (bottom-posting or interleaved answers), in which case nothing is cut."""
    only = [True] * (len(lines) + 1)
    unquoted_later = False
    for k in range(len(lines) - 1, -1, -1):
        ok = only[k + 1]
        if _plain(lines[k]):
            if _is_quoted(lines[k]):
                ok = ok and not unquoted_later
            else:
                unquoted_later = True
        only[k] = ok
    return only


def _trailing_quote_start(lines: list[str]) -> int:
    """The start of a block of ">" lines that runs to the end of the text
    (blank lines allowed), or ``len(lines)``."""
    start = len(lines)
    for i in range(len(lines) - 1, -1, -1):
        if _is_quoted(lines[i]):
            start = i
        elif _plain(lines[i]):
            break
    return start


def _signature_start(lines: list[str]) -> int:
    """Where the signature begins in the (unquoted) head, or ``len(lines)``."""
    for i, line in enumerate(lines):
        if _SIGNATURE_DELIMITER.match(line.rstrip("\n")) and i > 0:
            return i
    last = len(lines) - 1
    while last >= 0 and not _plain(lines[last]):
        last -= 1
    if last > 0 and _MOBILE_FOOTER.match(_plain(lines[last])):
        return last
    return len(lines)
