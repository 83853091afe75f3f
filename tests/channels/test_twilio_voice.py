"""Voice: Twilio's call parameters, and the TwiML the IVR answers with, read
back as XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from channels.base import InvalidPayload
from channels.twilio_common import FormParams
from channels.twilio_voice import (
    Speech,
    TwilioVoiceChannel,
    call_view,
    connect_twiml,
    dial_twiml,
    goodbye_twiml,
    is_withheld,
    menu_twiml,
    parse_call,
    voicemail_twiml,
)
from hub.config import TwilioVoiceConfig, VoiceMenuItem, VoicePrompt
from hub.core import Author, Channel, DeliveryStatus, OutboundMessage

VOICE = TwilioVoiceConfig(
    greeting=VoicePrompt(
        text={"en": "Welcome.", "fa": "خوش آمدید."}, audio={"fa": "https://cdn.example.com/welcome-fa.mp3"}
    )
)
SPEECH = Speech(VOICE.languages, VOICE.say_language)


def xml(twiml: str) -> ET.Element:
    root = ET.fromstring(twiml)  # noqa: S314 - our own TwiML, not untrusted input
    assert root.tag == "Response"
    return root


def test_menu_greets_in_both_languages_and_gathers_one_digit() -> None:
    root = xml(menu_twiml(VOICE.greeting, [m.prompt for m in VOICE.menu], SPEECH, action="https://h/voice/menu"))
    gather, redirect = list(root)
    assert gather.tag == "Gather"
    assert gather.attrib == {
        "action": "https://h/voice/menu",
        "input": "dtmf",
        "method": "POST",
        "numDigits": "1",
        # Twilio's default "#" would end the gather with no digit.
        "finishOnKey": "",
        "timeout": "6",
    }
    spoken = [(el.tag, el.text, el.attrib.get("language")) for el in gather]
    assert spoken[0] == ("Say", "Welcome.", "en-US")
    # Persian has a recording: played, not read by an English voice.
    assert spoken[1] == ("Play", "https://cdn.example.com/welcome-fa.mp3", None)
    assert ("Say", "For sales, press 1.", "en-US") in spoken
    assert ("Say", "برای پشتیبانی، ۲ را بزنید.", None) in spoken
    assert (redirect.tag, redirect.text) == ("Redirect", "https://h/voice/menu")


def test_dial_rings_every_agent_and_reports_who_answered() -> None:
    root = xml(
        dial_twiml(
            VOICE.connecting,
            SPEECH,
            [(3, "+15550000003"), (5, "+15550000005")],
            caller_id=None,
            action="https://h/voice/dial",
            answered_url="https://h/voice/answered",
            timeout=20,
        )
    )
    dial = root.find("Dial")
    assert dial is not None
    assert dial.attrib == {"action": "https://h/voice/dial", "method": "POST", "timeout": "20"}
    numbers = [(n.text, n.attrib["url"]) for n in dial.findall("Number")]
    assert numbers == [
        ("+15550000003", "https://h/voice/answered?agent=3"),
        ("+15550000005", "https://h/voice/answered?agent=5"),
    ]


def test_a_menu_entry_on_hash_can_be_chosen() -> None:
    voice = TwilioVoiceConfig(
        menu=[
            VoiceMenuItem(digit="1", team="Sales", prompt=VoicePrompt(text={"en": "Sales, press 1."})),
            VoiceMenuItem(digit="#", team="Billing", prompt=VoicePrompt(text={"en": "Billing, press pound."})),
        ]
    )
    root = xml(menu_twiml(voice.greeting, [m.prompt for m in voice.menu], SPEECH, action="https://h/voice/menu"))
    gather = root.find("Gather")
    assert gather is not None
    # An absent finishOnKey is "#" to Twilio: the key would end the gather, not choose.
    assert gather.attrib.get("finishOnKey", "#") == ""


def test_dial_rings_at_most_ten_numbers() -> None:
    agents = [(i, f"+1555000{i:04d}") for i in range(11)]
    common: dict[str, Any] = {
        "caller_id": None,
        "action": "https://h/voice/dial",
        "answered_url": "https://h/voice/answered",
        "timeout": 20,
    }
    dial = xml(dial_twiml(VOICE.connecting, SPEECH, agents[:10], **common)).find("Dial")
    assert dial is not None and len(dial.findall("Number")) == 10
    # Twilio refuses the eleventh: the caller would hear an application error.
    with pytest.raises(ValueError, match="at most 10"):
        dial_twiml(VOICE.connecting, SPEECH, agents, **common)


def test_voicemail_records_with_transcription_then_says_goodbye() -> None:
    root = xml(
        voicemail_twiml(
            VOICE.closed,
            VOICE.goodbye,
            SPEECH,
            action="https://h/voice/recording",
            transcribe_callback="https://h/voice/transcription",
            max_length=120,
        )
    )
    tags = [el.tag for el in root]
    assert tags.index("Record") < tags.index("Hangup")
    record = root.find("Record")
    assert record is not None
    assert record.attrib["transcribe"] == "true"
    assert record.attrib["transcribeCallback"] == "https://h/voice/transcription"
    assert record.attrib["maxLength"] == "120"
    assert record.attrib["action"] == "https://h/voice/recording"
    assert root[0].text == "We are closed now. Please leave a message after the tone."
    assert [el.tag for el in xml(goodbye_twiml(VOICE.goodbye, SPEECH))] == ["Say", "Say", "Hangup"]
    connect = xml(connect_twiml("+15557654321", caller_id="+15550001111", action="https://h/d", timeout=20))
    number = connect.find("Dial/Number")
    assert number is not None and number.text == "+15557654321"


def test_call_parameters() -> None:
    params = FormParams(
        {
            "CallSid": "CA" + "1" * 32,
            "AccountSid": "AC" + "2" * 32,
            "From": "+15557654321",
            "To": "+15550001111",
            "CallStatus": "completed",
            "Direction": "inbound",
            "CallDuration": "42",
            "Digits": "1",
            "NewParameter": "ignored",
        }.items()
    )
    call = parse_call(params)
    assert (call.caller, call.called, call.status, call.duration, call.digits) == (
        "+15557654321",
        "+15550001111",
        "completed",
        42,
        "1",
    )
    client = parse_call(FormParams({"CallSid": "CA" + "1" * 32, "From": "client:Anna", "To": "+1555"}.items()))
    assert (client.caller, client.caller_withheld) == ("client:anna", False)
    with pytest.raises(InvalidPayload, match="CallSid"):
        parse_call(FormParams({"From": "+15557654321"}.items()))
    with pytest.raises(InvalidPayload, match="CallStatus"):
        parse_call(FormParams({"CallSid": "CA" + "1" * 32, "CallStatus": "exploded"}.items()))
    with pytest.raises(InvalidPayload, match="CallDuration"):
        parse_call(FormParams({"CallSid": "CA" + "1" * 32, "CallDuration": "long"}.items()))


def test_nul_characters_are_dropped_from_what_is_stored() -> None:
    # PostgreSQL refuses NUL in text: a caller stored with one was a 500.
    call = parse_call(
        FormParams({"CallSid": "CA" + "1" * 32, "From": "sip:a\x00b@x", "CallerName": "An\x00na"}.items())
    )
    assert (call.caller, call.caller_name) == ("sip:ab@x", "Anna")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        # str.isdigit (after stripping minuses) takes these; int() refuses them or overflows the database.
        ({"CallDuration": "--5"}, "CallDuration"),
        ({"CallDuration": "²"}, "CallDuration"),
        ({"RecordingDuration": "9" * 30}, "RecordingDuration"),
        ({"SequenceNumber": "5\n"}, "SequenceNumber"),
        # "$" matches before a final newline: another id for the same call.
        ({"CallSid": "CA" + "1" * 32 + "\n"}, "CallSid"),
        ({"CallSid": "CA-anything"}, "CallSid"),
        ({"ParentCallSid": "CA" + "2" * 32 + "\n"}, "ParentCallSid"),
        ({"RecordingSid": "RE" + "3" * 31}, "RecordingSid"),
        # calls.menu_choice holds 8: a longer Digits was a 500 on PostgreSQL.
        ({"Digits": "123456789"}, "Digits"),
        ({"DialCallStatus": "exploded"}, "DialCallStatus"),
        ({"TranscriptionStatus": "done"}, "TranscriptionStatus"),
    ],
)
def test_odd_numbers_and_ids_are_named(change: dict[str, str], needle: str) -> None:
    with pytest.raises(InvalidPayload, match=needle):
        parse_call(FormParams({"CallSid": "CA" + "1" * 32, "From": "+15557654321", **change}.items()))


def test_twilio_step_values() -> None:
    base = {"CallSid": "CA" + "1" * 32, "From": "+15557654321"}
    for sent in ("completed", "answered", "busy", "no-answer", "failed", "canceled"):
        assert parse_call(FormParams({**base, "DialCallStatus": sent.upper()}.items())).dial_status == sent
    for sent in ("in-progress", "completed", "failed"):
        assert parse_call(FormParams({**base, "TranscriptionStatus": sent}.items())).transcription_status == sent
    assert parse_call(FormParams({**base, "Digits": "hangup"}.items())).digits == "hangup"
    # The <Record> action names its recording by URL only.
    sid = "RE" + "ab" * 16
    url = f"https://api.twilio.com/2010-04-01/Accounts/AC{'2' * 32}/Recordings/{sid}"
    assert parse_call(FormParams({**base, "RecordingUrl": url}.items())).recording_sid == sid
    assert parse_call(FormParams({**base, "RecordingUrl": "https://example.com/x"}.items())).recording_sid is None


@pytest.mark.parametrize(
    "sent_from",
    [
        "+266696687",  # ANONYMOUS
        "+7378742833",  # RESTRICTED
        "+2562533",  # BLOCKED
        "+8656696",  # UNKNOWN
        "+86282452253",  # UNAVAILABLE
        "anonymous",
        "Restricted",
        "unknown",
        "unavailable",
        "",
    ],
)
def test_a_withheld_number_is_an_identity_of_its_own_call(sent_from: str) -> None:
    sid = "CA" + "7" * 32
    call = parse_call(FormParams({"CallSid": sid, "From": sent_from, "To": "+15550001111"}.items()))
    assert call.caller_withheld
    # Keyed by the call: two hidden callers are never one contact.
    assert call.caller == f"anonymous:{sid}"
    assert (call.customer, call.caller_name) == ("anonymous", "Anonymous caller")
    assert call_view(call)["from"] == "anonymous"
    # Placeholders stored before they were recognised are not numbers either.
    assert is_withheld(sent_from) and is_withheld(call.caller)


def test_real_numbers_are_not_withheld() -> None:
    for number in ("+15557654321", "+989121234567", "+2666966870", "+44266696687"):
        assert not is_withheld(number), number
    call = parse_call(FormParams({"CallSid": "CA" + "7" * 32, "From": "+15557654321", "To": "+1555"}.items()))
    assert (call.caller, call.customer, call.caller_withheld, call.caller_name) == (
        "+15557654321",
        "+15557654321",
        False,
        None,
    )


async def test_a_text_reply_to_a_withheld_number_fails_with_the_reason() -> None:
    channel = TwilioVoiceChannel(None, None)
    reply = OutboundMessage(
        message_id=1,
        ticket_id=1,
        channel=Channel.VOICE,
        inbox="voice",
        recipient="anonymous:CA" + "7" * 32,
        body="We called you back",
        author=Author.AGENT,
    )
    for recipient in (reply.recipient, "+266696687"):
        result = await channel.send(reply.model_copy(update={"recipient": recipient}))
        assert result.status is DeliveryStatus.FAILED
        assert not result.retryable
        assert result.reason == "the caller withheld their number, so there is no number to text a reply to"
