"""The email channel's pure parts: parsing real and hand-made messages,
automatic mail, bounces, threading keys and the outbound MIME message; and
sending it, with its recipients, to a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import dataclasses
import email
import email.policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from channels.email import (
    MAX_CC,
    UNKNOWN_SENDER,
    EmailChannel,
    Mailbox,
    SmtpServer,
    build_message,
    decode_bytes,
    is_own_address,
    is_reply_subject,
    link_inline_images,
    msgids,
    normalize_subject,
    parse_email,
    plus_tokens,
    reply_addresses,
    reply_subject,
    subject_tokens,
    to_inbound,
    unflow,
)
from hub.core import Attachment, Author, Channel, DeliveryStatus, OutboundMessage
from tests import mailservers
from tests.services import shared_data

# (file, sender, subject, first line of the body, attachment names, report kind)
CPYTHON: list[tuple[str, str, str, str, list[str], str | None]] = [
    ("msg_01.txt", "bbb@ddd.com", "This is a test message", "Hi,", [], None),
    ("msg_02.txt", "ppp-request@zzz.org", "Ppp digest, Vol 1 #2 - 5 msgs", "Send Ppp mailing list submissions to",
     ["Ppp testing 1.eml", "message.eml", "Ppp testing 3.eml", "Ppp testing 4.eml", "Ppp testing 5.eml"], None),
    ("msg_03.txt", "bbb@ddd.com", "This is a test message", "Hi,", [], None),
    ("msg_04.txt", "barry@python.org", "a simple multipart", "a simple kind of mirror", ["msg.txt"], None),
    ("msg_05.txt", UNKNOWN_SENDER, "bar", "Yadda yadda yadda", ["message.eml"], "bounce"),
    ("msg_06.txt", "barry@python.org", "forwarded message from Barry A. Warsaw", "", [], None),
    ("msg_07.txt", "barry@digicool.com", "Here is your dingus fish", "Hi there,", ["dingusfish.gif"], None),
    ("msg_08.txt", "barry@python.org", "Lyrics", "", [], None),
    ("msg_09.txt", "barry@python.org", "Lyrics", "", [], None),
    ("msg_10.txt", "barry@python.org", "Lyrics", "This is a 7bit encoded message.", [], None),
    ("msg_11.txt", UNKNOWN_SENDER, "The enclosing message", "Here is the body of the message.", [], None),
    ("msg_12.txt", "barry@python.org", "Lyrics", "", [], None),
    ("msg_12a.txt", "barry@python.org", "Lyrics", "", [], None),
    ("msg_13.txt", "barry@digicool.com", "Here is your dingus fish", "A text/plain part", ["dingusfish.gif"], None),
    ("msg_14.txt", "bbb@ddd.com", "This is a test message", "Hi,", [], None),
    ("msg_15.txt", "xx@xx.dk", "XX", "Some removed test.", [], None),
    ("msg_16.txt", "postmaster@ucla.edu", "Delivery Notification: Delivery has failed",
     "This report relates to a message you sent with the following header fields:", ["scr yeah for Ians.eml"],
     "bounce"),
    ("msg_17.txt", "barry@digicool.com", "Here is your dingus fish", "Hi there,", [], None),
    ("msg_18.txt", UNKNOWN_SENDER, "", "", [], None),
    ("msg_19.txt", UNKNOWN_SENDER, "", "Send Ppp mailing list submissions to", [], None),
    ("msg_20.txt", "bbb@ddd.com", "This is a test message", "Hi,", [], None),
    ("msg_21.txt", "aperson@dom.ain", "Test", "One", [], None),
    ("msg_22.txt", "b@example.com", "", "Text text text.", ["wibble.JPG", "wibble2.JPG"], None),
    ("msg_23.txt", "aperson@dom.ain", "", "A message part", [], None),
    ("msg_24.txt", "bperson@dom.ain", "A subject", "", [], None),
    ("msg_25.txt", "mailer-daemon@zinfandel.lacita.com",
     "Returned mail: Too many hops 19 (17 max): from <linuxuser-admin@www.linux.org.uk> via [199.164.235.226], "
     "to <scoffman@wellpartner.com>", "This is a MIME-encapsulated message", [], "bounce"),
    ("msg_26.txt", "father.time@xcar.wooster.local", "IMAP file test", "Simple email with attachment.", ["clock.bmp"],
     None),
    ("msg_27.txt", "aperson@dom.ain", "bug demonstration 12345678911234567892123456789312345678941234567895123456789"
     "6123456789712345678981123456789112345678921234567891123456789112345678921234567" "89 more text", "test", [],
     None),
    ("msg_28.txt", "aperson@dom.ain", "", "", ["ee.eml", "ee.eml"], None),
    ("msg_29.txt", "bbb@ddd.com", "This is a test message", "Hi,", [], None),
    ("msg_30.txt", "aperson@dom.ain", "", "", ["ee.eml", "ee.eml"], None),
    ("msg_31.txt", "aperson@dom.ain", "", "--BOUNDARY", [], None),
    ("msg_32.txt", "aperson@example.com", "Re: Limiting Perl CPU Utilization...", "Some message.", [], None),
    ("msg_33.txt", "aperson@example.com", "Re: Limiting Perl CPU Utilization...", "part 1", [], None),
    ("msg_34.txt", "aperson@dom.ain", "", "This is a text plain part that is counter to recommended practice in",
     ["message.eml"], None),
    ("msg_35.txt", "aperson@dom.ain", "here's something interesting",
     "counter to RFC 5322, there's no separating newline here", [], None),
    ("msg_36.txt", "internet-drafts@ietf.org", "I-D ACTION:draft-ietf-mboned-mix-00.txt", "Blah blah blah", [], None),
    ("msg_37.txt", UNKNOWN_SENDER, "", "", ["attachment-1.txt", "attachment-2.txt", "attachment-3.txt"], None),
    ("msg_38.txt", UNKNOWN_SENDER, "", "Unlike the test test_nested-multiples-with-internal-boundary, this", [],
     None),
    ("msg_39.txt", UNKNOWN_SENDER, "", "--", ["patch1.bin", "patch2.bin"], None),
    ("msg_40.txt", UNKNOWN_SENDER, "",
     "----961284236552522269 Content-Type: text/html; Content-Transfer-Encoding: 7Bit ----961284236552522269--", [],
     None),
    ("msg_41.txt", "xxx@example.com", "64423", "Blah blah blah", [], None),
    ("msg_42.txt", "xxx@example.com", "", "Stuff", ["message.eml"], None),
    ("msg_43.txt", "srs0=ao/p=on=bag.python.org=none@bounce2.pobox.com",
     "Banned file: auto__mail.python.bat in mail from you", "BANNED FILENAME ALERT", [], "bounce"),
    ("msg_44.txt", "barry@python.org", "a simple multipart", "a simple kind of mirror", ["msg.txt"], None),
    ("msg_45.txt", "foo@bar.baz", "test", "This is the signed contents.", [], None),
    ("msg_46.txt", "sender@example.net", "GroupwiseForwardingTest", "Testing email forwarding with Groupwise 1.2.2010",
     [], None),
    ("msg_47.txt", "arthur@example.example", "", "bar", [], None),
    ("msg_48.txt", "foo@bar.baz", "test", "This is the signed contents.", [], None),
]  # fmt: skip


def test_the_table_covers_every_cpython_sample() -> None:
    files = sorted(p.name for p in shared_data("email", "cpython_test_email").glob("msg_*.txt"))
    assert len(files) == 49
    assert files == sorted(row[0] for row in CPYTHON)


@pytest.mark.parametrize(
    ("name", "sender", "subject", "first_line", "files", "report"), CPYTHON, ids=[r[0] for r in CPYTHON]
)
def test_cpython_samples(
    name: str, sender: str, subject: str, first_line: str, files: list[str], report: str | None
) -> None:
    raw = (shared_data("email", "cpython_test_email") / name).read_bytes()
    parsed = parse_email(raw)
    assert parsed.sender == sender
    assert parsed.subject == subject
    assert parsed.body.split("\n")[0].strip() == first_line
    assert [a.filename for a in parsed.attachments] == files
    assert all(a.data for a in parsed.attachments)
    assert (parsed.report.kind if parsed.report else None) == report
    # And it becomes a valid hub message (nothing too long, nothing unstorable).
    inbound = to_inbound(parsed, inbox="email:support")
    assert inbound.external_id and inbound.sender
    assert "\x00" not in inbound.body


def test_charsets_reported_by_cpython_samples_decode() -> None:
    raw = (shared_data("email", "cpython_test_email") / "msg_10.txt").read_bytes()
    assert "¡This is a Quoted Printable encoded message!" in parse_email(raw).body


def _mail(headers: dict[str, str], body: bytes, ctype: str = "text/plain; charset=utf-8") -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"{head}MIME-Version: 1.0\r\nContent-Type: {ctype}\r\n\r\n".encode() + body


BASE = {
    "From": "Sara <sara@example.com>",
    "To": "support@hub.test",
    "Subject": "Hello",
    "Message-ID": "<a1@example.com>",
}


@pytest.mark.parametrize(
    ("charset", "text"),
    [
        ("koi8-r", "Привет, мир"),
        ("gb2312", "你好世界"),
        ("iso-8859-2", "Zażółć gęślą jaźń"),
        ("iso-8859-7", "Καλημέρα"),
        ("windows-1256", "مرحبا بالعالم"),
        ("windows-1251", "Добрый день"),
        ("iso-8859-15", "Prix: 10 €"),
    ],
)
def test_declared_charsets(charset: str, text: str) -> None:
    parsed = parse_email(_mail(BASE, text.encode(charset), f"text/plain; charset={charset}"))
    assert parsed.body == text


def test_undecodable_bytes_are_replaced_not_fatal() -> None:
    body = "Привет".encode("koi8-r") + b"\xff\xfe\x00 end"
    parsed = parse_email(_mail(BASE, body, "text/plain; charset=utf-8"))
    assert parsed.body.endswith(" end") and "\ufffd" in parsed.body and "\x00" not in parsed.body
    unknown = parse_email(_mail(BASE, "سلام".encode(), "text/plain; charset=x-no-such-charset"))
    assert unknown.body == "سلام"
    # Declared ASCII that is really Windows-1252 (the usual mislabel).
    assert decode_bytes(b"caf\xe9", "us-ascii") == "café"
    assert decode_bytes("café".encode(), "us-ascii") == "café"


def test_rfc2047_headers_and_persian_names() -> None:
    raw = _mail(
        {
            "From": "=?utf-8?b?2LPYp9ix2Kcg2KfYrdmF2K/Bjw==?= <Sara@Example.COM>",
            "Subject": "=?utf-8?q?=D8=B3=D9=81=D8=A7=D8=B1=D8=B4_=DB=B1=DB=B2?= =?iso-8859-1?q?caf=E9?=",
            "Message-ID": "<x@y>",
        },
        b"hi",
    )
    parsed = parse_email(raw)
    assert parsed.sender == "sara@example.com"
    assert parsed.sender_name is not None and parsed.sender_name.startswith("سارا")
    assert parsed.subject == "سفارش ۱۲café"


def test_rfc2231_filenames_and_inline_images() -> None:
    msg = EmailMessage()
    msg["From"] = "sara@example.com"
    msg["Subject"] = "files"
    msg.set_content("see attached")
    msg.add_alternative('<p>see <img src="cid:logo@x"></p><script>alert(1)</script>', subtype="html")
    html_part = next(p for p in msg.walk() if p.get_content_type() == "text/html")
    assert isinstance(html_part, EmailMessage)
    html_part.add_related(b"\x89PNG..", "image", "png", cid="<logo@x>")
    msg.add_attachment("گزارش".encode(), maintype="application", subtype="pdf", filename="گزارش ماه.pdf")
    msg.add_attachment(b"a,b", maintype="text", subtype="csv", filename="data.csv")
    parsed = parse_email(msg.as_bytes())
    assert parsed.body == "see attached"
    names = [a.filename for a in parsed.attachments]
    assert names == ["attachment-1.png", "گزارش ماه.pdf", "data.csv"]
    inline = parsed.attachments[0]
    assert inline.inline and inline.content_id == "logo@x"
    assert parsed.html is not None and "<script" not in parsed.html and 'src="cid:logo@x"' in parsed.html
    linked = link_inline_images(parsed.html, {"logo@x": "/attachments/k/logo.png"})
    assert 'src="/attachments/k/logo.png"' in linked


def test_html_only_mail_becomes_readable_text_and_safe_html() -> None:
    html = (
        '<html><head><style>p{color:red}</style></head><body onload="x()">'
        '<div dir="rtl">سلام، <b>سفارش</b> من کجاست؟</div>'
        '<p>Track it <a href="https://t.example/1" onclick="y()">here</a>'
        '</p><table><tr><td>Order</td><td>42</td></tr></table><iframe src="https://evil"></iframe>'
        '<div class="gmail_quote">On Mon, 3 Mar 2025 at 10:12, Support &lt;support@hub.test&gt; wrote:<br>'
        "<blockquote>old text</blockquote></div></body></html>"
    )
    parsed = parse_email(_mail(BASE, html.encode(), "text/html; charset=utf-8"))
    assert parsed.body.startswith("سلام، سفارش من کجاست؟")
    assert "[here](https://t.example/1)" in parsed.body
    assert "Order  42" in parsed.body
    assert "old text" not in parsed.body and "old text" in parsed.quoted
    assert parsed.html is not None
    for bad in ("<style", "onload", "onclick", "<iframe", "color:red"):
        assert bad not in parsed.html
    assert 'dir="rtl"' in parsed.html and 'rel="noopener noreferrer nofollow"' in parsed.html


def test_plain_text_preferred_in_alternatives_and_html_kept() -> None:
    msg = EmailMessage()
    msg["From"] = "sara@example.com"
    msg.set_content("plain words")
    msg.add_alternative("<p>html words</p>", subtype="html")
    parsed = parse_email(msg.as_bytes())
    assert parsed.body == "plain words"
    assert parsed.html is not None and parsed.html.strip() == "<p>html words</p>"


def test_format_flowed() -> None:
    assert unflow("This is a long \nline that wraps.\n> quoted \n> too\n-- \nsig") == (
        "This is a long line that wraps.\n> quoted too\n-- \nsig"
    )
    raw = _mail(BASE, b"one two \r\nthree\r\n", "text/plain; charset=utf-8; format=flowed")
    assert parse_email(raw).body == "one two three"


def test_quoted_history_and_signature_are_separated() -> None:
    body = (
        "Yes, the yearly plan please.\n\n-- \nSara\n\n"
        "On Mon, 3 Mar 2025 at 10:12, Support <support@hub.test> wrote:\n> Which plan?\n"
    )
    parsed = parse_email(_mail(BASE, body.encode()))
    assert parsed.body == "Yes, the yearly plan please."
    assert parsed.signature == "-- \nSara"
    assert parsed.quoted.startswith("On Mon, 3 Mar 2025")
    extras = to_inbound(parsed, inbox="email:support", original_url="/attachments/k/original.eml").extras["email"]
    assert extras["quoted"].startswith("On Mon") and extras["original_url"] == "/attachments/k/original.eml"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Auto-Submitted": "auto-replied"}, "Auto-Submitted: auto-replied"),
        ({"Auto-Submitted": "no"}, None),
        ({"X-Autoreply": "yes"}, "X-Autoreply header"),
        # A request not to be answered automatically, which Exchange adds to
        # mail people write: not a sign that a machine wrote it.
        ({"X-Auto-Response-Suppress": "All"}, None),
        ({"X-Auto-Response-Suppress": "DR, OOF, AutoReply"}, None),
        ({"Precedence": "bulk"}, "Precedence: bulk"),
        ({"Precedence": "junk"}, "Precedence: junk"),
        ({"Precedence": "list"}, "Precedence: list"),
        ({"List-Id": "<news.example.com>"}, "mailing list (List-Id / List-Unsubscribe)"),
        ({"Subject": "Automatic reply: Hello"}, "automatic reply subject"),
        ({"Subject": "Out of Office: Hello"}, "automatic reply subject"),
        ({"Subject": "پاسخ خودکار: سلام"}, "automatic reply subject"),
        ({"Subject": "Auto: Out of Office"}, "automatic reply subject"),
        ({"Subject": "Auto: Abwesenheit bis 12. Mai"}, "automatic reply subject"),
        # "Auto" is a car in German, Dutch, Italian and Spanish: a person's mail.
        ({"Subject": "Auto: Termin für die Inspektion am Samstag"}, None),
        ({"Subject": "auto: la revisione è fissata"}, None),
        ({"From": "no-reply@shop.example"}, "automated sender no-reply@shop.example"),
        ({}, None),
    ],
)
def test_auto_replies(headers: dict[str, str], reason: str | None) -> None:
    parsed = parse_email(_mail({**BASE, **headers}, b"I am away"))
    assert parsed.auto_reply == reason
    extras = to_inbound(parsed, inbox="email:support").extras
    assert extras.get("auto_reply") == reason


def _dsn(original_id: str, action: str = "failed", status: str = "5.1.1") -> bytes:
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.hub.test>\r\n"
        "To: support@hub.test\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\nMessage-ID: <dsn1@mx.hub.test>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.hub.test\r\n\r\n"
        f"Final-Recipient: rfc822; nobody@customer.test\r\nAction: {action}\r\nStatus: {status}\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <nobody@customer.test>: Recipient address rejected: User unknown\r\n"
        "\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: Support <support@hub.test>\r\nTo: nobody@customer.test\r\nMessage-ID: <{original_id}>\r\n"
        "Subject: Re: Order [#7]\r\n\r\n--B--\r\n"
    ).encode()


def test_bounce_becomes_a_failed_receipt_for_our_message() -> None:
    parsed = parse_email(_dsn("hub.7.12.abc@hub.test"))
    assert parsed.is_report and parsed.report is not None and parsed.report.kind == "bounce"
    (receipt,) = parsed.receipts()
    assert receipt.channel is Channel.EMAIL
    assert receipt.external_id == "hub.7.12.abc@hub.test"
    assert receipt.status is DeliveryStatus.FAILED
    assert receipt.reason is not None and "550 5.1.1" in receipt.reason and "User unknown" in receipt.reason


def test_delay_report_changes_nothing_and_success_report_delivers() -> None:
    delayed = parse_email(_dsn("m@hub.test", action="delayed", status="4.4.1"))
    assert delayed.report is not None and delayed.report.kind == "delayed" and delayed.receipts() == []
    delivered = parse_email(_dsn("m@hub.test", action="delivered", status="2.0.0"))
    assert [r.status for r in delivered.receipts()] == [DeliveryStatus.DELIVERED]


def test_read_receipt() -> None:
    raw = (
        b"From: sara@example.com\r\nSubject: Read: Order\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=disposition-notification; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nYour message was displayed.\r\n"
        b"--B\r\nContent-Type: message/disposition-notification\r\n\r\n"
        b"Final-Recipient: rfc822; sara@example.com\r\nOriginal-Message-ID: <hub.1.2.x@hub.test>\r\n"
        b"Disposition: manual-action/MDN-sent-manually; displayed\r\n\r\n--B--\r\n"
    )
    (receipt,) = parse_email(raw).receipts()
    assert receipt.external_id == "hub.1.2.x@hub.test" and receipt.status is DeliveryStatus.READ


def test_non_standard_bounce_with_returned_message() -> None:
    inner = "From: support@hub.test\r\nMessage-ID: <hub.3.4.y@hub.test>\r\nSubject: hi\r\n\r\nbody\r\n"
    raw = (
        "From: MAILER-DAEMON@old.example\r\nSubject: failure notice\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nSorry, I couldn't deliver it: mailbox full.\r\n"
        f"--B\r\nContent-Type: message/rfc822\r\n\r\n{inner}--B--\r\n"
    ).encode()
    parsed = parse_email(raw)
    assert [r.external_id for r in parsed.receipts()] == ["hub.3.4.y@hub.test"]
    assert parsed.receipts()[0].status is DeliveryStatus.FAILED


def test_threading_keys() -> None:
    raw = _mail(
        {
            **BASE,
            "To": "Support <support+42@hub.test>",
            "Cc": "boss@example.com",
            "Subject": "RE: AW: پاسخ: Order late [#17]",
            "In-Reply-To": "<hub.17.99.t@hub.test>",
            "References": "<first@example.com>\r\n <hub.17.99.t@hub.test>",
        },
        b"still late",
    )
    parsed = parse_email(raw)
    assert parsed.in_reply_to == ("hub.17.99.t@hub.test",)
    assert parsed.references == ("first@example.com", "hub.17.99.t@hub.test")
    assert subject_tokens(parsed.subject) == [17]
    assert plus_tokens(parsed.recipients, "support@hub.test") == [42]
    assert plus_tokens(parsed.recipients, "sales@hub.test") == []
    assert is_reply_subject(parsed.subject)
    assert normalize_subject(parsed.subject) == "order late"
    assert normalize_subject("Fwd: ORDER  late") == "order late"
    assert not is_reply_subject("Order late")
    assert msgids("<a@b> junk <c@d> <a@b>") == ["a@b", "c@d"]
    assert msgids("bare@id") == ["bare@id"]


def test_message_without_message_id_gets_a_stable_key() -> None:
    raw = _mail({"From": "sara@example.com", "Subject": "x"}, b"hello")
    assert parse_email(raw).key == parse_email(raw).key
    assert parse_email(raw).key.startswith("sha256:")
    assert parse_email(raw).message_id is None


def test_sender_falls_back_through_headers() -> None:
    assert parse_email(_mail({"Sender": "s@example.com"}, b"x")).sender == "s@example.com"
    assert parse_email(_mail({"From": "undisclosed", "Reply-To": "r@example.com"}, b"x")).sender == "r@example.com"
    assert parse_email(b"From me@example.com Mon Jan  1 00:00:00 2024\nSubject: x\n\nbody\n").sender == "me@example.com"
    nobody = parse_email(_mail({"From": "foo"}, b"x"))
    assert nobody.sender == UNKNOWN_SENDER and nobody.sender_name == "foo"


def test_future_date_is_ignored() -> None:
    parsed = parse_email(_mail({**BASE, "Date": "Mon, 01 Jan 2191 00:00:00 +0000"}, b"x"))
    assert parsed.date is None
    dated = parse_email(_mail({**BASE, "Date": "Mon, 03 Mar 2025 10:12:00 +0330"}, b"x"))
    assert dated.date is not None and dated.date.utcoffset() is not None and dated.date.hour == 6


BOX = Mailbox(
    inbox="email:support",
    address="support@hub.test",
    display_name="پشتیبانی Acme",
    smtp=SmtpServer(host="127.0.0.1", port=25, security="none"),
    plus_token=True,
)


def test_outbound_message_headers_and_parts() -> None:
    out = OutboundMessage(
        message_id=12,
        ticket_id=7,
        channel=Channel.EMAIL,
        inbox="email:support",
        recipient="sara@example.com",
        body="سلام Sara,\n\nyour order <#42> shipped.\nThanks",
        author=Author.AGENT,
        attachments=(Attachment(url="/attachments/k/r.pdf", content_type="application/pdf", filename="رسید.pdf"),),
        extras={
            "email": {
                "subject": "Order late",
                "in_reply_to": ["c2@example.com"],
                "references": ["c1@example.com", "hub.7.10.x@hub.test", "c2@example.com"],
                "recipient_name": "Sara",
            }
        },
    )
    mime = build_message(out, BOX, message_id="hub.7.12.t@hub.test", files=[(out.attachments[0], b"%PDF-1.4")])
    parsed = email.message_from_bytes(mime.as_bytes(), policy=email.policy.default)
    assert parsed["Message-ID"] == "<hub.7.12.t@hub.test>"
    assert parsed["In-Reply-To"] == "<c2@example.com>"
    assert parsed["References"] == "<c1@example.com> <hub.7.10.x@hub.test> <c2@example.com>"
    assert parsed["Subject"] == "Re: Order late [#7]"
    assert str(parsed["From"]) == "پشتیبانی Acme <support@hub.test>"
    assert parsed["Reply-To"].addresses[0].addr_spec == "support+7@hub.test"
    assert parsed["To"].addresses[0].addr_spec == "sara@example.com"
    assert parsed["Auto-Submitted"] is None
    assert parsed.get_content_type() == "multipart/mixed"
    assert isinstance(parsed, EmailMessage)
    alternative = next(parsed.iter_parts())
    assert isinstance(alternative, EmailMessage) and alternative.get_content_type() == "multipart/alternative"
    plain, html = alternative.iter_parts()
    assert isinstance(plain, EmailMessage) and isinstance(html, EmailMessage)
    assert plain.get_content().replace("\r\n", "\n").strip() == out.body
    assert '<p dir="auto">' in html.get_content() and "&lt;#42&gt;" in html.get_content()
    (attachment,) = list(parsed.iter_attachments())
    assert attachment.get_filename() == "رسید.pdf" and attachment.get_content() == b"%PDF-1.4"


def test_bot_messages_are_marked_automatic_and_subjects_are_built_once() -> None:
    out = OutboundMessage(
        message_id=1, ticket_id=3, channel=Channel.EMAIL, inbox="email:support", recipient="s@example.com",
        body="hi", author=Author.BOT,
    )  # fmt: skip
    mime = build_message(out, BOX, message_id="m@hub.test")
    assert mime["Auto-Submitted"] == "auto-replied"
    assert mime["X-Auto-Response-Suppress"] == "All"
    # An automation rule's canned reply is as automatic as the bot's.
    canned = build_message(out.model_copy(update={"author": Author.SYSTEM}), BOX, message_id="m@hub.test")
    assert canned["Auto-Submitted"] == "auto-replied"
    assert canned["X-Auto-Response-Suppress"] == "All"
    # A person's reply is not.
    person = build_message(out.model_copy(update={"author": Author.AGENT}), BOX, message_id="m@hub.test")
    assert person["Auto-Submitted"] is None and person["X-Auto-Response-Suppress"] is None
    assert mime["Subject"] == "Re: Your message [#3]"
    assert reply_subject("Re: Order [#3]", 3, with_token=True) == "Re: Order [#3]"
    assert reply_subject("پاسخ: سفارش", 3, with_token=False) == "پاسخ: سفارش"


async def test_send_refuses_what_cannot_be_sent(tmp_path: Path) -> None:
    channel = EmailChannel([BOX], read_attachment=lambda url: None, id_secret="s")
    base = {
        "message_id": 1, "ticket_id": 3, "channel": Channel.EMAIL, "inbox": "email:support",
        "recipient": "s@example.com", "body": "hi", "author": Author.AGENT,
    }  # fmt: skip
    unknown_box = await channel.send(OutboundMessage(**{**base, "inbox": "email:other"}))
    assert unknown_box.status is DeliveryStatus.FAILED and "email:other" in (unknown_box.reason or "")
    invalid = await channel.send(OutboundMessage(**{**base, "recipient": UNKNOWN_SENDER}))
    assert invalid.status is DeliveryStatus.FAILED and not invalid.retryable
    gone = await channel.send(
        OutboundMessage(**{**base, "attachments": (Attachment(url="/attachments/x/y.pdf", filename="y.pdf"),)})
    )
    assert gone.status is DeliveryStatus.FAILED and "y.pdf" in (gone.reason or "")
    # No server listening: retryable, with a reason naming the server.
    closed = Mailbox(inbox="email:support", address="support@hub.test", display_name=None,
                     smtp=SmtpServer(host="127.0.0.1", port=1, security="none", timeout=2))  # fmt: skip
    down = await EmailChannel([closed], lambda url: None, "s").send(OutboundMessage(**base))
    assert down.status is DeliveryStatus.FAILED and down.retryable and "127.0.0.1:1" in (down.reason or "")


def test_message_ids_are_stable_per_message_and_secret() -> None:
    a = EmailChannel([BOX], lambda url: None, "secret-a")
    b = EmailChannel([BOX], lambda url: None, "secret-b")
    out = OutboundMessage(
        message_id=5, ticket_id=2, channel=Channel.EMAIL, inbox="email:support", recipient="s@example.com",
        body="x", author=Author.AGENT,
    )  # fmt: skip
    assert a.message_id(out, BOX) == a.message_id(out, BOX)
    assert a.message_id(out, BOX) != b.message_id(out, BOX)
    assert a.message_id(out, BOX).endswith("@hub.test")


def test_absurdly_nested_mail_is_cut_short_not_fatal() -> None:
    body = b"Content-Type: text/plain\r\n\r\nbottom\r\n"
    for level in range(60):
        body = (
            f'Content-Type: multipart/mixed; boundary="b{level}"\r\n\r\n--b{level}\r\n'.encode()
            + body
            + f"\r\n--b{level}--\r\n".encode()
        )
    raw = b"From: sara@example.com\r\nSubject: nest\r\nMIME-Version: 1.0\r\n" + body
    parsed = parse_email(raw)
    assert parsed.sender == "sara@example.com" and parsed.body == ""
    assert any("nested deeper" in note for note in parsed.notes)


# --- who a reply goes to ---------------------------------------------------------


def channel_for(server: mailservers.SmtpServer) -> EmailChannel:
    """Two mailboxes of ours (support, the one replying, and sales) sending
    to the local server."""
    smtp = SmtpServer(host="127.0.0.1", port=server.port, security="none", timeout=10)
    sales = Mailbox(inbox="email:sales", address="sales@hub.test", display_name=None, smtp=smtp)
    return EmailChannel([dataclasses.replace(BOX, smtp=smtp), sales], read_attachment=lambda url: None, id_secret="s")


def reply(**thread: Any) -> OutboundMessage:
    """An agent's reply with the thread as :func:`storage.mail.reply_context`
    describes it: Sara wrote from sara@example.com."""
    return OutboundMessage(
        message_id=12, ticket_id=7, channel=Channel.EMAIL, inbox="email:support", recipient="sara@example.com",
        body="On its way", author=Author.AGENT,
        extras={"email": {"subject": "Order late", "recipient_name": "Sara", "to": "sara@example.com", **thread}},
    )  # fmt: skip


def addresses(msg: EmailMessage, header: str) -> list[str]:
    return [a.addr_spec for a in msg[header].addresses] if msg[header] is not None else []


async def test_reply_goes_to_reply_to_and_copies_the_others(smtp: mailservers.SmtpServer) -> None:
    result = await channel_for(smtp).send(
        reply(
            reply_to=["sara.work@example.com"],
            cc=[
                "support@hub.test", "Support+7@hub.test", "boss@example.com", "BOSS@example.com",
                "sara.work@example.com", "sales@hub.test", "ali@example.org",
            ],
        )
    )  # fmt: skip
    assert result.status is DeliveryStatus.SENT and result.reason is None
    ((envelope, received),) = smtp.sink.messages
    assert envelope.mail_from == "support@hub.test"
    assert envelope.rcpt_tos == ["sara.work@example.com", "boss@example.com", "ali@example.org"]
    assert addresses(received, "To") == ["sara.work@example.com"]
    # The contact's name belongs to the address they write from, not to
    # wherever they asked replies to go (a colleague, a list).
    assert received["To"].addresses[0].display_name == ""
    assert addresses(received, "Cc") == ["boss@example.com", "ali@example.org"]
    assert received["Message-ID"] == f"<{result.external_id}>"


@pytest.mark.parametrize("ours", ["support@hub.test", "SUPPORT+7@hub.test", "support+x@hub.test", "sales@hub.test"])
async def test_reply_to_our_own_mailbox_is_ignored(smtp: mailservers.SmtpServer, ours: str) -> None:
    result = await channel_for(smtp).send(reply(reply_to=[ours], cc=["support@hub.test", ours]))
    assert result.status is DeliveryStatus.SENT
    ((envelope, received),) = smtp.sink.messages
    assert envelope.rcpt_tos == ["sara@example.com"]
    assert str(received["To"]) == "Sara <sara@example.com>"
    assert received["Cc"] is None


async def test_reply_without_reply_to_or_copies_is_unchanged(smtp: mailservers.SmtpServer) -> None:
    channel = channel_for(smtp)
    # The thread as reply_context described it before it knew Reply-To and
    # Cc, then as it describes plain mail to our mailbox now.
    before = await channel.send(reply())
    after = await channel.send(reply(reply_to=[], cc=["support@hub.test"]))
    assert before.status is after.status is DeliveryStatus.SENT
    assert before.external_id == after.external_id
    (old_envelope, old), (new_envelope, new) = smtp.sink.messages
    assert old_envelope.rcpt_tos == new_envelope.rcpt_tos == ["sara@example.com"]

    def headers(msg: EmailMessage) -> list[tuple[str, str]]:
        # Date is the sending time and Content-Type carries a random boundary.
        return [(k, str(v)) for k, v in msg.items() if k not in ("Date", "Content-Type")]

    assert headers(new) == headers(old)
    assert str(new["To"]) == "Sara <sara@example.com>" and new["Cc"] is None
    old_text, new_text = old.get_body(("plain",)), new.get_body(("plain",))
    assert old_text is not None and new_text is not None
    assert new_text.get_content() == old_text.get_content() == "On its way\r\n"


async def test_malformed_addresses_are_passed_over_not_fatal(smtp: mailservers.SmtpServer) -> None:
    result = await channel_for(smtp).send(
        reply(
            reply_to=["not an address"],
            # The customer's address is ASCII: an internationalized copy would
            # need SMTPUTF8 for the whole message.
            cc=["bad address@example.com", "x@invalid", "a@b@c", "کاوه@example.com", "ok@example.org"],
        )
    )
    assert result.status is DeliveryStatus.SENT
    ((envelope, received),) = smtp.sink.messages
    assert envelope.rcpt_tos == ["sara@example.com", "ok@example.org"]
    assert addresses(received, "To") == ["sara@example.com"]
    assert addresses(received, "Cc") == ["ok@example.org"]


async def test_only_the_customers_address_decides_whether_it_was_sent(smtp: mailservers.SmtpServer) -> None:
    channel = channel_for(smtp)
    smtp.sink.rcpt_replies["boss@example.com"] = "550 5.1.1 <boss@example.com>: no such user"
    copy_refused = await channel.send(reply(cc=["boss@example.com", "ali@example.org"]))
    assert copy_refused.status is DeliveryStatus.SENT and copy_refused.external_id
    assert "boss@example.com: 550 5.1.1" in (copy_refused.reason or "")
    assert smtp.sink.messages[-1][0].rcpt_tos == ["sara@example.com", "ali@example.org"]

    # The server took the message for the copy only: not sent, as the
    # customer does not have it (aiosmtplib raises only if all are refused).
    smtp.sink.rcpt_replies["sara@example.com"] = "550 5.1.1 <sara@example.com>: no such user"
    customer_refused = await channel.send(reply(cc=["ali@example.org"]))
    assert customer_refused.status is DeliveryStatus.FAILED and not customer_refused.retryable
    assert (customer_refused.reason or "").startswith("550 5.1.1 <sara@example.com>")

    smtp.sink.rcpt_replies["sara@example.com"] = "450 4.2.1 <sara@example.com>: try again later"
    everyone_refused = await channel.send(reply(cc=["boss@example.com"]))
    assert everyone_refused.status is DeliveryStatus.FAILED and everyone_refused.retryable
    assert "450 4.2.1 <sara@example.com>" in (everyone_refused.reason or "")
    assert len(smtp.sink.messages) == 2


def test_reply_addresses_copy_the_rest_of_reply_to_and_no_more_than_the_cap() -> None:
    many = [f"p{i}@example.com" for i in range(MAX_CC + 10)]
    chosen = reply_addresses(
        {"to": "sara@example.com", "reply_to": ["team@example.com", "lead@example.com"], "cc": many},
        "fallback@example.com",
        ["support@hub.test"],
    )
    assert chosen.to == "team@example.com"
    assert chosen.cc == ("lead@example.com", *many[: MAX_CC - 1])
    # Without a thread (a first message on the ticket), the message's recipient.
    assert reply_addresses({}, "sara@example.com", ["support@hub.test"]).to == "sara@example.com"


def test_own_addresses_are_ours_and_their_plus_addresses_only() -> None:
    own = ["support@hub.test", "sales@hub.test"]
    for ours in ("support@hub.test", "Support+12@HUB.test", "sales+x@hub.test"):
        assert is_own_address(ours, own)
    for other in ("xsupport@hub.test", "support@hub.test.example", "support-12@hub.test", "support@sub.hub.test"):
        assert not is_own_address(other, own)
