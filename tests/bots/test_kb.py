"""The knowledge base's file formats: YAML and CSV in, entries out, and errors
that say where (entry number, CSV line, entry id) and what is wrong."""

from __future__ import annotations

import re
import time
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
        ("- {id: a, questions: [q], answer: {english: x}}", "answer language 'english' is not one the bot picks"),
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
        ("id,question,answer_english\na,q,x\n", "kb.csv: line 1: column 'answer_english': answer language 'english'"),
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


def _entry(**fields: str) -> str:
    """One YAML entry (flow style) with ``fields`` added or replaced."""
    fields = {"id": "a", "questions": "[q]", "answer": "x", **fields}
    return "- {" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}"


TAGS_RULE = "tags must be strings of at most 64 characters, at most 50 per entry"


@pytest.mark.parametrize(
    ("tags", "needle"),
    [
        ("[[1, 2]]", f"entry 1 (id 'a'): tags: Value error, tag 1 is a list; {TAGS_RULE}"),
        ("[ok, {k: v}]", f"tag 2 is a mapping; {TAGS_RULE}"),
        ("[2024]", f"tag 1 is 2024; {TAGS_RULE}"),
        ("[true]", f"tag 1 is True; {TAGS_RULE}"),
        ("[~]", f"tag 1 is None; {TAGS_RULE}"),
        ("{pricing: 1}", f"tags: Value error, is a mapping; {TAGS_RULE}"),
        ("7", f"tags: Value error, is 7; {TAGS_RULE}"),
        ("[" + "x" * 65 + "]", f"is 65 characters long; {TAGS_RULE}"),
        ("[" + ", ".join(f"t{n}" for n in range(51)) + "]", f"tags: Value error, 51 tags; {TAGS_RULE}"),
    ],
    ids=["nested list", "mapping in list", "number", "boolean", "null", "mapping", "scalar", "too long", "too many"],
)
def test_tags_are_strings_of_bounded_length_and_number(tags: str, needle: str) -> None:
    with pytest.raises(KbError) as caught:
        parse_yaml(_entry(tags=tags), "kb.yaml")
    assert needle in str(caught.value)


def test_tags_at_the_limits_are_kept() -> None:
    (entry,) = parse_yaml(_entry(tags="[" + ", ".join(["y" * 64, *(f"t{n}" for n in range(49))]) + "]"))
    assert (len(entry.tags), entry.tags[0]) == (50, "y" * 64)
    # Repeats count once, and a text of tags is split at commas (or semicolons).
    (entry,) = parse_yaml(_entry(tags="[" + ", ".join(["T"] * 60) + "]"))
    assert entry.tags == ("t",)
    (entry,) = parse_yaml(_entry(tags="'a, b; c'"))
    assert entry.tags == ("a", "b", "c")


def _alias_bomb(field: str) -> str:
    """Under 500 bytes of YAML whose ``field`` is a list nested seven deep
    by aliases: 9**8 numbers, some 70 MB once turned into text."""
    text = "defs:\n  - &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9]\n"
    for n in range(1, 8):
        text += f"  - &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]\n"
    fields = {"id": "x", "questions": "[q]", "answer": "a", "tags": "[t]", field: "[*a7]"}
    return text + "entries:\n  - {" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}\n"


@pytest.mark.parametrize("field", ["tags", "id", "questions", "answer", "team"])
def test_a_small_yaml_of_aliases_is_refused_at_once_with_a_short_error(field: str) -> None:
    text = _alias_bomb(field)
    assert len(text) < 500
    started = time.perf_counter()
    with pytest.raises(KbError) as caught:
        parse_yaml(text, "kb.yaml")
    # Turning the tags into text took 25 s here; refusing them takes milliseconds.
    assert time.perf_counter() - started < 2
    assert len(str(caught.value)) < 300
    assert str(caught.value).startswith("kb.yaml: entry 1")


def test_text_fields_are_text_not_bytes() -> None:
    # YAML's !!binary gives bytes, which were taken as the id or team.
    for field in ("id", "team"):
        with pytest.raises(KbError, match=f"{field}: Input should be a valid string"):
            parse_yaml(_entry(**{field: "!!binary aGVsbG8="}), "kb.yaml")


def test_errors_cut_long_values_short() -> None:
    with pytest.raises(KbError) as caught:
        # (a YAML key of a flow mapping stops at 1024 characters)
        parse_yaml(_entry(answer="{" + "e" * 1000 + ": x}"), "kb.yaml")
    assert f"answer language '{'e' * 39}…' is not one the bot picks" in str(caught.value)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ("a,q,X,,,\na,r,Y,,,", "line 3 (id 'a'): answer differs from the answer on line 2"),
        ("a,q,,F,,\nb,r,Y,,,\na,s,,G,,", "line 4 (id 'a'): answer_fa differs from the answer_fa on line 2"),
        ("a,q,X,,,Support\na,r,,,,Support\na,s,,,,Sales", "line 4 (id 'a'): team differs from the team on line 2"),
    ],
    ids=["answer", "answer_fa", "team"],
)
def test_csv_rows_of_one_entry_that_disagree_are_refused_naming_both_lines(rows: str, needle: str) -> None:
    with pytest.raises(KbError) as caught:
        parse_csv("id,question,answer,answer_fa,tags,team\n" + rows + "\n", "kb.csv")
    assert str(caught.value) == f"kb.csv: {needle}; the rows of one entry give it once, or the same on each"


def test_csv_rows_of_one_entry_may_repeat_the_same_answer_and_team_and_add_tags() -> None:
    text = "id,question,answer,answer_fa,tags,team\na,q,X,F,t1,Support\na,r, X ,F,t2,Support\na,s,,,t1,\n"
    (entry,) = parse_csv(text, "kb.csv")
    assert entry.answer == {ANY_LANGUAGE: "X", "fa": "F"}
    assert (entry.questions, entry.tags, entry.team) == (("q", "r", "s"), ("t1", "t2"), "Support")


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        ("id,question,answer_en,answer_en", "kb.csv: line 1: column 'answer_en' appears twice"),
        ("id,question,answer,team,team", "kb.csv: line 1: column 'team' appears twice"),
        ("id,question,answer,answer_default", "columns 'answer' and 'answer_default' are both the answer"),
    ],
)
def test_csv_column_given_twice_is_refused(header: str, needle: str) -> None:
    with pytest.raises(KbError, match=re.escape(needle)):
        parse_csv(f"{header}\na,q,x,y\n", "kb.csv")


def test_csv_columns_it_does_not_read_may_repeat() -> None:
    (entry,) = parse_csv("id,question,answer,notes,notes,,\na,q,x,one,two,,\n", "kb.csv")
    assert entry.answer == {ANY_LANGUAGE: "x"}


@pytest.mark.parametrize(
    ("cells", "needle"),
    [
        (f"a,{'w' * 1001},,,", "questions: Value error, a question is longer than 1000 characters"),
        (f"a,r,,{'y' * 65},", f"tags: Value error, tag '{'y' * 39}…' is 65 characters long"),
        ('a,r,,"' + ",".join(f"t{n}" for n in range(51)) + '",', "tags: Value error, 51 tags"),
        (f"a,r,,,{'T' * 201}", "team: String should have at most 200 characters"),
    ],
    ids=["long question", "long tag", "many tags", "long team"],
)
def test_csv_error_in_a_rows_cells_names_that_rows_line(cells: str, needle: str) -> None:
    # The entry starts on line 2; what is wrong is on line 4, after a
    # multi-line answer on line 3.
    text = f'id,question,answer,tags,team\na,q,x,,\na,"r\nand more",,,\n{cells}\n'
    with pytest.raises(KbError) as caught:
        parse_csv(text, "kb.csv")
    assert str(caught.value).startswith("kb.csv: line 5 (id 'a'): ")
    assert needle in str(caught.value)


def test_csv_error_about_the_whole_entry_names_its_first_line() -> None:
    tags = [",".join(f"{row}{n}" for n in range(30)) for row in "tu"]
    with pytest.raises(KbError, match=re.escape("kb.csv: line 2 (id 'a'): tags: Value error, 60 tags")):
        parse_csv(f'id,question,answer,tags\na,q,x,"{tags[0]}"\na,r,,"{tags[1]}"\n', "kb.csv")


# Zero-width non-joiner, zero-width space, word joiner, BOM, soft hyphen: all
# format characters (Cf), invisible in an editor.
INVISIBLE = ["\u200c", "\u200b", "\u2060", "\ufeff", "\u00ad", " \u200c\u200b "]


@pytest.mark.parametrize("question", INVISIBLE)
def test_a_question_of_only_invisible_characters_is_empty(question: str) -> None:
    yaml_question = question.encode("unicode_escape").decode()
    with pytest.raises(KbError, match="questions: Value error, every question must be a non-empty string"):
        parse_yaml(_entry(questions=f'[ok, "{yaml_question}"]'), "kb.yaml")
    with pytest.raises(KbError, match="answer in 'default' must be a non-empty string"):
        parse_yaml(_entry(answer=f'"{yaml_question}"'), "kb.yaml")
    # In a CSV it is an empty cell, as one with spaces is.
    (entry,) = parse_csv(f"id,question,answer\na,q,x\na,{question},\n", "kb.csv")
    assert entry.questions == ("q",)
    with pytest.raises(KbError, match=re.escape("kb.csv: line 2 (id 'a'): questions: ")):
        parse_csv(f"id,question,answer\na,{question},x\n", "kb.csv")


def test_a_zero_width_non_joiner_inside_a_question_stays() -> None:
    (entry,) = parse_yaml(_entry(questions="[سفارش من کی می‌رسد]"))
    assert entry.questions == ("سفارش من کی می\u200cرسد",)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "- id: a\n  questions: [q]\n  answer: one\n  answer: two\n",
            "line 4: key 'answer' appears twice in one mapping (first on line 3)",
        ),
        (
            "- {id: a, questions: [q], answer: {en: one, en: two}}",
            "line 1: key 'en' appears twice in one mapping (first on line 1)",
        ),
        ("entries:\n  - {id: a, questions: [q], answer: x}\nentries: []\n", "line 3: key 'entries' appears twice"),
        ('{"entries": [{"id": "a", "id": "b", "questions": ["q"], "answer": "x"}]}', "line 1: key 'id' appears twice"),
    ],
    ids=["block", "nested flow", "top level", "JSON"],
)
def test_yaml_key_given_twice_in_one_mapping_is_refused(text: str, needle: str) -> None:
    with pytest.raises(KbError) as caught:
        parse_yaml(text, "kb.yaml")
    assert str(caught.value).startswith(f"kb.yaml: {needle}")


def test_yaml_merge_keys_may_still_be_overridden() -> None:
    text = "- &base {id: a, questions: [q], answer: one, team: Support}\n- <<: *base\n  id: b\n  answer: two\n"
    first, second = parse_yaml(text, "kb.yaml")
    assert (second.id, second.answer, second.team) == ("b", {ANY_LANGUAGE: "two"}, "Support")
    assert first.answer == {ANY_LANGUAGE: "one"}


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("2024-02-30", "'2024-02-30' cannot be read as a date (day is out of range for month)"),
        ("1" * 5000, f"'{'1' * 39}…' cannot be read as a number (Exceeds the limit (4300 digits)"),
        ("!!float x", "'x' cannot be read as a number (could not convert string to float: 'x')"),
    ],
    ids=["date", "huge number", "float"],
)
def test_yaml_value_that_cannot_be_read_is_a_kb_error_with_its_line(value: str, needle: str) -> None:
    # These were a bare ValueError: a traceback from the CLI, a 500 from the API.
    with pytest.raises(KbError) as caught:
        parse_yaml(_entry(tags=f"[{value}]"), "kb.yaml")
    assert str(caught.value).startswith(f"kb.yaml: line 1: {needle}")
    assert str(caught.value).endswith("; put it in quotes if it is text")


def test_yaml_nested_too_deeply_is_a_kb_error() -> None:
    with pytest.raises(KbError, match=r"^kb\.yaml: lists or mappings are nested too deeply to read$"):
        parse_yaml("- " + "[" * 1000 + "]" * 1000, "kb.yaml")


def test_csv_tags_split_on_semicolons_as_yaml_tags_do() -> None:
    from_yaml = parse_yaml("- {id: a, questions: [q], answer: x, tags: 'pricing; Sales'}")[0]
    from_csv = parse_csv('id,question,answer,tags\na,q,x,"pricing; Sales"\n')[0]
    assert from_csv.tags == from_yaml.tags == ("pricing", "sales")


@pytest.mark.parametrize(
    ("header", "column", "meant"),
    [
        ("id,question,answer_en,answer-fa", "answer-fa", "'answer_fa'"),
        ("id,question,answer_en,answer fa", "answer fa", "'answer_fa'"),
        ("id,question,answer,tag", "tag", "'tags'"),
        ("id,question,answer,teams", "teams", "'team'"),
        ("id,questions,answer", "questions", "'question'"),
        ("id,question,anwser", "anwser", "'answer'"),
        ("id,question,answer,answered by", "answered by", "answer_<lang> (fa, ar, en)"),
    ],
)
def test_csv_column_that_looks_like_one_of_ours_is_refused(header: str, column: str, meant: str) -> None:
    # Read as a column of the admin's own, "answer-fa" would leave Persian
    # customers with the English answer, and "tag" would drop the tags.
    with pytest.raises(KbError) as caught:
        parse_csv(f"{header}\na,q,x,y\n", "kb.csv")
    assert str(caught.value).startswith(f"kb.csv: line 1: column {column!r} is not one the import reads")
    assert f"did you mean {meant}?" in str(caught.value)


def test_csv_separated_by_semicolons_says_so() -> None:
    # What Excel saves as CSV where the decimal mark is a comma.
    with pytest.raises(KbError, match=r"^kb.csv: line 1: the columns are separated by semicolons; save the file"):
        parse_csv("\ufeffid;question;answer\r\nhours;when open;9-5\r\n", "kb.csv")


@pytest.mark.parametrize(
    ("code", "lang"), [("fas", "fa"), ("per", "fa"), ("ara", "ar"), ("eng", "en"), ("fa", "fa"), ("default", "default")]
)
def test_three_letter_codes_of_the_bots_languages_are_its_codes(code: str, lang: str) -> None:
    (entry,) = parse_yaml(f"- {{id: a, questions: [q], answer: {{{code}: x}}}}")
    assert entry.answer == {lang: "x"}
    (row,) = parse_csv(f"id,question,answer_{code}\na,q,x\n")
    assert row.answer == {lang: "x"}


def test_persian_customer_gets_the_answer_written_under_fas() -> None:
    from bots.brain import Brain, Contact, Inbound
    from bots.matcher import Matcher
    from hub.config import BotConfig

    entries = parse_yaml(
        "- {id: hours, questions: [opening hours, ساعت کاری شما چیست], answer: {en: 9-5, fas: ۹ تا ۵}}"
    )
    out = Brain(BotConfig(ask_feedback=False), Matcher(entries)).respond(Inbound("ساعت کاری شما چیست"), Contact(), {})
    assert [r.text for r in out.replies] == ["۹ تا ۵"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("- {id: a, questions: [q], answer: {de: x}}", "answer language 'de' is not one the bot picks"),
        ("- {id: a, questions: [q], answer: {fa: x, fas: y}}", "answer language 'fas' is 'fa', given twice"),
    ],
)
def test_an_answer_language_the_bot_never_picks_is_refused(text: str, needle: str) -> None:
    with pytest.raises(KbError) as caught:
        parse_yaml(text)
    assert needle in str(caught.value)
    assert (
        "answer languages are fa, ar, en (or 'default', for every language)" in str(caught.value) or "twice" in needle
    )


def test_csv_answer_column_in_a_language_the_bot_never_picks_is_refused() -> None:
    with pytest.raises(KbError, match=r"^kb.csv: line 1: column 'answer_de': answer language 'de' is not one"):
        parse_csv("id,question,answer_en,answer_de\na,q,x,\n", "kb.csv")
    with pytest.raises(KbError, match="columns 'answer_fa' and 'answer_fas' are both the answer in 'fa'"):
        parse_csv("id,question,answer_fa,answer_fas\na,q,x,y\n", "kb.csv")


@pytest.mark.parametrize("questions", ["!!set {'': null, ' x ': null}", "{q: a}", "42"])
def test_questions_that_are_not_a_list_are_refused(questions: str) -> None:
    # A YAML !!set would reach pydantic's conversion to a tuple, past the checks.
    with pytest.raises(KbError, match=r"entry 1 \(id 'a'\): questions: Value error, is .*; give a list of questions"):
        parse_yaml(f"- id: a\n  questions: {questions}\n  answer: hi\n")


def test_escaped_emoji_pairs_are_joined_and_lone_halves_refused() -> None:
    # json.dumps writes 😊 as "\ud83d\ude0a"; YAML leaves the halves apart.
    text = '[{"id": "hi", "questions": ["hi \\ud83d\\ude0a"], "answer": {"en": "Welcome \\ud83d\\ude0a"}}]'
    (entry,) = parse_yaml(text)
    assert (entry.questions, entry.answer) == (("hi 😊",), {"en": "Welcome 😊"})
    with pytest.raises(KbError, match=r"^kb.yaml: entry 1 \(id 'hi'\): answer: has half of a \\uXXXX surrogate pair"):
        parse_yaml('[{"id": "hi", "questions": ["hi"], "answer": {"en": "Welcome \\ud83d"}}]', "kb.yaml")
    with pytest.raises(KbError, match=r"entry 1 \(id 'hi'\): tags: has half"):
        parse_yaml('[{"id": "hi", "questions": ["hi"], "answer": "x", "tags": ["\\udc00"]}]', "kb.yaml")


def test_a_tab_indented_json_file_is_read_as_json(tmp_path: Path) -> None:
    path = tmp_path / "kb.json"
    path.write_text('[\n\t{\n\t\t"id": "hi",\n\t\t"questions": ["hi"],\n\t\t"answer": "Hello \\ud83d\\ude0a"\n\t}\n]\n')
    (entry,) = load_file(path)
    assert (entry.id, entry.answer) == ("hi", {ANY_LANGUAGE: "Hello 😊"})


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[{"id": "a", "id": "b"}]', "kb.json: key 'id' appears twice in one object"),
        ('[{"id": "a",', "kb.json is not valid JSON: line 1 column 13: Expecting property name"),
        ('{"entries": {}}', "kb.json must be a list of entries"),
        ('[{"id": "a", "questions": ["q"], "answer": "\\ud800"}]', "kb.json: entry 1 (id 'a'): answer: has half"),
    ],
)
def test_json_file_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "kb.json"
    path.write_text(text)
    with pytest.raises(KbError) as caught:
        load_file(path)
    assert str(caught.value).startswith(f"{path.parent}/{needle}")


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("kb.csv", "id,question,answer\n", "has no entries, only the header row"),
        ("kb.csv", "id,question,answer\n\n", "has no entries, only the header row"),
        ("kb.yaml", "[]\n", "has no entries"),
        ("kb.yaml", "entries: []\n", "has no entries"),
        ("kb.json", "[]", "has no entries"),
    ],
)
def test_a_file_without_entries_is_refused(tmp_path: Path, name: str, text: str, problem: str) -> None:
    # Imported with --replace, it would delete the whole knowledge base.
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(KbError) as caught:
        load_file(path)
    assert str(caught.value) == f"{path} {problem}"
