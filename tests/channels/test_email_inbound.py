"""Reading customer mail into the hub's message: the edge cases of parsing
(length limits, automatic-mail signals, attachments that look like text,
charsets declared only inside HTML) and of bounce reports."""

from __future__ import annotations

import pytest

from channels.email import MAX_BODY_CHARS, SHORTENED, UNKNOWN_SENDER, decode_bytes, parse_email, to_inbound
from hub.core import InboundMessage
from tests.channels.test_email import BASE, _mail

# --- the body's length -----------------------------------------------------------


def _long(chars: int) -> bytes:
    # Lines, as a pasted log is: one long line would be unflowed or wrapped.
    line = "2024-05-01 12:00:00 ERROR payment gateway timeout\n"
    # Ends in a letter: trailing blank space is not part of the body.
    text = (line * (chars // len(line) + 1))[: chars - 1] + "."
    return _mail(BASE, text.encode())


def test_a_body_at_the_limit_is_kept_whole() -> None:
    parsed = parse_email(_long(MAX_BODY_CHARS))
    assert len(parsed.body) == MAX_BODY_CHARS
    inbound = to_inbound(parsed, inbox="email:support", original_url="/attachments/k/original.eml")
    assert inbound.body == parsed.body
    assert "notes" not in inbound.extras["email"]


@pytest.mark.parametrize("extra", [1, 5, 10_000])
def test_a_longer_body_is_shortened_within_the_limit(extra: int) -> None:
    parsed = parse_email(_long(MAX_BODY_CHARS + extra))
    inbound = to_inbound(parsed, inbox="email:support", original_url="/attachments/k/original.eml")
    assert len(inbound.body) == MAX_BODY_CHARS
    assert inbound.body.endswith(SHORTENED)
    assert inbound.body.startswith(parsed.body[: MAX_BODY_CHARS - len(SHORTENED)])
    # What the hub stores must pass the core type's own limit.
    InboundMessage.model_validate(inbound.model_dump())
    (note,) = inbound.extras["email"]["notes"]
    assert "shortened" in note and "original message" in note


def test_a_shortened_body_without_a_stored_original_says_so() -> None:
    inbound = to_inbound(parse_email(_long(MAX_BODY_CHARS + 1)), inbox="email:support", original_url=None)
    (note,) = inbound.extras["email"]["notes"]
    assert "could not be stored" in note


# --- text parts that are files ------------------------------------------------------


def _mixed(*parts: str) -> bytes:
    body = "".join(f"--B\r\n{part}\r\n" for part in parts) + "--B--\r\n"
    return _mail(BASE, body.encode(), 'multipart/mixed; boundary="B"')


def test_named_inline_text_parts_after_the_body_are_attachments() -> None:
    # Apple Mail: the body, an inline image, more body, then a log file and
    # a saved web page, both "inline" with a filename.
    parsed = parse_email(
        _mixed(
            "Content-Type: text/plain; charset=utf-8\r\n\r\nPart one",
            "Content-Type: image/png; name=a.png\r\nContent-Disposition: inline; filename=a.png\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=",
            "Content-Type: text/plain; charset=utf-8\r\n\r\nPart two",
            "Content-Type: text/plain; charset=utf-8; name=log.txt\r\nContent-Disposition: inline; filename=log.txt"
            "\r\n\r\nERROR line",
            "Content-Type: text/html; charset=utf-8\r\nContent-Disposition: inline; filename=page.html"
            "\r\n\r\n<p>saved page</p>",
        )
    )
    assert parsed.body == "Part one\n\nPart two"
    assert [(a.filename, a.content_type) for a in parsed.attachments] == [
        ("a.png", "image/png"),
        ("log.txt", "text/plain"),
        ("page.html", "text/html"),
    ]
    assert parsed.attachments[1].data.strip() == b"ERROR line"
    assert parsed.html is None


def test_a_named_first_text_part_is_still_the_body() -> None:
    parsed = parse_email(
        _mixed(
            "Content-Type: text/plain; charset=utf-8; name=message.txt\r\n"
            "Content-Disposition: inline; filename=message.txt\r\n\r\nHello there",
        )
    )
    assert parsed.body == "Hello there" and parsed.attachments == ()


def test_a_named_html_alternative_is_the_body_not_a_file() -> None:
    alternative = (
        'Content-Type: multipart/alternative; boundary="A"\r\n\r\n'
        "--A\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain words\r\n"
        "--A\r\nContent-Type: text/html; charset=utf-8; name=body.html\r\n\r\n<p>html words</p>\r\n--A--"
    )
    parsed = parse_email(_mixed(alternative))
    assert parsed.body == "plain words" and parsed.attachments == ()
    assert parsed.html is not None and "html words" in parsed.html


# --- bounces ------------------------------------------------------------------------


def dsn(block: str, original_id: str = "hub.1.2.x@hub.test") -> bytes:
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\r\nTo: support@hub.test\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn1@mx>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nSorry.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\n"
        f"{block}\r\n--B\r\nContent-Type: message/rfc822\r\n\r\n"
        f"From: support@hub.test\r\nTo: sara@example.com\r\nMessage-ID: <{original_id}>\r\nSubject: Re: Order\r\n\r\n"
        "body\r\n--B--\r\n"
    ).encode()


def test_a_recipient_in_angle_brackets_is_the_address() -> None:
    parsed = parse_email(dsn("Final-Recipient: rfc822;<Sara@example.com>\r\nAction: failed\r\nStatus: 5.1.1\r\n"))
    assert parsed.report is not None
    assert parsed.report.status_recipients == ("sara@example.com",)
    assert "<sara" not in parsed.report.reason.lower()


def test_the_original_recipient_counts_after_alias_expansion() -> None:
    parsed = parse_email(
        dsn(
            "Final-Recipient: rfc822; sara.real@mailhost.example.com\r\n"
            "Original-Recipient: rfc822;sara@example.com\r\nAction: failed\r\nStatus: 5.2.2\r\n"
            "Diagnostic-Code: smtp; 552 5.2.2 mailbox full\r\n"
        )
    )
    assert parsed.report is not None
    assert set(parsed.report.status_recipients) == {"sara.real@mailhost.example.com", "sara@example.com"}
    assert parsed.report.reason.startswith("552 5.2.2 mailbox full")


QMAIL = (
    "From: MAILER-DAEMON@mx.example.org\r\nTo: support@hub.test\r\nSubject: failure notice\r\n"
    "Message-ID: <q1@mx>\r\n\r\n"
    "Hi. This is the qmail-send program at mx.example.org.\r\n"
    "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n\r\n"
    "<boss@example.org>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
    "--- Below this line is a copy of the message.\r\n\r\n"
    "From: support@hub.test\r\nTo: sara@example.com\r\nCc: boss@example.org\r\n"
    "Message-ID: <hub.out.7@hub.test>\r\nSubject: Re: Order late\r\n\r\n<sara@example.com>:\r\nOn its way\r\n"
)

EXIM = (
    "From: Mail Delivery System <Mailer-Daemon@mx.example.org>\r\nTo: support@hub.test\r\n"
    "Subject: Mail delivery failed: returning message to sender\r\nX-Failed-Recipients: boss@example.org\r\n"
    "Auto-Submitted: auto-replied\r\nMessage-ID: <e1@mx>\r\n\r\n"
    "This message was created automatically by mail delivery software.\r\n\r\n"
    "A message that you sent could not be delivered to one or more of its\r\n"
    "recipients. This is a permanent error. The following address(es) failed:\r\n\r\n"
    "  boss@example.org\r\n    host mx.example.org [192.0.2.1]\r\n"
    "    SMTP error from remote mail server after RCPT TO:<boss@example.org>:\r\n"
    "    550 5.1.1 <boss@example.org>: Recipient address rejected: User unknown\r\n\r\n"
    "------ This is a copy of the message, including all the headers. ------\r\n\r\n"
    "From: support@hub.test\r\nTo: sara@example.com\r\nCc: boss@example.org\r\n"
    "Message-ID: <hub.out.7@hub.test>\r\nSubject: Re: Order late\r\n\r\nOn its way\r\n"
)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (QMAIL, "Sorry, no mailbox here by that name. (#5.1.1)"),
        (QMAIL.replace("Message-ID: <q1@mx>", "X-Failed-Recipients: boss@example.org\r\nMessage-ID: <q1@mx>"),
         "Sorry, no mailbox here by that name. (#5.1.1)"),
        (EXIM, "550 5.1.1 <boss@example.org>: Recipient address rejected: User unknown"),
    ],
    ids=["qmail", "qmail-x-failed-recipients", "exim"],
)  # fmt: skip
def test_a_plain_text_bounce_names_who_failed_in_the_servers_words(raw: str, words: str) -> None:
    parsed = parse_email(raw.encode())
    assert parsed.report is not None and parsed.report.kind == "bounce"
    assert parsed.report.original_ids == ("hub.out.7@hub.test",)
    # Only the copy failed, not Sara (named in the returned message's body).
    assert parsed.report.status_recipients == ("boss@example.org",)
    assert words in parsed.report.reason and parsed.report.reason != "failure notice"


def test_a_plain_text_bounce_naming_nobody_still_fails_the_message() -> None:
    raw = QMAIL.replace("<boss@example.org>:\r\n", "").encode()
    parsed = parse_email(raw)
    assert parsed.report is not None and parsed.report.status_recipients == ()
    assert "#5.1.1" in parsed.report.reason


# --- charsets -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "text", "codec"),
    [
        ("iso-8859-8-i", "שלום עולם", "iso-8859-8"),
        ("ISO-8859-6-I", "مرحبا", "iso-8859-6"),
        ("x-cp1256", "سلام، سفارش من کجاست؟", "cp1256"),
        ("x-cp1251", "Добрый день", "cp1251"),
        ("x-mac-cyrillic", "Привет", "mac-cyrillic"),
        ("x-mac-roman", "café", "mac-roman"),
        ("unicode-1-1-utf-8", "سلام", "utf-8"),
        ("ks_c_5601-1987", "안녕하세요", "cp949"),
        ("x-x-big5", "你好", "big5"),
        # Declared Latin-1, written in its Windows superset (curly quotes).
        ("iso-8859-1", "\u201cquoted\u201d \u2013 café", "cp1252"),
    ],
)
def test_charset_labels_are_read_as_browsers_read_them(label: str, text: str, codec: str) -> None:
    assert decode_bytes(text.encode(codec), label) == text
    parsed = parse_email(_mail(BASE, text.encode(codec), f"text/plain; charset={label}"))
    assert parsed.body == text


@pytest.mark.parametrize(
    "meta",
    [
        '<meta http-equiv="Content-Type" content="text/html; charset=windows-1256">',
        "<meta charset=windows-1256>",
        "<META CHARSET='x-cp1256' />",
    ],
)
def test_an_html_part_declaring_its_charset_only_in_meta_is_read_in_it(meta: str) -> None:
    html = f"<html><head>{meta}</head><body><p>سلام دوست من</p></body></html>".encode("cp1256")
    parsed = parse_email(_mail(BASE, html, "text/html"))
    assert parsed.body == "سلام دوست من"
    assert parsed.html is not None and "سلام دوست من" in parsed.html


def test_the_mime_charset_wins_over_meta() -> None:
    html = '<html><head><meta charset="windows-1256"></head><body><p>سلام</p></body></html>'.encode()
    assert parse_email(_mail(BASE, html, "text/html; charset=utf-8")).body == "سلام"


def test_a_utf16_meta_in_an_ascii_compatible_document_means_utf8() -> None:
    html = '<html><head><meta charset="utf-16"></head><body><p>سلام</p></body></html>'.encode()
    assert parse_email(_mail(BASE, html, "text/html")).body == "سلام"


# --- customer mail without a readable sender --------------------------------------------

NO_SENDER = (
    b"To: support@hub.test\r\nSubject: My refund was rejected\r\nMessage-ID: <nf@example.com>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nPlease call me, my refund request was rejected twice.\r\n"
)
FORM_FORWARD = (
    b"From: Website contact form\r\nTo: support@hub.test\r\nSubject: Fwd: invoice\r\n"
    b"Message-ID: <nf2@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
    b"--B\r\nContent-Type: text/plain\r\n\r\nSee the attached mail from the shop.\r\n"
    b"--B\r\nContent-Type: message/rfc822\r\n\r\n"
    b"From: shop@example.org\r\nSubject: Invoice\r\nMessage-ID: <inv@example.org>\r\n\r\nInvoice body\r\n--B--\r\n"
)


@pytest.mark.parametrize("raw", [NO_SENDER, FORM_FORWARD], ids=["bounce-like-subject", "attached-message"])
def test_mail_without_a_readable_sender_is_not_a_bounce(raw: bytes) -> None:
    # A broken client or a web form: its "rejected" subject or the message it
    # forwards does not make it a mail server's report.
    parsed = parse_email(raw)
    assert parsed.sender == UNKNOWN_SENDER
    assert not parsed.is_report
