"""The bot's policy: given a customer's message, what the bot remembers and
the knowledge base, decide what to say and whether to hand off. Pure (no I/O):
the hub loads the inputs, applies the :class:`Outcome` in one transaction.

Order of precedence for one message: a pressed button (feedback, also a yes
or no typed in words; a clarifying choice, "none of these"); a request for a
person; frustration; a VIP contact; the qualification dialog in progress;
small talk (a greeting or thanks and nothing else: one that opens a question
is set aside; a goodbye, or an "ok" / "yes" / "no" with no question open); the
knowledge base (answer / clarify / hand off by
confidence), which may start qualification.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bots import dialog
from bots.kb import KbEntry, languages_for
from bots.matcher import Match, Matcher, Thresholds
from hub.config import BotConfig
from hub.core import QuickReply
from hub.text import detect_language, is_vip, keyword, normalize, strip_punctuation, to_ascii_digits

FEEDBACK_YES = "fb:yes"
FEEDBACK_NO = "fb:no"
NONE_OF_THESE = "bot:none"
CHOICE_PREFIX = "qual:"
TRANSCRIPT_TURNS = 10

TEXTS: dict[str, dict[str, str]] = {
    "clarify": {"en": "Did you mean one of these?", "fa": "منظورتان یکی از این‌هاست؟"},
    "none": {"en": "None of these", "fa": "هیچ‌کدام"},
    "feedback": {"en": "Did this answer your question?", "fa": "آیا این پاسخ سؤال شما را برطرف کرد؟"},
    "yes": {"en": "Yes", "fa": "بله"},
    "no": {"en": "No", "fa": "خیر"},
    "glad": {"en": "Glad I could help!", "fa": "خوشحالم که کمک کردم!"},
    "handoff": {
        "en": "I'm connecting you with a member of our team; they will reply here shortly.",
        "fa": "شما را به یکی از همکارانمان وصل می‌کنم؛ به‌زودی همین‌جا پاسخ می‌دهند.",
    },
    "greeting": {"en": "Hello! How can I help you today?", "fa": "سلام! چطور می‌توانم کمکتان کنم؟"},
    "thanks": {"en": "You're welcome! Anything else I can help with?", "fa": "خواهش می‌کنم! کار دیگری هست؟"},
    "farewell": {"en": "Thank you for contacting us. Goodbye!", "fa": "ممنون که با ما در تماس بودید. خدانگهدار!"},
    "ack": {
        "en": "All right! If there's anything else, just write here.",
        "fa": "بسیار خب! اگر کار دیگری بود، همین‌جا بنویسید.",
    },
    "qualify_intro": {
        "en": "I'd be glad to help with that. A few quick questions so the right person can follow up.",
        "fa": "با کمال میل. چند سؤال کوتاه می‌پرسم تا همکار مناسب پیگیری کند.",
    },
    "qualify_done": {
        "en": "Thank you! We have everything we need and will be in touch soon.",
        "fa": "سپاس! اطلاعات کامل شد و به‌زودی با شما تماس می‌گیریم.",
    },
    "qualify_sales": {
        "en": "Thank you! I'm passing you to our sales team now.",
        "fa": "سپاس! شما را به تیم فروش معرفی می‌کنم.",
    },
    "skip_hint": {"en": "(You can say skip.)", "fa": "(می‌توانید «رد» بنویسید.)"},
}

# Courtesies a message may open with ("Hi, good afternoon", «سلام خسته نباشید»,
# "Thanks! and ..."): the bot greets back when that is all, and otherwise
# matches what follows, so a greeting neither costs a miss nor brings buttons.
_GREETINGS = (
    "hi", "hello", "hey", "hiya", "howdy", "greetings", "hi there", "hello there", "hey there", "good morning",
    "good afternoon", "good evening", "good day", "how are you", "how are you doing", "salam",
    "سلام", "سلام علیکم", "با سلام", "درود", "درود بر شما", "وقت بخیر", "وقت به خیر", "وقتتون بخیر",
    "وقتتان بخیر", "وقت شما بخیر", "روز بخیر", "روزتون بخیر", "صبح بخیر", "صبحتون بخیر", "ظهر بخیر",
    "عصر بخیر", "عصرتون بخیر", "شب بخیر", "شبتون بخیر", "خسته نباشید", "خسته نباشین", "عرض ادب",
    "عرض سلام", "عرض ادب و احترام", "خوبید", "خوب هستید", "حالتون خوبه",
)  # fmt: skip
_THANKS = (
    "thanks", "thank you", "thanks a lot", "thanks so much", "thank you so much", "thank you very much",
    "many thanks", "thx", "ty", "merci", "مرسی", "خیلی مرسی", "ممنون", "ممنونم", "خیلی ممنون", "متشکرم",
    "متشکر", "سپاس", "سپاسگزارم", "تشکر", "دستتون درد نکنه",
)  # fmt: skip
_AND = {"and", "و"}

# How a satisfied customer closes ("ok, bye", "thanks, bye", «باشه خداحافظ»)
# and what they say when nothing is asked ("ok", "yes", "no"): with nothing
# else in the message it is no question the knowledge base failed, and
# handing it to a person would turn a solved conversation into agent work.
_FAREWELLS = (
    "bye", "bye bye", "byebye", "goodbye", "good bye", "bye now", "see you", "see ya", "see you later",
    "take care", "have a nice day", "have a good day", "have a great day", "good night", "cheers", "that s all",
    "that is all", "that s it", "nothing else", "all good", "خداحافظ", "خدا حافظ", "خدانگهدار", "خدا نگهدار",
    "بدرود", "فعلا", "فعلا خداحافظ", "بای", "بای بای", "روز خوش", "شب خوش", "قربان شما", "قربونت", "همین",
    "همین بود", "کار دیگه ای نیست", "خدافظ",
)  # fmt: skip
# Acknowledgements: "no" ones close the conversation as a goodbye does.
_ACKS_YES = (
    "ok", "okay", "k", "kk", "ok ok", "okey", "alright", "all right", "yes", "y", "yeah", "yea", "yep", "yup",
    "sure", "cool", "great", "perfect", "fine", "got it", "understood", "i see", "noted", "nice", "good",
    "بله", "بلی", "اره", "اری", "باشه", "اوکی", "اوکیه", "حله", "چشم", "عالی", "عالیه", "خوبه", "فهمیدم",
    "متوجه شدم", "درسته",
)  # fmt: skip
_ACKS_NO = ("no", "n", "nope", "nah", "no need", "نه", "خیر", "نخیر", "لازم نیست")
_CLOSING_FILLER = ("please", "pls", "then", "for now", "لطفا", "پس")

# "Did this answer your question?" answered in words rather than with a button
# (SMS shows no buttons; people type "yes" anyway).
_YES = {
    "yes", "y", "yeah", "yea", "yep", "yup", "ok", "okay", "sure", "it did", "yes it did", "correct", "great",
    "perfect", "بله", "بلی", "اره", "اری", "اوهوم", "باشه", "اوکی", "درسته", "دقیقا", "بله درسته",
}  # fmt: skip
_NO = {
    "no", "n", "nope", "nah", "not really", "not at all", "it didn t", "it did not", "no it didn t",
    "no it did not", "نه", "خیر", "نخیر", "نه اصلا", "اصلا", "نه نشد", "نشد",
}  # fmt: skip

# What may surround a word for a person in a request for one ("can I talk to a
# real human please", «لطفا به پشتیبانی وصل کنید», «أريد التحدث مع operator»):
# with any other word, "person" or «پشتیبانی» is part of a question instead.
_REQUEST_WORDS = (
    "i", "im", "me", "we", "want", "wanna", "need", "would", "d", "like", "can", "could", "may", "get", "have",
    "talk", "speak", "chat", "to", "with", "connect", "transfer", "put", "through", "let", "give", "you", "a",
    "an", "the", "some", "real", "live", "actual", "please", "pls", "plz", "now", "just", "hi", "hello", "hey",
    "لطفا", "من", "می", "خواهم", "خوام", "میخواهم", "میخوام", "میخواستم", "خواستم", "با", "به", "یک", "یه",
    "صحبت", "کنم", "حرف", "بزنم", "وصل", "کنید", "کنین", "کن", "شوم", "بشم", "وصلم", "سلام", "واقعی", "میشه",
    "ارتباط", "تماس", "بگیرم",
    "أريد", "اتحدث", "التحدث", "مع", "إلى", "فضلك", "لو",
)  # fmt: skip
_REQUEST_MAX_WORDS = 8
# The most words an answer to the dialog's open question has when it is the
# first message of a new conversation (see Brain._answers_resumed).
_SHORT_ANSWER_WORDS = 3
_PLURAL = re.compile(r"\s(?:ها|های|هایی)(?=$|\s)")
# How sure the matcher must be to answer a message with a buying phrase from
# an entry not tagged for buying (see Brain._answers_buying): on the tests'
# six-entry KB "can I get a quote" and "I want to buy" matched the return
# policy at 0.66-0.82, "I'd like to buy, how long does shipping take?" the
# shipping times at 0.90.
_BUYING_ANSWER_CONFIDENCE = 0.85

# "!!!" is as often delight ("Thank you so much!!!") as anger: it counts as
# frustration only with one of these.
_COMPLAINT_WORDS = (
    # "t": what is left of "n't" ("don't" is "don t" without punctuation).
    "not", "never", "nobody", "nothing", "still", "why", "again", "wrong", "broken", "worst", "hate", "t",
    "چرا", "هنوز", "نمی", "نیست", "نشد", "نشده", "نکرد", "نکردید", "نرسیده", "نیامد", "نیومد", "خراب", "دوباره",
    "هیچ", "اصلا", "بدترین",
)  # fmt: skip

REASONS = {
    "requested": "the customer asked for a person",
    "frustration": "the customer sounds frustrated",
    "vip": "VIP contact",
    "no_match": "the bot found no answer",
    "none_of_these": "none of the answers the bot offered fitted",
    "repeated_misses": "the bot did not understand twice in a row",
    "unhelpful_answer": "the customer said the answer did not help",
    "sales_qualified": "sales-qualified lead",
    "rasa": "the Rasa assistant handed off",
    "rasa_unavailable": "the Rasa assistant did not answer",
}


_ADDRESS = re.compile(r"\S+@\S+|https?://\S+|www\.\S+", re.I)
_LATIN_WORD = re.compile(r"[A-Za-z]+")


def lang_of(text: str, fallback: str | None) -> str:
    """The customer's language ("fa", "ar" or "en"); for text that says
    nothing about it, the one they wrote in before. Texts missing in it fall
    back (Arabic to Persian, then English: see :func:`bots.kb.languages_for`).

    Emails, links, phone numbers and other words with digits ("5k") are Latin
    script in every language, and so is a single Latin word ("ok", a company
    name) from a Persian speaker: replying to «ایمیل شما؟» with
    ali@example.com must not turn the conversation into English."""
    words = _ADDRESS.sub(" ", text).split()
    rest = " ".join(w for w in words if not any(c.isdigit() for c in w))
    detected = detect_language(rest)
    if fallback and (detected is None or (detected == "en" and len(_LATIN_WORD.findall(rest)) <= 1)):
        return fallback
    if detected is None:
        detected = detect_language(text)
    if detected in ("fa", "ar", "en"):
        return detected
    return fallback or "en"


def say(key: str, lang: str) -> str:
    return pick(TEXTS[key], lang)


def pick(texts: dict[str, str], lang: str) -> str:
    for key in (*languages_for(lang), "en"):
        if texts.get(key):
            return texts[key]
    return next(iter(texts.values()))


@dataclass(frozen=True)
class Contact:
    name: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    lifecycle_stage: str | None = None
    lead_score: int = 0


@dataclass(frozen=True)
class Inbound:
    text: str
    quick_reply: str | None = None
    campaign: bool = False
    # Telegram's START button (or a deep link): ``text`` is what the customer
    # typed after /start, usually nothing.
    start: bool = False


@dataclass
class Reply:
    text: str
    quick_replies: list[QuickReply] = field(default_factory=list)
    # The buttons ask for feedback on the turn that posts them: "did this
    # answer your question?" (Yes / No), or "None of these" after a clarification.
    asks_feedback: bool = False


@dataclass
class Handoff:
    reason: str
    team: str | None
    summary: str


@dataclass
class Outcome:
    action: str  # answer, clarify, handoff, qualify, smalltalk, feedback, ignored (a stale button)
    language: str
    replies: list[Reply] = field(default_factory=list)
    reason: str | None = None
    match: Match | None = None
    entry_id: str | None = None
    handoff: Handoff | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    lead: tuple[int, str] | None = None  # score, stage
    feedback: tuple[int, str] | None = None  # turn id, yes / no
    state: dict[str, Any] = field(default_factory=dict)


def _contains_phrase(text: str, phrases: list[str]) -> bool:
    said = keyword(text)
    for phrase in phrases:
        p = keyword(phrase)
        if p and re.search(rf"(^|\s){re.escape(p)}($|\s)", said):
            return True
    return False


def _flat(text: str) -> str:
    """``text`` as :func:`keyword` has it, but with the zero-width non-joiner
    dropped rather than made a space: «اپراتور‌ها» ("operators", of a phone
    network) stays one word, not «اپراتور» followed by a plural ending."""
    return strip_punctuation(normalize(text, zwnj="drop"))


def _flat_set(words: Iterable[str]) -> frozenset[str]:
    return frozenset(_flat(w) for w in words)


_COURTESY: dict[tuple[str, ...], str] = {
    **{tuple(_flat(p).split()): "greeting" for p in _GREETINGS},
    **{tuple(_flat(p).split()): "thanks" for p in _THANKS},
}
_COURTESY_LONGEST = max(len(k) for k in _COURTESY)
_CLOSING: dict[tuple[str, ...], str] = {
    **{k: "thanks" for k, v in _COURTESY.items() if v == "thanks"},
    **{tuple(_flat(p).split()): "filler" for p in _CLOSING_FILLER},
    **{tuple(_flat(p).split()): "ack" for p in _ACKS_YES},
    **{tuple(_flat(p).split()): "no" for p in _ACKS_NO},
    **{tuple(_flat(p).split()): "bye" for p in _FAREWELLS},
}
_CLOSING_LONGEST = max(len(k) for k in _CLOSING)
_FAREWELL_TAILS = frozenset(tuple(_flat(p).split()) for p in _FAREWELLS)
_YES_WORDS = _flat_set(_YES)
_NO_WORDS = _flat_set(_NO)
_REQUEST = _flat_set(_REQUEST_WORDS)
_COMPLAINT = frozenset(keyword(w) for w in _COMPLAINT_WORDS)


def strip_courtesy(text: str) -> tuple[str, str | None]:
    """The message without the greetings and thanks it opens with, and what
    those were: "thanks" if any thanked, else "greeting" (None: no courtesy)."""
    tokens = strip_punctuation(normalize(text, zwnj="keep")).split()
    flat = [_flat(t) for t in tokens]
    kind: str | None = None
    i = 0
    while i < len(tokens):
        phrase = _phrase_at(_COURTESY, _COURTESY_LONGEST, flat, i)
        if phrase is None:
            break
        found, n = phrase
        kind = "thanks" if "thanks" in (found, kind) else "greeting"
        i += n
        while i < len(tokens) and flat[i] in _AND:
            i += 1
    return " ".join(tokens[i:]), kind


def _closing_words(text: str) -> set[str]:
    """The kinds of closing words the message is made of ("bye", "no",
    "ack", "thanks", "filler"); empty if it says anything else."""
    rest, _ = strip_courtesy(text)
    flat = [_flat(t) for t in rest.split()]
    kinds: set[str] = set()
    i = 0
    while i < len(flat):
        if flat[i] in _AND:
            i += 1
            continue
        phrase = _phrase_at(_CLOSING, _CLOSING_LONGEST, flat, i)
        if phrase is None:
            return set()
        kinds.add(phrase[0])
        i += phrase[1]
    return kinds


def _phrase_at(table: Mapping[tuple[str, ...], str], longest: int, flat: list[str], i: int) -> tuple[str, int] | None:
    """The longest of ``table``'s phrases (up to ``longest`` words) that starts
    at word ``i``: its kind and how many words it takes; None if none does."""
    for n in range(min(longest, len(flat) - i), 0, -1):
        found = table.get(tuple(flat[i : i + n]))
        if found is not None:
            return found, n
    return None


def closing(text: str) -> str | None:
    """Whether the message only closes the conversation or acknowledges:
    "farewell" for a goodbye or a "no" ("ok, bye", «مرسی خداحافظ», "no
    thanks"), "ack" for an "ok" / "yes" ("ok thanks", «باشه»); None when it
    says anything more ("ok, but where is my order?")."""
    kinds = _closing_words(text)
    if kinds & {"bye", "no"}:
        return "farewell"
    return "ack" if "ack" in kinds else None


def says_goodbye(text: str) -> bool:
    """A goodbye and nothing more ("ok, bye", «خداحافظ»), not a bare "no"."""
    return "bye" in _closing_words(text)


def feedback_word(text: str) -> str | None:
    """Whether the message is only a "yes" or a "no", in English or Persian
    ("Yes!", "ok", «آره», «نه ممنون»): "yes", "no" or None."""
    rest, _ = strip_courtesy(text)
    words = rest.split()
    # "ok, bye" to "did this answer your question?" rates it as "ok" does.
    for n in range(min(_CLOSING_LONGEST, len(words) - 1), 0, -1):
        if tuple(_flat(w) for w in words[-n:]) in _FAREWELL_TAILS:
            words = words[:-n]
            break
    for n in range(min(_COURTESY_LONGEST, len(words) - 1), 0, -1):
        if _COURTESY.get(tuple(_flat(w) for w in words[-n:])) == "thanks":
            words = words[:-n]
            break
    said = _flat(" ".join(words))
    if said in _YES_WORDS:
        return "yes"
    if said in _NO_WORDS:
        return "no"
    return None


def _says(said: str, phrase: str) -> bool:
    """``phrase`` is in ``said`` as whole words, and not as a Persian plural
    written apart («اپراتور ها», phone networks' operators)."""
    for found in re.finditer(rf"(?:^|\s)({re.escape(phrase)})(?=$|\s)", said):
        if phrase and not _PLURAL.match(said, found.end(1)):
            return True
    return False


def asks_for_person(text: str, config: BotConfig) -> bool:
    """A request for a person: one of ``handoff_phrases`` anywhere, or one of
    ``handoff_words`` with nothing around it but words of asking ("I want a
    human", «پشتیبانی لطفا»)."""
    flat = _flat(text)
    # Also as written with a space where the phrase has the non-joiner
    # ("می خواهم" for «می‌خواهم»).
    spaced = keyword(text)
    for phrase in config.handoff_phrases:
        if _says(flat, _flat(phrase)) or _says(spaced, keyword(phrase)):
            return True
    said = flat.split()
    if len(said) > _REQUEST_MAX_WORDS:
        return False
    for word in config.handoff_words:
        target = _flat(word).split()
        for i in range(len(said) - len(target) + 1):
            if said[i : i + len(target)] == target and all(w in _REQUEST for w in said[:i] + said[i + len(target) :]):
                return True
    return False


def feedback_buttons(buttons: Iterable[QuickReply], turn_id: int) -> list[QuickReply]:
    """``buttons`` as posted under the answer of turn ``turn_id``: the Yes and
    No say which answer they rate (``fb:no:42``). Telegram keeps every
    keyboard it was sent, and a No pressed under an older answer must not be
    taken for one on the latest."""
    return [
        q.model_copy(update={"id": f"{q.id}:{turn_id}"}) if q.id in (FEEDBACK_YES, FEEDBACK_NO) else q for q in buttons
    ]


def _feedback_press(chosen: str) -> tuple[str, int | None] | None:
    """A feedback button's value and the turn it rates (None: a button posted
    before they named it, taken for the latest answer); None if ``chosen`` is
    not a feedback button."""
    if chosen in (FEEDBACK_YES, FEEDBACK_NO):
        return chosen, None
    base, _, turn = chosen.rpartition(":")
    if base in (FEEDBACK_YES, FEEDBACK_NO) and turn.isascii() and turn.isdecimal():
        return base, int(turn)
    return None


def _clean_state(state: dict[str, Any]) -> dict[str, Any]:
    out = dict(state)
    out.setdefault("misses", 0)
    out.setdefault("offered", [])
    out.setdefault("transcript", [])
    out.setdefault("feedback_for", None)
    out.setdefault("dialog", None)
    out.setdefault("qualified", None)
    out.setdefault("declined", False)
    return out


class Brain:
    def __init__(self, config: BotConfig, matcher: Matcher | None) -> None:
        self.config = config
        self.matcher = matcher
        self.thresholds = Thresholds(config.answer_threshold, config.clarify_threshold, config.choices)

    # --- the entry point ----------------------------------------------------------

    def ask(self, text: str) -> dict[str, Any]:
        """What the bot does with ``text`` as a new customer's first message,
        as ``crm-hub bot ask`` and ``POST /api/v1/bot/ask`` show it: ``action``
        (answer, clarify or handoff), ``reason`` when something other than the
        knowledge base decided it (a request for a person, frustration, a
        greeting or goodbye: ``smalltalk``, a question about buying that starts
        the qualification: ``qualify``), what it would reply, and the
        matcher's ``entry_id``, ``confidence`` and ``candidates`` (an answer
        the bot sends only with action answer and no reason)."""
        out = self.respond(Inbound(text), Contact(), {})
        match = (
            self.matcher.match(text, self.thresholds) if self.matcher is not None else Match("handoff", None, 0.0, ())
        )
        view: dict[str, Any] = match.to_json()
        if out.action in ("clarify", "handoff"):
            view["action"] = out.action
        else:
            # A greeting, or the qualification dialog: the API's actions are
            # answer, clarify and handoff, and the reason says which.
            view["action"] = "answer"
        if out.action == "handoff":
            view["reason"] = out.reason
        else:
            view["reason"] = None if out.action in ("answer", "clarify") else out.action
        view["replies"] = [r.text for r in out.replies]
        return view

    def respond(self, inbound: Inbound, contact: Contact, state: dict[str, Any]) -> Outcome:
        st = _clean_state(state)
        lang = lang_of(inbound.text, st.get("language"))
        st["language"] = lang
        out = Outcome(action="answer", language=lang, state=st)
        chosen = self._pressed(inbound, st)
        offered, st["offered"] = st["offered"], []
        feedback_for, st["feedback_for"] = st["feedback_for"], None

        if inbound.start and not inbound.text.strip():
            # Opening the chat is no question: a greeting, not a miss or a handoff.
            out.action = "smalltalk"
            out.replies.append(Reply(say("greeting", lang)))
            return self._finish(inbound, out)
        if chosen is not None:
            handled = self._button(chosen, offered, feedback_for, inbound, contact, out)
            if handled:
                return self._finish(inbound, out)
        if asks_for_person(inbound.text, self.config):
            return self._finish(inbound, self._handoff(out, "requested", contact))
        shouting = _shouting(inbound.text) and not self._answers_pending_slot(inbound.text, st)
        if _contains_phrase(inbound.text, self.config.frustration_phrases) or shouting:
            return self._finish(inbound, self._handoff(out, "frustration", contact))
        if self._is_vip(contact):
            return self._finish(inbound, self._handoff(out, "vip", contact))
        if st["dialog"] is not None and self._continue_dialog(inbound, contact, out):
            return self._finish(inbound, out)
        rest, courtesy = strip_courtesy(inbound.text)
        if courtesy is not None and not rest:
            out.action = "smalltalk"
            out.replies.append(Reply(say(courtesy, lang)))
            return self._finish(inbound, out)
        closed = closing(inbound.text)
        if closed is not None:
            # A yes / no to an open question was taken as its button above.
            out.action = "smalltalk"
            out.replies.append(Reply(say(closed, lang)))
            return self._finish(inbound, out)
        self._faq(inbound if courtesy is None else Inbound(rest, inbound.quick_reply, inbound.campaign), contact, out)
        return self._finish(inbound, out)

    # --- buttons -----------------------------------------------------------------------

    def _pressed(self, inbound: Inbound, st: dict[str, Any]) -> str | None:
        if inbound.quick_reply:
            return inbound.quick_reply
        # SMS shows buttons as "1) ..."; a reply "1" / "۱" picks that one.
        digits = to_ascii_digits(keyword(inbound.text))
        if st["offered"] and digits.isdecimal() and 1 <= int(digits) <= len(st["offered"]):
            return str(st["offered"][int(digits) - 1]["id"])
        if st["feedback_for"] is not None:
            # SMS shows no buttons, and people type "yes" in web chat too: a
            # yes / no typed here is the button, not a question that misses.
            word = feedback_word(inbound.text)
            offered = {o.get("id") for o in st["offered"]}
            if FEEDBACK_YES in offered and word is not None:
                return FEEDBACK_YES if word == "yes" else FEEDBACK_NO
            if NONE_OF_THESE in offered and word == "no":
                return NONE_OF_THESE
        return None

    def _button(
        self,
        chosen: str,
        offered: list[dict[str, Any]],
        feedback_for: int | None,
        inbound: Inbound,
        contact: Contact,
        out: Outcome,
    ) -> bool:
        lang = out.language
        press = _feedback_press(chosen)
        if press is not None:
            chosen, rated = press
            if feedback_for is None or (rated is not None and rated != int(feedback_for)):
                # A button under an answer no longer asked about: neither a
                # rating of the latest answer nor a question ("No" would miss).
                # The question still open stays open.
                out.action, out.reason = "ignored", "stale_button"
                out.state["offered"], out.state["feedback_for"] = offered, feedback_for
                return True
            out.action = "feedback"
            out.feedback = (int(feedback_for), "yes" if chosen == FEEDBACK_YES else "no")
            if chosen == FEEDBACK_YES:
                out.replies.append(Reply(say("glad", lang)))
            else:
                self._handoff(out, "unhelpful_answer", contact)
            return True
        if chosen == NONE_OF_THESE:
            # The gap report shows the question that got the wrong buttons,
            # not the "None of these" itself.
            if feedback_for is not None:
                out.feedback = (int(feedback_for), "no")
            self._handoff(out, "none_of_these", contact)
            return True
        if chosen.startswith(CHOICE_PREFIX) and out.state["dialog"] is not None:
            value = chosen.removeprefix(CHOICE_PREFIX)
            return self._continue_dialog(Inbound(value), contact, out)
        entry = self._entry_for_button(chosen, offered)
        if entry is not None:
            out.state["misses"] = 0
            self._answer(entry, 1.0, inbound, contact, out, reason="chosen")
            return True
        return False

    def _entry_for_button(self, chosen: str, offered: list[dict[str, Any]]) -> KbEntry | None:
        if self.matcher is None:
            return None
        if chosen.startswith("faq:"):
            return self.matcher.by_id.get(chosen.removeprefix("faq:"))
        if chosen.startswith("faq#"):
            for o in offered:
                if o.get("id") == chosen and o.get("entry") in self.matcher.by_id:
                    return self.matcher.by_id[o["entry"]]
        return None

    # --- the knowledge base ---------------------------------------------------------

    def _faq(self, inbound: Inbound, contact: Contact, out: Outcome) -> None:
        st = out.state
        wants_to_buy = self._qualification_wanted(inbound, None, st)
        if self.matcher is None or not self.matcher.entries:
            if wants_to_buy:
                self._start_dialog(contact, out, intro=True)
                return
            self._handoff(out, "no_match", contact)
            return
        match = self.matcher.match(inbound.text, self.thresholds)
        out.match = match
        out.entry_id = match.entry_id
        if match.action == "answer" and match.entry_id is not None and self._answers_buying(inbound, match):
            st["misses"] = 0
            self._answer(self.matcher.by_id[match.entry_id], match.confidence, inbound, contact, out)
            return
        if wants_to_buy:
            self._start_dialog(contact, out, intro=True)
            return
        if match.action == "clarify":
            st["misses"] += 1
            if st["misses"] >= self.config.max_misses:
                self._handoff(out, "repeated_misses", contact)
                return
            out.action = "clarify"
            buttons: list[QuickReply] = []
            offered: list[dict[str, Any]] = []
            for n, cand in enumerate(match.candidates):
                entry = self.matcher.by_id[cand.entry_id]
                ident = f"faq:{entry.id}" if len(entry.id) <= 60 else f"faq#{n}"
                buttons.append(QuickReply(id=ident, title=entry.title_in(out.language)))
                offered.append({"id": ident, "title": buttons[-1].title, "entry": entry.id})
            buttons.append(QuickReply(id=NONE_OF_THESE, title=say("none", out.language)))
            offered.append({"id": NONE_OF_THESE, "title": buttons[-1].title})
            st["offered"] = offered
            out.replies.append(Reply(say("clarify", out.language), buttons, asks_feedback=True))
            return
        st["misses"] += 1
        self._handoff(out, "no_match", contact)

    def _answers_buying(self, inbound: Inbound, match: Match) -> bool:
        """Whether an answer the matcher is sure enough of may be given to a
        message with a buying phrase ("can I get a quote"): such words match
        unrelated entries well ("can I get a refund"), and the answer would
        come with the first question of the dialog instead of "Did this answer
        your question?", so a wrong one could never be rejected nor reach the
        report. An entry tagged for buying questions, or a match far above
        the usual bar, is answered; else the qualification starts, its turn
        keeping the matcher's confidence and candidates."""
        q = self.config.qualification
        if not _contains_phrase(inbound.text, q.trigger_phrases):
            return True
        entry = self.matcher.by_id.get(match.entry_id or "") if self.matcher is not None else None
        if entry is not None and set(entry.tags) & {t.lower() for t in q.trigger_tags}:
            return True
        return match.confidence >= max(_BUYING_ANSWER_CONFIDENCE, self.thresholds.answer)

    def _answer(
        self,
        entry: KbEntry,
        confidence: float,
        inbound: Inbound,
        contact: Contact,
        out: Outcome,
        reason: str | None = None,
    ) -> None:
        out.action = "answer"
        out.entry_id = entry.id
        out.reason = reason
        qualify = self._qualification_wanted(inbound, entry, out.state)
        reply = Reply(entry.answer_in(out.language))
        if self.config.ask_feedback and not qualify:
            reply.asks_feedback = True
            reply.quick_replies = [
                QuickReply(id=FEEDBACK_YES, title=say("yes", out.language)),
                QuickReply(id=FEEDBACK_NO, title=say("no", out.language)),
            ]
            # Buttons are shown after the answer text, with the question.
            reply.text = f"{reply.text}\n\n{say('feedback', out.language)}"
            out.state["offered"] = [q.model_dump() for q in reply.quick_replies]
        out.replies.append(reply)
        out.state["last_answer"] = {"entry": entry.id, "confidence": round(confidence, 3)}
        if qualify:
            self._start_dialog(contact, out, intro=False)

    # --- qualification ------------------------------------------------------------------

    def _qualification_wanted(self, inbound: Inbound, entry: KbEntry | None, st: dict[str, Any]) -> bool:
        q = self.config.qualification
        if not q.enabled or not q.slots or st["dialog"] is not None or st["qualified"] is not None or st["declined"]:
            return False
        if inbound.campaign and q.on_campaign_reply:
            return True
        if entry is not None and set(entry.tags) & {t.lower() for t in q.trigger_tags}:
            return True
        return _contains_phrase(inbound.text, q.trigger_phrases)

    def _start_dialog(self, contact: Contact, out: Outcome, *, intro: bool) -> None:
        q = self.config.qualification
        known = {s.name: contact.attributes.get(s.name) for s in q.slots}
        if "name" in known and not known["name"]:
            # The widget's pre-chat form (and a channel's profile) gives the
            # name as the contact's, not as an attribute: asking it again
            # reads as not listening.
            known["name"] = contact.name
        state = dialog.start(q, known)
        out.state["dialog"] = state
        if intro:
            # A buying question the knowledge base had no answer for: the turn,
            # the report and the salesperson's note must not claim the entry the
            # matcher guessed was answered.
            out.action, out.reason, out.entry_id = "qualify", "qualify", None
            out.replies.append(Reply(say("qualify_intro", out.language)))
        elif out.action != "answer":
            out.action = "qualify"
        step = dialog.ask_next(q, state, dialog.Step())
        self._apply_step(step, contact, out)

    def _answers_pending_slot(self, text: str, st: dict[str, Any]) -> bool:
        """Whether ``text`` is a valid answer to the question the dialog is
        waiting on: a name or company some people type in capitals
        ("MOHAMMAD REZAEI") is an answer, not shouting."""
        name = (st["dialog"] or {}).get("slot")
        slot = next((s for s in self.config.qualification.slots if s.name == name), None)
        if slot is None:
            return False
        try:
            dialog.validate(slot, text, self.config.qualification.phone_region)
        except dialog.Invalid:
            return False
        return True

    def _continue_dialog(self, inbound: Inbound, contact: Contact, out: Outcome) -> bool:
        q = self.config.qualification
        state = out.state["dialog"]
        rest, courtesy = strip_courtesy(inbound.text)
        if state.pop("resumed", False) and not self._answers_resumed(inbound.text, state):
            # The first message of a new conversation, with a question of the
            # last one still open: it is more likely the reason they wrote
            # ("my invoice is wrong") than the answer, so it is not stored as
            # one. A greeting gets the open question again; a question the
            # knowledge base answers, its answer and then the open question;
            # anything else ends the dialog and is handled as a new message.
            if courtesy is not None and not rest:
                out.action = "qualify"
                out.replies.append(Reply(say(courtesy, out.language)))
                self._apply_step(dialog.ask_again(q, state, dialog.Step()), contact, out)
                return True
            if self._answer_then_ask(inbound, state, out):
                return True
            out.state["dialog"] = None
            return False
        if says_goodbye(inbound.text):
            # Leaving for now ("ok, bye") is no one's name, nor a reason to end
            # the dialog: the open question waits for their next message.
            out.action = "smalltalk"
            out.replies.append(Reply(say("farewell", out.language)))
            return True
        bare = (courtesy is not None and not rest) or feedback_word(inbound.text) is not None
        step = dialog.answer(q, state, inbound.text, courtesy_only=bare)
        # Not an answer to the slot: maybe a question. Answer it if we know
        # it well, then ask the slot again.
        if not step.consumed and self._answer_then_ask(inbound, state, out):
            state["tries"] = max(0, state["tries"] - 1)
            return True
        out.action = "qualify"
        self._apply_step(step, contact, out)
        return True

    def _answers_resumed(self, text: str, state: dict[str, Any]) -> bool:
        """Whether the first message on a new ticket answers the question the
        dialog left open: an exit or a skip; an address, phone number or
        choice that fits it; a short answer ("Acme Ltd", "25"); or any answer
        that names the slot ("my company is Acme"). Free text fits any
        question, so a sentence ("my invoice is wrong") is taken for the
        reason they wrote."""
        q = self.config.qualification
        slot = next((s for s in q.slots if s.name == state.get("slot")), None)
        if slot is None or dialog.is_exit(text) or dialog.is_skip(text):
            return True
        if dialog.is_question(text):
            return False
        if dialog.find_correction([slot], text, q.phone_region) is not None:
            return True
        rest, courtesy = strip_courtesy(text)
        if courtesy is not None and not rest:
            return False  # greeted back with the question (no one's name)
        # A name, a company, a number is a few words; a number or a name is
        # found in any sentence ("order 1234 is late").
        short = len(keyword(rest).split()) <= _SHORT_ANSWER_WORDS
        if slot.kind in ("text", "number") and not short:
            return False
        try:
            dialog.validate(slot, text, q.phone_region)
        except dialog.Invalid:
            return False
        return True

    def _answer_then_ask(self, inbound: Inbound, state: dict[str, Any], out: Outcome) -> bool:
        """Answer ``inbound`` from the knowledge base if it is sure, then ask
        the dialog's open question again; False if it is not sure."""
        if self.matcher is None or not self.matcher.entries:
            return False
        match = self.matcher.match(inbound.text, self.thresholds)
        if match.action != "answer" or match.entry_id is None:
            return False
        entry = self.matcher.by_id[match.entry_id]
        out.match = match
        out.entry_id = entry.id
        out.action = "answer"
        out.replies.append(Reply(entry.answer_in(out.language)))
        slot = next(s for s in self.config.qualification.slots if s.name == state["slot"])
        out.replies.append(Reply(pick(slot.prompt, out.language)))
        return True

    def _apply_step(self, step: dialog.Step, contact: Contact, out: Outcome) -> None:
        q = self.config.qualification
        state = out.state["dialog"]
        out.attributes.update(step.set_values)
        out.state["collected"] = {**(out.state.get("collected") or {}), **step.set_values}
        if step.cancelled:
            # The customer said no more questions: not again in this
            # conversation (a trigger phrase in their next question would
            # start the dialog over); what they answered is kept.
            out.state["dialog"] = None
            out.state["declined"] = True
            for text in step.say:
                out.replies.append(Reply(pick(text, out.language)))
            return
        values = {**{k: v for k, v in contact.attributes.items()}, **state["values"]}
        done = step.done
        if state["values"] or step.done:
            points = dialog.score(q.rules, values)
            stage = dialog.later_stage(contact.lifecycle_stage, dialog.stage_for(q, points))
            # A lead that has just become sales-qualified goes to sales at once;
            # the questions left can wait for the salesperson.
            done = done or (stage == "sales_qualified" and contact.lifecycle_stage != "sales_qualified")
            # The score the contact has (an earlier dialog, an agent) is a floor
            # at every answer, not only at the end: the hub stores each one.
            out.lead = (max(points, contact.lead_score), stage)
        says, choices, titles = step.say, step.quick_choices, step.choice_titles
        if done and not step.done:
            pending = next((s.prompt for s in q.slots if s.name == state["slot"]), None)
            says, choices = [t for t in says if t != pending], []
        for text in says:
            out.replies.append(Reply(pick(text, out.language)))
        if choices and out.replies:
            # The id answers with the stored value; the title is in the customer's language.
            out.replies[-1].quick_replies = [
                QuickReply(id=f"{CHOICE_PREFIX}{c}"[:64], title=pick(t, out.language) if t else c)
                for c, t in zip(choices, titles or [{}] * len(choices), strict=True)
            ]
            out.state["offered"] = [r.model_dump() for r in out.replies[-1].quick_replies]
        if done:
            out.state["dialog"] = None
            stage = out.lead[1] if out.lead else "lead"
            out.state["qualified"] = stage
            if stage == "sales_qualified":
                out.replies.append(Reply(say("qualify_sales", out.language)))
                self._handoff(out, "sales_qualified", contact, team=q.sales_team, polite=False)
            else:
                out.replies.append(Reply(say("qualify_done", out.language)))

    # --- handoff ---------------------------------------------------------------------------

    def _is_vip(self, contact: Contact) -> bool:
        return is_vip(contact.attributes, contact.tags, self.config.vip_tag)

    def _handoff(
        self, out: Outcome, reason: str, contact: Contact, *, team: str | None = None, polite: bool = True
    ) -> Outcome:
        out.action = "handoff"
        out.reason = reason
        if polite:
            out.replies.append(Reply(say("handoff", out.language)))
        out.handoff = Handoff(reason=reason, team=team or self._team_for(out) or self.config.handoff_team, summary="")
        return out

    def _team_for(self, out: Outcome) -> str | None:
        if self.matcher is None:
            return None
        for ident in (out.entry_id, (out.state.get("last_answer") or {}).get("entry")):
            if ident and ident in self.matcher.by_id and self.matcher.by_id[ident].team:
                return self.matcher.by_id[ident].team
        return None

    def _finish(self, inbound: Inbound, out: Outcome) -> Outcome:
        st = out.state
        bot_said = out.action
        if out.action == "answer" and out.entry_id:
            bot_said = f"answered {out.entry_id}" + (
                f" (confidence {out.match.confidence:.2f})" if out.match is not None else " (chosen by the customer)"
            )
        elif out.action == "clarify" and out.match is not None:
            bot_said = "offered " + ", ".join(c.entry_id for c in out.match.candidates)
        elif out.action == "qualify":
            bot_said = "started qualification" if out.reason == "qualify" else "asked qualification questions"
        elif out.action == "handoff":
            bot_said = "handed off"
        st["transcript"] = [*st["transcript"], {"q": inbound.text[:300], "a": bot_said}][-TRANSCRIPT_TURNS:]
        if out.handoff is not None:
            out.handoff.summary = summary(out, self.config)
            # A person takes over this conversation; the next one starts afresh.
            st["dialog"] = None
            st["offered"] = []
            st["misses"] = 0
            st["transcript"] = []
            # Told in this note; a later handoff must not repeat it as news.
            st.pop("collected", None)
        return out


def _shouting(text: str) -> bool:
    # Addresses and codes are often typed in capitals ("SARA@EXAMPLE.COM",
    # "ORDER AB12"): only the words around them can shout.
    words = _ADDRESS.sub(" ", text).split()
    letters = [c for w in words if not any(d.isdigit() for d in w) for c in w if c.isalpha() and c.isascii()]
    if len(letters) >= 12 and sum(c.isupper() for c in letters) / len(letters) > 0.8:
        return True
    return "!!!" in text and not _COMPLAINT.isdisjoint(keyword(text).split())


def summary(out: Outcome, config: BotConfig) -> str:
    """The private note an agent reads first: why, what was asked, what the
    bot answered, what it collected."""
    st = out.state
    lines = [f"Bot handoff: {REASONS.get(out.reason or '', out.reason or 'handoff')}."]
    if st["transcript"]:
        lines.append("Conversation with the bot:")
        for t in st["transcript"]:
            lines.append(f"- Customer: {' '.join(t['q'].split())}")
            lines.append(f"  Bot: {t['a']}")
    collected = {**(st.get("collected") or {}), **out.attributes}
    if collected:
        lines.append("Collected: " + ", ".join(f"{k}={v}" for k, v in collected.items()))
    if out.lead is not None:
        lines.append(f"Lead score {out.lead[0]}, stage {out.lead[1].replace('_', '-')}.")
    return "\n".join(lines)
