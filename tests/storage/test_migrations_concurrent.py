"""Every container of the scale layout runs ``crm-hub migrate`` as it starts:
several at once on a fresh PostgreSQL database all succeed, and the schema is
migrated once."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from storage.migrate import alembic_config
from tests.hub.procs import CLI, hub_env

pytestmark = pytest.mark.postgres


async def test_concurrent_migrate_on_a_fresh_database(tmp_path: Path, postgres_url: str) -> None:
    env = hub_env(tmp_path / "data", HUB_DATABASE_URL=postgres_url)
    procs = [
        subprocess.Popen([CLI, "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = [await asyncio.to_thread(p.communicate, timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    # They took turns: one created the schema, the others found it current.
    said = sorted(out.split(" (schema")[0] for out, _ in results)
    assert said == ["created the database", "database is up to date", "database is up to date"], results
    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
    finally:
        await engine.dispose()
    assert versions == ScriptDirectory.from_config(alembic_config(postgres_url)).get_heads()
