"""Mail built to mislead or to break the parser: a sender hidden in an
encoded display name, and headers or parts the standard library gives up on.
The parser never raises, never takes decoded text for an address, and keeps
the customer's address and words whatever else it cannot read."""

from __future__ import annotations

import pytest

from channels.email import UNKNOWN_SENDER, decode_bytes, parse_email, read_envelope, to_inbound

HEAD = (
    "From: Sara <sara@example.com>\r\nTo: support@hub.test\r\nSubject: Order late\r\nMessage-ID: <c1@example.com>\r\n"
)


def _from(value: str) -> bytes:
    return (
        f"From: {value}\r\nReply-To: mallory@evil.test\r\nTo: support@hub.test\r\nSubject: Re: Order late\r\n"
        "Message-ID: <m1@evil.test>\r\nContent-Type: text/plain\r\n\r\nPlease ship to my new address instead.\r\n"
    ).encode()


# --- who sent it --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "sender", "name"),
    [
        # A display name decoding to a line break made the standard parser
        # give up, and the fallback read the decoded text as addresses.
        ("=?utf-8?q?x=0D=0Ay:_sara@example.com?= <mallory@evil.test>", "mallory@evil.test", "x y: sara@example.com"),
        ("=?utf-8?b?U2FyYQpCY2M6IGV2aWxAeC50ZXN0?= <mallory@evil.test>", "mallory@evil.test", "Sara Bcc: evil@x.test"),
        ("=?utf-8?q?Sara_<sara@example.com>?= <mallory@evil.test>", "mallory@evil.test", "Sara <sara@example.com>"),
        ('"=?utf-8?q?sara@example.com?=" <mallory@evil.test>', "mallory@evil.test", "sara@example.com"),
        ("Sara =?utf-8?q?=07=1B[2J?= <mallory@evil.test>", "mallory@evil.test", "Sara [2J"),
    ],
)
def test_a_display_name_never_becomes_the_sender(header: str, sender: str, name: str) -> None:
    parsed = parse_email(_from(header))
    assert (parsed.sender, parsed.sender_name) == (sender, name)


@pytest.mark.parametrize(
    "header",
    [
        # The standard parser decodes encoded-words even inside an address:
        # these are not sara@example.com (a DMARC check sees another domain).
        "sara@=?utf-8?q?example.com?=",
        "Sara <sara@=?utf-8?q?example.com?=>",
        "=?utf-8?q?sara?=@example.com",
        "=?utf-8?q?sara@example.com?=",
    ],
)
def test_an_encoded_word_never_makes_an_address(header: str) -> None:
    parsed = parse_email(_from(header))
    assert parsed.sender != "sara@example.com"
    assert "sara@example.com" not in (*parsed.to, *parsed.cc, *parsed.reply_to)


def test_names_lose_control_characters_and_addresses_keep_their_case_rules() -> None:
    parsed = parse_email(
        b"From: =?utf-8?q?Sara=0AAhmadi?= <Sara@Example.COM>\r\n"
        b"Reply-To: =?utf-8?q?Sara=E2=80=A8Office?= <office@example.com>\r\n"
        b'Cc: "john doe"@example.com\r\n\r\nhi\r\n'
    )
    assert (parsed.sender, parsed.sender_name) == ("sara@example.com", "Sara Ahmadi")
    assert (parsed.reply_to, parsed.reply_to_name) == (("office@example.com",), "Sara Office")
    assert parsed.cc == ('"john doe"@example.com',)


# --- never raising, and keeping what can be read ---------------------------------------

WORDS = "Where is my order?"
HOSTILE = {
    # The standard library's own header parser raises IndexError on these.
    "parameter without a value": f"{HEAD}Content-Type: text/plain; charset=utf-8; name*\r\n\r\n{WORDS}\r\n",
    "disposition without a value": f"{HEAD}Content-Type: text/plain\r\nContent-Disposition: inline; filename*\r\n\r\n"
    f"{WORDS}\r\n",
    "NUL in the charset": f'{HEAD}Content-Type: text/plain; charset="utf-8\x00"\r\n\r\n{WORDS}\r\n',
    # Codecs that are not charsets: they refuse "replace" or raise anyway.
    "charset idna": f"{HEAD}Content-Type: text/plain; charset=idna\r\n\r\n{WORDS} سلام\r\n",
    "charset punycode": f"{HEAD}Content-Type: text/plain; charset=punycode\r\n\r\n{WORDS} سلام\r\n",
    "charset undefined": f"{HEAD}Content-Type: text/plain; charset=undefined\r\n\r\n{WORDS} سلام\r\n",
    "meta charset idna": f"{HEAD}Content-Type: text/html\r\n\r\n<meta charset=idna><p>{WORDS} سلام</p>\r\n",
    # An attached message declared multipart, without its boundary, around
    # 8-bit text: the generator cannot write it back as it was parsed.
    "forwarded message without its boundary": (
        f"{HEAD}MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
        f"--XX\r\nContent-Type: text/plain\r\n\r\n{WORDS}\r\n"
        "--XX\r\nContent-Type: message/rfc822\r\n\r\nFrom: a@b.c\r\n"
        "Content-Type: multipart/alternative; boundary=YY\r\n\r\nسلام دنیا\r\n--XX--\r\n"
    ),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_mail_keeps_the_sender_and_the_words(name: str) -> None:
    parsed = parse_email(HOSTILE[name].encode())
    assert (parsed.sender, parsed.sender_name, parsed.subject) == ("sara@example.com", "Sara", "Order late")
    assert parsed.message_id == "c1@example.com"
    assert WORDS in parsed.body
    assert "\ufffd" not in parsed.body.replace("سلام", "")
    to_inbound(parsed, inbox="email:support")  # and it can be stored


def test_a_forwarded_message_the_generator_refuses_is_still_a_file() -> None:
    parsed = parse_email(HOSTILE["forwarded message without its boundary"].encode())
    (eml,) = parsed.attachments
    assert eml.content_type == "message/rfc822" and eml.data.startswith(b"From: a@b.c")


def test_one_unreadable_part_does_not_cost_the_others() -> None:
    raw = (
        f"{HEAD}MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
        f"--XX\r\nContent-Type: text/plain\r\n\r\n{WORDS}\r\n"
        "--XX\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename*\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n"
        "--XX\r\nContent-Type: image/png; name=photo.png\r\nContent-Disposition: attachment\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\niVBORw0K\r\n--XX--\r\n"
    ).encode()
    parsed = parse_email(raw)
    assert parsed.body == WORDS
    assert [a.data for a in parsed.attachments] == [b"%PDF-", b"\x89PNG\r\n"]
    assert parsed.attachments[1].filename == "photo.png"


def test_a_non_utf8_mbox_from_line_is_a_storable_sender() -> None:
    parsed = parse_email(b"From sara@ex\xe9mple.com Mon Jan  1 00:00:00 2024\nSubject: x\n\nbody\n")
    assert parsed.sender == "sara@ex\ufffdmple.com"
    assert to_inbound(parsed, inbox="email:support").sender == parsed.sender


@pytest.mark.parametrize("label", ["idna", "punycode", "undefined", "utf-8\x00", "rot13", "base64", "x-no-such"])
def test_any_charset_label_decodes(label: str) -> None:
    assert decode_bytes("سلام".encode(), label) == "سلام"


def test_the_header_alone_names_who_wrote_and_about_what() -> None:
    envelope = read_envelope(
        f"{HEAD}In-Reply-To: <hub.1.2.x@hub.test>\r\nAuto-Submitted: auto-replied\r\n"
        'Content-Type: text/plain; charset="utf-8\x00"; name*\r\n\r\nbody\r\n'.encode()
    )
    assert (envelope.sender, envelope.sender_name, envelope.subject) == ("sara@example.com", "Sara", "Order late")
    assert (envelope.key, envelope.message_id, envelope.in_reply_to) == (
        "c1@example.com",
        "c1@example.com",
        ("hub.1.2.x@hub.test",),
    )
    assert envelope.auto_reply == "Auto-Submitted: auto-replied" and envelope.body == ""
    assert read_envelope(b"\xff\xfe\x00garbage").sender == UNKNOWN_SENDER
