"""Phone calls over Twilio Voice: the webhooks' parameters as plain data, and the
TwiML the IVR answers with, built with the ``twilio`` library's TwiML classes.

The call flow (which step answers what) lives in the hub; this module knows
Twilio's parameters and verbs only. Prompts are spoken in every configured
language in turn: a language with an audio URL is played (<Play>), otherwise its
text is spoken (<Say>), because Twilio has no Persian voice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from twilio.twiml.voice_response import Dial, Gather, VoiceResponse

from channels.base import ChannelAdapter, InvalidPayload
from channels.twilio_common import FormParams, field, required_sid, sid_field, whole_number
from channels.twilio_sms import SmsSender, TwilioSmsChannel, retry_since
from hub.core import Channel, DeliveryStatus, OutboundMessage, SendResult
from hub.text import InvalidPhoneNumber, parse_phone

# CallStatus values (Twilio's call_enum_status) in the order a call goes
# through them; a callback never moves a call back to an earlier one.
CALL_STATUS_RANK: dict[str, int] = {
    "queued": 0,
    "initiated": 0,
    "ringing": 1,
    "in-progress": 2,
    "completed": 3,
    "busy": 3,
    "failed": 3,
    "no-answer": 3,
    "canceled": 3,
}
FINAL_STATUSES = frozenset(s for s, rank in CALL_STATUS_RANK.items() if rank == 3)
# DialCallStatus of a <Dial action>; "answered" is what Twilio reports for a
# dialled party that picked up while the <Dial> is still going.
DIAL_CALL_STATUSES = ("completed", "answered", "busy", "no-answer", "failed", "canceled")
DIAL_ANSWERED = frozenset({"completed", "answered"})
# TranscriptionStatus (transcription_enum_status).
TRANSCRIPTION_STATUSES = ("in-progress", "completed", "failed")
# Twilio refuses a <Dial> with more <Number> nouns than this: the caller hears
# an application error instead of anyone's phone ringing.
MAX_DIAL_NUMBERS = 10
# The widest Digits the hub keeps (calls.menu_choice): the menu takes one key
# and the <Record> action sends "hangup" or the key that ended it.
MAX_DIGITS_CHARS = 8

# What Twilio puts in From when the caller withheld their number. The numbers
# spell ANONYMOUS, RESTRICTED, BLOCKED, UNKNOWN and UNAVAILABLE on a keypad and
# parse as real numbers (+266696687 is a Lesotho number): taken at face value,
# every hidden caller would be one contact sharing one ticket, and a call-back
# or a text reply would go to a stranger abroad.
WITHHELD_NUMBERS = frozenset({"266696687", "7378742833", "2562533", "8656696", "86282452253"})
WITHHELD_WORDS = frozenset({"anonymous", "restricted", "blocked", "unknown", "unavailable", "private", "withheld"})
#: The phone identity of a caller who withheld their number is this plus the
#: CallSid: one contact and one ticket per hidden call, never shared.
WITHHELD_PREFIX = "anonymous:"
#: How such a caller is shown (calls, timeline), in place of a number.
WITHHELD_CALLER = "anonymous"
WITHHELD_NAME = "Anonymous caller"


def is_withheld(address: str) -> bool:
    """True for Twilio's placeholders of a withheld caller ID (as Twilio sends
    them or as stored before they were recognised) and for the hub's own
    per-call address of such a caller: nothing that can be called or texted."""
    text = address.strip().lower()
    if not text or text in WITHHELD_WORDS or text.startswith(WITHHELD_PREFIX):
        return True
    return text.removeprefix("+") in WITHHELD_NUMBERS


@dataclass(frozen=True, slots=True)
class CallParams:
    """What every voice webhook carries, plus the step's own fields."""

    call_sid: str
    account_sid: str
    # E.164; WITHHELD_PREFIX + CallSid for a withheld number; Twilio's raw
    # From for SIP and client: callers.
    caller: str
    called: str
    status: str
    direction: str
    caller_name: str | None = None
    digits: str | None = None
    duration: int | None = None
    dial_status: str | None = None
    recording_url: str | None = None
    recording_sid: str | None = None
    recording_duration: int | None = None
    transcription_text: str | None = None
    transcription_status: str | None = None
    parent_call_sid: str | None = None
    sequence: int | None = None
    caller_withheld: bool = False

    @property
    def customer(self) -> str:
        """The caller as a call row and the timeline show them."""
        return WITHHELD_CALLER if self.caller_withheld else self.caller


_RECORDING_URL_SID = re.compile(r"/Recordings/(RE[0-9a-fA-F]{32})(?:\.[a-z0-9]+)?\Z")


def _int(params: FormParams, name: str) -> int | None:
    raw = params.get(name)
    if not raw:
        return None
    return whole_number(raw, name, signed=True)


def _phone(raw: str, default_region: str | None) -> str:
    try:
        return parse_phone(raw, default_region)
    except InvalidPhoneNumber:
        # SIP and client: callers are kept as Twilio wrote them: still one
        # caller's stream.
        return raw.strip().lower()


def _recording_sid_of(url: str | None) -> str | None:
    """The RE… id at the end of a RecordingUrl: the <Record> action sends the
    URL but no RecordingSid."""
    match = _RECORDING_URL_SID.search(url or "")
    return match.group(1) if match else None


def _one_of(params: FormParams, name: str, allowed: Sequence[str]) -> str | None:
    value = field(params, name, max_chars=40).lower()
    if value and value not in allowed:
        raise InvalidPayload(f"{name} {value!r} is not one of Twilio's: {', '.join(allowed)}")
    return value or None


def parse_call(params: FormParams, *, default_region: str | None = None) -> CallParams:
    sid = required_sid(params, "CallSid", "CA")
    status = field(params, "CallStatus", max_chars=40).lower()
    if status and status not in CALL_STATUS_RANK:
        raise InvalidPayload(f"CallStatus {status!r} is not one of Twilio's: {', '.join(CALL_STATUS_RANK)}")
    caller = field(params, "From", max_chars=200) or field(params, "Caller", max_chars=200)
    called = field(params, "To", max_chars=200) or field(params, "Called", max_chars=200)
    recording_url = field(params, "RecordingUrl", max_chars=2000) or None
    if recording_url and not recording_url.startswith(("https://", "http://")):
        raise InvalidPayload("RecordingUrl is not an http(s) URL")
    dial_status = _one_of(params, "DialCallStatus", DIAL_CALL_STATUSES)
    transcription_status = _one_of(params, "TranscriptionStatus", TRANSCRIPTION_STATUSES)
    withheld = is_withheld(caller)
    caller_name = field(params, "CallerName", max_chars=200) or None
    return CallParams(
        call_sid=sid,
        account_sid=field(params, "AccountSid", max_chars=64),
        caller=f"{WITHHELD_PREFIX}{sid}" if withheld else _phone(caller, default_region),
        called=_phone(called, default_region),
        status=status,
        direction=field(params, "Direction", max_chars=40) or "inbound",
        caller_name=caller_name or (WITHHELD_NAME if withheld else None),
        digits=field(params, "Digits", max_chars=MAX_DIGITS_CHARS) or None,
        duration=_int(params, "CallDuration") if params.get("CallDuration") else _int(params, "DialCallDuration"),
        dial_status=dial_status,
        recording_url=recording_url,
        recording_sid=sid_field(params, "RecordingSid", "RE") or _recording_sid_of(recording_url),
        recording_duration=_int(params, "RecordingDuration"),
        transcription_text=field(params, "TranscriptionText", max_chars=20_000) or None,
        transcription_status=transcription_status,
        parent_call_sid=sid_field(params, "ParentCallSid", "CA"),
        sequence=_int(params, "SequenceNumber"),
        caller_withheld=withheld,
    )


# --- TwiML ---------------------------------------------------------------------


class Prompt(Protocol):
    """Text per language, and optionally a recording per language."""

    @property
    def text(self) -> Mapping[str, str]: ...

    @property
    def audio(self) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class Speech:
    """How prompts are spoken: in these languages, in this order; <Say
    language=...> per language where Twilio has a voice for it."""

    languages: Sequence[str]
    say_language: Mapping[str, str]


def speak(node: VoiceResponse | Gather, prompt: Prompt, speech: Speech) -> None:
    for lang in speech.languages:
        audio = prompt.audio.get(lang)
        text = prompt.text.get(lang)
        if audio:
            node.play(audio)
        elif text:
            say_as = speech.say_language.get(lang)
            if say_as:
                node.say(text, language=say_as)
            else:
                node.say(text)


def menu_twiml(greeting: Prompt, options: Sequence[Prompt], speech: Speech, *, action: str) -> str:
    """The greeting and the menu inside a <Gather> of one key; a caller who
    presses nothing reaches ``action`` without ``Digits``."""
    response = VoiceResponse()
    # Twilio's default finishOnKey "#" would end the gather with no digits, so a
    # menu entry on "#" could never be chosen; one key ends it anyway.
    gather = Gather(input="dtmf", num_digits=1, finish_on_key="", action=action, method="POST", timeout=6)
    speak(gather, greeting, speech)
    for option in options:
        speak(gather, option, speech)
    response.append(gather)
    response.redirect(action, method="POST")
    return str(response)


def dial_twiml(
    connecting: Prompt,
    speech: Speech,
    agents: Sequence[tuple[int, str]],
    *,
    caller_id: str | None,
    action: str,
    answered_url: str,
    timeout: int,
) -> str:
    """Ring every available agent's phone at once; the first to answer gets
    the caller. ``answered_url`` (with ``agent=<id>``) tells the hub who did.
    At most :data:`MAX_DIAL_NUMBERS` agents: the hub picks which."""
    if len(agents) > MAX_DIAL_NUMBERS:
        raise ValueError(f"Twilio dials at most {MAX_DIAL_NUMBERS} numbers at once, not {len(agents)}")
    response = VoiceResponse()
    speak(response, connecting, speech)
    dial = Dial(action=action, method="POST", timeout=timeout, caller_id=caller_id)
    for agent_id, phone in agents:
        sep = "&" if "?" in answered_url else "?"
        dial.number(phone, url=f"{answered_url}{sep}agent={agent_id}", method="POST")
    response.append(dial)
    return str(response)


def voicemail_twiml(
    prompt: Prompt, goodbye: Prompt, speech: Speech, *, action: str, transcribe_callback: str, max_length: int
) -> str:
    """Ask for a message, record it with transcription; silence (no recording,
    so no ``action`` request) falls through to the goodbye."""
    response = VoiceResponse()
    speak(response, prompt, speech)
    response.record(
        action=action,
        method="POST",
        max_length=max_length,
        play_beep=True,
        finish_on_key="#",
        transcribe=True,
        transcribe_callback=transcribe_callback,
    )
    speak(response, goodbye, speech)
    response.hangup()
    return str(response)


def goodbye_twiml(goodbye: Prompt, speech: Speech) -> str:
    response = VoiceResponse()
    speak(response, goodbye, speech)
    response.hangup()
    return str(response)


def connect_twiml(customer: str, *, caller_id: str | None, action: str, timeout: int) -> str:
    """Click-to-call: the agent answered; now ring the customer."""
    response = VoiceResponse()
    dial = Dial(action=action, method="POST", timeout=timeout, caller_id=caller_id)
    dial.number(customer)
    response.append(dial)
    return str(response)


def hangup_twiml() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response)


def empty_twiml() -> str:
    return str(VoiceResponse())


# --- replies on a phone ticket --------------------------------------------------------


class TwilioVoiceChannel(ChannelAdapter):
    """Replies written on a phone ticket reach the caller as a text message from
    the hub's SMS line (the caller's number is the same identity), attachments
    as MMS media as on any SMS; the opt-out ledger applies as to any SMS."""

    channel: ClassVar[Channel] = Channel.VOICE
    max_body_chars: ClassVar[int | None] = 1600
    supports_attachments: ClassVar[bool] = True

    def __init__(self, sms: TwilioSmsChannel | None, reply_sender: SmsSender | None) -> None:
        self.sms = sms
        self.reply_sender = reply_sender

    async def send(self, message: OutboundMessage) -> SendResult:
        if is_withheld(message.recipient):
            return SendResult(
                status=DeliveryStatus.FAILED,
                reason="the caller withheld their number, so there is no number to text a reply to",
            )
        if self.sms is None or self.reply_sender is None:
            return SendResult(
                status=DeliveryStatus.FAILED,
                reason="a phone ticket is answered by calling back (POST /api/v1/tickets/{id}/call); "
                "no SMS number is configured to send a text reply",
            )
        return await self.sms.send_sms(
            self.reply_sender,
            message.recipient,
            message.body,
            media_urls=self.sms.media_urls(message),
            status_callback=self.sms.status_callback(message.message_id),
            taken_since=retry_since(message),
            message_id=message.message_id,
        )


def call_view(params: CallParams) -> dict[str, Any]:
    """The call's facts for a timeline event (never the whole payload)."""
    view: dict[str, Any] = {"call_sid": params.call_sid, "from": params.customer, "to": params.called}
    if params.caller_withheld:
        view["caller_withheld"] = True
    if params.status:
        view["status"] = params.status
    if params.duration is not None:
        view["duration_seconds"] = params.duration
    return view
