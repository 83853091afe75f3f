"""The reply splitter: each case is what a real mail client sends. ``new`` must
be exactly what the customer wrote; nothing they wrote may end up hidden."""

from __future__ import annotations

import pytest

from channels.email_quotes import split_reply

CASES: list[tuple[str, str, str, str, str]] = [
    # (name, text, new, quoted starts with, signature)
    (
        "gmail plain text",
        "Thanks, that fixed it.\nOne more question: can I pay by card?\n\n"
        "On Mon, 3 Mar 2025 at 10:12, Support <support@example.com> wrote:\n> Hi Sara,\n> please try again.\n",
        "Thanks, that fixed it.\nOne more question: can I pay by card?",
        "On Mon, 3 Mar 2025 at 10:12",
        "",
    ),
    (
        "gmail attribution wrapped over two lines",
        "Yes please.\n\nOn Mon, 3 Mar 2025 at 10:12, Acme Customer Support Team <support@example.com>\n"
        "wrote:\n\n> Hi\n",
        "Yes please.",
        "On Mon, 3 Mar 2025",
        "",
    ),
    (
        "gmail html converted to text (history not '>' quoted)",
        "Sounds good.\n\nOn Tue, Mar 4, 2025 at 9:00 AM Support <support@example.com> wrote:\n"
        "Hi Sara,\nplease try again.\n",
        "Sounds good.",
        "On Tue, Mar 4, 2025",
        "",
    ),
    (
        "outlook with underscores and header block",
        "Please cancel my order.\n\n________________________________\nFrom: Support <support@example.com>\n"
        "Sent: Monday, March 3, 2025 10:12 AM\nTo: John Smith <john@acme.com>\nSubject: RE: Order [#12]\n\nHi John,\n",
        "Please cancel my order.",
        "________",
        "",
    ),
    (
        "outlook header block without separator (bold fields)",
        "Got it, thanks\n\n*From:* Support <support@example.com>\n*Sent:* Monday, March 3, 2025\n*To:* me\n\nHello\n",
        "Got it, thanks",
        "*From:*",
        "",
    ),
    (
        "old outlook original message",
        "ok\n\n-----Original Message-----\nFrom: Support [mailto:support@example.com]\nSent: Monday\nTo: x\n\nhello\n",
        "ok",
        "-----Original Message-----",
        "",
    ),
    (
        "apple mail with mobile footer",
        "Sounds good.\n\nSent from my iPhone\n\n> On 3 Mar 2025, at 10:12, Support <support@example.com> wrote:\n"
        "> \n> Hi\n",
        "Sounds good.",
        "> On 3 Mar 2025",
        "Sent from my iPhone",
    ),
    (
        "persian gmail attribution with bidi marks",
        "سلام، ممنون از پاسخ شما.\nسفارش من هنوز نرسیده.\n\n"
        "در تاریخ دوشنبه ۳ مارس ۲۰۲۵، ساعت ۱۰:۱۲ \u202aSupport\u202c\u200f "
        "<\u202asupport@example.com\u202c\u200f> نوشت:\n"
        "> سلام\n",
        "سلام، ممنون از پاسخ شما.\nسفارش من هنوز نرسیده.",
        "در تاریخ",
        "",
    ),
    (
        "persian outlook header block",
        "لطفا سفارش را لغو کنید\n\nاز: پشتیبانی <support@example.com>\n"
        "ارسال شده: دوشنبه ۳ مارس ۲۰۲۵\nبه: من\nموضوع: سفارش\n\nسلام\n",
        "لطفا سفارش را لغو کنید",
        "از: پشتیبانی",
        "",
    ),
    (
        "persian mobile footer",
        "باشه ممنون\n\nارسال شده از iPhone من\n",
        "باشه ممنون",
        "",
        "ارسال شده از iPhone من",
    ),
    (
        "german thunderbird",
        "Danke!\n\nAm 03.03.2025 um 10:12 schrieb Support:\n> Hallo\n",
        "Danke!",
        "Am 03.03.2025",
        "",
    ),
    (
        "french",
        "Merci\n\nLe lun. 3 mars 2025 à 10:12, Support <support@example.com> a écrit :\n> Bonjour\n",
        "Merci",
        "Le lun. 3 mars",
        "",
    ),
    (
        "standard signature delimiter",
        "The app crashes on start.\nThanks, but the last update did not help either.\n"
        "And this line matters.\n\n-- \nSara\nACME\n",
        "The app crashes on start.\nThanks, but the last update did not help either.\nAnd this line matters.",
        "",
        "-- \nSara\nACME",
    ),
    (
        "bottom posting keeps everything",
        "On Mon, 3 Mar 2025 at 10:12, Support <support@example.com> wrote:\n> Which plan?\n\nThe yearly one.\n",
        "On Mon, 3 Mar 2025 at 10:12, Support <support@example.com> wrote:\n> Which plan?\n\nThe yearly one.",
        "",
        "",
    ),
    (
        "interleaved answers keep everything",
        "Hi,\n\n> Which plan?\nYearly.\n> Which card?\nVisa.\n",
        "Hi,\n\n> Which plan?\nYearly.\n> Which card?\nVisa.",
        "",
        "",
    ),
    (
        "a customer's own 'wrote:' is not an attribution",
        "On Monday I wrote:\nthe order is late\n",
        "On Monday I wrote:\nthe order is late",
        "",
        "",
    ),
    (
        "forwarded messages are content, not history",
        "Please see below.\n\n---------- Forwarded message ---------\n"
        "From: Shop <shop@example.com>\nDate: Mon, 3 Mar 2025\n"
        "Subject: Your order\n\nOrder 123 shipped.\n",
        "Please see below.\n\n---------- Forwarded message ---------\n"
        "From: Shop <shop@example.com>\nDate: Mon, 3 Mar 2025\n"
        "Subject: Your order\n\nOrder 123 shipped.",
        "",
        "",
    ),
    (
        "indentation is kept",
        "Here is my config:\n    indent: 4\n    x: y\n",
        "Here is my config:\n    indent: 4\n    x: y",
        "",
        "",
    ),
    (
        "outlook header block with the sender's name only",
        "Fine by me.\n\nFrom: John Smith\nSent: Monday, March 3, 2025 10:12 AM\nTo: Sara\n"
        "Subject: RE: Order\n\nHi Sara,\n",
        "Fine by me.",
        "From: John Smith",
        "",
    ),
    (
        "persian outlook block with persian digits and no address",
        "قبول است\n\nاز: پشتیبانی\nارسال شده: دوشنبه، ۳ مارس ۲۰۲۵ ۱۰:۱۲\nبه: سارا\nموضوع: سفارش\n\nسلام\n",
        "قبول است",
        "از: پشتیبانی",
        "",
    ),
    (
        "a customer's own from/to/date is not a header block",
        "Hi, please change my booking:\nFrom: Tehran\nTo: Istanbul\nDate: 12 May 2025\nPassengers: 2\n\nThanks, Sara\n",
        "Hi, please change my booking:\nFrom: Tehran\nTo: Istanbul\nDate: 12 May 2025\nPassengers: 2\n\nThanks, Sara",
        "",
        "",
    ),
    (
        "a customer's own persian from/to/date is not a header block",
        "سلام\nلطفا بلیط را تغییر دهید:\nاز: تهران\nبه: استانبول\nتاریخ: ۱۲ اردیبهشت ۱۴۰۴\n\nممنون\n",
        "سلام\nلطفا بلیط را تغییر دهید:\nاز: تهران\nبه: استانبول\nتاریخ: ۱۲ اردیبهشت ۱۴۰۴\n\nممنون",
        "",
        "",
    ),
    (
        "a customer's own flight with a time of day is not a header block",
        "Hello, please change my booking to:\n\nFrom: Tehran (IKA)\nTo: Istanbul (IST)\nDate: 2025-05-12 10:30\n\n"
        "and add one more passenger. Thanks!\n",
        "Hello, please change my booking to:\n\nFrom: Tehran (IKA)\nTo: Istanbul (IST)\nDate: 2025-05-12 10:30\n\n"
        "and add one more passenger. Thanks!",
        "",
        "",
    ),
    (
        "a customer's own persian flight with a time of day is not a header block",
        "سلام، لطفا بلیت من را تغییر دهید:\n\nاز: تهران\nبه: استانبول\nتاریخ: ۱۴۰۴/۰۲/۲۲ ساعت ۱۰:۳۰\n\n"
        "یک مسافر هم اضافه کنید.\n",
        "سلام، لطفا بلیت من را تغییر دهید:\n\nاز: تهران\nبه: استانبول\nتاریخ: ۱۴۰۴/۰۲/۲۲ ساعت ۱۰:۳۰\n\n"
        "یک مسافر هم اضافه کنید.",
        "",
        "",
    ),
    (
        "a customer's own bank transfer with a subject is not a header block",
        "I sent the money yesterday:\nFrom: IBAN DE12 3456\nTo: ACME GmbH\nDate: 12.05.2025 10:30\n"
        "Subject: invoice 4411\n\nPlease confirm you received it.\n",
        "I sent the money yesterday:\nFrom: IBAN DE12 3456\nTo: ACME GmbH\nDate: 12.05.2025 10:30\n"
        "Subject: invoice 4411\n\nPlease confirm you received it.",
        "",
        "",
    ),
    (
        "a customer's own dated persian 'wrote:' sentence is their words",
        "سلام\nدر تاریخ ۱۴۰۳/۰۲/۱۲ ساعت ۱۰:۳۰ همکار شما تلفنی گفت و نوشت:\nسفارش فردا می‌رسد\nولی هنوز نرسیده است.\n",
        "سلام\nدر تاریخ ۱۴۰۳/۰۲/۱۲ ساعت ۱۰:۳۰ همکار شما تلفنی گفت و نوشت:\nسفارش فردا می‌رسد\nولی هنوز نرسیده است.",
        "",
        "",
    ),
    (
        "an address-less header block below a line of underscores is still history",
        "Fine.\n\nOn 3 May the team wrote:\n\n________________________________\nFrom: John Smith\n"
        "Date: 3 May 2025\nTo: Sara\nSubject: RE: Order\n\nHi Sara,\n",
        "Fine.",
        "On 3 May the team wrote:",
        "",
    ),
    (
        "from and one more field is not a header block",
        "Shipping details\nFrom: sara@example.com\nTo: the warehouse\n\nPlease hurry.\n",
        "Shipping details\nFrom: sara@example.com\nTo: the warehouse\n\nPlease hurry.",
        "",
        "",
    ),
    (
        "a bare '--' is a divider, not a signature",
        "Hello\n--\nI forgot: order 5512 too\n",
        "Hello\n--\nI forgot: order 5512 too",
        "",
        "",
    ),
    (
        "a customer's own 'On <date> ... said:' is their words",
        'Hello,\n\nOn 12 May your courier said:\n"it will arrive Friday". It never did.\n'
        "I want a refund for order 5531.\n\nSara\n",
        'Hello,\n\nOn 12 May your courier said:\n"it will arrive Friday". It never did.\n'
        "I want a refund for order 5531.\n\nSara",
        "",
        "",
    ),
    (
        "a time of day alone is not a mail client's attribution",
        "Hello,\nOn Monday 12:30 my husband wrote:\nwe need two more boxes. Please add them to order 77.\n",
        "Hello,\nOn Monday 12:30 my husband wrote:\nwe need two more boxes. Please add them to order 77.",
        "",
        "",
    ),
    (
        "a customer's own persian attribution-like sentence",
        "سلام\nدر تاریخ ۱۲ اردیبهشت پیک شما نوشت:\nفردا می‌رسد. نرسید.\nلطفا پول را برگردانید.\n",
        "سلام\nدر تاریخ ۱۲ اردیبهشت پیک شما نوشت:\nفردا می‌رسد. نرسید.\nلطفا پول را برگردانید.",
        "",
        "",
    ),
    (
        "an attribution without address or time, above quoted history",
        "Yes, the blue one.\n\nOn 12 May 2025 Support wrote:\n\n> Which colour?\n",
        "Yes, the blue one.",
        "On 12 May 2025 Support wrote:",
        "",
    ),
    (
        "thunderbird html converted to text: name, date and time",
        "Thanks!\n\nOn 3/3/25 10:12 AM, John Smith wrote:\nHi Sara,\nplease try again.\n",
        "Thanks!",
        "On 3/3/25 10:12 AM",
        "",
    ),
    (
        "an attribution above an html-converted outlook header block",
        "Agreed.\n\nOn 12 May 2025 the support team wrote:\nFrom: Support <support@example.com>\n"
        "Sent: Monday, March 3, 2025 10:12 AM\nTo: Sara\nSubject: Order\n\nHi\n",
        "Agreed.",
        "On 12 May 2025 the support team wrote:",
        "",
    ),
    (
        "persian attribution with date and time but no address",
        "ممنون\n\nدر تاریخ ۳ مارس ۲۰۲۵، ساعت ۱۰:۱۲ پشتیبانی نوشت:\nسلام سارا\n",
        "ممنون",
        "در تاریخ ۳ مارس ۲۰۲۵",
        "",
    ),
    (
        "trailing quote without attribution",
        "yes\n\n> do you want it?\n>\n> thanks\n",
        "yes",
        "> do you want it?",
        "",
    ),
]


@pytest.mark.parametrize(("name", "text", "new", "quoted", "signature"), CASES, ids=[c[0] for c in CASES])
def test_split_reply(name: str, text: str, new: str, quoted: str, signature: str) -> None:
    parts = split_reply(text)
    assert parts.new == new
    if quoted:
        assert parts.quoted.startswith(quoted), parts.quoted
    else:
        assert parts.quoted == ""
    assert parts.signature == signature


def test_all_quote_is_shown_whole() -> None:
    text = "> only a quote\n> nothing new\n"
    parts = split_reply(text)
    assert parts.new == "> only a quote\n> nothing new"
    assert parts.quoted == "" and parts.signature == ""


def test_crlf_and_empty_text() -> None:
    assert split_reply("hi\r\n\r\n> old\r\n").new == "hi"
    assert split_reply("").new == ""


def _count_line_reads(monkeypatch: pytest.MonkeyPatch, budget: int) -> list[int]:
    """Counts how often the splitter looks at a line, failing as soon as it
    looks more than ``budget`` times, so that a quadratic scan fails fast
    instead of hanging the test."""
    from channels import email_quotes

    real = email_quotes._plain
    reads = [0]

    def counting(line: str) -> str:
        reads[0] += 1
        assert reads[0] <= budget, f"more than {budget} line reads"
        return real(line)

    monkeypatch.setattr(email_quotes, "_plain", counting)
    return reads


# Every line looks like the start of an Outlook header block or an
# attribution, and the customer's words resume after the final quote, so
# nothing may be cut.
_ADVERSARIAL = [
    ("outlook headers", "From: a\nTo: b\n", 2),
    ("full outlook blocks", "From: a@b.com\nSent: 3 Mar 2025 10:12\nTo: b\nSubject: s\n", 4),
    ("attributions", "On 3 Mar 2025, a@b.com wrote:\n", 1),
    ("separators", "________________________\n", 1),
]


@pytest.mark.parametrize(("name", "unit", "lines"), _ADVERSARIAL, ids=[a[0] for a in _ADVERSARIAL])
def test_adversarial_megabyte_body_is_split_in_linear_work(
    monkeypatch: pytest.MonkeyPatch, name: str, unit: str, lines: int
) -> None:
    repeat = 1_000_000 // len(unit) + 1
    text = unit * repeat + "> q\nx"
    total_lines = repeat * lines + 2
    reads = _count_line_reads(monkeypatch, budget=20 * total_lines)
    parts = split_reply(text)
    assert parts.new == text.rstrip()
    assert parts.quoted == "" and parts.signature == ""
    assert reads[0] <= 20 * total_lines


def test_work_doubles_when_the_adversarial_body_doubles(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _count_line_reads(monkeypatch, budget=10**9)
    counts = []
    for n in (2000, 4000):
        reads[0] = 0
        split_reply("From: a\nTo: b\n" * n + "> q\nx")
        counts.append(reads[0])
    # Linear work: twice the lines, about twice the reads (a quadratic scan
    # gives four times).
    assert counts[1] <= 2.2 * counts[0], counts
