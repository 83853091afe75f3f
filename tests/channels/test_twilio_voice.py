"""Voice: Twilio's call parameters, and the TwiML the IVR answers with, read
back as XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from channels.base import InvalidPayload
from channels.twilio_common import FormParams
from channels.twilio_voice import (
    Speech,
    connect_twiml,
    dial_twiml,
    goodbye_twiml,
    menu_twiml,
    parse_call,
    voicemail_twiml,
)
from hub.config import TwilioVoiceConfig, VoicePrompt

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
    anonymous = parse_call(FormParams({"CallSid": "CA" + "1" * 32, "From": "anonymous", "To": "+1555"}.items()))
    assert anonymous.caller == "anonymous"
    with pytest.raises(InvalidPayload, match="CallSid"):
        parse_call(FormParams({"From": "+15557654321"}.items()))
    with pytest.raises(InvalidPayload, match="CallStatus"):
        parse_call(FormParams({"CallSid": "CA" + "1" * 32, "CallStatus": "exploded"}.items()))
    with pytest.raises(InvalidPayload, match="CallDuration"):
        parse_call(FormParams({"CallSid": "CA" + "1" * 32, "CallDuration": "long"}.items()))
