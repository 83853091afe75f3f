"""The ``rasa`` bot backend: customers' messages go to a Rasa assistant's REST
channel (``POST /webhooks/rest/webhook``) and its responses come back on the
customer's channel: texts, and buttons as quick replies (pressing one sends the
button's payload, as Rasa expects).

A response with a custom payload ``{"handoff": true}`` or ``{"handoff":
{"reason": "...", "team": "Sales"}}`` hands the conversation to a person (the
rasa-sdk action ``action_hub_handoff`` does that from inside Rasa too).
"""

from __future__ import annotations

import logging
import unicodedata
from typing import Any

import aiohttp

from bots.brain import Handoff, Outcome, Reply, summary
from hub.config import BotConfig
from hub.core import QuickReply
from hub.text import to_ascii_digits

REST_PATH = "/webhooks/rest/webhook"

log = logging.getLogger(__name__)


class RasaUnavailable(RuntimeError):
    """The Rasa server did not answer usefully; the message says why."""


def sender_id(contact_id: int) -> str:
    """The conversation id Rasa sees: one per contact, whatever the channel,
    so a customer who moves from web chat to SMS continues the same story."""
    return f"hub-contact-{contact_id}"


class RasaClient:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/") + REST_PATH
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None

    async def send(self, sender: str, text: str, metadata: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=self.timeout)
        body = {"sender": sender, "message": text, "metadata": metadata or {}}
        try:
            async with self._http.post(self.url, json=body) as resp:
                if resp.status != 200:
                    raise RasaUnavailable(f"Rasa answered HTTP {resp.status}: {(await resp.text())[:200]}")
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RasaUnavailable(f"Rasa at {self.url} is unreachable: {exc or type(exc).__name__}") from exc
        except ValueError as exc:
            raise RasaUnavailable(f"Rasa's answer is not JSON: {exc}") from exc
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise RasaUnavailable("Rasa's answer is not a list of responses")
        return data

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


def outcome(responses: list[dict[str, Any]], state: dict[str, Any], language: str, config: BotConfig) -> Outcome:
    """Rasa's responses as what the hub does."""
    out = Outcome(action="rasa", language=language, state=state)
    offered: list[dict[str, Any]] = []
    for r in responses:
        custom = r.get("custom") if isinstance(r.get("custom"), dict) else {}
        handoff = custom.get("handoff") if custom else None
        if handoff:
            spec = handoff if isinstance(handoff, dict) else {}
            out.action = "handoff"
            out.reason = str(spec.get("reason") or "rasa")[:64]
            out.handoff = Handoff(reason=out.reason, team=_team(spec.get("team"), config), summary="")
        text = r.get("text")
        buttons: list[QuickReply] = []
        for n, b in enumerate(r.get("buttons") or []):
            if not isinstance(b, dict) or not b.get("title"):
                continue
            payload = str(b.get("payload") or b["title"])
            ident = payload if len(payload) <= 64 else f"rasa#{len(offered)}"
            buttons.append(QuickReply(id=ident, title=str(b["title"])[:200]))
            offered.append({"id": ident, "title": str(b["title"]), "payload": payload, "n": n})
        if isinstance(text, str) and text.strip():
            out.replies.append(Reply(text.strip(), buttons))
        elif buttons and out.replies:
            out.replies[-1].quick_replies.extend(buttons)
    out.state["offered"] = offered
    if out.handoff is not None:
        out.handoff.summary = summary(out, config)
    return out


# Longest team name the hub stores (teams.name).
MAX_TEAM_NAME = 200


def _team(value: Any, config: BotConfig) -> str | None:
    """The team a Rasa handoff names, if it is a usable name. Rasa's custom
    payload is any JSON: a number, a list or a blank string would fail the
    handoff itself, the message would be retried against Rasa until it is
    dead-lettered, and the customer would be left with nobody."""
    name = value.strip() if isinstance(value, str) else ""
    if not name or len(name) > MAX_TEAM_NAME:
        if value is not None:
            log.warning("ignoring the team %r of a Rasa handoff; using bot.handoff_team", str(value)[:80])
        return config.handoff_team
    return name


def payload_for(quick_reply: str | None, text: str, state: dict[str, Any]) -> str:
    """What to send Rasa: a pressed button's payload, else the text."""
    offered = state.get("offered") or []
    if quick_reply:
        for o in offered:
            if o.get("id") == quick_reply:
                return str(o.get("payload") or quick_reply)
        return quick_reply
    # SMS: "2" picks the second button of a numbered list ("۲" and "²" too, as
    # they do for the hub's own bot).
    digits = to_ascii_digits(unicodedata.normalize("NFKC", text).strip())
    if offered and digits.isdecimal() and 1 <= int(digits) <= len(offered):
        return str(offered[int(digits) - 1].get("payload"))
    return text
