"""The same hub on PostgreSQL and Redis Streams, as separate web and worker
processes (two of each): load is shared, and live events reach an agent
connected to any web process."""

from __future__ import annotations

import asyncio
import re
import secrets
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.hub.helpers import PASSWORD, Agent, next_frame
from tests.hub.procs import HubProcess, hub_env, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


async def handled_events(http: aiohttp.ClientSession, base: str) -> float:
    async with http.get(f"{base}/metrics") as r:
        text = await r.text()
    match = re.search(r"^hub_stream_handled_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_web_and_worker_processes_share_postgres_and_redis(
    tmp_path: Path, postgres_url: str, redis: aioredis.Redis
) -> None:
    prefix = f"hubtest:{secrets.token_hex(4)}"
    config = tmp_path / "config.yaml"
    config.write_text(f'redis:\n  stream: "{prefix}:events"\n  live_channel: "{prefix}:live"\n', encoding="utf-8")
    env = hub_env(
        tmp_path / "data",
        HUB_DATABASE_URL=postgres_url,
        HUB_REDIS_URL="redis://127.0.0.1:6379/0",
        HUB_CONFIG=str(config),
    )
    run_cli(["migrate"], env)
    run_cli(
        ["agent", "add", "--email", "a@example.com", "--name", "A", "--role", "admin", "--password-stdin"],
        env,
        stdin=PASSWORD + "\n",
    )
    procs = [HubProcess(env, role, log=tmp_path / f"{role}{i}.log") for role in ("web", "worker") for i in range(2)]
    try:
        await asyncio.gather(*(p.start() for p in procs))
        web_a, web_b, worker_a, worker_b = procs
        async with aiohttp.ClientSession() as http:
            agent = await Agent.login(http, web_a.base, "a@example.com")
            async with agent.events() as events:
                visitors = [await http.ws_connect(f"{web_b.base}/chat/ws") for _ in range(20)]
                try:
                    for v in visitors:
                        await next_frame(v, "session")
                    acks = []
                    for round_ in range(5):
                        for i, v in enumerate(visitors):
                            await v.send_json({"type": "message", "text": f"hi {i}/{round_}", "client_id": f"{round_}"})
                        for v in visitors:
                            acks.append(await next_frame(v, "message", client_id=f"{round_}"))
                    wanted = {a["id"] for a in acks}
                    got: set[int] = set()
                    while got != wanted:
                        frame = await next_frame(events, "message.received")
                        got.add(frame["message"]["id"])
                    # The agent (on web A) replies; the visitor (on web B) gets it.
                    tickets = {
                        t["last_message"]["id"]: t["id"] for t in (await agent.get("/api/v1/tickets?limit=50"))["items"]
                    }
                    first_visitor_ticket = tickets[acks[-len(visitors)]["id"]]
                    reply = await agent.post(
                        f"/api/v1/tickets/{first_visitor_ticket}/messages", {"body": "from A"}, 201
                    )
                    frame = await next_frame(visitors[0], "message", id=reply["id"])
                    assert frame["text"] == "from A"
                    await next_frame(events, "message.status", message__id=reply["id"], message__status="sent")
                    # Redis hands a burst to whichever worker is blocked first; more
                    # traffic (bounded) gives the other its turn if it had none yet.
                    for extra in range(20):
                        counts = [await handled_events(http, w.base) for w in (worker_a, worker_b)]
                        if all(c > 0 for c in counts):
                            break
                        for v in visitors:
                            await v.send_json({"type": "message", "text": "more", "client_id": f"x{extra}"})
                        for v in visitors:
                            await next_frame(v, "message", client_id=f"x{extra}")
                        await asyncio.sleep(0.2)
                finally:
                    for v in visitors:
                        await v.close()
            # Both workers took part, and the stream holds nothing unacknowledged.
            counts = [await handled_events(http, w.base) for w in (worker_a, worker_b)]
            assert all(c > 0 for c in counts), counts
            assert await redis.xlen(f"{prefix}:events") == 0
    finally:
        for p in procs:
            p.stop()
        keys = [k async for k in redis.scan_iter(f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
