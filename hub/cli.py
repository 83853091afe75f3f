"""``crm-hub``: the hub's command line."""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import click
from aiohttp import web

from hub.config import ConfigError, HubConfig, load_config


def _config(ctx: click.Context, overrides: dict[str, Any] | None = None) -> HubConfig:
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "config" not in obj:
        # Found here, not left to load_config, so that an error can tell
        # "read no config file" (defaults, ./data) from the file it read.
        path = (
            obj.get("config_path")
            or os.environ.get("HUB_CONFIG")
            or ("config.yaml" if Path("config.yaml").exists() else None)
        )
        if obj.get("config_path") and not Path(obj["config_path"]).is_file():
            # load_config would name HUB_CONFIG, where it found no path.
            raise click.ClickException(f"config file {path} does not exist (--config)")
        try:
            obj["config"] = load_config(path, overrides=overrides)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
        obj["config_file"] = path
    cfg: HubConfig = obj["config"]
    return cfg


NOT_MIGRATED = "the database is not migrated: run `crm-hub migrate`"
# asyncpg's errors for a server that answers but will not let us in.
_CONNECT_ERRORS = {
    "InvalidCatalogNameError",
    "InvalidPasswordError",
    "InvalidAuthorizationSpecificationError",
    "CannotConnectNowError",
    "TooManyConnectionsError",
    "ConnectionDoesNotExistError",
    "PostgresConnectionError",
}


def database_problem(exc: BaseException, url: str | None) -> str | None:
    """One line saying what is wrong with the database behind ``exc``, or
    None when ``exc`` is not about reaching it or its schema (a bug keeps its
    traceback)."""
    from sqlalchemy.exc import DBAPIError

    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DBAPIError):
            # The asyncpg dialect wraps asyncpg's own exception, which says more.
            orig: BaseException = err.orig or err
            cause = orig.__cause__ or orig
            name, text = type(cause).__name__, str(cause).strip()
            if name in ("UndefinedTableError", "UndefinedColumnError") or text.startswith(
                ("no such table", "no such column")
            ):
                return NOT_MIGRATED
            if "unable to open database file" in text and url and _sqlite_file_missing(url):
                return NOT_MIGRATED
            # Failures to connect carry no statement.
            if err.statement is None or name in _CONNECT_ERRORS or "unable to open database file" in text:
                return f"cannot reach the database at {_safe_url(url) if url else '?'}: {text}"
            return None
        if isinstance(err, OSError) and _raised_by_database_driver(err):
            return f"cannot reach the database at {_safe_url(url) if url else '?'}: {_os_reason(err)}"
        err = err.__cause__ or err.__context__
    return None


def _sqlite_file_missing(url: str) -> bool:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and bool(parsed.database) and not Path(str(parsed.database)).exists()


def _raised_by_database_driver(err: BaseException) -> bool:
    # asyncpg lets socket errors through unwrapped: where they were raised is
    # what tells a refused database connection from, say, a missing file.
    import traceback

    return any(
        str(frame.f_globals.get("__name__", "")).startswith(("asyncpg", "sqlalchemy"))
        for frame, _ in traceback.walk_tb(err.__traceback__)
    )


def _os_reason(err: OSError) -> str:
    if err.errno and err.errno > 0:
        return os.strerror(err.errno)
    if isinstance(err, TimeoutError):
        return "timed out"
    return str(err.strerror or err)


class _HubGroup(click.Group):
    """The top-level group: every command runs through :meth:`invoke`, so a
    database that cannot be reached or was never migrated ends any command in
    one line instead of a page of driver traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from storage.db import SQLITE_MAY_CREATE

        # Only migrate makes the SQLite file (owner-only), and it does so
        # itself: a command run before it fails instead of leaving an empty
        # database behind.
        may_create = SQLITE_MAY_CREATE.set(False)
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            if exc.message == NOT_MIGRATED:  # said by a command's own check (rasa-actions)
                raise click.ClickException(_where_not_migrated(ctx, NOT_MIGRATED)) from exc
            raise  # already said what is wrong
        except Exception as exc:
            cfg = (ctx.obj or {}).get("config")
            problem = database_problem(exc, cfg.database_url if isinstance(cfg, HubConfig) else None)
            if problem is None:
                raise
            raise click.ClickException(_where_not_migrated(ctx, problem)) from exc
        finally:
            SQLITE_MAY_CREATE.reset(may_create)


def _where_not_migrated(ctx: click.Context, problem: str) -> str:
    """``problem``, and when it is a database never migrated, which database
    that was: run from another folder, the defaults point at an empty ./data,
    and migrating there as told would make a second database beside the real one."""
    obj = ctx.find_root().obj or {}
    cfg = obj.get("config")
    if problem != NOT_MIGRATED or not isinstance(cfg, HubConfig):
        return problem
    said = f"{problem} (database {_safe_url(cfg.database_url)}"
    if obj.get("config_file") is None:
        said += (
            f"; read no config.yaml in {Path.cwd()} and HUB_CONFIG is unset, so the defaults were used: "
            "run crm-hub from the project folder or set HUB_CONFIG"
        )
    return said + ")"


async def schema_problem(url: str) -> str | None:
    """None when the database's schema is the newest this code knows, else
    what to do about it: serve checks this before it listens, so a database
    that was never migrated is not discovered by the first customer."""
    # Alembic logs at INFO what it loads and sets up; a check that finds
    # nothing wrong should say nothing.
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    alembic_log.setLevel(logging.WARNING)
    try:
        return await _schema_problem(url)
    finally:
        alembic_log.setLevel(level)


async def _schema_problem(url: str) -> str | None:
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError
    from sqlalchemy.ext.asyncio import create_async_engine

    from storage.migrate import alembic_config

    if _sqlite_file_missing(url):
        return NOT_MIGRATED  # and connecting would create an empty file
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            current = set(await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_heads()))
    finally:
        await engine.dispose()
    script = ScriptDirectory.from_config(alembic_config(url))
    if current == set(script.get_heads()):
        return None
    try:
        for revision in current:
            script.get_revision(revision)
    except CommandError:
        return (
            f"the database's schema (revision {', '.join(sorted(current))}) is newer than this crm-hub: "
            "upgrade crm-hub to the version that migrated it"
        )
    return NOT_MIGRATED


@click.group(cls=_HubGroup)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="config file (default: $HUB_CONFIG or ./config.yaml)",
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """The omnichannel CRM messaging hub."""
    ctx.ensure_object(dict)["config_path"] = config_path


@main.command()
@click.option(
    "--role",
    type=click.Choice(["all", "web", "worker"]),
    default="all",
    show_default=True,
    help="all: web and workers in one process; web / worker: one side, for scaling out (needs Redis and PostgreSQL)",
)
@click.option("--host", default=None, help="overrides server.host / HUB_HOST")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="overrides server.port / HUB_PORT")
@click.pass_context
def serve(ctx: click.Context, role: str, host: str | None, port: int | None) -> None:
    """Run the hub."""
    from hub import logs
    from hub.app import build_hub, create_app

    # Into the config, not only the socket: the public URL's default, the
    # OpenAPI servers and Twilio's callbacks are derived from them.
    overrides: dict[str, Any] = {}
    if host:
        overrides["server.host"] = host
    if port is not None:
        overrides["server.port"] = port
    cfg = _config(ctx, overrides)
    logs.configure(cfg.logging)
    try:
        hub = build_hub(cfg, role)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    problem = asyncio.run(schema_problem(cfg.database_url))
    if problem is not None:
        raise click.ClickException(_where_not_migrated(ctx, problem))
    app = create_app(hub.config, role, hub=hub)  # type: ignore[arg-type]
    app.on_startup.append(_freeze_startup_objects)
    host, port = cfg.server.host, cfg.server.port
    state = {"started": False, "listening": False}

    async def started(_app: web.Application) -> None:
        state["started"] = True

    def listening(_banner: str) -> None:
        state["listening"] = True
        click.echo(f"crm-hub {role} listening on http://{host}:{port}/", err=True)

    app.on_startup.append(started)
    try:
        web.run_app(app, host=host, port=port, print=listening, access_log=None, shutdown_timeout=10)
    except OSError as exc:
        # Start-up done but no socket yet: binding it failed (an OSError from
        # start-up itself, such as a refused database, is the group's to name).
        if not state["started"] or state["listening"]:
            raise
        hint = ""
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            # Below 1024 the system refuses anyone but root, so suggest one above.
            other = port + 1 if 1024 <= port < 65535 else 8080
            hint = f"; choose another port: crm-hub serve --port {other}, or HUB_PORT={other} make run"
        raise click.ClickException(f"cannot listen on {host}:{port}: {_os_reason(exc)}{hint}") from exc


async def _freeze_startup_objects(_app: web.Application) -> None:
    """After start-up, keep what the process loaded (scikit-learn, SciPy,
    SQLAlchemy, pydantic: ~220,000 objects) out of the garbage collector's
    scans: a full collection over them paused the event loop for ~130 ms, which
    was most of the hub's p99 latency under load."""
    gc.collect()
    gc.freeze()


@main.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create the database or upgrade it to the newest schema."""
    from storage.migrate import upgrade

    cfg = _config(ctx)
    before, now = upgrade(cfg.database_url)
    where = _safe_url(cfg.database_url)
    if before is None:
        click.echo(f"created the database (schema {now}): {where}")
    elif before == now:
        click.echo(f"database is up to date (schema {now}): {where}")
    else:
        click.echo(f"upgraded the database from schema {before} to {now}: {where}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@main.group()
def agent() -> None:
    """Manage agents."""


@agent.command("add")
@click.option("--email", required=True)
@click.option("--name", required=True)
@click.option("--role", type=click.Choice(["admin", "agent"]), default="agent", show_default=True)
@click.option(
    "--password-stdin", is_flag=True, help="read the password from standard input (else it is generated and printed)"
)
@click.option("--team", "teams", multiple=True, help="team name (repeatable; created if missing)")
@click.option("--skills", default="", help="comma-separated skills")
@click.option("--languages", default="", help="comma-separated language codes, e.g. en,fa")
@click.option("--phone", default=None, help="where calls for this agent ring (IVR, click-to-call)")
@click.option("--capacity", default="", help="open tickets per channel, e.g. webchat=3,email=10 (routing)")
@click.pass_context
def agent_add(
    ctx: click.Context,
    email: str,
    name: str,
    role: str,
    password_stdin: bool,
    teams: tuple[str, ...],
    skills: str,
    languages: str,
    phone: str | None,
    capacity: str,
) -> None:
    """Create an agent who can log in to the API and the inbox."""
    from hub.core import Role
    from hub.errors import HubError

    cfg = _config(ctx)
    from routing.settings import parse_capacity

    try:
        limits = parse_capacity(capacity)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--capacity") from exc
    if password_stdin:
        # A line as a terminal or a Windows file ends it: the \r would be part of the password.
        password = sys.stdin.readline().rstrip("\r\n")
        generated = False
    else:
        password = secrets.token_urlsafe(12)
        generated = True

    created: list[str] = []
    # As do_create_agent takes them: " Support " is the team Support.
    team_names = list(dict.fromkeys(t.strip() for t in teams))

    async def run() -> None:
        from sqlalchemy import select

        from hub.actions import do_create_agent
        from hub.router import check_team_names
        from storage.db import Database
        from storage.models import Team

        db = Database(cfg.database_url)
        try:
            async with db.read() as session:
                # "support" beside "Support" would be a second, empty team.
                await check_team_names(session, dict.fromkeys(team_names, ("--team", True)), create=True)
                existing = set((await session.scalars(select(Team.name).where(Team.name.in_(team_names)))).all())
            created.extend(t for t in team_names if t not in existing)
            async with db.write() as session:
                await do_create_agent(
                    session,
                    email=email,
                    name=name,
                    password=password,
                    role=Role(role),
                    teams=team_names,
                    skills=[s.strip() for s in skills.split(",") if s.strip()],
                    languages=[s.strip() for s in languages.split(",") if s.strip()],
                    phone=phone,
                    phone_region=cfg.phone.default_region,
                    capacity=limits,
                )
        finally:
            await db.dispose()

    try:
        asyncio.run(run())
    except HubError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"created {role} {email}" + (f" with password {password}" if generated else ""))
    for team in created:
        click.echo(f"created team {team}")


def _set_active(ctx: click.Context, email: str, active: bool) -> None:
    from sqlalchemy import select

    from hub.errors import HubError
    from hub.router import do_set_agent_active
    from storage.db import Database
    from storage.models import Agent

    cfg = _config(ctx)
    email = email.strip().lower()

    async def run() -> list[int]:
        db = Database(cfg.database_url)
        try:
            async with db.write() as session:
                found = await session.scalar(select(Agent).where(Agent.email == email).with_for_update())
                if found is None:
                    raise click.ClickException(f"no agent has the email {email}")
                return await do_set_agent_active(session, found, active, actor="cli")
        finally:
            await db.dispose()

    try:
        released = asyncio.run(run())
    except HubError as exc:
        raise click.ClickException(exc.message) from exc
    if active:
        click.echo(f"{email} may log in again")
    else:
        click.echo(f"{email} deactivated: tokens revoked, {len(released)} unresolved ticket(s) back in the queue")


@agent.command("update")
@click.option("--email", required=True, help="the agent to change")
@click.option("--name", default=None, help="their new name")
@click.option("--role", type=click.Choice(["admin", "agent"]), default=None, help="their new role")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="read a new password from standard input (every session of theirs is signed out)",
)
@click.pass_context
def agent_update(ctx: click.Context, email: str, name: str | None, role: str | None, password_stdin: bool) -> None:
    """Change an agent's name, role or password (a forgotten admin password, too)."""
    from sqlalchemy import select

    from hub.core import Role
    from hub.errors import HubError
    from hub.router import do_update_agent_account
    from hub.security import MIN_PASSWORD_LENGTH, hash_password
    from storage.db import Database
    from storage.models import Agent

    cfg = _config(ctx)
    email = email.strip().lower()
    if name is None and role is None and not password_stdin:
        raise click.UsageError("nothing to change: give --name, --role or --password-stdin")
    password_hash = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if len(password) < MIN_PASSWORD_LENGTH:
            # As agent add says it (do_create_agent), with the same exit status.
            raise click.ClickException(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
        password_hash = hash_password(password)

    async def run() -> tuple[str, str]:
        db = Database(cfg.database_url)
        try:
            async with db.write() as session:
                found = await session.scalar(select(Agent).where(Agent.email == email).with_for_update())
                if found is None:
                    raise click.ClickException(f"no agent has the email {email}")
                before = (found.name, found.role)
                await do_update_agent_account(
                    session,
                    found,
                    actor="cli",
                    name=name,
                    role=Role(role) if role else None,
                    password_hash=password_hash,
                )
                return before
        finally:
            await db.dispose()

    try:
        old_name, old_role = asyncio.run(run())
    except HubError as exc:
        raise click.ClickException(exc.message) from exc
    # Only what changed: a role or name they already had is said as such.
    said = [
        f"name {name!r}" if name and " ".join(name.split()) != old_name else "",
        f"role {role}" if role and role != old_role else "",
        "password" if password_stdin else "",
    ]
    same = [
        f"name {old_name!r}" if name and not said[0] else "",
        f"role {old_role}" if role and not said[1] else "",
    ]
    parts = [f"changed {', '.join(s for s in said if s)}" if any(said) else "nothing changed"]
    if any(same):
        parts.append(f"already had {', '.join(s for s in same if s)}")
    signed_out = "; their sessions are signed out" if password_stdin else ""
    click.echo(f"{email}: {'; '.join(parts)}{signed_out}")


@agent.command("list")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per agent, as GET /api/v1/agents has them")
@click.pass_context
def agent_list(ctx: click.Context, as_json: bool) -> None:
    """Every agent: email, name, role, whether they may log in, teams, presence."""
    from sqlalchemy import select

    from storage.db import Database
    from storage.models import Team
    from storage.queries import list_agents

    cfg = _config(ctx)

    async def run() -> tuple[list[dict[str, Any]], dict[int, str]]:
        db = Database(cfg.database_url)
        try:
            async with db.read() as session:
                names = {t.id: t.name for t in (await session.scalars(select(Team))).all()}
                return await list_agents(session), names
        finally:
            await db.dispose()

    views, team_names = asyncio.run(run())
    if as_json:
        for view in views:
            click.echo(json.dumps(view, ensure_ascii=False))
        return
    if not views:
        click.echo("no agents yet: crm-hub agent add --email ... --name ... --role admin")
        return
    rows = [
        (
            v["email"],
            v["name"],
            v["role"] if v["active"] else f"{v['role']} (deactivated)",
            ", ".join(sorted(team_names.get(t, str(t)) for t in v["team_ids"])) or "-",
            v["presence"],
            ",".join(v["skills"]) or "-",
            ",".join(v["languages"]) or "-",
        )
        for v in views
    ]
    header = ("EMAIL", "NAME", "ROLE", "TEAMS", "PRESENCE", "SKILLS", "LANGUAGES")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@agent.command("deactivate")
@click.option("--email", required=True)
@click.pass_context
def agent_deactivate(ctx: click.Context, email: str) -> None:
    """Someone left: no more logins, tokens revoked, their tickets back in the queue."""
    _set_active(ctx, email, False)


@agent.command("activate")
@click.option("--email", required=True)
@click.pass_context
def agent_activate(ctx: click.Context, email: str) -> None:
    """Let a deactivated agent log in again."""
    _set_active(ctx, email, True)


@main.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Create an admin agent and a little demo data (once); print the login."""
    from hub.demo import seed

    cfg = _config(ctx)
    email, password, created = asyncio.run(seed(cfg))
    base = cfg.public_url
    click.echo("")
    click.echo(f"  Admin login:  {email}  /  {password}" + ("" if created else "   (created earlier)"))
    click.echo(f"  Chat widget:  {base}/            (a demo page; write as a visitor)")
    click.echo(f"  Inbox:        {base}/inbox/      (log in as the admin above)")
    # /api/v1/ itself answers 404: the OpenAPI document is the API's front page.
    click.echo(f"  Agent API:    {base}/api/openapi.json   (POST /api/v1/auth/token with the login above)")
    click.echo(f"  Data:         {Path(cfg.data_dir).resolve()}")
    click.echo("")


# The bot's commands: faq import/export, bot ask/eval/report, rasa-actions.
from hub.bot_cli import register as _register_bot  # noqa: E402

_register_bot(main)

# Campaigns: crm-hub campaign create / preview / send / pause / resume / cancel / status / report.
from hub.campaigns.cli import register as _register_campaigns  # noqa: E402

_register_campaigns(main)

# Telegram: crm-hub telegram replay.
from hub.telegram_cli import register as _register_telegram  # noqa: E402

_register_telegram(main)

# The event stream: crm-hub events dead-letters [--requeue ID... | --requeue-all].
from hub.events_cli import register as _register_events  # noqa: E402

_register_events(main)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
