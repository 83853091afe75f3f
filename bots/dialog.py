"""The lead qualification dialog: pure functions over a small state dict.

The dialog asks the configured slots one at a time, validates each answer
(emails, phone numbers through libphonenumber, numbers in any digits), lets the
customer skip a slot or correct an earlier answer ("actually my email is
..."), and scores the lead with weighted rules. The state is plain JSON, kept
per contact by the hub, so a customer who leaves mid-dialog continues where
they left off on their next message, on any channel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hub.config import QualificationConfig, QualificationSlot, ScoreRule
from hub.text import InvalidPhoneNumber, keyword, normalize, parse_phone, to_ascii_digits

STAGES = ("lead", "marketing_qualified", "sales_qualified")

_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE_CANDIDATE = re.compile(r"\+?[\d۰-۹٠-٩][\d۰-۹٠-٩ ()\-.]{5,}[\d۰-۹٠-٩]")
_SKIP = {
    "skip", "pass", "next", "no thanks", "rather not", "prefer not to say", "none", "n/a", "na", "dont know",
    "don't know", "i don't know", "رد", "بعدی", "نمیدونم", "نمی دانم", "نمی دونم", "ندارم", "بگذر", "ترجیح میدم نگم",
}  # fmt: skip
_CORRECTION = re.compile(r"^\s*(?:actually|sorry|correction|oops|i meant|no|wait|اصلاح|ببخشید|نه)\b[\s,:!-]*", re.I)
_MULTIPLIERS = {
    "k": 1_000, "thousand": 1_000, "هزار": 1_000, "m": 1_000_000, "mn": 1_000_000, "million": 1_000_000,
    "میلیون": 1_000_000, "b": 1_000_000_000, "billion": 1_000_000_000, "میلیارد": 1_000_000_000,
}  # fmt: skip
_NUMBER = re.compile(r"(\d+(?:[.,٫٬]\d+)*)\s*([a-z\u0600-\u06ff]+)?", re.I)


class Invalid(ValueError):
    """An answer that does not fit its slot; the message is shown to the customer."""

    def __init__(self, en: str, fa: str) -> None:
        super().__init__(en)
        self.text = {"en": en, "fa": fa}


# --- values ---------------------------------------------------------------------


def parse_number(text: str) -> float:
    """ "5k", "2 million", "۵ میلیون", "1,200", "۱۲۰۰" -> a number."""
    clean = to_ascii_digits(normalize(text))
    match = _NUMBER.search(clean)
    if match is None:
        raise Invalid("Please answer with a number, for example 500.", "لطفاً یک عدد بنویسید، مثلاً ۵۰۰.")
    digits, unit = match.group(1), (match.group(2) or "").lower()
    # Thousands separators (1,200 / ۱٬۲۰۰) vs a decimal point (2.5 / ۲٫۵).
    if re.fullmatch(r"\d{1,3}([,٬]\d{3})+", digits):
        digits = re.sub("[,٬]", "", digits)
    digits = digits.replace("٫", ".").replace(",", ".")
    try:
        value = float(digits)
    except ValueError as exc:
        raise Invalid("Please answer with a number, for example 500.", "لطفاً یک عدد بنویسید، مثلاً ۵۰۰.") from exc
    return value * _MULTIPLIERS.get(unit, 1)


def _choice(slot: QualificationSlot, text: str) -> str:
    said = keyword(text)
    options = [[keyword(a) for a in c.split("|")] for c in slot.choices]
    canonical = [c.split("|")[0] for c in slot.choices]
    digits = to_ascii_digits(said)
    if digits.isdigit() and 1 <= int(digits) <= len(options):
        return canonical[int(digits) - 1]
    for alternatives, value in zip(options, canonical, strict=True):
        if said in alternatives:
            return value
    for alternatives, value in zip(options, canonical, strict=True):
        if any(a and re.search(rf"(^|\s){re.escape(a)}($|\s)", said) for a in alternatives):
            return value
    listed = ", ".join(canonical)
    raise Invalid(f"Please choose one of: {listed}.", f"لطفاً یکی از این‌ها را انتخاب کنید: {listed}")


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
            hint = "" if phone_region else " with the country code (+44 ...)"
            raise Invalid(
                f"I could not read that phone number{hint}: {exc}",
                "شماره تلفن را نتوانستم بخوانم؛ لطفاً با پیش‌شماره کشور بنویسید (مانند ‎+98 912 ...).",
            ) from exc
    if slot.kind == "number":
        value = parse_number(text)
        return int(value) if value.is_integer() else value
    if slot.kind == "choice":
        return _choice(slot, text)
    if not text:
        raise Invalid("Please write an answer, or say skip.", "لطفاً پاسخ را بنویسید یا «رد» را بفرستید.")
    return text[:500]


def is_skip(text: str) -> bool:
    return keyword(text).replace("\u2019", "'") in _SKIP


def find_correction(
    slots: list[QualificationSlot], text: str, phone_region: str | None = None
) -> tuple[QualificationSlot, Any] | None:
    """("actually") "my email is X" / «ایمیلم X است»: the slot being corrected
    and its new value, if the message is such a correction."""
    rest = _CORRECTION.sub("", text, count=1).strip()
    lowered = normalize(rest)
    for slot in slots:
        names = [slot.name.replace("_", " "), *slot.aliases]
        for alias in sorted(names, key=len, reverse=True):
            a = re.escape(normalize(alias))
            english = re.match(rf"^(?:my\s+|the\s+|our\s+)?{a}\s*(?:is|was|should be|:|=|-)\s*(?P<v>.+)$", lowered)
            persian = re.match(rf"^{a}(?:\s*من|م|مان|ام)?\s*(?::|=|-)?\s*(?P<v>.+?)\s*(?:است|هست|ه)?\.?$", lowered)
            found = english or persian
            if found is None:
                continue
            try:
                return slot, validate(slot, found.group("v"), phone_region)
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
    quick_choices: list[str] = field(default_factory=list)
    consumed: bool = True  # False: the message was not an answer (the caller may treat it as a question)


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
    if slot.kind == "choice":
        step.quick_choices = [c.split("|")[0] for c in slot.choices]
    return step


def answer(config: QualificationConfig, state: dict[str, Any], text: str) -> Step:
    """Feed one customer message to the dialog."""
    step = Step()
    slot = next((s for s in config.slots if s.name == state.get("slot")), None)
    correction = find_correction([s for s in config.slots if s is not slot], text, config.phone_region)
    if correction is not None:
        fixed, value = correction
        state["values"][fixed.name] = value
        if fixed.name in state["skipped"]:
            state["skipped"].remove(fixed.name)
        step.set_values[fixed.name] = value
        step.say.append(
            {
                "en": f"Thanks, I've updated your {fixed.name.replace('_', ' ')} to {value}.",
                "fa": f"ممنون، {value} ثبت شد.",
            }
        )
        if slot is not None:
            step.say.append(dict(slot.prompt))
            if slot.kind == "choice":
                step.quick_choices = [c.split("|")[0] for c in slot.choices]
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
        value = validate(slot, text, config.phone_region)
    except Invalid as exc:
        state["tries"] += 1
        if state["tries"] >= 2:
            # Twice wrong: move on rather than trap the customer in a loop.
            state["skipped"].append(slot.name)
            step.say.append({"en": "Let's move on.", "fa": "برویم سراغ سؤال بعدی."})
            return ask_next(config, state, step)
        step.consumed = False
        step.say.append(exc.text)
        step.say.append(dict(slot.prompt))
        return step
    state["values"][slot.name] = value
    step.set_values[slot.name] = value
    return ask_next(config, state, step)
