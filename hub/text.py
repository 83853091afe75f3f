"""Text handling every channel, the bot, routing and campaigns share: Persian
and Arabic normalization, digits, phone numbers, language detection, SMS
segment counting and splitting long bodies.

Framework-free like :mod:`hub.core` (it imports nothing of ours), so channel
adapters may use it. Persian is a first-class language here: customers type
Arabic ``ي``/``ك`` on Arabic keyboards, Persian or Arabic-Indic digits in phone
numbers, and every Persian SMS is UCS-2, which changes what a message costs.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import phonenumbers

# --- digits and letters -------------------------------------------------------

_DIGITS = str.maketrans("۰۱۲۳۴۵۶۷۸۹٠١٢٣٤٥٦٧٨٩", "0123456789" * 2)

# Arabic letter forms to the Persian ones a Persian speaker means by them.
LETTER_FORMS = str.maketrans(
    {
        "ي": "ی",  # Arabic yeh
        "ى": "ی",  # alef maksura
        "ئ": "ی",
        "ك": "ک",  # Arabic kaf
        "ة": "ه",  # teh marbuta
        "ۀ": "ه",  # heh with yeh above
        "أ": "ا",
        "إ": "ا",
        "آ": "ا",
        "ٱ": "ا",
        "ؤ": "و",
        "ـ": None,  # tatweel (kashida), only stretches a word
    }
)

ZWNJ = "\u200c"
# Harakat, tanwin, superscript alef, Quranic marks: optional in everyday writing.
_DIACRITICS = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed]")
# Invisible format characters other than ZWNJ (bidi marks, zero-width joiner/space, BOM),
# and what only dresses an emoji: variation selectors ("❤️" is ❤ + U+FE0F, so "stop ❤️"
# kept a character after the symbol was blanked and was no STOP), emoji tags, the keycap.
_INVISIBLE = re.compile(
    "[\u200b\u200d-\u200f\u202a-\u202e\u2066-\u2069\ufeff\ufe00-\ufe0f\u20e3\U000e0020-\U000e007f\U000e0100-\U000e01ef]"
)
_SPACES = re.compile(r"\s+")
# Bidi embeddings, overrides and isolates (LRE RLE PDF LRO RLO, LRI RLI FSI PDI).
# Where the customer chooses the text (their name), they serve only to make it
# read as something else: "Eve \u202eevil" shows as "Eve live".
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def strip_bidi_controls(text: str) -> str:
    """``text`` without the characters that reorder how it is displayed; the
    implicit direction of its letters (Persian right to left) is untouched."""
    return _BIDI_CONTROLS.sub("", text)


def to_ascii_digits(text: str) -> str:
    """Persian (۰-۹) and Arabic-Indic (٠-٩) digits as ASCII digits."""
    return text.translate(_DIGITS)


def normalize(text: str, *, zwnj: Literal["space", "keep", "drop"] = "space", casefold: bool = True) -> str:
    """Text as a matcher should compare it: NFKC (Arabic presentation forms to
    letters), Arabic letter variants to Persian ones, no diacritics or tatweel,
    ASCII digits, case folded, whitespace collapsed.

    ``zwnj``: the zero-width non-joiner inside Persian words ("می‌روم") becomes a
    space by default, so "می‌روم" and "می روم" compare equal; writers who type
    nothing there ("میروم") match only with ``"drop"``, which callers may try too."""
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(LETTER_FORMS)
    text = _DIACRITICS.sub("", text)
    text = _INVISIBLE.sub("", text)
    if zwnj == "space":
        text = text.replace(ZWNJ, " ")
    elif zwnj == "drop":
        text = text.replace(ZWNJ, "")
    text = to_ascii_digits(text)
    if casefold:
        text = text.casefold()
    return _SPACES.sub(" ", text).strip()


_PUNCT_CATEGORIES = ("P", "S")


def strip_punctuation(text: str) -> str:
    """Punctuation and symbols (Latin and Persian: ، ؛ ؟ « » ...) as spaces."""
    chars = [" " if unicodedata.category(c)[0] in _PUNCT_CATEGORIES else c for c in text]
    return _SPACES.sub(" ", "".join(chars)).strip()


def keyword(text: str) -> str:
    """A message reduced to compare it with a single-word command (STOP, لغو):
    normalized, punctuation removed."""
    return strip_punctuation(normalize(text))


# --- language ---------------------------------------------------------------------

# Letters only Persian (not Arabic) uses, and Arabic-only letters.
_PERSIAN_ONLY = set("پچژگ")
_ARABIC_ONLY = set("ةىأإ")
# Keyboards, not languages: Persian ones type ی and ک, Arabic ones ي and ك, and
# many Persian speakers write on an Arabic layout. These only break a tie.
_PERSIAN_KEYS = set("یک")
_ARABIC_KEYS = set("يك")
_FOLD_KEYS = str.maketrans({"ي": "ی", "ك": "ک"})
# Words (keyboard letters folded) only one of the two languages uses often.
_PERSIAN_WORDING = (
    "است هست هستم هستید هستیم نیست را که این آن می نمی ها های برای از به با چه چرا کجا چطور چگونه "
    "شما خیلی ممنون مرسی بله نه یک اگر یا هم رو دارم دارید دارد کنم کنید کند شود بود باید تو توی "
    "اینجا الان البته لطفا لطفاً میخواهم میخوام خواهم بگویید بدهید چند کی"
)
_ARABIC_WORDING = (
    "في فی علی على إلی إلى الى الی هذا هذه ذلک التی الذی هل لا أن إن کیف أرید ارید لماذا ماذا متی "
    "أین یمکن یمکننی یمکنک مع عن نحن أنا انا لی لک شکرا شکراً مرحبا کان قد ثم أو عندی عندک لدی لدیک "
    "أی ای حتی بعد"
)
# Persian words that begin like the Arabic article (ال...).
_PERSIAN_AL_WORDING = "الان البته الکی الهام الگو الگوی الزامی الماس"
_PERSIAN_WORDS = frozenset(_PERSIAN_WORDING.split())
_ARABIC_WORDS = frozenset(_ARABIC_WORDING.split())
_PERSIAN_AL = frozenset(_PERSIAN_AL_WORDING.split())
_WORD = re.compile(r"[\u0620-\u064a\u0671-\u06d3]+")


def detect_language(text: str) -> str | None:
    """The language of the script most letters are in: "fa", "ar" or "en"; ``None`` for text
    without letters. Good enough to route and to pick the reply language, not a
    general language identifier: Latin script counts as English.

    Between Persian and Arabic, the evidence is letters only one of them has
    (پ چ ژ گ, the zero-width non-joiner; ة ى أ إ), words only one of them uses
    often, and the Arabic article; the keyboard's ی/ک or ي/ك only break a tie
    (Persian typed on an Arabic layout is still Persian), and a tie goes to
    Persian, our users' language."""
    arabic_script = latin = 0
    fa = ar = fa_keys = ar_keys = 0
    for ch in text:
        if "\u0600" <= ch <= "\u06ff" or "\ufb50" <= ch <= "\ufeff":
            if ch.isalpha():
                arabic_script += 1
                if ch in _PERSIAN_ONLY:
                    fa += 1
                elif ch in _ARABIC_ONLY:
                    ar += 1
                elif ch in _PERSIAN_KEYS:
                    fa_keys += 1
                elif ch in _ARABIC_KEYS:
                    ar_keys += 1
        elif ch == "\u200c":
            fa += 1
        elif ch.isalpha() and ch.isascii():
            latin += 1
    if not arabic_script and not latin:
        return None
    if arabic_script < latin:
        return "en"
    for word in _WORD.findall(text.translate(_FOLD_KEYS)):
        if word in _PERSIAN_WORDS:
            fa += 2
        elif word in _ARABIC_WORDS:
            ar += 2
        elif word.startswith("ال") and len(word) > 3 and word not in _PERSIAN_AL:
            ar += 1
    if fa == ar:
        return "ar" if ar_keys > fa_keys else "fa"
    return "ar" if ar > fa else "fa"


def is_rtl(text: str) -> bool:
    return detect_language(text) in ("fa", "ar")


# --- phone numbers ------------------------------------------------------------------


class InvalidPhoneNumber(ValueError):
    """The text is not a phone number we can dial; the message says why."""


def parse_phone(raw: str, default_region: str | None = None, *, strict: bool = False) -> str:
    """``raw`` as E.164 (``+989121234567``). Accepts Persian and Arabic-Indic
    digits, spaces, dashes, brackets and a leading ``00``; a number without a
    country code is read in ``default_region`` (ISO 3166 code such as "IR").

    ``strict`` asks libphonenumber whether the number is assigned in its
    country's plan (for imports and campaigns); otherwise it only needs a
    possible length, which keeps test and newly allocated ranges usable."""
    text = to_ascii_digits(unicodedata.normalize("NFKC", raw or "")).strip()
    if not text:
        raise InvalidPhoneNumber("phone number is empty")
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, (default_region or "").upper() or None)
    except phonenumbers.NumberParseException as exc:
        hint = "" if default_region or text.startswith("+") else " (no country code and no default region)"
        raise InvalidPhoneNumber(f"{raw!r} is not a phone number: {exc._msg}{hint}") from exc
    # IS_POSSIBLE_LOCAL_ONLY ("+1 555 0100", a US number without its area
    # code) passes is_possible_number but is no E.164 number anyone can dial.
    if phonenumbers.is_possible_number_with_reason(number) != phonenumbers.ValidationResult.IS_POSSIBLE:
        raise InvalidPhoneNumber(f"{raw!r} has the wrong number of digits for its country")
    if strict and not phonenumbers.is_valid_number(number):
        raise InvalidPhoneNumber(f"{raw!r} is not a number in use in its country's numbering plan")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_region(e164: str) -> str | None:
    """The ISO region of an E.164 number ("IR"), for its timezone or price."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(e164, None)) or None
    except phonenumbers.NumberParseException:
        return None


# --- SMS segments ---------------------------------------------------------------------

# GSM 03.38 basic character set (one septet each) and its extension table
# (an escape plus a septet: two each, and never split across segments).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")


@dataclass(frozen=True, slots=True)
class SmsSegments:
    """How a body travels as SMS: ``encoding`` "GSM-7" or "UCS-2", ``units`` in
    septets or UTF-16 code units, ``segments`` billed by the carrier."""

    encoding: Literal["GSM-7", "UCS-2"]
    units: int
    segments: int
    per_segment: int


def sms_encoding(text: str) -> Literal["GSM-7", "UCS-2"]:
    return "GSM-7" if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text) else "UCS-2"


def sms_segments(text: str) -> SmsSegments:
    """Segments a carrier bills for ``text``: GSM-7 160 septets in one part or
    153 per part of a multipart message (extension characters take two and are
    not split); UCS-2 (any Persian text, any emoji) 70 UTF-16 units or 67 per
    part (a surrogate pair is not split). An empty body is one segment."""
    if sms_encoding(text) == "GSM-7":
        widths = [2 if c in GSM7_EXTENSION else 1 for c in text]
        single, multi = 160, 153
        encoding: Literal["GSM-7", "UCS-2"] = "GSM-7"
    else:
        widths = [2 if ord(c) > 0xFFFF else 1 for c in text]
        single, multi = 70, 67
        encoding = "UCS-2"
    units = sum(widths)
    if units <= single:
        return SmsSegments(encoding, units, 1, single)
    segments, used = 1, 0
    for w in widths:
        if used + w > multi:
            segments += 1
            used = 0
        used += w
    return SmsSegments(encoding, units, segments, multi)


# --- splitting long bodies -------------------------------------------------------------

_BREAKS = ("\n\n", "\n", ". ", "! ", "? ", "؟ ", "۔ ", "; ", "، ", ", ", " ")


def utf16_len(text: str) -> int:
    """Length as Telegram and JavaScript count it."""
    return len(text.encode("utf-16-le")) // 2


def _extends(char: str) -> bool:
    """Whether ``char`` belongs to the character before it: a combining mark,
    a zero-width joiner, a variation selector, a skin tone, an emoji tag or a
    keycap (without the ``regex`` module's grapheme clusters, which the hub
    does not depend on)."""
    code = ord(char)
    return (
        code == 0x200D
        or 0xFE00 <= code <= 0xFE0F
        or 0x1F3FB <= code <= 0x1F3FF
        or 0xE0020 <= code <= 0xE007F
        or 0xE0100 <= code <= 0xE01EF
        or code == 0x20E3
        or unicodedata.category(char) in ("Mn", "Me", "Mc")
    )


def _regional(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def _cluster_start(text: str, at: int) -> int:
    """``at``, moved back to where the user-perceived character it falls in
    starts, so a cut never parts an emoji from its skin tone, a ZWJ sequence
    (a family) or a flag's two letters. ``at`` itself when that would leave
    nothing before the cut (a single "character" longer than a part)."""
    i = at
    while 0 < i < len(text) and (_extends(text[i]) or text[i - 1] == "\u200d"):
        i -= 1
    if 0 < i < len(text) and _regional(text[i]):
        # Flags are pairs of regional indicators: cut between pairs.
        run = 0
        while i - run - 1 >= 0 and _regional(text[i - run - 1]):
            run += 1
        i -= run % 2
    return i if i > 0 else at


def split_text(text: str, limit: int, *, measure: Callable[[str], int] = len) -> list[str]:
    """``text`` in parts of at most ``limit`` (by ``measure``), cut at the last
    paragraph, line, sentence or word break that fits, mid-word only when a
    single word is longer than the limit. Whitespace at a cut is dropped;
    nothing else is changed or lost."""
    if limit < 1:
        raise ValueError("limit must be positive")
    parts: list[str] = []
    rest = text
    while measure(rest) > limit:
        # The longest prefix that fits, found by bisection (measure may be UTF-16).
        lo, hi = 1, len(rest)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if measure(rest[:mid]) <= limit:
                lo = mid
            else:
                hi = mid - 1
        window = rest[:lo]
        cut = -1
        for sep in _BREAKS:
            at = window.rfind(sep)
            # A break in the first third would leave a stub of a part.
            if at > len(window) // 3:
                cut = at + len(sep)
                break
        if cut <= 0:
            cut = _cluster_start(rest, lo)
        part = rest[:cut].rstrip()
        parts.append(part or rest[:cut])
        rest = rest[cut:].lstrip()
    if rest or not parts:
        parts.append(rest)
    return parts


# Words with a Latin letter, digits and apostrophes in them ("don't", "iphone15").
_LATIN_WORD = re.compile(r"[0-9'\u2019]*[A-Za-z\u00C0-\u024F][A-Za-z\u00C0-\u024F0-9'\u2019]*")


def latin_words(text: str) -> str:
    """The Latin-script words of ``text``, space-separated: what a model of
    English words can read of it."""
    return " ".join(_LATIN_WORD.findall(text))


def clean_label(label: str) -> str:
    """A label as stored: NFC, its runs of whitespace one space, trimmed."""
    return " ".join(unicodedata.normalize("NFC", label).split())


def label_key(label: str) -> str:
    """What makes two labels the same label: "VIP", "vip" and " Vip " are one
    (on tickets, in filters and in routing and automation conditions)."""
    return clean_label(label).casefold()


#: How a yes is written in a contact attribute that came from a form, a CSV
#: column or an import ("vip: yes"), besides JSON's true.
YES_WORDS = frozenset({"1", "true", "yes", "y", "on", "بله", "آری"})


def is_vip(attributes: Mapping[str, Any], tags: Iterable[object], tag: str = "vip") -> bool:
    """Whether a contact is a VIP: tagged ``tag`` (in any case) or its ``vip``
    attribute set to yes. Routing's ``vip`` condition, the bot's handoff and
    the Rasa bridge's ``hub_vip`` slot all ask this, so a contact one of them
    treats as a VIP is one for all three."""
    flag = attributes.get("vip")
    if isinstance(flag, str):
        flag = flag.strip().casefold() in YES_WORDS
    key = label_key(tag)
    return flag is True or flag == 1 or any(label_key(str(t)) == key for t in tags)
