"""The knowledge base's file formats: YAML and CSV in, entries out, and errors
that say where (entry number, CSV line, entry id) and what is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bots.kb import ANY_LANGUAGE, KbEntry, KbError, dump_yaml, load_file, parse_csv, parse_yaml

YAML = """
- id: shipping-time
  questions:
    - how long does shipping take
    - "  when will my order arrive  "
    - how long does shipping take
  answer:
    en: Orders arrive in 3 to 5 working days.
    fa: سفارش‌ها ظرف ۳ تا ۵ روز کاری می‌رسند.
  tags: [Shipping, delivery]
  team: Support
- id: opening-hours
  questions: what are your opening hours
  answer: Saturday to Wednesday, 9 to 17.
"""


def test_yaml_list_with_answers_per_language_and_one_for_all() -> None:
    shipping, hours = parse_yaml(YAML)
    # Questions are stripped and de-duplicated in order; tags lower-cased.
    assert shipping.questions == ("how long does shipping take", "when will my order arrive")
    assert shipping.tags == ("shipping", "delivery")
    assert shipping.team == "Support"
    assert shipping.answer_in("fa") == "سفارش‌ها ظرف ۳ تا ۵ روز کاری می‌رسند."
    # No Arabic answer: Persian (same script), before the one for all and English.
    assert shipping.answer_in("ar") == "سفارش‌ها ظرف ۳ تا ۵ روز کاری می‌رسند."
    assert hours.questions == ("what are your opening hours",)
    assert hours.answer == {ANY_LANGUAGE: "Saturday to Wednesday, 9 to 17."}
    assert hours.answer_in("fa") == hours.answer_in("en") == "Saturday to Wednesday, 9 to 17."
    assert (hours.tags, hours.team) == ((), None)


def test_yaml_mapping_with_entries_and_a_round_trip() -> None:
    entries = parse_yaml("entries:\n" + "\n".join("  " + line for line in YAML.splitlines()))
    assert [e.id for e in entries] == ["shipping-time", "opening-hours"]
    assert parse_yaml(dump_yaml(entries)) == entries
    # One answer for every language is written back as a plain string.
    assert "answer: Saturday to Wednesday, 9 to 17." in dump_yaml(entries)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("- id: [unclosed", "is not valid YAML"),
        ("id: one\nquestions: [q]\nanswer: a\n", "must be a list of entries"),
        ("- just a string", "entry 1: an entry must be a mapping"),
        ("- {id: a, questions: [q], answer: x}\n- {id: b, answer: x}", "entry 2 (id 'b'): questions: Field required"),
        (
            "- {id: 'has space', questions: [q], answer: x}",
            "entry 1 (id 'has space'): id: Value error, must be letters",
        ),
        ("- {id: a, questions: [], answer: x}", "entry 1 (id 'a'): questions:"),
        ("- {id: a, questions: ['ok', ''], answer: x}", "every question must be a non-empty string"),
        ("- {id: a, questions: [q], answer: {english: x}}", "answer language 'english' must be a language code"),
        ("- {id: a, questions: [q], answer: {en: ''}}", "answer in 'en' must be a non-empty string"),
        ("- {id: a, questions: [q], answer: x, colour: red}", "entry 1 (id 'a'): colour: unknown key"),
        ("- {id: a, questions: [q], answer: x}\n- {id: a, questions: [r], answer: y}", "id 'a' appears twice"),
    ],
)
def test_yaml_errors_say_which_entry_and_what(text: str, needle: str) -> None:
    with pytest.raises(KbError) as caught:
        parse_yaml(text, "kb.yaml")
    assert needle in str(caught.value)
    assert str(caught.value).startswith("kb.yaml")


CSV = """\ufeffid,question,answer_en,answer_fa,tags,team
shipping-time,how long does shipping take,Orders arrive in 3 to 5 working days.,\
سفارش‌ها ظرف ۳ تا ۵ روز می‌رسند.,"shipping, delivery",Support
shipping-time,سفارش من کی می‌رسد,,,,
opening-hours,what are your opening hours,"Saturday to Wednesday, 9 to 17.",,,
shipping-time,when will my order arrive,,,,
"""


def test_csv_rows_with_the_same_id_form_one_entry() -> None:
    shipping, hours = parse_csv(CSV)
    assert shipping.questions == ("how long does shipping take", "سفارش من کی می‌رسد", "when will my order arrive")
    assert shipping.answer == {"en": "Orders arrive in 3 to 5 working days.", "fa": "سفارش‌ها ظرف ۳ تا ۵ روز می‌رسند."}
    assert (shipping.tags, shipping.team) == (("shipping", "delivery"), "Support")
    assert hours.answer == {"en": "Saturday to Wednesday, 9 to 17."}


def test_csv_with_one_answer_column() -> None:
    (entry,) = parse_csv("id,question,answer\nhours,when are you open,9 to 5\nhours,opening hours,\n")
    assert entry.answer == {ANY_LANGUAGE: "9 to 5"}
    assert entry.questions == ("when are you open", "opening hours")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("question,answer\nq,a\n", "kb.csv: missing columns; columns: id, question"),
        ("id,question\na,q\n", "missing columns"),
        ("id,question,answer\na,q,x\n,r,y\n", "kb.csv: line 3: id is empty"),
        (
            "id,question,answer\na,q,x\nb,hours,9 to 5, Monday to Friday\n",
            "kb.csv: line 3: more fields than columns; quote text containing commas",
        ),
        ("id,question,answer\na,q,x\nb,r,\n", "kb.csv: line 3 (id 'b'): answer: Value error, is empty: give one text"),
        ("id,question,answer\na,q,x\nb,,y\n", "kb.csv: line 3 (id 'b'): questions:"),
        ("id,question,answer\na,q,x\nbad id,r,y\n", "kb.csv: line 3 (id 'bad id'): id:"),
        ("id,question,answer_english\na,q,x\n", "kb.csv: line 2 (id 'a'): answer: Value error, answer language"),
    ],
)
def test_csv_errors_give_the_line_and_the_entry(text: str, needle: str) -> None:
    with pytest.raises(KbError) as caught:
        parse_csv(text, "kb.csv")
    assert needle in str(caught.value)


def test_load_file_by_extension(tmp_path: Path) -> None:
    (tmp_path / "kb.yml").write_text(YAML, encoding="utf-8")
    (tmp_path / "kb.csv").write_text(CSV, encoding="utf-8")
    assert [e.id for e in load_file(tmp_path / "kb.yml")] == ["shipping-time", "opening-hours"]
    assert [e.id for e in load_file(tmp_path / "kb.csv")] == ["shipping-time", "opening-hours"]
    (tmp_path / "kb.txt").write_text(YAML, encoding="utf-8")
    with pytest.raises(KbError, match=re.escape("unknown format; use .yaml, .yml, .json or .csv")):
        load_file(tmp_path / "kb.txt")
    with pytest.raises(KbError, match="cannot read"):
        load_file(tmp_path / "missing.yaml")
    (tmp_path / "latin1.yaml").write_bytes("- {id: a, questions: [caf\xe9], answer: x}".encode("latin-1"))
    with pytest.raises(KbError, match="is not UTF-8 text"):
        load_file(tmp_path / "latin1.yaml")


def test_button_title_in_the_customers_script() -> None:
    entry = KbEntry(id="e", questions=("how long does shipping take", "ارسال چند روز طول می‌کشد"), answer="x")
    assert entry.title_in("fa") == "ارسال چند روز طول می‌کشد"
    assert entry.title_in("en") == "how long does shipping take"
    long = KbEntry(id="l", questions=("word " * 40,), answer="x")
    assert len(long.title_in("en")) == 60
    assert long.title_in("en").endswith("…")


# An answer longer than the csv module's field limit (131,072 characters), or,
# as it usually happens, a quote left open that runs to the end of the file.
HUGE = "x" * 131_073
CSV_HUGE_FIELD = f"id,question,answer\na,q,x\nb,r,{HUGE}\nc,s,z\n"
CSV_OPEN_QUOTE = 'id,question,answer\na,q,x\nb,r,"Open all week\n' + "\n".join(["c,s,z"] * 30_000) + "\n"


@pytest.mark.parametrize("text", [CSV_HUGE_FIELD, CSV_OPEN_QUOTE], ids=["huge field", "open quote"])
def test_csv_field_over_the_csv_modules_limit_is_a_kb_error_naming_the_line(text: str) -> None:
    with pytest.raises(KbError) as caught:
        parse_csv(text, "kb.csv")
    assert str(caught.value) == (
        'kb.csv: line 3: a field is longer than 131,072 characters; is a quote (") opened there and never closed?'
    )


def test_crm_hub_faq_import_of_such_a_csv_says_so_without_a_traceback(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hub.cli import main

    (tmp_path / "config.yaml").write_text(f"data_dir: {tmp_path / 'data'}\n", encoding="utf-8")
    (tmp_path / "kb.csv").write_text(CSV_HUGE_FIELD, encoding="utf-8")
    runner = CliRunner(env={"HUB_CONFIG": str(tmp_path / "config.yaml"), "HUB_DATABASE_URL": ""})
    result = runner.invoke(main, ["faq", "import", str(tmp_path / "kb.csv")])
    assert (result.exit_code, type(result.exception)) == (1, SystemExit), result.exception
    assert f"{tmp_path / 'kb.csv'}: line 3: a field is longer than 131,072 characters" in result.output


def test_csv_errors_name_the_line_a_row_starts_on_after_a_multi_line_answer() -> None:
    text = 'id,question,answer\na,q,"First line.\nSecond line.\n\nThird."\nbad id,r,y\n'
    with pytest.raises(KbError, match=r"^kb\.csv: line 6 \(id 'bad id'\): id: "):
        parse_csv(text, "kb.csv")
    first, second = parse_csv(text.replace("bad id", "b"), "kb.csv")
    assert (first.answer, second.id) == ({ANY_LANGUAGE: "First line.\nSecond line.\n\nThird."}, "b")
