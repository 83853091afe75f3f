"""The agent commands of ``crm-hub``, run as a user runs them (the installed
command, its own process): adding an agent, deactivating one who left (their
tokens revoked, their tickets back in the queue) and letting them back, and a
clear error for an address nobody has."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from sqlalchemy import func, select

from hub.actions import do_assign, do_ensure_inbox, do_issue_token
from hub.config import load_config
from hub.core import Channel
from hub.security import verify_password
from storage.db import Database
from storage.ingest import IngestResult, ingest_batch
from storage.models import Agent, ApiToken, Ticket
from tests.hub.procs import CLI, hub_env, run_cli
from tests.storage.test_ingest import web

PASSWORD = "correct horse battery staple"


def test_deactivate_and_activate_an_agent(tmp_path: Path) -> None:
    env = hub_env(tmp_path / "data")
    run_cli(["migrate"], env)
    for email, role in (("boss@example.com", "admin"), ("ana@example.com", "agent")):
        run_cli(
            ["agent", "add", "--email", email, "--name", email, "--role", role, "--password-stdin"],
            env,
            stdin=PASSWORD + "\n",
        )
    config = load_config(path=None, env=env)

    async def seed() -> int:
        db = Database(config.database_url)
        try:
            async with db.write() as s:
                await do_ensure_inbox(s, key="webchat", channel=Channel.WEBCHAT, name="Web chat")
            async with db.write() as s:
                (result,) = await ingest_batch(s, [web("visitor-1", "m1")])
                assert isinstance(result, IngestResult)
                ana = await s.scalar(select(Agent).where(Agent.email == "ana@example.com"))
                ticket = await s.get(Ticket, result.ticket_id)
                assert ana is not None and ticket is not None
                await do_assign(s, ticket, agent_id=ana.id, team_id=None, actor="test")
                await do_issue_token(s, ana.id, 24)
                return ticket.id
        finally:
            await db.dispose()

    ticket_id = asyncio.run(seed())
    out = run_cli(["agent", "deactivate", "--email", "ANA@example.com"], env)
    assert "ana@example.com deactivated" in out and "1 unresolved ticket(s)" in out

    async def state() -> tuple[bool, int, int | None]:
        db = Database(config.database_url)
        try:
            async with db.read() as s:
                ana = await s.scalar(select(Agent).where(Agent.email == "ana@example.com"))
                assert ana is not None
                tokens = await s.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.agent_id == ana.id))
                ticket = await s.get(Ticket, ticket_id)
                assert ticket is not None
                return ana.active, int(tokens or 0), ticket.assignee_id
        finally:
            await db.dispose()

    assert asyncio.run(state()) == (False, 0, None)
    # The last active admin stays; an unknown address is named.
    for args, needle in (
        (["agent", "deactivate", "--email", "boss@example.com"], "last active admin"),
        (["agent", "deactivate", "--email", "nobody@example.com"], "no agent has the email nobody@example.com"),
    ):
        done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and needle in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert "may log in again" in run_cli(["agent", "activate", "--email", "ana@example.com"], env)
    assert asyncio.run(state())[0] is True


def test_agent_add_names_what_is_wrong_and_stores_nothing(tmp_path: Path) -> None:
    """On PostgreSQL a name past its column's 200 characters was a traceback
    carrying the new password's hash; on SQLite it was stored. Addresses
    with spaces or nothing before the @ were accepted."""
    env = hub_env(tmp_path / "data")
    run_cli(["migrate"], env)
    for extra, needle in (
        (["--email", "@", "--name", "A"], "'@' is not an email address"),
        (["--email", "a b@example.com", "--name", "A"], "is not an email address"),
        (["--email", "<x>@example.com", "--name", "A"], "is not an email address"),
        (["--email", "a@example.com", "--name", "x" * 201], "name is longer than 200 characters"),
        (["--email", "a@example.com", "--name", " \n "], "name must not be empty"),
        (["--email", "a@example.com", "--name", "A", "--team", "t" * 201], "must have 1 to 200 characters"),
        # Routing gives tickets by language tag: "english" would match none.
        (["--email", "a@example.com", "--name", "A", "--languages", "en,english"], "'english' is not a language tag"),
    ):
        done = subprocess.run(
            [CLI, "agent", "add", *extra, "--password-stdin"],
            env=env,
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0 and needle in done.stderr, (extra, done.stderr)
        assert "Traceback" not in done.stderr
    config = load_config(path=None, env=env)

    async def agents() -> list[tuple[str, str]]:
        db = Database(config.database_url)
        try:
            async with db.read() as s:
                return [(a.email, a.name) for a in (await s.scalars(select(Agent))).all()]
        finally:
            await db.dispose()

    assert asyncio.run(agents()) == []
    # A password piped from a file written on Windows ends its line with \r\n.
    add = ["agent", "add", "--email", "w@example.com", "--name", "Wa\nLi", "--password-stdin"]
    run_cli(add, env, PASSWORD + "\r\n")
    assert asyncio.run(agents()) == [("w@example.com", "Wa Li")]

    async def login() -> bool:
        from hub.actions import check_login

        db = Database(config.database_url)
        try:
            async with db.read() as s:
                return (await check_login(s, "w@example.com", PASSWORD)).email == "w@example.com"
        finally:
            await db.dispose()

    assert asyncio.run(login())


def test_agent_update_renames_promotes_and_sets_a_forgotten_password(tmp_path: Path) -> None:
    env = hub_env(tmp_path / "data")
    run_cli(["migrate"], env)
    for email, role in (("boss@example.com", "admin"), ("ana@example.com", "agent")):
        run_cli(
            ["agent", "add", "--email", email, "--name", email, "--role", role, "--password-stdin", "--team=Support"],
            env,
            stdin=PASSWORD + "\n",
        )
    config = load_config(path=None, env=env)

    async def give_boss_a_session() -> None:
        db = Database(config.database_url)
        try:
            async with db.write() as s:
                boss = await s.scalar(select(Agent).where(Agent.email == "boss@example.com"))
                assert boss is not None
                await do_issue_token(s, boss.id, 24)
        finally:
            await db.dispose()

    async def accounts() -> dict[str, tuple[str, str, bool, int]]:
        db = Database(config.database_url)
        try:
            async with db.read() as s:
                out = {}
                for a in (await s.scalars(select(Agent))).all():
                    tokens = await s.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.agent_id == a.id))
                    out[a.email] = (a.name, a.role, verify_password(a.password_hash, PASSWORD), int(tokens or 0))
                return out
        finally:
            await db.dispose()

    asyncio.run(give_boss_a_session())
    out = run_cli(["agent", "update", "--email", "ANA@example.com", "--name", "Ana Karimi", "--role", "admin"], env)
    assert "ana@example.com: changed name 'Ana Karimi', role admin" in out
    out = run_cli(["agent", "update", "--email", "boss@example.com", "--password-stdin"], env, stdin="new secret 123\n")
    assert "sessions are signed out" in out
    assert asyncio.run(accounts()) == {
        "boss@example.com": ("boss@example.com", "admin", False, 0),
        "ana@example.com": ("Ana Karimi", "admin", True, 0),
    }
    run_cli(["agent", "update", "--email", "boss@example.com", "--role", "agent"], env)
    for args, needle in (
        (["agent", "update", "--email", "ana@example.com", "--role", "agent"], "last active admin"),
        (["agent", "update", "--email", "nobody@example.com", "--name", "X"], "no agent has the email"),
        (["agent", "update", "--email", "ana@example.com"], "nothing to change"),
        # "support" beside "Support" would be a second, empty team.
        (["agent", "add", "--email", "sam@example.com", "--name", "Sam", "--team", "support"], "Support"),
    ):
        done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and needle in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert asyncio.run(accounts())["ana@example.com"][1] == "admin"
    assert "sam@example.com" not in asyncio.run(accounts())


def test_demo_shows_the_admin_password_only_while_it_is_the_one_it_made(tmp_path: Path) -> None:
    env = hub_env(tmp_path / "data")
    run_cli(["migrate"], env)
    first = run_cli(["demo"], env)
    password = first.split("admin@example.com  /  ")[1].split()[0]
    assert f"{password}   (created earlier)" in run_cli(["demo"], env)
    run_cli(["agent", "update", "--email", "admin@example.com", "--password-stdin"], env, stdin=PASSWORD + "\n")
    again = run_cli(["demo"], env)
    assert "(changed since; not shown)" in again and password not in again


def test_migrate_makes_the_database_owner_only_and_leaves_a_users_own_alone(tmp_path: Path) -> None:
    """The database holds customers' messages and password and token hashes."""
    env = hub_env(tmp_path / "data")
    run_cli(["migrate"], env)
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "data" / "hub.db").stat().st_mode & 0o777 == 0o600
    own = tmp_path / "own"
    own.mkdir(mode=0o755)
    own.chmod(0o755)
    (own / "hub.db").touch()
    (own / "hub.db").chmod(0o644)
    run_cli(["migrate"], hub_env(own))
    assert (own.stat().st_mode & 0o777, (own / "hub.db").stat().st_mode & 0o777) == (0o755, 0o644)
