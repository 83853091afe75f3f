"""``crm-hub migrate``: create or upgrade the database to the newest schema."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Blocking: Alembic's env runs its own event loop. Returns the schema
    revision the database had (None: it had none, it was created) and the one
    it has now."""
    if url.startswith("sqlite"):
        _create_sqlite_file(url)
    cfg = alembic_config(url)
    command.upgrade(cfg, revision)
    target = ScriptDirectory.from_config(cfg).get_current_head() if revision == "head" else revision
    return cfg.attributes.get("revision_before"), target


def _create_sqlite_file(url: str) -> None:
    """The database file and its folders, made here owner-only before SQLite
    makes them with the umask's 0755 / 0644: they hold customers' messages and
    password and token hashes (SQLite gives its -wal and -shm files the
    database's mode). What exists already keeps the mode its owner gave it."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    for folder in reversed([p for p in (path.parent, *path.parent.parents) if not p.exists()]):
        folder.mkdir(mode=0o700, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


async def upgrade_async(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    return await asyncio.to_thread(upgrade, url, revision)
