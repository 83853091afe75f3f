"""Routing benchmark: how fast ``decide`` is, and how many tickets per second
the workers assign end to end.

1. ``decide`` with 200 agents in 10 teams and 50 rules (most tickets match a
   late rule or none), against the spine's first step measured in the same run
   (``decide`` without a snapshot) as the baseline.
2. End to end in one process on SQLite: tickets ingested, their
   ``message.received`` events handled by the worker steps that route them
   (rules, agent locked, capacity counted, events and audit written). Baseline:
   the same with no team to route to (the step runs, nothing is assigned).
3. End to end at scale: real ``crm-hub serve --role worker`` processes on
   PostgreSQL and Redis route the tickets as the stream delivers them. Baseline:
   the same tickets routed to a team whose agents pick from its queue (rules and
   writes, but no agent chosen or locked).

    .venv/bin/python bench/routing.py [--tickets 2000] [--workers 4] [--decisions 20000] [--no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hub.actions import do_ensure_inbox
from hub.core import Channel, InboundMessage, Presence, TicketStatus
from routing import AgentState, RoutingSnapshot, TeamState, TicketSnapshot, decide
from routing.decide import CompiledRule
from routing.match import ContactFacts
from routing.settings import RoutingRule
from storage.db import Database
from storage.ingest import ingest_batch
from storage.migrate import upgrade_async

WORDS = ["invoice", "refund", "shipping", "password", "login", "price", "discount", "warranty", "فاکتور", "ارسال"]


def snapshot(agents: int = 200, rules: int = 50, teams: int = 10) -> RoutingSnapshot:
    rng = random.Random(7)
    team_states = {
        i: TeamState(i, f"Team {i}", strategy="round_robin" if i % 2 else "balanced") for i in range(1, teams + 1)
    }
    compiled = []
    for n in range(rules):
        kind = n % 5
        when: dict[str, Any] = {}
        if kind == 0:
            when = {"keywords": [f"{rng.choice(WORDS)}{n}", f"code {n}"]}
        elif kind == 1:
            when = {"channel": ["email"], "tags": [f"tag{n}"]}
        elif kind == 2:
            when = {"language": ["ar"], "segment": [f"s{n}"]}
        elif kind == 3:
            when = {"lifecycle_stage": [f"stage{n}"]}
        else:
            when = {"attributes": {"plan": f"p{n}"}}
        compiled.append(
            CompiledRule.of(
                RoutingRule.model_validate({"name": f"r{n}", "when": when, "team": f"Team {n % teams + 1}"})
            )
        )
    # The last rule catches Persian: many tickets walk the whole list.
    compiled[-1] = CompiledRule.of(
        RoutingRule.model_validate({"name": "fa", "when": {"language": ["fa"]}, "team": "Team 1"})
    )
    agent_states = [
        AgentState(
            id=i,
            teams=frozenset({i % teams + 1}),
            presence=Presence.ONLINE if i % 7 else Presence.AWAY,
            skills=frozenset({"billing"} if i % 3 == 0 else set()),
            languages=frozenset({"en", "fa"} if i % 2 else {"en"}),
            capacity={"webchat": 3 + i % 4},
            load={"webchat": rng.randint(0, 4)},
        )
        for i in range(1, agents + 1)
    ]
    return RoutingSnapshot(
        now=datetime(2025, 6, 2, 10, tzinfo=UTC),
        rules=tuple(compiled),
        teams=team_states,
        team_ids={t.name: t.id for t in team_states.values()},
        agents=agent_states,
        cursors={1: 11},
        default_team_id=2,
        default_capacity={"webchat": 3},
    )


def tickets(n: int) -> list[TicketSnapshot]:
    rng = random.Random(11)
    texts = ["Where is my order?", "سلام، سفارش من کی می‌رسد؟", "I forgot my password", "price of the blue one"]
    return [
        TicketSnapshot(
            id=i,
            status=TicketStatus.OPEN,
            channel="webchat",
            inbox="webchat",
            assignee_id=None,
            team_id=None,
            ticket_created=True,
            bot_enabled=False,
            bot_silenced=False,
            text=rng.choice(texts),
            language="fa" if i % 2 else "en",
            contact=ContactFacts(tags=frozenset({"a", "b"}), lifecycle_stage="lead"),
        )
        for i in range(n)
    ]


def rate(fn: Any, items: list[Any], world: RoutingSnapshot | None) -> float:
    start = time.perf_counter()
    if world is None:
        for t in items:
            fn(t)
    else:
        for t in items:
            fn(t, world)
    return len(items) / (time.perf_counter() - start)


def bench_decide(n: int) -> dict[str, float]:
    world = snapshot()
    items = tickets(n)
    rate(decide, items[:500], world)  # warm up
    baseline = rate(decide, items, None)
    full = rate(decide, items, world)
    assigned = sum(1 for t in items[:1000] if decide(t, world).assignee_id is not None)
    return {"decide_per_s": full, "baseline_per_s": baseline, "ratio": full / baseline, "assigned_of_1000": assigned}


async def bench_end_to_end(url: str, n: int, *, route: bool) -> float:
    from tests.hub.routing_world import add_agent, pump, routing_config, worker

    await upgrade_async(url)
    setup = Database(url)
    async with setup.write() as s:
        await do_ensure_inbox(s, key="webchat", channel=Channel.WEBCHAT, name="Website")
    config = routing_config(
        default_team="Support" if route else None,
        teams=[{"name": "Support"}],
        rules=[{"name": f"r{i}", "when": {"keywords": [f"word{i}"]}, "team": "Support"} for i in range(50)],
        sticky_window_hours=0,
    )
    for i in range(50):
        await add_agent(setup, f"a{i}@example.com", capacity={"webchat": n})
    one = worker(setup, config)
    await one.router.setup()
    await ingest_tickets(setup, n)
    began = time.perf_counter()
    await pump([one])
    elapsed = time.perf_counter() - began
    await setup.dispose()
    return n / elapsed


async def ingest_tickets(db: Database, n: int) -> None:
    """``n`` new web chat tickets, one message each, in batches as ingest does."""
    for start in range(0, n, 200):
        async with db.write() as s:
            await ingest_batch(
                s,
                [
                    InboundMessage(
                        channel=Channel.WEBCHAT, inbox="webchat", external_id=f"b{i}", sender=f"v{i}", body=f"hello {i}"
                    )
                    for i in range(start, min(n, start + 200))
                ],
            )


async def bench_scale(n: int, workers_n: int, *, assign: bool, work: Path) -> float:
    """Tickets per second routed by ``workers_n`` real ``crm-hub serve --role
    worker`` processes on PostgreSQL and Redis: tickets are ingested into the
    database, the relays publish their events, the workers route them; the clock
    stops when every ticket is assigned (``assign``) or queued (the baseline: a
    team whose agents pick from its queue, so no agent is chosen or locked)."""
    import secrets

    import yaml

    from bench import _procs
    from bench.ingest import REDIS_URL, clean_env, drop_redis_keys, postgres_database
    from tests.hub.routing_world import add_agent

    prefix = f"bench-routing-{secrets.token_hex(4)}"
    config = {
        "logging": {"level": "WARNING", "format": "json"},
        "redis": {"stream": f"{prefix}:events", "live_channel": f"{prefix}:live"},
        "routing": {
            "default_team": "Support",
            "teams": [{"name": "Support", "auto_assign": assign}],
            "rules": [{"name": f"r{i}", "when": {"keywords": [f"word{i}"]}, "team": "Support"} for i in range(50)],
            "sticky_window_hours": 0,
            "presence": {"away_after_seconds": 3600},
        },
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    procs = _procs.Procs()
    try:
        async with postgres_database() as url:
            await upgrade_async(url)
            setup = Database(url)
            async with setup.write() as s:
                await do_ensure_inbox(s, key="webchat", channel=Channel.WEBCHAT, name="Website")
            for i in range(50):
                await add_agent(setup, f"a{i}@example.com", capacity={"webchat": n})
            env = clean_env()
            env.update(
                {
                    "HUB_CONFIG": str(work / "config.yaml"),
                    "HUB_DATA_DIR": str(work / "data"),
                    "HUB_SECRET_KEY": secrets.token_urlsafe(32),
                    "HUB_DATABASE_URL": url,
                    "HUB_REDIS_URL": REDIS_URL,
                }
            )
            crm_hub = str(Path(sys.executable).parent / "crm-hub")
            for k in range(workers_n):
                port = _procs.free_port()
                proc = procs.start(
                    f"worker{k}",
                    [crm_hub, "serve", "--role", "worker", "--port", str(port)],
                    env=env,
                    cwd=work,
                    log_path=work / f"worker{k}.log",
                )
                await _procs.wait_ready(proc, f"http://127.0.0.1:{port}/healthz")
            began = time.perf_counter()
            await ingest_tickets(setup, n)
            from sqlalchemy import func, select

            from storage.models import Ticket

            done_col = Ticket.assignee_id if assign else Ticket.queued_at
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                async with setup.read() as s:
                    done = await s.scalar(select(func.count()).select_from(Ticket).where(done_col.is_not(None)))
                if done == n:
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"only {done} of {n} tickets routed in 600 s; see {work}")
            elapsed = time.perf_counter() - began
            procs.stop_all()
            await setup.dispose()
            return n / elapsed
    finally:
        procs.stop_all()
        await drop_redis_keys(prefix)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--tickets", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL + Redis phase")
    args = parser.parse_args()

    d = bench_decide(args.decisions)
    print(f"decide, 200 agents / 50 rules: {d['decide_per_s']:,.0f} decisions/s")
    print(f"  baseline (spine's first step, no snapshot): {d['baseline_per_s']:,.0f}/s; ratio {d['ratio']:.3f}")
    print(f"  {d['assigned_of_1000']:.0f} of 1,000 sample tickets got an agent")

    with tempfile.TemporaryDirectory() as tmp:
        results: dict[bool, float] = {}
        for route in (False, True):
            url = f"sqlite+aiosqlite:///{Path(tmp) / f'bench-{route}.db'}"
            results[route] = await bench_end_to_end(url, args.tickets, route=route)
            label = "assignments/s" if route else "events/s with no team to route to (baseline)"
            print(f"end to end in one process, SQLite: {results[route]:,.0f} {label}")
        print(f"  ratio to the baseline: {results[True] / results[False]:.3f}")
        if args.no_postgres:
            return
        scale: dict[bool, float] = {}
        for assign in (False, True):
            scale[assign] = await bench_scale(
                args.tickets, args.workers, assign=assign, work=Path(tmp) / f"scale-{assign}"
            )
            label = "assignments/s" if assign else "tickets/s routed to a queue only (baseline)"
            print(f"end to end, PostgreSQL + Redis, {args.workers} worker processes: {scale[assign]:,.0f} {label}")
        print(f"  ratio to the baseline: {scale[True] / scale[False]:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
