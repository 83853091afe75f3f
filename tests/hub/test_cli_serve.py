"""``crm-hub serve`` as an operator starts it: a port it cannot have is one
clear line (and it never claims to be listening), and ``--host`` / ``--port``
are what the hub advertises, not only where it binds; a start that finds
nothing wrong logs nothing about its checks."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.hub.procs import CLI, HubProcess, free_port, hub_env, run_cli


def test_a_port_in_use_is_one_line_and_never_listening(tmp_path: Path) -> None:
    env = hub_env(tmp_path / "data")
    run_cli(["migrate"], env)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([CLI, "serve", "--port", str(port)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    # Says how to get past it, for `make run` (which takes no flags) too.
    other = port + 1
    assert done.stderr.strip() == (
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use; "
        f"choose another port: crm-hub serve --port {other}, or HUB_PORT={other} make run"
    ), done.stderr


@pytest.mark.parametrize("command", ["serve", "rasa-actions"])
@pytest.mark.parametrize("port", ["70000", "-1"])
def test_a_port_out_of_range_is_refused_by_the_option(tmp_path: Path, command: str, port: str) -> None:
    done = subprocess.run(
        [CLI, command, "--port", port], env=hub_env(tmp_path / "data"), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "Invalid value for '--port'" in done.stderr and "0<=x<=65535" in done.stderr
    assert "Traceback" not in done.stderr


def test_split_roles_refuse_to_start_without_a_shared_secret_key(tmp_path: Path) -> None:
    env = hub_env(
        tmp_path / "data",
        HUB_DATABASE_URL="postgresql+asyncpg://hub@127.0.0.1:1/hub",
        HUB_REDIS_URL="redis://127.0.0.1:1/9",
    )
    del env["HUB_SECRET_KEY"]
    done = subprocess.run([CLI, "serve", "--role", "web"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "secret_key" in done.stderr and "HUB_SECRET_KEY" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "secret_key").exists()


async def test_host_and_port_flags_are_what_the_hub_advertises(tmp_path: Path) -> None:
    # The config says 8080 (and HUB_PORT is unset): the flag wins everywhere.
    env = hub_env(tmp_path / "data", HUB_LOG_LEVEL="INFO")
    await asyncio.to_thread(run_cli, ["migrate"], env)
    log = tmp_path / "hub.log"
    hub = HubProcess(env, port=free_port(), log=log)
    try:
        await hub.start()
        async with aiohttp.ClientSession() as http, http.get(f"{hub.base}/api/openapi.json") as r:
            servers = (await r.json())["servers"]
    finally:
        hub.stop()
    assert servers == [{"url": f"http://127.0.0.1:{hub.port}"}]
    said = log.read_text()
    assert f"crm-hub all listening on http://127.0.0.1:{hub.port}/" in said
    # The schema check before listening keeps Alembic's set-up chatter out of the log.
    assert "alembic" not in said, said


async def test_every_address_the_demo_prints_answers(tmp_path: Path) -> None:
    """What ``make run`` tells a new user to open works (it once pointed
    them at /api/v1/, which answers 404)."""
    port = free_port()
    env = hub_env(tmp_path / "data", HUB_PORT=str(port))
    await asyncio.to_thread(run_cli, ["migrate"], env)
    printed = await asyncio.to_thread(run_cli, ["demo"], env)
    urls = [word for word in printed.split() if word.startswith("http")]
    assert f"http://127.0.0.1:{port}/api/openapi.json" in urls, printed
    # The README shows the same addresses (on the default port).
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    shown = readme.split("Admin login:", 1)[1].split("```", 1)[0]
    assert [w for w in shown.split() if w.startswith("http")] == [u.replace(f":{port}/", ":8080/") for u in urls]
    hub = HubProcess(env, port=port)
    try:
        await hub.start()
        async with aiohttp.ClientSession() as http:
            for url in urls:
                async with http.get(url) as r:
                    assert r.status == 200, url
    finally:
        hub.stop()
