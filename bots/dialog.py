"""The lead qualification dialog: pure functions over a small state dict.

The dialog asks the configured slots one at a time, validates each answer
(emails, phone numbers through libphonenumber, numbers in any digits), lets the
customer skip a slot or correct an earlier answer ("actually my email is
..."), and scores the lead with weighted rules. The state is plain JSON, kept
per contact by the hub, so a customer who leaves mid-dialog continues where
they left off on their next message, on any channel.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import phonenumbers

from hub.config import QualificationConfig, QualificationSlot, ScoreRule
from hub.text import (
    ZWNJ,
    InvalidPhoneNumber,
    detect_language,
    keyword,
    normalize,
    parse_phone,
    strip_punctuation,
    to_ascii_digits,
)

log = logging.getLogger(__name__)

STAGES = ("lead", "marketing_qualified", "sales_qualified")

# ASCII addresses only, and whole: a letter (any script) or an address
# character right before or after it would be cut off ("éric@example.com" is
# not "ric@example.com"), so such an address is refused and asked again.
_EMAIL = re.compile(r"(?<![\w.%+'-])[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w@-])")
_PHONE_CANDIDATE = re.compile(r"\+?[\d۰-۹٠-٩][\d۰-۹٠-٩ ()\-.]{5,}[\d۰-۹٠-٩]")
# A phone number written after some other answer: one that starts as phone
# numbers do (+, a trunk 0, an area code in brackets), so that "Acme
# 2024-2025" is not cut off as one.
_PHONE_START = re.compile(r"(?<![\w+])(?:\+|[0۰٠]|\(\d)[\d۰-۹٠-٩ ()\-.]{5,}[\d۰-۹٠-٩]")
# "Not decided" is a natural answer to the budget or timeline question: a skip, not a value.
_SKIP = {
    "skip", "pass", "next", "no thanks", "rather not", "prefer not to say", "none", "n/a", "na", "dont know",
    "don't know", "i don't know", "not sure", "not decided", "undecided", "رد", "بعدی", "نمیدونم", "نمی دانم",
    "نمی دونم", "ندارم", "بگذر", "ترجیح میدم نگم", "نامشخص", "مشخص نیست", "معلوم نیست", "هنوز معلوم نیست",
}  # fmt: skip
# Ways to leave the dialog altogether ("cancel", «لغو», «نمی‌خوام»): checked
# before an answer is validated, or a free-text slot would store "cancel" as
# the customer's name. Compared as :func:`hub.text.keyword` has them, and with
# the non-joiner dropped too («نمیخوام» is «نمی‌خوام» typed without it).
_EXIT_WORDS = (
    "cancel", "stop", "quit", "exit", "end", "never mind", "nevermind", "forget it", "stop asking",
    "no more questions", "not interested", "i'm not interested", "im not interested", "i don't want to",
    "i dont want to", "لغو", "کنسل", "انصراف", "توقف", "بس", "بسه", "بیخیال", "بی خیال", "ولش کن", "نمی‌خوام",
    "نمی‌خواهم", "نمی‌خوایم", "علاقه ندارم", "تمومش کن", "تمامش کن",
)  # fmt: skip
# Words that may surround an exit word ("no, cancel please", «نه لغو کن»)
# without making it part of an answer.
_EXIT_FILLER = ("please", "pls", "just", "no", "ok", "okay", "it", "نه", "لطفا", "کن", "کنید", "دیگه", "باشه")
# The separator after the opener includes the Persian comma and semicolon a
# Persian keyboard types («نه، اسمم رضا است»).
_CORRECTION = re.compile(
    r"^\s*(?:actually|in fact|sorry|correction|oops|i meant|no|wait|اصلاح|ببخشید|نه|در\s*واقع)\b[\s,،؛:!-]*", re.I
)
# Said around the value of a correction ("my name is actually Reza",
# «اسمم در واقع رضا است», "my email is x@y.com really"): not part of it.
_ADVERB = r"(?:actually|really|in\s+fact|در\s*واقع|واقعا|راستش)(?!\w)"
_VALUE = rf"(?:{_ADVERB}[\s,،]*)?(?P<v>\S.*?)"
_AFTER = rf"(?:[\s,،]+{_ADVERB})?"
_MULTIPLIERS = {
    "k": 1_000, "thousand": 1_000, "هزار": 1_000, "m": 1_000_000, "mn": 1_000_000, "mln": 1_000_000,
    "mil": 1_000_000, "million": 1_000_000, "میلیون": 1_000_000, "ملیون": 1_000_000, "b": 1_000_000_000,
    "bn": 1_000_000_000, "billion": 1_000_000_000, "میلیارد": 1_000_000_000, "ملیارد": 1_000_000_000,
}  # fmt: skip
# An amount: "1 500 000" (a space groups only whole triples, or "10 200" would be read
# as one number), else digits joined by separators, read by _amount(): "1,200.50",
# "۱،۵۰۰،۰۰۰" (U+060C, on Persian keyboards), "۱٬۲۰۰" (U+066C), "۲٫۵" (U+066B),
# "۲/۵" (the slash is how most Persian writers type the decimal point).
_AMOUNT = r"\d{1,3}(?: \d{3})+(?![\d.,،٬٫/])|\d+(?:[.,،٬٫/]\d+)*"


def _quantity(name: str) -> str:
    # A letter-only unit: the Persian separators are in the Arabic block too, and
    # took "،" for a unit ("۱،۵۰۰" read as 1).
    return rf"(?P<{name}>{_AMOUNT})(?:\s*(?P<{name}_unit>[^\W\d_]+))?"


_SINGLE = re.compile(_quantity("lo"))
_RANGE = re.compile(rf"{_quantity('lo')}\s*(?:-|\u2013|\u2014|~|to|till|تا|الی)\s*{_quantity('hi')}")
_BETWEEN = re.compile(rf"(?:between|بین)\s+{_quantity('lo')}\s*(?:and|&|و)\s*{_quantity('hi')}")
# «۱ میلیون و ۵۰۰ هزار»: a sum when the units fall, as Persian writes amounts.
_COMPOUND = re.compile(rf"{_quantity('lo')}\s*(?:and|و)\s*{_quantity('hi')}")

# "Budget 5k", «بودجه ۵ میلیون تومان», but not "Team 8 Studios".
_BARE_NUMBER = (
    rf"\$?(?:{_AMOUNT})(?:\s*(?:{'|'.join(sorted(_MULTIPLIERS, key=len, reverse=True))})(?!\w))?"
    r"(?:\s*(?:people|persons|users|seats|employees|staff|dollars?|usd|euros?|eur|نفر|کاربر|دلار|یورو|تومان|تومن|ریال))?"
)

# Questions asked where an answer was expected: the first words (normalized).
_QUESTION_WORDS = {
    normalize(w) for w in (
        "what", "whats", "why", "how", "hows", "when", "where", "which", "who", "whose", "whom", "چه", "چی", "چیه",
        "چرا", "چطور", "چطوری", "چگونه", "کجا", "کجاست", "کی", "کدام", "کدوم", "آیا", "چند", "چندتا", "چقدر", "چقد",
        "مگه", "مگر",
    )
}  # fmt: skip
# "Do you ...", "Is there ...": an auxiliary alone is no question ("Will Smith", "May Lee").
_AUXILIARIES = {
    "do", "does", "did", "is", "are", "was", "were", "am", "can", "could", "would", "will", "should", "shall", "may",
    "might", "have", "has",
}  # fmt: skip
_SUBJECTS = {
    "i", "you", "u", "we", "they", "it", "there", "he", "she", "this", "that", "these", "those", "your", "my", "our",
    "the", "a", "an",
}  # fmt: skip
_GREETING = r"(?:(?:hi|hello|hey|salam|سلام|درود)(?!\w)[\s,،!.]*)?"
_END = r"[\s.!]*"
_COPULA_WORD = r"(?:است|هست|هستش|میباشد|می\s+باشد)"
_COPULA = rf"(?:\s+{_COPULA_WORD})?"


class Invalid(ValueError):
    """An answer that does not fit its slot; the message is shown to the customer."""

    def __init__(self, en: str, fa: str) -> None:
        super().__init__(en)
        self.text = {"en": en, "fa": fa}


# --- the customer's words ------------------------------------------------------------


def _fold(text: str) -> tuple[str, list[int]]:
    """``text`` as :func:`hub.text.normalize` compares it, with the index in
    ``text`` of each folded character: patterns match the folded form, values
    come from the customer's own text (their case, their digits)."""
    folded: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        piece = " " if ch.isspace() or ch == ZWNJ else normalize(ch)
        folded.append(piece)
        origin.extend([i] * len(piece))
    return "".join(folded), origin


def _values(patterns: list[re.Pattern[str]], text: str) -> Iterator[str]:
    """The ``v`` group of each pattern that matches all of ``text``, as the
    customer wrote it."""
    folded, origin = _fold(text)
    for pattern in patterns:
        found = pattern.fullmatch(folded)
        if found is None:
            continue
        start, end = found.span("v")
        value = text[origin[start] : origin[end - 1] + 1].strip()
        if value:
            yield value


def _is_persian_script(text: str) -> bool:
    return any("\u0600" <= ch <= "\u06ff" for ch in text)


# How sure a correction must look before it overwrites an answer, by slot kind:
# an email or a phone number is recognised by its shape, so "email x@y.example"
# is enough; a number is searched for anywhere in the text ("team plan, 500"
# holds 500), so it must follow the alias at once ("budget 5k") or a verb, a
# colon or a possessive must say it is the slot's value, as for a choice; free
# text accepts anything, so it must be "my ..." / «...م» or "...:" («اسم شرکت
# ما ...» is not a name).
_SHAPED = frozenset({"email", "phone"})


@lru_cache(maxsize=256)
def _alias_patterns(alias: str, kind: str) -> tuple[re.Pattern[str], ...]:
    """The ways to give the value of the slot ``alias`` names ("my email is X",
    "email: X", «ایمیلم X است», «نام من X»), matched against folded text."""
    word = r"\s+".join(re.escape(w) for w in _fold(alias)[0].split())
    # The alias ends at a word boundary: «نامشخص» is not «نام» + «شخص», nor "Namecheap" "name" + "cheap".
    a = rf"{word}(?!\w)"
    v = _VALUE
    owner = r"(?:(?:my|our|the)\s+)?"
    verb = r"(?:(?:is|was|should\s+be|will\s+be|would\s+be|['\u2019]s)(?!\w)|[:=-])"
    patterns = [rf"{owner}{a}\s*[:=-]\s*{v}{_COPULA}"]
    if kind == "text":
        patterns.append(rf"(?:my|our)\s+{a}\s*{verb}\s*{v}")
    else:
        patterns.append(rf"{owner}{a}\s*{verb}{'?' if kind in _SHAPED else ''}\s*{v}")
    if kind == "number":
        patterns.append(rf"{owner}{a}\s*(?P<v>{_BARE_NUMBER})")
    if _is_persian_script(alias):
        # «اسمم», «ایمیل‌مان», «شماره‌ام», «اسم من». The copula is a word of its own:
        # an optional «ه» right after a lazy value cut the «ه» off «فاطمه».
        patterns.append(rf"{word}(?:\s+(?:من|ما)|م|مان|مون|\s+ام)(?!\w)\s*{v}{_COPULA}")
        if kind in _SHAPED:
            patterns.append(rf"{a}\s*{v}{_COPULA}")
        elif kind != "text":
            patterns.append(rf"{a}\s*{v}\s+{_COPULA_WORD}")
    return tuple(re.compile(f"{_GREETING}{p}{_AFTER}{_END}") for p in patterns)


def _slot_patterns(slot: QualificationSlot) -> list[re.Pattern[str]]:
    names = sorted({slot.name.replace("_", " "), *slot.aliases}, key=len, reverse=True)
    return [p for alias in names if alias.strip() for p in _alias_patterns(alias, slot.kind)]


# "I'm Sara", «من سارا هستم»: ways to give one's own name, for a slot that asks it.
_NAME_SLOTS = frozenset({"name", "full_name", "first_name", "last_name", "contact_name"})
_INTRODUCTIONS = [
    re.compile(
        rf"{_GREETING}(?:i['\u2019]?m|i\s+am|this\s+is|call\s+me|it['\u2019]?s|it\s+is)\s+{_VALUE}{_AFTER}{_END}"
    ),
    re.compile(rf"{_GREETING}(?:من\s+)?{_VALUE}\s+(?:هستم|ام){_AFTER}{_END}"),
]


def is_question(text: str) -> bool:
    """Whether ``text`` is clearly a question rather than an answer."""
    if text.rstrip(" \t\n\"')»”").endswith(("?", "؟")):
        return True
    words = keyword(text).split()
    if not words:
        return False
    if words[0] in _QUESTION_WORDS:
        return True
    return len(words) > 1 and words[0] in _AUXILIARIES and words[1] in _SUBJECTS


def _exit_forms(text: str) -> set[str]:
    return {keyword(text), strip_punctuation(normalize(text, zwnj="drop"))}


_EXIT = {form for w in _EXIT_WORDS for form in _exit_forms(w)}
_FILLER = {form for w in _EXIT_FILLER for form in _exit_forms(w)}


def is_exit(text: str) -> bool:
    """Whether ``text`` asks to stop the dialog: an exit word, with nothing
    around it but words like "please" (so "no thanks" stays a skip)."""
    for said in _exit_forms(text):
        words = said.split()
        while words and words[0] in _FILLER:
            words.pop(0)
        while words and words[-1] in _FILLER:
            words.pop()
        if words and " ".join(words) in _EXIT:
            return True
    return False


# --- values ---------------------------------------------------------------------


def _not_a_number() -> Invalid:
    return Invalid("Please answer with a number, for example 500.", "لطفاً یک عدد بنویسید، مثلاً ۵۰۰.")


def _amount(token: str) -> float:
    """One written amount as a number. "٫" and "/" are always the decimal point and "٬"
    and a space always group thousands; "," "،" and "." are read by where they
    are: of two different ones the last is the decimal point ("1,200.50",
    "1.200,50"), one repeated groups thousands ("1,500,000", "1.500.000"), and
    a single one is a decimal point unless a comma precedes exactly three
    digits ("1,200"). A single dot before three digits stays a decimal point:
    "1.200" is 1.2 in English, and guessing otherwise would multiply by 1000."""
    token = token.replace("/", "٫")
    seps = re.findall(r"[^\d]", token)
    decimal: str | None = None
    if "٫" in seps:
        decimal = "٫"
    elif seps and seps[-1] in ".,،":
        last = seps[-1]
        kinds = {s for s in seps if s in ".,،"}
        group = token[token.rindex(last) + 1 :]
        if seps.count(last) == 1 and (len(kinds) > 1 or last == "." or len(group) != 3):
            decimal = last
    if decimal is None:
        whole, fraction = token, ""
    else:
        cut = token.rindex(decimal)
        whole, fraction = token[:cut], token[cut + 1 :]
        if not fraction.isdigit():
            raise _not_a_number()
    whole = re.sub(r"[^\d]", "", whole)
    return float(f"{whole}.{fraction or 0}")


def _scaled(found: re.Match[str], end: str) -> tuple[float, int | None]:
    unit = found.group(f"{end}_unit")
    return _amount(found.group(end)), _MULTIPLIERS.get(unit.lower()) if unit else None


def parse_number(text: str) -> float:
    """ "5k", "2 million", "۵ میلیون", "1,200.50", "۱،۵۰۰،۰۰۰", "۱ میلیون و ۵۰۰ هزار",
    "5-10k" -> a number."""
    clean = normalize(text)
    compound = _COMPOUND.search(clean)
    if compound is not None:
        (big, big_unit), (small, small_unit) = _scaled(compound, "lo"), _scaled(compound, "hi")
        if big_unit is not None and big_unit > (small_unit or 1):
            return big * big_unit + small * (small_unit or 1)
    span = _BETWEEN.search(clean) or _RANGE.search(clean)
    if span is not None:
        (lo, lo_unit), (hi, hi_unit) = _scaled(span, "lo"), _scaled(span, "hi")
        # One unit covers both ends ("5-10k" is 5k-10k) unless that would put the
        # ends out of order ("500-1k" is 500 to 1000).
        if lo <= hi:
            lo_unit, hi_unit = lo_unit or hi_unit, hi_unit or lo_unit
        # A range is stored as its midpoint: score rules compare one number with
        # thresholds both ways (gte budget, lte team size), and the midpoint leans
        # neither way, where either end would tip those rules for every range.
        return (lo * (lo_unit or 1) + hi * (hi_unit or 1)) / 2
    single = _SINGLE.search(clean)
    if single is None:
        raise _not_a_number()
    value, unit = _scaled(single, "lo")
    return value * (unit or 1)


def _alternatives(choice: str) -> list[str]:
    return [a.strip() for a in choice.split("|") if a.strip()]


def choice_titles(slot: QualificationSlot) -> list[dict[str, str]]:
    """Each choice's title per language: the first of its alternatives written
    in that language (config "this month|این ماه"), English falling back to the
    stored value."""
    titles: list[dict[str, str]] = []
    for choice in slot.choices:
        by_lang: dict[str, str] = {}
        for alternative in _alternatives(choice):
            lang = detect_language(alternative)
            if lang is not None:
                by_lang.setdefault(lang, alternative)
        by_lang.setdefault("en", choice.split("|")[0])
        titles.append(by_lang)
    return titles


def _choice(slot: QualificationSlot, text: str) -> str:
    said = keyword(text)
    options = [[keyword(a) for a in c.split("|")] for c in slot.choices]
    canonical = [c.split("|")[0] for c in slot.choices]
    digits = to_ascii_digits(said)
    if digits.isdecimal() and 1 <= int(digits) <= len(options):
        return canonical[int(digits) - 1]
    for alternatives, value in zip(options, canonical, strict=True):
        if said in alternatives:
            return value
    for alternatives, value in zip(options, canonical, strict=True):
        if any(a and re.search(rf"(^|\s){re.escape(a)}($|\s)", said) for a in alternatives):
            return value
    titles = choice_titles(slot)
    english = ", ".join(t["en"] for t in titles)
    persian = "، ".join(t.get("fa", t["en"]) for t in titles)
    raise Invalid(f"Please choose one of: {english}.", f"لطفاً یکی از این‌ها را انتخاب کنید: {persian}.")


# Where something else said in the same message begins, so that it is not
# stored as part of a free-text answer: a clause about the customer's other
# details ("John and my email is ...", "Sara, my phone is ...", «سارا است و
# ایمیلم ...», «... و شماره من ...»), or an email address or phone number
# itself ("Sara Ahmadi - sara@example.com", "Reza, 09121234567"). A bare "and"
# or «و» is not one: "Smith and Sons" is a company.
_CLAUSE = re.compile(
    r"(?:\s*[,،;؛]\s*(?:and\s+|&\s*)?|\s+(?:and|&)\s+)(?:my|our|i['\u2019]?m|i\s+am)(?!\w)"
    r"|[\s,،؛]*\s+و\s+(?=\S+(?:م|مان|مون)(?!\w)|\S+\s+(?:ام|من|ما)(?!\w))",
    re.I,
)
# What led up to the cut: separators, "and", a copula, and the words naming
# the detail that follows ("..., email: x@y.com", «... و ایمیلم x@y.com»).
_LEAD_IN = (
    r"and|&|is|my|our|e-?mail|mail|phone|number|mobile|cell|tel|و|ایمیل\S*|تلفن\S*|شماره\S*|موبایل\S*"
    rf"|{_COPULA_WORD}|هستم"
)
_TRAILING = re.compile(rf"(?:[\s,،;؛:=(\-\u2013\u2014]|(?<![^\s,،;؛:(])(?:{_LEAD_IN})(?!\w))+$", re.I)


def _first_answer(value: str) -> str:
    """``value`` up to where the message goes on to say something else."""
    cuts = [len(value)]
    for pattern in (_CLAUSE, _EMAIL, _PHONE_START):
        found = pattern.search(to_ascii_digits(value) if pattern is _EMAIL else value)
        if found is not None:
            cuts.append(found.start())
    head = value[: min(cuts)]
    if len(head) == len(value):
        return value
    return _TRAILING.sub("", head).strip()


def _text(slot: QualificationSlot, text: str) -> str:
    if is_question(text):
        # Refused, not stored: the caller then tries the knowledge base with it.
        raise Invalid("I can't answer that one here, sorry.", "متأسفم، به این پرسش اینجا نمی‌توانم پاسخ بدهم.")
    patterns = _slot_patterns(slot)
    if slot.name in _NAME_SLOTS:
        patterns += _INTRODUCTIONS
    rest = _CORRECTION.sub("", text, count=1).strip()
    value = _first_answer(next(_values(patterns, rest), text))
    if not any(ch.isalnum() for ch in value):
        raise _no_answer()
    return value[:500]


def _no_answer() -> Invalid:
    return Invalid("Please write an answer, or say skip.", "لطفاً پاسخ را بنویسید یا «رد» را بفرستید.")


def validate(slot: QualificationSlot, text: str, phone_region: str | None = None) -> Any:
    """The stored value of an answer to ``slot``, or :class:`Invalid`."""
    text = text.strip()
    if slot.kind == "email":
        found = _EMAIL.search(to_ascii_digits(text))
        if found is None:
            raise Invalid(
                "That does not look like an email address (name@example.com).",
                "این نشانی ایمیل درست به نظر نمی‌رسد (مانند name@example.com).",
            )
        return found.group(0).lower()
    if slot.kind == "phone":
        candidate = _PHONE_CANDIDATE.search(text)
        try:
            return parse_phone(candidate.group(0) if candidate else text, phone_region)
        except InvalidPhoneNumber as exc:
            # libphonenumber's words are about the hub's setup, not for the customer.
            log.info("a phone number in the qualification dialog was not read: %s", exc)
            raise _unreadable_phone(phone_region) from exc
    if slot.kind == "number":
        value = parse_number(text)
        return int(value) if value.is_integer() else value
    if slot.kind == "choice":
        return _choice(slot, text)
    return _text(slot, text)


def _unreadable_phone(region: str | None) -> Invalid:
    """What the customer reads about a number that was not understood: how to
    write it, with an example from the hub's region (an Iranian example on a
    hub in Germany would only mislead), or none in particular without one."""
    example = None
    if region:
        number = phonenumbers.example_number_for_type(region.upper(), phonenumbers.PhoneNumberType.MOBILE)
        if number is not None:
            example = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    if example is None:
        return Invalid(
            "I couldn't read that phone number. Please write it starting with + and the country code "
            "(+1 for the US, +44 for the UK, +98 for Iran ...).",
            "شماره تلفن را نتوانستم بخوانم؛ لطفاً آن را با + و پیش‌شماره کشور بنویسید "
            "(مانند \u200e+98 برای ایران یا \u200e+1 برای آمریکا).",
        )
    return Invalid(
        f"I couldn't read that phone number. Please check it, or write it with the country code, like {example}.",
        f"شماره تلفن را نتوانستم بخوانم؛ لطفاً آن را بررسی کنید یا با پیش‌شماره کشور بنویسید (مانند \u200e{example}).",
    )


def also_answered(
    config: QualificationConfig,
    state: dict[str, Any],
    text: str,
    answered: QualificationSlot | None,
    region: str | None,
) -> dict[str, Any]:
    """The email address and phone number ``text`` gives besides its answer to
    ``answered`` ("my name is John and my email is john@example.com"), for the
    slots of that kind not yet answered nor known: asking for what the customer
    has just written reads as not listening. Only an address or number that is
    one of a kind in the message and in the dialog: which of two would be
    guesswork. No phone number beside an answer to a number slot, where "1 500
    000" is an amount."""
    found: dict[str, Any] = {}
    plain = to_ascii_digits(text)
    emails = _EMAIL.findall(plain)
    # Digits inside an address ("ali.1364123@example.com") are no phone number.
    rest = _EMAIL.sub(" ", plain)
    for kind in sorted(_SHAPED):
        slots = [s for s in config.slots if s.kind == kind]
        if len(slots) != 1 or slots[0] is answered:
            continue
        slot = slots[0]
        if slot.name in state["values"] or slot.name in state["known"]:
            continue
        if kind == "email" and len({e.lower() for e in emails}) == 1:
            found[slot.name] = emails[0].lower()
        elif kind == "phone" and (answered is None or answered.kind != "number"):
            numbers = _PHONE_START.findall(rest)
            if len(numbers) == 1:
                try:
                    found[slot.name] = parse_phone(numbers[0], region)
                except InvalidPhoneNumber:
                    continue
    return found


def _take(state: dict[str, Any], step: Step, values: dict[str, Any]) -> None:
    for name, value in values.items():
        state["values"][name] = value
        step.set_values[name] = value
        if name in state["skipped"]:
            state["skipped"].remove(name)


def is_skip(text: str) -> bool:
    return keyword(text).replace("\u2019", "'") in _SKIP


def find_correction(
    slots: list[QualificationSlot], text: str, phone_region: str | None = None
) -> tuple[QualificationSlot, Any] | None:
    """("actually") "my email is X" / «ایمیلم X است»: the slot being corrected
    and its new value, if the message is such a correction."""
    rest = _CORRECTION.sub("", text, count=1).strip()
    for slot in slots:
        for value in _values(_slot_patterns(slot), rest):
            try:
                return slot, validate(slot, value, phone_region)
            except Invalid:
                continue
    return None


# --- scoring --------------------------------------------------------------------


def _rule_matches(rule: ScoreRule, value: Any) -> bool:
    if value is None or value == "":
        return False
    if rule.op == "present":
        return True
    if rule.op == "eq":
        return str(value).casefold() == str(rule.value).casefold()
    if rule.op == "in":
        return str(value).casefold() in {str(v).casefold() for v in (rule.value or [])}
    if rule.op == "contains":
        return str(rule.value).casefold() in str(value).casefold()
    try:
        number, bound = float(value), float(rule.value)
    except (TypeError, ValueError):
        return False
    return number >= bound if rule.op == "gte" else number <= bound


def score(rules: list[ScoreRule], values: dict[str, Any]) -> int:
    return sum(rule.points for rule in rules if _rule_matches(rule, values.get(rule.slot)))


def stage_for(config: QualificationConfig, points: int) -> str:
    if points >= config.sql_score:
        return "sales_qualified"
    if points >= config.mql_score:
        return "marketing_qualified"
    return "lead"


def later_stage(current: str | None, new: str) -> str:
    """Lifecycle stages only move forward (an SQL stays an SQL)."""
    if current in STAGES and STAGES.index(current) >= STAGES.index(new):
        return current
    return new


# --- the dialog -----------------------------------------------------------------------


@dataclass
class Step:
    """What one customer message did to the dialog."""

    say: list[dict[str, str]] = field(default_factory=list)  # texts per language, in order
    set_values: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    quick_choices: list[str] = field(default_factory=list)  # what each button answers: a choice's stored value
    choice_titles: list[dict[str, str]] = field(default_factory=list)  # each button's title per language
    consumed: bool = True  # False: the message was not an answer (the caller may treat it as a question)
    cancelled: bool = False  # the customer asked to stop the dialog: it has ended, unfinished


def start(config: QualificationConfig, known: dict[str, Any]) -> dict[str, Any]:
    """A new dialog; slots the contact already has values for are not asked again."""
    return {"slot": None, "values": {}, "skipped": [], "tries": 0, "known": sorted(k for k in known if known[k])}


def _next_slot(config: QualificationConfig, state: dict[str, Any]) -> QualificationSlot | None:
    for slot in config.slots:
        if slot.name in state["values"] or slot.name in state["skipped"] or slot.name in state["known"]:
            continue
        return slot
    return None


def ask_next(config: QualificationConfig, state: dict[str, Any], step: Step) -> Step:
    slot = _next_slot(config, state)
    state["slot"] = slot.name if slot else None
    state["tries"] = 0
    if slot is None:
        step.done = True
        return step
    step.say.append(dict(slot.prompt))
    _offer_choices(slot, step)
    return step


def ask_again(config: QualificationConfig, state: dict[str, Any], step: Step) -> Step:
    """The open question again (with its buttons), nothing answered."""
    slot = next((s for s in config.slots if s.name == state.get("slot")), None)
    if slot is not None:
        step.say.append(dict(slot.prompt))
        _offer_choices(slot, step)
    return step


def _offer_choices(slot: QualificationSlot, step: Step) -> None:
    if slot.kind == "choice":
        step.quick_choices = [c.split("|")[0] for c in slot.choices]
        step.choice_titles = choice_titles(slot)


def _shown(slot: QualificationSlot, value: Any, lang: str) -> str:
    """A stored value as the customer reads it: a choice by its title in their language."""
    if slot.kind == "choice":
        canonical = [c.split("|")[0] for c in slot.choices]
        if value in canonical:
            titles = choice_titles(slot)[canonical.index(value)]
            return titles.get(lang, titles["en"])
    return str(value)


_CANCELLED = {
    "en": "No problem, I'll stop the questions here. Ask me anything else whenever you like.",
    "fa": "باشد، سؤال‌ها را همین‌جا تمام می‌کنم. هر سؤال دیگری داشتید بپرسید.",
}


def answer(
    config: QualificationConfig,
    state: dict[str, Any],
    text: str,
    *,
    default_region: str | None = None,
    courtesy_only: bool = False,
) -> Step:
    """Feed one customer message to the dialog. ``default_region`` reads phone
    numbers without a country code where the dialog sets no region of its own
    (the hub's ``phone.default_region``). ``courtesy_only``: the caller found
    the message is only a greeting, thanks, yes or no (the bot's word lists),
    which is no one's name or company, so a free-text slot refuses it."""
    step = Step()
    slot = next((s for s in config.slots if s.name == state.get("slot")), None)
    if slot is not None and is_exit(text):
        state["slot"] = None
        step.cancelled = True
        step.say.append(dict(_CANCELLED))
        return step
    region = config.phone_region or default_region
    correction = find_correction([s for s in config.slots if s is not slot], text, region)
    if correction is not None:
        fixed, value = correction
        state["values"][fixed.name] = value
        if fixed.name in state["skipped"]:
            state["skipped"].remove(fixed.name)
        step.set_values[fixed.name] = value
        step.say.append(
            {
                "en": f"Thanks, I've updated your {fixed.name.replace('_', ' ')} to {_shown(fixed, value, 'en')}.",
                "fa": f"ممنون، {_shown(fixed, value, 'fa')} ثبت شد.",
            }
        )
        _take(state, step, also_answered(config, state, text, fixed, region))
        if slot is not None and slot.name not in state["values"]:
            step.say.append(dict(slot.prompt))
            _offer_choices(slot, step)
            return step
        return ask_next(config, state, step)
    if slot is None:
        return ask_next(config, state, step)
    if is_skip(text):
        if slot.required and state["tries"] == 0 and not state.get(f"pressed_{slot.name}"):
            state["tries"] = 1
            state[f"pressed_{slot.name}"] = True
            step.say.append(
                {"en": "It helps us a lot to have this one. " + slot.prompt["en"],
                 "fa": "این مورد برای ما خیلی مهم است. " + slot.prompt.get("fa", slot.prompt["en"])}
            )  # fmt: skip
            return step
        state["skipped"].append(slot.name)
        return ask_next(config, state, step)
    try:
        if courtesy_only and slot.kind == "text":
            raise _no_answer()
        value = validate(slot, text, region)
    except Invalid as exc:
        besides = {} if is_question(text) else also_answered(config, state, text, slot, region)
        if besides:
            # Not this question's answer, but another's ("sara@example.com"
            # when asked the name): kept, and this question asked again.
            _take(state, step, besides)
            if slot.name in besides:
                return ask_next(config, state, step)
            return ask_again(config, state, step)
        state["tries"] += 1
        if state["tries"] >= 2:
            # Twice wrong: move on rather than trap the customer in a loop.
            state["skipped"].append(slot.name)
            step.say.append({"en": "Let's move on.", "fa": "برویم سراغ سؤال بعدی."})
            return ask_next(config, state, step)
        step.consumed = False
        step.say.append(exc.text)
        step.say.append(dict(slot.prompt))
        _offer_choices(slot, step)
        return step
    state["values"][slot.name] = value
    step.set_values[slot.name] = value
    _take(state, step, also_answered(config, state, text, slot, region))
    return ask_next(config, state, step)
