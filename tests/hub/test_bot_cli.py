"""The bot's command line, as an admin uses it: ``crm-hub faq import/export``,
``crm-hub bot ask``, ``crm-hub bot eval`` and ``crm-hub bot report``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from hub.cli import main
from storage.db import Database
from tests.bots.conversation import KB, add_turns


@pytest.fixture
def admin(tmp_path: Path) -> CliRunner:
    (tmp_path / "config.yaml").write_text(f"data_dir: {tmp_path / 'data'}\n", encoding="utf-8")
    runner = CliRunner(env={"HUB_CONFIG": str(tmp_path / "config.yaml"), "HUB_DATABASE_URL": ""})
    assert runner.invoke(main, ["migrate"]).exit_code == 0
    return runner


def run(runner: CliRunner, *args: str, code: int = 0) -> Result:
    result = runner.invoke(main, list(args))
    assert result.exit_code == code, result.output
    return result


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_faq_import_yaml_then_csv_with_versions_only_for_changes(admin: CliRunner, tmp_path: Path) -> None:
    kb = write(tmp_path, "kb.yaml", yaml.safe_dump(KB, allow_unicode=True))
    first = run(admin, "faq", "import", kb)
    assert first.output.strip() == f"6 created, 0 updated, 0 unchanged, 0 deleted (6 entries in {kb})"
    again = run(admin, "faq", "import", kb)
    assert again.output.startswith("0 created, 0 updated, 6 unchanged, 0 deleted")
    csv = write(
        tmp_path,
        "hours.csv",
        "id,question,answer_en,answer_fa\n"
        "opening-hours,what are your opening hours,9 to 5,۹ تا ۵\n"
        "opening-hours,ساعت کاری شما چیست,,\n"
        "gift-cards,do you sell gift cards,Yes,بله\n",
    )
    dry = run(admin, "faq", "import", "--dry-run", "--replace", csv)
    assert dry.output.startswith("1 would be created, 1 would be updated, 0 would be unchanged, 5 would be deleted")
    exported = yaml.safe_load(run(admin, "faq", "export").output)
    assert [e["id"] for e in exported] == sorted(e["id"] for e in KB)  # the dry run changed nothing
    replaced = run(admin, "faq", "import", "--replace", csv)
    assert replaced.output.startswith("1 created, 1 updated, 0 unchanged, 5 deleted")
    exported = yaml.safe_load(run(admin, "faq", "export").output)
    assert exported == [
        {"id": "gift-cards", "questions": ["do you sell gift cards"], "answer": {"en": "Yes", "fa": "بله"}},
        {
            "id": "opening-hours",
            "questions": ["what are your opening hours", "ساعت کاری شما چیست"],
            "answer": {"en": "9 to 5", "fa": "۹ تا ۵"},
        },
    ]


def test_faq_import_errors_name_the_line_and_change_nothing(admin: CliRunner, tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.csv", "id,question,answer\nok,fine question,yes\nbad id,q,x\n")
    result = run(admin, "faq", "import", bad, code=1)
    assert f"Error: {bad}: line 3 (id 'bad id'): id:" in result.output
    assert "Traceback" not in result.output
    assert run(admin, "faq", "export").output.strip() == "[]"
    commas = write(tmp_path, "commas.csv", "id,question,answer\nhours,when are you open,9 to 5, Monday to Friday\n")
    result = run(admin, "faq", "import", commas, code=1)
    assert f"Error: {commas}: line 2: more fields than columns; quote text containing commas" in result.output
    assert "Traceback" not in result.output
    assert run(admin, "faq", "export").output.strip() == "[]"
    missing = run(admin, "faq", "import", str(tmp_path / "nope.yaml"), code=2)
    assert "does not exist" in missing.output


EMOJI = [{"id": "hello", "questions": ["hi there", "سلام"], "answer": {"en": "Welcome 😊", "fa": "خوش آمدید 😊"}}]


def test_faq_import_of_json_files_as_json_writes_them(admin: CliRunner, tmp_path: Path) -> None:
    # json.dumps' default escapes 😊 as "\ud83d\ude0a"; indent="\t" is refused by YAML.
    for n, text in enumerate([json.dumps(EMOJI), json.dumps(EMOJI, indent="\t", ensure_ascii=False)]):
        result = run(admin, "faq", "import", write(tmp_path, f"kb{n}.json", text))
        assert "Traceback" not in result.output
    exported = yaml.safe_load(run(admin, "faq", "export").output)
    assert exported[0]["answer"] == {"en": "Welcome 😊", "fa": "خوش آمدید 😊"}
    half = write(tmp_path, "half.json", json.dumps(EMOJI).replace("\\ude0a", "", 1))
    result = run(admin, "faq", "import", half, code=1)
    assert f"Error: {half}: entry 1 (id 'hello'): answer: has half of a \\uXXXX surrogate pair" in result.output


def test_faq_import_replace_with_a_file_of_no_entries_changes_nothing(admin: CliRunner, tmp_path: Path) -> None:
    run(admin, "faq", "import", write(tmp_path, "kb.yaml", yaml.safe_dump(EMOJI, allow_unicode=True)))
    # An empty sheet saved from Excel: only the header row.
    empty = write(tmp_path, "empty.csv", "id,question,answer\n")
    result = run(admin, "faq", "import", "--replace", empty, code=1)
    assert f"Error: {empty} has no entries, only the header row" in result.output
    assert [e["id"] for e in yaml.safe_load(run(admin, "faq", "export").output)] == ["hello"]


def test_faq_import_refuses_a_team_the_hub_does_not_know(admin: CliRunner, tmp_path: Path) -> None:
    kb = write(tmp_path, "kb.csv", "id,question,answer,team\na,q,x,Suport\nb,r,y,sales\n")
    result = run(admin, "faq", "import", kb, code=1)
    assert f"Error: {kb}: team 'Suport' (entry 'a') does not exist (the teams: 'Sales')" in result.output
    assert run(admin, "faq", "export").output.strip() == "[]"
    # The config names the team: it is created when the hub starts.
    config = tmp_path / "config.yaml"
    config.write_text(config.read_text() + "routing:\n  teams:\n    - name: Support\n", encoding="utf-8")
    run(admin, "faq", "import", write(tmp_path, "kb.csv", "id,question,answer,team\na,q,x,support\nb,r,y,sales\n"))
    assert [e["team"] for e in yaml.safe_load(run(admin, "faq", "export").output)] == ["Support", "Sales"]


def test_bot_ask_prints_one_json_object(admin: CliRunner, tmp_path: Path) -> None:
    kb = write(tmp_path, "kb.yaml", yaml.safe_dump(KB, allow_unicode=True))
    from_file = json.loads(run(admin, "bot", "ask", "--kb", kb, "سفارش من کی می‌رسد؟").output)
    assert set(from_file) == {"action", "reason", "replies", "entry_id", "confidence", "candidates"}
    assert (from_file["action"], from_file["entry_id"], from_file["reason"]) == ("answer", "shipping-time", None)
    assert from_file["replies"][0].startswith("سفارش‌ها ظرف ۳ تا ۵ روز کاری می‌رسند.")
    assert 0.5 <= from_file["confidence"] <= 1
    assert from_file["candidates"][0]["entry_id"] == "shipping-time"
    assert len(from_file["candidates"]) == 3
    # Without --kb: the stored knowledge base.
    run(admin, "faq", "import", kb)
    stored = json.loads(run(admin, "bot", "ask", "سفارش من کی می‌رسد؟").output)
    assert stored == from_file
    # What the bot does, not only what the matcher finds: a request for a
    # person is handed off whatever entry it resembles, a greeting greeted.
    person = json.loads(run(admin, "bot", "ask", "I want to talk to a human").output)
    assert (person["action"], person["reason"]) == ("handoff", "requested")
    hello = json.loads(run(admin, "bot", "ask", "سلام").output)
    assert (hello["action"], hello["reason"], hello["replies"]) == (
        "answer",
        "smalltalk",
        ["سلام! چطور می‌توانم کمکتان کنم؟"],
    )


def test_bot_ask_shows_a_buying_question_starting_qualification_and_a_goodbye(admin: CliRunner, tmp_path: Path) -> None:
    """No pricing entry: the bot asks its questions instead of answering an entry."""
    kb = write(tmp_path, "kb.yaml", yaml.safe_dump([e for e in KB if e["id"] != "pricing"], allow_unicode=True))
    buying = json.loads(run(admin, "bot", "ask", "--kb", kb, "I want to buy 10 licenses").output)
    assert (buying["action"], buying["reason"]) == ("answer", "qualify")
    assert buying["replies"] == [
        "I'd be glad to help with that. A few quick questions so the right person can follow up.",
        "May I have your name?",
    ]
    bye = json.loads(run(admin, "bot", "ask", "--kb", kb, "thanks, bye").output)
    assert (bye["action"], bye["reason"], bye["replies"]) == (
        "answer",
        "smalltalk",
        ["Thank you for contacting us. Goodbye!"],
    )


LABELLED = """question,expected
when will my parcel arrive,shipping-time
how many days until delivery,shipping-time
I want my money back,return-policy
how do i reset my password,password-reset
رمز عبورم یادم رفته,password-reset
what does the premium plan cost,pricing
can I pay with paypal,payment-methods
what is the capital of france,oos
play some music,
tell me a joke,out_of_scope
"""


def test_bot_eval_on_a_labelled_csv(admin: CliRunner, tmp_path: Path) -> None:
    kb = write(tmp_path, "kb.yaml", yaml.safe_dump(KB, allow_unicode=True))
    questions = write(tmp_path, "labelled.csv", LABELLED)
    figures = json.loads(run(admin, "bot", "eval", "--kb", kb, "--questions", questions, "--json").output)
    assert (figures["questions"], figures["in_scope"], figures["out_of_scope"]) == (10, 7, 3)
    for share in ("accuracy", "answered_wrongly", "clarified", "top1", "oos_recall", "oos_precision"):
        assert figures[share] is None or 0 <= figures[share] <= 1
    # Every in-scope question is answered right, wrongly, clarified or handed off.
    assert figures["accuracy"] + figures["answered_wrongly"] + figures["clarified"] <= 1
    assert figures["top1"] >= figures["accuracy"] > 0
    assert figures["unknown_expected_ids"] == []
    for c in figures["worst_confusions"]:
        assert c["expected"] != c["got"] and c["count"] >= 1
    text = run(admin, "bot", "eval", "--kb", kb, "--questions", questions).output
    assert text.startswith("10 questions: 7 in scope, 3 out of scope\n")
    assert f"accuracy (answered with the right entry): {figures['accuracy']:.1%}" in text
    assert "out-of-scope recall (handed off):" in text


def test_bot_eval_shows_what_other_thresholds_would_do(admin: CliRunner, tmp_path: Path) -> None:
    kb = write(tmp_path, "kb.yaml", yaml.safe_dump(KB, allow_unicode=True))
    questions = write(tmp_path, "labelled.csv", LABELLED)

    def figures(*options: str) -> dict[str, Any]:
        output = run(admin, "bot", "eval", "--kb", kb, "--questions", questions, "--json", *options).output
        return dict(json.loads(output))

    configured = figures()
    assert configured["thresholds"] == {"answer": 0.5, "clarify": 0.2}
    # Answer everything: nothing is clarified or handed off.
    everything = figures("--answer-threshold", "0", "--clarify-threshold", "0")
    assert everything["thresholds"] == {"answer": 0.0, "clarify": 0.0}
    assert (everything["clarified"], everything["oos_recall"]) == (0, 0)
    assert everything["accuracy"] == everything["top1"] >= configured["accuracy"]
    # Answer nothing, hand everything off.
    nothing = figures("--answer-threshold", "1", "--clarify-threshold", "1")
    assert (nothing["accuracy"], nothing["clarified"], nothing["oos_recall"]) == (0, 0, 1)
    text = run(admin, "bot", "eval", "--kb", kb, "--questions", questions, "--answer-threshold", "0.7").output
    assert "thresholds: answer 0.7, clarify 0.2\n" in text
    result = run(admin, "bot", "eval", "--kb", kb, "--questions", questions, "--clarify-threshold", "0.6", code=2)
    assert "the clarify threshold (0.6) must not be above the answer threshold (0.5)" in result.output
    result = run(admin, "bot", "eval", "--kb", kb, "--questions", questions, "--answer-threshold", "1.5", code=2)
    assert "--answer-threshold" in result.output


def test_bot_eval_explains_bad_input(admin: CliRunner, tmp_path: Path) -> None:
    kb = write(tmp_path, "kb.yaml", yaml.safe_dump(KB, allow_unicode=True))
    columns = write(tmp_path, "cols.csv", "text,label\nhi,x\n")
    result = run(admin, "bot", "eval", "--kb", kb, "--questions", columns, code=1)
    assert "needs the columns question and expected" in result.output
    empty = write(tmp_path, "empty.csv", "question,expected\nhello,pricing\n,pricing\n")
    assert "line 3: question is empty" in run(admin, "bot", "eval", "--kb", kb, "--questions", empty, code=1).output
    commas = write(tmp_path, "commas.csv", "question,expected\nhello,pricing\nprices, plans,pricing\n")
    result = run(admin, "bot", "eval", "--kb", kb, "--questions", commas, code=1)
    assert f"Error: {commas}: line 3: more fields than columns; quote text containing commas" in result.output
    # A quote never closed swallows the rest of the file: the line it opened on, no traceback.
    unclosed = write(tmp_path, "unclosed.csv", 'question,expected\nhello,pricing\n"open ' + "x" * 140_000 + "\n")
    result = run(admin, "bot", "eval", "--kb", kb, "--questions", unclosed, code=1)
    assert f"Error: {unclosed}: line 3: a field is longer than" in result.output
    assert "Traceback" not in result.output
    unknown = write(tmp_path, "unknown.csv", "question,expected\nhello,no-such-entry\n")
    text = run(admin, "bot", "eval", "--kb", kb, "--questions", unknown).output
    assert "expected ids not in the knowledge base: no-such-entry" in text


def test_bot_report_lists_gaps_as_json_lines(admin: CliRunner, tmp_path: Path) -> None:
    assert run(admin, "bot", "report").output == ""

    async def turns() -> None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'hub.db'}")
        try:
            await add_turns(
                db,
                [
                    ("is the shop open on Nowruz?", "handoff", "no_match"),
                    ("hi", "smalltalk", None),
                    ("I want a person", "handoff", "requested"),
                ],
            )
        finally:
            await db.dispose()

    asyncio.run(turns())
    lines = [json.loads(line) for line in run(admin, "bot", "report").output.splitlines()]
    # Only what says something about the knowledge base.
    assert [(i["question"], i["why"]) for i in lines] == [("is the shop open on Nowruz?", "no_match")]


@pytest.mark.parametrize("limit", ["0", "-1", "201"])
def test_bot_report_refuses_a_limit_outside_what_the_api_allows(admin: CliRunner, tmp_path: Path, limit: str) -> None:
    async def turns() -> None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'hub.db'}")
        try:
            await add_turns(db, [(f"question {n}", "handoff", "no_match") for n in range(3)])
        finally:
            await db.dispose()

    # With gaps stored: a limit of 0 used to take an empty page with more to
    # come, and crash on its (missing) last row.
    asyncio.run(turns())
    result = run(admin, "bot", "report", "--limit", limit, code=2)
    assert "Invalid value for '--limit'" in result.output
    assert "1<=x<=200" in result.output
    assert "Traceback" not in result.output
    lines = run(admin, "bot", "report", "--limit", "1").output.splitlines()
    assert [json.loads(line)["question"] for line in lines] == ["question 2"]


def test_bot_report_limit_is_the_apis_page_size() -> None:
    from hub.bot_cli import MAX_REPORT_LIMIT
    from hub.web.api import MAX_PAGE

    assert MAX_REPORT_LIMIT == MAX_PAGE
