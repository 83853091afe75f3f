"""The bot's policy: given a customer's message, what the bot remembers and
the knowledge base, decide what to say and whether to hand off. Pure (no I/O):
the hub loads the inputs, applies the :class:`Outcome` in one transaction.

Order of precedence for one message: a pressed button (feedback, a clarifying
choice, "none of these"); a request for a person; frustration; a VIP contact;
the qualification dialog in progress; small talk; the knowledge base
(answer / clarify / hand off by confidence), which may start qualification.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bots import dialog
from bots.kb import KbEntry, languages_for
from bots.matcher import Match, Matcher, Thresholds
from hub.config import BotConfig
from hub.core import QuickReply
from hub.text import detect_language, keyword, to_ascii_digits

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

_GREETINGS = {
    "hi",
    "hello",
    "hey",
    "good morning",
    "good evening",
    "salam",
    "سلام",
    "درود",
    "سلام وقت بخیر",
    "وقت بخیر",
}
_THANKS = {"thanks", "thank you", "thx", "ty", "merci", "مرسی", "ممنون", "متشکرم", "سپاس", "ممنونم", "خیلی ممنون"}

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


def lang_of(text: str, fallback: str | None) -> str:
    """The customer's language ("fa", "ar" or "en"); for text without letters,
    the one they wrote in before. Texts missing in it fall back (Arabic to
    Persian, then English: see :func:`bots.kb.languages_for`)."""
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
    action: str  # answer, clarify, handoff, qualify, smalltalk, feedback
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


def _clean_state(state: dict[str, Any]) -> dict[str, Any]:
    out = dict(state)
    out.setdefault("misses", 0)
    out.setdefault("offered", [])
    out.setdefault("transcript", [])
    out.setdefault("feedback_for", None)
    out.setdefault("dialog", None)
    out.setdefault("qualified", None)
    return out


class Brain:
    def __init__(self, config: BotConfig, matcher: Matcher | None) -> None:
        self.config = config
        self.matcher = matcher
        self.thresholds = Thresholds(config.answer_threshold, config.clarify_threshold, config.choices)

    # --- the entry point ----------------------------------------------------------

    def respond(self, inbound: Inbound, contact: Contact, state: dict[str, Any]) -> Outcome:
        st = _clean_state(state)
        lang = lang_of(inbound.text, st.get("language"))
        st["language"] = lang
        out = Outcome(action="answer", language=lang, state=st)
        chosen = self._pressed(inbound, st)
        offered, st["offered"] = st["offered"], []
        feedback_for, st["feedback_for"] = st["feedback_for"], None

        if chosen is not None:
            handled = self._button(chosen, offered, feedback_for, inbound, contact, out)
            if handled:
                return self._finish(inbound, out)
        if _contains_phrase(inbound.text, self.config.handoff_phrases):
            return self._finish(inbound, self._handoff(out, "requested", contact))
        if _contains_phrase(inbound.text, self.config.frustration_phrases) or _shouting(inbound.text):
            return self._finish(inbound, self._handoff(out, "frustration", contact))
        if self._is_vip(contact):
            return self._finish(inbound, self._handoff(out, "vip", contact))
        if st["dialog"] is not None and self._continue_dialog(inbound, contact, out):
            return self._finish(inbound, out)
        small = keyword(inbound.text)
        if small in _GREETINGS or small in _THANKS:
            out.action = "smalltalk"
            out.replies.append(Reply(say("greeting" if small in _GREETINGS else "thanks", lang)))
            return self._finish(inbound, out)
        self._faq(inbound, contact, out)
        return self._finish(inbound, out)

    # --- buttons -----------------------------------------------------------------------

    def _pressed(self, inbound: Inbound, st: dict[str, Any]) -> str | None:
        if inbound.quick_reply:
            return inbound.quick_reply
        # SMS shows buttons as "1) ..."; a reply "1" / "۱" picks that one.
        digits = to_ascii_digits(keyword(inbound.text))
        if st["offered"] and digits.isdigit() and 1 <= int(digits) <= len(st["offered"]):
            return str(st["offered"][int(digits) - 1]["id"])
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
        if chosen in (FEEDBACK_YES, FEEDBACK_NO):
            if feedback_for is None:
                return False
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
        if match.action == "answer" and match.entry_id is not None:
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
        if not q.enabled or not q.slots or st["dialog"] is not None or st["qualified"] is not None:
            return False
        if inbound.campaign and q.on_campaign_reply:
            return True
        if entry is not None and set(entry.tags) & {t.lower() for t in q.trigger_tags}:
            return True
        return _contains_phrase(inbound.text, q.trigger_phrases)

    def _start_dialog(self, contact: Contact, out: Outcome, *, intro: bool) -> None:
        q = self.config.qualification
        known = {s.name: contact.attributes.get(s.name) for s in q.slots}
        state = dialog.start(q, known)
        out.state["dialog"] = state
        if out.action not in ("answer",):
            out.action = "qualify"
        if intro:
            out.replies.append(Reply(say("qualify_intro", out.language)))
        step = dialog.ask_next(q, state, dialog.Step())
        self._apply_step(step, contact, out)

    def _continue_dialog(self, inbound: Inbound, contact: Contact, out: Outcome) -> bool:
        q = self.config.qualification
        state = out.state["dialog"]
        step = dialog.answer(q, state, inbound.text)
        if not step.consumed and self.matcher is not None and self.matcher.entries:
            # Not an answer to the slot: maybe a question. Answer it if we know
            # it well, then ask the slot again.
            match = self.matcher.match(inbound.text, self.thresholds)
            if match.action == "answer" and match.entry_id is not None:
                state["tries"] = max(0, state["tries"] - 1)
                entry = self.matcher.by_id[match.entry_id]
                out.match = match
                out.entry_id = entry.id
                out.action = "answer"
                out.replies.append(Reply(entry.answer_in(out.language)))
                slot = next(s for s in q.slots if s.name == state["slot"])
                out.replies.append(Reply(pick(slot.prompt, out.language)))
                return True
        out.action = "qualify"
        self._apply_step(step, contact, out)
        return True

    def _apply_step(self, step: dialog.Step, contact: Contact, out: Outcome) -> None:
        q = self.config.qualification
        state = out.state["dialog"]
        out.attributes.update(step.set_values)
        out.state["collected"] = {**(out.state.get("collected") or {}), **step.set_values}
        for text in step.say:
            out.replies.append(Reply(pick(text, out.language)))
        if step.quick_choices and out.replies:
            out.replies[-1].quick_replies = [
                QuickReply(id=f"{CHOICE_PREFIX}{c}"[:64], title=c) for c in step.quick_choices
            ]
            out.state["offered"] = [r.model_dump() for r in out.replies[-1].quick_replies]
        values = {**{k: v for k, v in contact.attributes.items()}, **state["values"]}
        if state["values"] or step.done:
            points = dialog.score(q.rules, values)
            stage = dialog.later_stage(contact.lifecycle_stage, dialog.stage_for(q, points))
            out.lead = (max(points, contact.lead_score if step.done else 0), stage)
        if step.done:
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
        tag = self.config.vip_tag.casefold()
        return any(str(t).casefold() == tag for t in contact.tags) or bool(contact.attributes.get("vip") is True)

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
            bot_said = "asked qualification questions"
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
        return out


def _shouting(text: str) -> bool:
    letters = [c for c in text if c.isalpha() and c.isascii()]
    return (len(letters) >= 12 and sum(c.isupper() for c in letters) / len(letters) > 0.8) or "!!!" in text


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
