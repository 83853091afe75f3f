"""Files and settings a command cannot use are one clear line each, before
anything is written or printed: text that is not UTF-8, a report's CSV in a
folder that does not exist, a bot backend whose packages are missing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from hub.cli import main
from tests.hub.procs import CLI, hub_env, run_cli
from tests.hub.twilio_helpers import ACCOUNT, TOKEN

LATIN1 = "phone,name\n+15550001111,Jos\u00e9 M\u00fcller\n".encode("latin-1")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "twilio": {
                    "api_base_url": "http://127.0.0.1:9",
                    "senders": [{"inbox": "promo", "number": "+15550002222"}],
                }
            }
        ),
        encoding="utf-8",
    )
    env = hub_env(tmp_path / "data", HUB_CONFIG=str(config), TWILIO_ACCOUNT_SID=ACCOUNT, TWILIO_AUTH_TOKEN=TOKEN)
    run_cli(["migrate"], env)
    return env


def fails(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done


def test_files_that_are_not_utf8(tmp_path: Path, env: dict[str, str]) -> None:
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(LATIN1)
    create = ["campaign", "create", "--name", "X", "--sender", "promo"]
    done = fails([*create, "--template", "Hi", "--csv", str(bad)], env)
    assert f"{bad} is not UTF-8 text" in done.stderr
    template = tmp_path / "template.txt"
    template.write_bytes("Ol\u00e1 {{ first_name }}".encode("latin-1"))
    done = fails([*create, "--template-file", str(template)], env)
    assert f"{template} is not UTF-8 text" in done.stderr
    questions = tmp_path / "questions.csv"
    questions.write_bytes("question,expected\nqu\u00e9 hora,hours\n".encode("latin-1"))
    done = fails(["bot", "eval", "--questions", str(questions)], env)
    assert f"{questions} is not UTF-8 text" in done.stderr
    assert run_cli(["campaign", "status"], env) == ""  # nothing was created


def test_report_csv_in_a_folder_that_does_not_exist(tmp_path: Path, env: dict[str, str]) -> None:
    out = run_cli(["campaign", "create", "--name", "X", "--sender", "promo", "--template", "Hi"], env)
    assert "Campaign 1 (X): draft" in out
    target = tmp_path / "nowhere" / "r.csv"
    done = fails(["campaign", "report", "1", "--csv", str(target)], env)
    # Said before the report is printed, not after.
    assert done.stdout == ""
    assert f"the folder {target.parent} does not exist" in done.stderr
    written = tmp_path / "r.csv"
    assert json.loads(run_cli(["campaign", "report", "1", "--csv", str(written)], env))["campaign_id"] == 1
    assert written.read_text(encoding="utf-8").startswith("recipient_id,")


def test_bot_ask_with_the_embedding_backend_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def without_sentence_transformers(name: str, package: str | None = None) -> object:
        return None if name == "sentence_transformers" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_sentence_transformers)
    kb = tmp_path / "kb.yaml"
    kb.write_text("- id: hours\n  questions: [when are you open]\n  answer: {en: 9 to 5}\n", encoding="utf-8")
    runner = CliRunner(env={"HUB_DATA_DIR": str(tmp_path / "data"), "HUB_BOT_BACKEND": "embedding"})
    result = runner.invoke(main, ["bot", "ask", "--kb", str(kb), "hi"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "bot.backend is 'embedding' but sentence_transformers" in result.output
