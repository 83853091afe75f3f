"""A database the hub cannot use ends any ``crm-hub`` command in one line
saying what is wrong and what to do, not in a page of driver traceback: never
migrated, migrated by an older or newer hub, unreachable, or not there."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import click
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from hub.config import HubConfig
from storage.migrate import alembic_config, upgrade
from tests.hub.procs import CLI, free_port, hub_env, run_cli

NOT_MIGRATED = "the database is not migrated: run `crm-hub migrate`"


def fails(args: list[str], env: dict[str, str]) -> str:
    """The one line a failing command writes on stderr."""
    done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, f"crm-hub {' '.join(args)} succeeded:\n{done.stdout}"
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--port", "0"],
        ["agent", "add", "--email", "a@example.com", "--name", "A"],
        ["agent", "deactivate", "--email", "a@example.com"],
        ["bot", "ask", "hi"],
        ["faq", "export"],
        ["campaign", "status"],
        ["demo"],
    ],
)
def test_a_database_never_migrated(tmp_path: Path, args: list[str]) -> None:
    env = hub_env(tmp_path / "data")
    # An empty SQLite file, and no file at all (a fresh install).
    assert NOT_MIGRATED in fails(args, env)
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "hub.db").touch()
    assert NOT_MIGRATED in fails(args, env)


def test_serve_checks_the_schema_revision_before_listening(tmp_path: Path) -> None:
    env = hub_env(tmp_path / "data")
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'hub.db'}"
    # One migration behind: every table a command might touch exists.
    upgrade(url, "0007_inbox")
    assert NOT_MIGRATED in fails(["serve", "--port", "0"], env)

    async def stamp(revision: str) -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
        finally:
            await engine.dispose()

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert f"upgraded the database from schema 0007_inbox to {head}" in run_cli(["migrate"], env)
    assert f"database is up to date (schema {head})" in run_cli(["migrate"], env)
    asyncio.run(stamp("0099_from_the_future"))
    line = fails(["serve", "--port", "0"], env)
    assert "revision 0099_from_the_future" in line and "newer than this crm-hub" in line


@pytest.mark.parametrize(
    "args", [["serve", "--port", "0"], ["agent", "add", "--email", "a@example.com", "--name", "A"]]
)
def test_run_from_a_folder_with_no_config_says_so(tmp_path: Path, args: list[str]) -> None:
    """Outside the project folder the defaults point at an empty ./data there:
    the error says which database it looked at and why, so that nobody
    migrates a second, empty database beside theirs."""
    env = hub_env(tmp_path / "data")
    del env["HUB_CONFIG"], env["HUB_DATA_DIR"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([CLI, *args], env=env, cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == (
        f"Error: {NOT_MIGRATED} (database sqlite+aiosqlite:///{elsewhere / 'data' / 'hub.db'}; "
        f"read no config.yaml in {elsewhere} and HUB_CONFIG is unset, so the defaults were used: "
        "run crm-hub from the project folder or set HUB_CONFIG)"
    )
    # With a config file read, only the database is named.
    env["HUB_CONFIG"] = str(Path(__file__).resolve().parents[2] / "config.yaml")
    line = fails(args, {**env, "HUB_DATA_DIR": str(tmp_path / "data")})
    assert line == f"Error: {NOT_MIGRATED} (database sqlite+aiosqlite:///{tmp_path / 'data' / 'hub.db'})"


def test_the_database_named_keeps_its_password_hidden() -> None:
    from hub.cli import _where_not_migrated, main

    cfg = HubConfig.model_validate({"database": {"url": "postgresql+asyncpg://hub:s3cret@db.internal/hub"}})
    ctx = click.Context(main, obj={"config": cfg, "config_file": "config.yaml"})
    said = _where_not_migrated(ctx, NOT_MIGRATED)
    assert said == f"{NOT_MIGRATED} (database postgresql+asyncpg://hub:***@db.internal/hub)"
    # Other problems name the database themselves, or are not about one.
    assert _where_not_migrated(ctx, "cannot reach the database at x") == "cannot reach the database at x"


@pytest.mark.parametrize(
    "args", [["migrate"], ["serve", "--port", "0"], ["agent", "add", "--email", "a@b.co", "--name", "A"]]
)
def test_an_unreachable_database(tmp_path: Path, args: list[str]) -> None:
    port = free_port()  # nothing listens there
    env = hub_env(tmp_path / "data", HUB_DATABASE_URL=f"postgresql+asyncpg://hub:s3cret@127.0.0.1:{port}/nope")
    line = fails(args, env)
    # The URL says which database, without its password.
    assert (
        line
        == f"Error: cannot reach the database at postgresql+asyncpg://hub:***@127.0.0.1:{port}/nope: Connection refused"
    )


@pytest.mark.postgres
@pytest.mark.parametrize("args", [["migrate"], ["serve", "--port", "0"]])
def test_a_postgresql_database_that_does_not_exist(tmp_path: Path, postgres_url: str, args: list[str]) -> None:
    missing = postgres_url + "_missing"
    env = hub_env(tmp_path / "data", HUB_DATABASE_URL=missing)
    line = fails(args, env)
    name = missing.rsplit("/", 1)[1]
    assert line.startswith("Error: cannot reach the database at postgresql+asyncpg://"), line
    assert line.endswith(f'database "{name}" does not exist'), line


@pytest.mark.postgres
def test_a_postgresql_database_never_migrated(tmp_path: Path, postgres_url: str) -> None:
    env = hub_env(tmp_path / "data", HUB_DATABASE_URL=postgres_url)
    for args in (["serve", "--port", "0"], ["agent", "add", "--email", "a@example.com", "--name", "A"]):
        assert NOT_MIGRATED in fails(args, env)


def test_other_errors_keep_their_traceback() -> None:
    """Only the database's problems are turned into one line: a missing file
    is not reported as an unreachable database."""
    from hub.cli import database_problem

    with pytest.raises(FileNotFoundError) as caught:
        Path("/nonexistent/dir/file").read_text()
    assert database_problem(caught.value, "sqlite+aiosqlite:///x.db") is None
