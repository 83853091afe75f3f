"""Languages as customers' data has them ("fa-IR", "Persian", "english-us")
are reduced to a code: the opt-out line is the recipient's, and what is
stored fits its column on PostgreSQL (a recipient's language is VARCHAR(8)).
A contact's attribute that names no language is no language at all: it never
fails the segment it is in."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from hub.campaigns import actions as ca
from hub.campaigns.audience import SegmentFilter, parse_csv
from hub.campaigns.templates import compile_template, language_code, message_for, variables
from hub.errors import ValidationFailed
from storage.db import Database
from storage.models import CampaignRecipient, Contact, Identity
from tests.hub.campaigns.helpers import csv_campaign, promo_config, seed_contacts, twilio_service, us_numbers

OPT_OUT = {"en": "Reply STOP to opt out.", "fa": "برای لغو اشتراک «لغو» را بفرستید."}


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("fa", "fa"),
        ("FA", "fa"),
        ("fa-IR", "fa"),
        ("fa_IR", "fa"),
        ("Persian", "fa"),
        ("Farsi", "fa"),
        ("فارسی", "fa"),
        ("فارسي", "fa"),  # typed on an Arabic keyboard
        ("English", "en"),
        ("english-us", "en"),
        ("English (US)", "en"),
        ("en-US", "en"),
        ("eng", "en"),
        ("Arabic", "ar"),
        ("العربية", "ar"),
        ("portuguese", "pt"),
        ("pt_BR", "pt"),
        ("zh-Hant-TW", "zh"),
        ("iw", "he"),  # withdrawn, still written by Java
        ("fil", "fil"),  # no two-letter code
        # Names no language: unknown.
        ("portugues", None),
        ("IR", None),  # a country
        ("no idea", None),
        ("x-klingon", None),
        ("", None),
        ("  ", None),
        (None, None),
        (7, None),
        (["fa"], None),
    ],
)
def test_language_code(value: object, code: str | None) -> None:
    assert language_code(value) == code


def _message(language: str | None, template_language: str | None = None, texts: dict[str, str] = OPT_OUT) -> str:
    values = variables(name="Ali", phone="+989121234567", attributes={}, tags=[], stage=None)
    msg = message_for(
        compile_template("Sale {{ first_name }}"),
        values,
        language=language,
        template_language=template_language,
        opt_out_texts=texts,
    )
    assert msg.language == (language_code(language) or language_code(template_language) or "en")
    return msg.body.splitlines()[-1]


def test_the_opt_out_line_is_the_recipients_however_their_language_is_written() -> None:
    assert _message("fa-IR") == OPT_OUT["fa"]
    assert _message("Persian") == OPT_OUT["fa"]
    assert _message("english-us") == OPT_OUT["en"]
    # The template's language, written as a tag, when the recipient's is unknown.
    assert _message("klingon-ish", template_language="fa-IR") == OPT_OUT["fa"]
    # Opt-out lines configured under a longer tag or another case.
    assert _message("fa", texts={"en": OPT_OUT["en"], "FA-ir": OPT_OUT["fa"]}) == OPT_OUT["fa"]


def test_templates_see_the_code() -> None:
    persian = variables(name="Ali", phone="+1", attributes={"language": "Persian"}, tags=[], stage=None)
    unknown = variables(name="Ali", phone="+1", attributes={"language": "english-usa-uk"}, tags=[], stage=None)
    template = compile_template("{{ 'سلام' if contact.language == 'fa' else 'Hi' }} {{ contact.language or '?' }}")
    assert template.render(persian) == "سلام fa"
    assert template.render(unknown) == "Hi en"
    odd = variables(name="Ali", phone="+1", attributes={"language": "gibberish words"}, tags=[], stage=None)
    assert template.render(odd) == "Hi ?"


async def _recipients(db: Database, campaign_id: int) -> dict[str, tuple[str, str | None, str]]:
    async with db.read() as s:
        c = CampaignRecipient
        rows = await s.execute(select(c.phone, c.status, c.language, c.body).where(c.campaign_id == campaign_id))
        return {r.phone: (r.status, r.language, r.body) for r in rows.all()}


async def test_segment_with_languages_written_any_way(tmp_path: Path, db: Database) -> None:
    """Contacts whose language attribute is a word, a long tag or no
    language at all: the campaign is created (it was a 500 on PostgreSQL
    once one such contact was in the segment) and each gets the right line."""
    config = promo_config(tmp_path)
    twilio = twilio_service(config, db)
    languages = ["english-us", "Persian", "fa-IR", "portuguese", "not a language at all", "x" * 40]
    phones = us_numbers(len(languages))
    for phone, language in zip(phones, languages, strict=True):
        await seed_contacts(db, [phone], attributes={"language": language})
    try:
        async with db.write() as s:
            spec = ca.CampaignSpec(name="t", sender="promo", template="Sale {{ first_name }}", segment=SegmentFilter())
            campaign = await ca.do_create_campaign(s, twilio, config.campaigns, spec)
    finally:
        await twilio.sms.close()
    rows = await _recipients(db, campaign.id)
    assert {phone: (status, lang) for phone, (status, lang, _) in rows.items()} == {
        phones[0]: ("pending", "en"),
        phones[1]: ("pending", "fa"),
        phones[2]: ("pending", "fa"),
        phones[3]: ("pending", "pt"),
        # Unknown: the message's own language (English text).
        phones[4]: ("pending", "en"),
        phones[5]: ("pending", "en"),
    }
    assert rows[phones[1]][2].endswith(OPT_OUT["fa"]) and rows[phones[2]][2].endswith(OPT_OUT["fa"])
    assert rows[phones[0]][2].endswith(OPT_OUT["en"])


def test_a_segment_on_language_matches_it_written_any_way() -> None:
    persian = SegmentFilter(attributes={"language": "Persian"})
    for written in ("fa", "FA", "fa-IR", "فارسی", "Farsi"):
        assert persian.matches([], {"language": written}), written
    for other in ("en", "not a language", None, ""):
        assert not persian.matches([], {"language": other}), other
    assert not persian.matches([], {})
    assert SegmentFilter(attributes={"language": "fa"}).matches([], {"language": "Persian"})
    unset = SegmentFilter(attributes={"language": None})  # null: unset, as for any attribute
    assert unset.matches([], {}) and not unset.matches([], {"language": "fa"})
    with pytest.raises(ValueError, match="'Klingon' is not a language code or name"):
        SegmentFilter(attributes={"language": "Klingon"})


async def test_csv_languages_are_stored_as_codes(tmp_path: Path, db: Database) -> None:
    phones = us_numbers(5)
    parsed = parse_csv(
        "phone,name,language,consent\n"
        f"{phones[0]},Ali,Persian,yes\n"
        f"{phones[1]},Ana,portuguese,yes\n"  # a 500 on PostgreSQL: too long for the recipient's column
        f"{phones[2]},Sam,english-us,yes\n"
        f"{phones[3]},Reza,fa-IR,yes\n"
        f"{phones[4]},Bo,portugues,yes\n",  # line 6: names no language
        "US",
    )
    assert parsed.invalid == [(6, "language 'portugues' is not a language code or name (en, fa, fa-IR, Persian)")]
    campaign_id, summary = await csv_campaign(tmp_path, db, parsed, template="سلام {{ first_name }}")
    assert summary["recipients"] == 4 and summary["invalid_rows"] == [{"line": 6, "error": parsed.invalid[0][1]}]
    rows = await _recipients(db, campaign_id)
    assert {phone: lang for phone, (_, lang, _) in rows.items()} == {
        phones[0]: "fa",
        phones[1]: "pt",
        phones[2]: "en",
        phones[3]: "fa",
    }
    assert rows[phones[3]][2] == "سلام Reza\n" + OPT_OUT["fa"]
    assert rows[phones[2]][2] == "سلام Sam\n" + OPT_OUT["en"]
    async with db.read() as s:
        found = await s.execute(select(Identity.address, Contact.attributes).join(Contact))
        stored = {address: attributes for address, attributes in found.all()}
    assert stored[phones[0]]["language"] == "fa" and stored[phones[1]]["language"] == "pt"


async def test_campaign_language_is_a_code(tmp_path: Path, db: Database) -> None:
    config = promo_config(tmp_path)
    twilio = twilio_service(config, db)
    try:
        async with db.write() as s:
            spec = ca.CampaignSpec(name="t", sender="promo", template="Hi", language="Portuguese (Brazil)")
            assert (await ca.do_create_campaign(s, twilio, config.campaigns, spec)).language == "pt"
        async with db.write() as s:
            spec = ca.CampaignSpec(name="t", sender="promo", template="Hi", language="klingonese")
            with pytest.raises(ValidationFailed, match="language 'klingonese' is not a language code or name"):
                await ca.do_create_campaign(s, twilio, config.campaigns, spec)
    finally:
        await twilio.sms.close()
