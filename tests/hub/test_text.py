from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.text import (
    InvalidPhoneNumber,
    detect_language,
    is_vip,
    keyword,
    normalize,
    parse_phone,
    phone_region,
    sms_encoding,
    sms_segments,
    split_text,
    to_ascii_digits,
    utf16_len,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("۰۹۱۲ ۳۴۵ ۶۷۸۹", "0912 345 6789"),
        ("٠١٢٣٤٥٦٧٨٩", "0123456789"),
        ("abc 123", "abc 123"),
    ],
)
def test_digits(raw: str, expected: str) -> None:
    assert to_ascii_digits(raw) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("كيف", "کیف"),  # Arabic kaf and yeh typed on an Arabic keyboard
        ("مدرسة", "مدرسه"),
        ("أحمد", "احمد"),
        ("مُحَمَّد", "محمد"),  # diacritics
        ("سلامـــ", "سلام"),  # tatweel
        ("می‌روم", "می روم"),  # ZWNJ
        ("Hello  World", "hello world"),
        ("سفارش ۱۲", "سفارش 12"),
        ("\u200fسلام\u200e", "سلام"),  # bidi marks
    ],
)
def test_normalize_makes_variants_equal(a: str, b: str) -> None:
    assert normalize(a) == normalize(b)


def test_zwnj_drop_joins_the_word() -> None:
    assert normalize("می‌روم", zwnj="drop") == normalize("میروم")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("  STOP ", "stop"), ("Stop!", "stop"), ("«لغو»", "لغو"), ("لغو.", "لغو"), ("توقف", "توقف")],
)
def test_keyword(text: str, expected: str) -> None:
    assert keyword(text) == expected


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("سلام، سفارش من کی می‌رسد؟", "fa"),
        ("مرحبا، كيف حالك؟ أريد المساعدة", "ar"),
        ("Hi, where is my order?", "en"),
        ("سلام hi", "fa"),
        # Persian typed on an Arabic keyboard (ي, ك) is still Persian.
        ("سلام، مي‌خواهم قيمت را بدانم", "fa"),
        ("الان كجا هستيد", "fa"),
        ("ميخوام با يك كارشناس صحبت كنم", "fa"),
        ("رمز عبورم را فراموش كردم", "fa"),
        # Arabic without any of ة ى أ إ is still Arabic.
        ("متى يصل طلبي", "ar"),
        ("من فضلك ساعدني", "ar"),
        ("هل يمكنني الحصول على فاتورة", "ar"),
        ("شكرا جزيلا", "ar"),
        ("12345 !!", None),
        ("", None),
    ],
)
def test_detect_language(text: str, lang: str | None) -> None:
    assert detect_language(text) == lang


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("+1 (415) 555-0100", None, "+14155550100"),
        ("۰۹۱۲۳۴۵۶۷۸۹", "IR", "+989123456789"),
        ("٠٩١٢٣٤٥٦٧٨٩", "ir", "+989123456789"),
        ("00989123456789", None, "+989123456789"),
        ("(415) 555-0100", "US", "+14155550100"),
        ("+۹۸ ۹۱۲ ۳۴۵ ۶۷۸۹", None, "+989123456789"),
    ],
)
def test_parse_phone(raw: str, region: str | None, e164: str) -> None:
    assert parse_phone(raw, region) == e164


@pytest.mark.parametrize(
    ("raw", "region", "why"),
    [
        ("", "US", "empty"),
        ("hello", "US", "not a phone number"),
        ("4155550100", None, "no country code"),
        ("+1 415", None, "wrong number of digits"),
        # Possible only as a local number (no area code): not dialable as E.164.
        ("+1 555 0100", None, "wrong number of digits"),
        ("555 0100", "US", "wrong number of digits"),
        ("+44 1234", None, "wrong number of digits"),
    ],
)
def test_parse_phone_rejects(raw: str, region: str | None, why: str) -> None:
    with pytest.raises(InvalidPhoneNumber, match=why):
        parse_phone(raw, region)


def test_strict_phone_checks_the_numbering_plan() -> None:
    assert parse_phone("+15550001111") == "+15550001111"  # a fictional 555 number: possible
    with pytest.raises(InvalidPhoneNumber, match="numbering plan"):
        parse_phone("+15550001111", strict=True)
    assert phone_region("+989123456789") == "IR"


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("", "GSM-7", 0, 1),
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("€" * 80, "GSM-7", 160, 1),  # extension characters take two septets
        ("€" * 81, "GSM-7", 162, 2),
        # 152 plain + one extension char does not fit in the first part's 153.
        ("a" * 152 + "{" + "a" * 10, "GSM-7", 164, 2),
        ("سلام" * 17 + "سل", "UCS-2", 70, 1),
        ("س" * 71, "UCS-2", 71, 2),
        ("س" * 134, "UCS-2", 134, 2),
        ("س" * 135, "UCS-2", 135, 3),
        ("😀" * 35, "UCS-2", 70, 1),  # surrogate pairs
        ("a" * 66 + "😀" + "a", "UCS-2", 69, 1),
        ("a" * 66 + "😀" + "a" * 5, "UCS-2", 73, 2),  # the pair is not split
        ("hello ç", "UCS-2", 7, 1),  # ç is not in GSM-7 (only Ç is)
    ],
)
def test_sms_segments(text: str, encoding: str, units: int, segments: int) -> None:
    s = sms_segments(text)
    assert (s.encoding, s.units, s.segments) == (encoding, units, segments)


def test_sms_encoding_of_persian_is_ucs2() -> None:
    assert sms_encoding("سلام") == "UCS-2"
    assert sms_encoding("Hello [world] ~ €5") == "GSM-7"


def test_split_text_prefers_sentence_breaks() -> None:
    text = "First sentence here. Second sentence is a bit longer. Third."
    parts = split_text(text, 30)
    assert parts == ["First sentence here.", "Second sentence is a bit", "longer. Third."]


def test_split_text_short_and_long_words() -> None:
    assert split_text("short", 10) == ["short"]
    assert split_text("", 10) == [""]
    assert split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


def test_split_text_by_utf16() -> None:
    parts = split_text("😀" * 10, 4, measure=utf16_len)
    assert parts == ["😀😀"] * 5


@pytest.mark.parametrize(
    "cluster",
    [
        "👍🏽",  # skin tone
        "👨\u200d👩\u200d👧",  # a family: ZWJ sequence
        "❤️",  # variation selector
        "🇮🇷",  # a flag: two regional indicators
        "1️⃣",  # keycap
        "é",  # e + combining acute
    ],
)
def test_split_text_never_cuts_inside_a_character(cluster: str) -> None:
    text = "a" + cluster * 40
    for limit in range(2 * utf16_len(cluster), 60):
        parts = split_text(text, limit, measure=utf16_len)
        assert all(utf16_len(p) <= limit for p in parts)
        assert "".join(parts) == text
        assert all(p.lstrip("a").replace(cluster, "") == "" for p in parts), (limit, parts)


def test_split_text_cuts_a_character_longer_than_a_part() -> None:
    assert split_text("👨\u200d👩\u200d👧", 3, measure=utf16_len) == ["👨\u200d", "👩\u200d", "👧"]


@given(st.text(min_size=0, max_size=400), st.integers(min_value=1, max_value=60))
def test_split_text_loses_only_whitespace(text: str, limit: int) -> None:
    parts = split_text(text, limit)
    assert all(len(p) <= limit for p in parts)
    assert "".join("".join(parts).split()) == "".join(text.split())


@given(st.text(max_size=500))
def test_segments_are_enough_for_the_units(text: str) -> None:
    s = sms_segments(text)
    assert s.segments >= 1
    assert s.units <= max(s.segments * s.per_segment, s.per_segment)


@pytest.mark.parametrize(
    ("attributes", "tags", "tag", "vip"),
    [
        ({"vip": True}, [], "vip", True),
        # As a CSV column or a form leaves it.
        ({"vip": "yes"}, [], "vip", True),
        ({"vip": " بله "}, [], "vip", True),
        ({"vip": 1}, [], "vip", True),
        ({"vip": "no"}, [], "vip", False),
        ({"vip": False}, [], "vip", False),
        ({"vip": 2}, [], "vip", False),
        ({}, ["VIP"], "vip", True),
        ({}, [" Gold "], "gold", True),
        ({}, ["vip"], "gold", False),
        ({}, [], "vip", False),
    ],
)
def test_is_vip(attributes: dict[str, object], tags: list[str], tag: str, vip: bool) -> None:
    assert is_vip(attributes, tags, tag) is vip
