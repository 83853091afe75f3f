"""SIGKILL the server at a random moment while visitors write and agents
reply; start it again: nothing acknowledged is lost, nothing is duplicated,
and replies that were accepted but not yet sent go out."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.hub.helpers import PASSWORD, Agent
from tests.hub.procs import HubProcess, hub_env, run_cli

pytestmark = pytest.mark.slow

VISITORS = 12


class Visitor:
    def __init__(self, n: int) -> None:
        self.n = n
        self.token: str | None = None
        self.acked: dict[str, int] = {}  # client_id -> stored id
        self.sent = 0

    async def write(self, http: aiohttp.ClientSession, base: str, stop: asyncio.Event) -> None:
        """Send until the server dies; a message counts only once acknowledged."""
        url = f"{base}/chat/ws" + (f"?token={self.token}" if self.token else "")
        try:
            async with http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=2)) as ws:
                session = await ws.receive_json(timeout=5)
                self.token = session["visitor_token"]
                while not stop.is_set():
                    client_id = f"v{self.n}-m{self.sent}"
                    await ws.send_json({"type": "message", "text": f"msg {client_id}", "client_id": client_id})
                    while True:
                        frame = await ws.receive_json(timeout=5)
                        if frame.get("type") == "message" and frame.get("client_id") == client_id:
                            self.acked[client_id] = frame["id"]
                            self.sent += 1
                            break
        except (aiohttp.ClientError, ConnectionError, TimeoutError, TypeError, ValueError):
            return  # the server was killed mid-conversation


async def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    env = hub_env(tmp_path / "data")
    run_cli(["migrate"], env)
    run_cli(
        ["agent", "add", "--email", "ops@example.com", "--name", "Ops", "--role", "admin", "--password-stdin"],
        env,
        stdin=PASSWORD + "\n",
    )
    rng = random.Random(20261122)
    visitors = [Visitor(i) for i in range(VISITORS)]
    replies: dict[int, int] = {}  # reply id -> ticket id, every reply that got a 201

    async with aiohttp.ClientSession() as http:
        for round_ in range(3):
            server = HubProcess(env, log=tmp_path / "hub.log")
            await server.start()
            try:
                stop = asyncio.Event()
                writers = [asyncio.create_task(v.write(http, server.base, stop)) for v in visitors]
                agent = await Agent.login(http, server.base, "ops@example.com")
                await asyncio.sleep(0.3)
                tickets = (await agent.get("/api/v1/tickets?limit=200"))["items"]

                async def reply(ticket_id: int, i: int, agent: Agent = agent, round_: int = round_) -> None:
                    try:
                        body = await agent.post(
                            f"/api/v1/tickets/{ticket_id}/messages", {"body": f"r{round_}-{i}"}, 201
                        )
                    except (aiohttp.ClientError, AssertionError):
                        return  # not acknowledged: it need not exist
                    replies[body["id"]] = ticket_id

                repliers = [asyncio.create_task(reply(t["id"], i)) for i, t in enumerate(tickets * 5)]
                await asyncio.sleep(rng.uniform(0.05, 0.6))
            finally:
                server.kill()
            stop.set()
            await asyncio.gather(*writers, *repliers, return_exceptions=True)

        server = HubProcess(env, log=tmp_path / "hub.log")
        await server.start()
        try:
            agent = await Agent.login(http, server.base, "ops@example.com")
            stored: dict[str, list[int]] = {}
            statuses: dict[int, str] = {}
            cursor = ""
            while True:
                page = await agent.get(f"/api/v1/tickets?limit=200{cursor}")
                for t in page["items"]:
                    detail = await agent.get(f"/api/v1/tickets/{t['id']}")
                    for m in detail["messages"]:
                        if m["direction"] == "in":
                            stored.setdefault(m["body"], []).append(m["id"])
                        else:
                            statuses[m["id"]] = m["status"]
                if not page["next_cursor"]:
                    break
                cursor = f"&cursor={page['next_cursor']}"
            acked = {f"msg {cid}": mid for v in visitors for cid, mid in v.acked.items()}
            assert acked, "the visitors never got an acknowledgement"
            missing = [body for body in acked if body not in stored]
            assert not missing, f"{len(missing)} acknowledged messages were lost: {missing[:5]}"
            dupes = {body: ids for body, ids in stored.items() if len(ids) > 1}
            assert not dupes, f"duplicated: {dupes}"
            for body, mid in acked.items():
                assert stored[body] == [mid]
            assert replies, "no reply was acknowledged before the kills"
            # Every acknowledged reply goes out after the restart.
            pending: list[Any] = []
            for _ in range(100):
                for rid in replies:
                    detail_status = statuses.get(rid)
                    if detail_status not in ("sent", "delivered", "read"):
                        pending.append(rid)
                if not pending:
                    break
                await asyncio.sleep(0.2)
                statuses = {}
                for tid in set(replies.values()):
                    for m in (await agent.get(f"/api/v1/tickets/{tid}"))["messages"]:
                        statuses[m["id"]] = m["status"]
                pending = []
            assert not pending, f"replies never sent: {pending[:10]}"
            assert set(replies) <= set(statuses)
        finally:
            server.stop()
