"""Ingest benchmark: how many web chat messages per second the hub takes in and
delivers to an agent, end to end, and with what latency; against the ceiling of
a bare aiohttp server driven by the same load generator.

    .venv/bin/python bench/ingest.py            # everything (make bench)
    .venv/bin/python bench/ingest.py --quick    # a small smoke run
    .venv/bin/python bench/ingest.py --help

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import _load, _procs, _profile  # noqa: E402
from bench._load import CpuMeter, HubLoad, PhaseResult, RateResult, cpu_text, server_cpu_us  # noqa: E402
from bench._procs import Proc, Procs  # noqa: E402

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
DEFAULT_CRM_HUB = str(BIN / "crm-hub")
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
AGENT_EMAIL = "bench@example.com"
AGENT_PASSWORD = secrets.token_urlsafe(16)
RESULTS = ROOT / "bench" / "results"

# The targets.
TARGET_RATE = 2000.0  # messages/s end to end
TARGET_RATIO = 0.15  # of the bare websocket ceiling
TARGET_P99_MS = 50.0  # at the steady rate


def say(text: str = "") -> None:
    print(text, flush=True)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def num(value: float, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


# --- facts ---------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def code_facts() -> dict[str, Any]:
    """Which code was measured: the commit, and the files changed since (read-only git)."""
    import subprocess

    def git(*argv: str) -> str:
        try:
            done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    # Not `status --porcelain`: its leading status column is blank for files
    # changed but not staged, and the strip above would eat into the first name.
    changed = git("diff", "--name-only", "HEAD").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown", "uncommitted_changes": changed}


def machine_facts(loop_name: str) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "load_average_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "aiohttp": _version("aiohttp"),
        "sqlalchemy": _version("sqlalchemy"),
        "aiosqlite": _version("aiosqlite"),
        "asyncpg": _version("asyncpg"),
        "redis_py": _version("redis"),
        "load_generator_loop": loop_name,
        "server_loop": "asyncio (default), as crm-hub serve",
    }


# --- processes -------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class HubRun:
    """A running hub: its processes (web first), the web port, an agent token."""

    procs: list[Proc]
    port: int
    token: str
    notes: list[str] = field(default_factory=list)


async def login(port: int) -> str:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.post(
            f"http://{HOST}:{port}/api/v1/auth/token", json={"email": AGENT_EMAIL, "password": AGENT_PASSWORD}
        ) as r,
    ):
        body = await r.json()
        if r.status != 201:
            raise RuntimeError(f"agent login failed: HTTP {r.status} {body}")
        token: str = body["token"]
        return token


def write_config(work: Path, stream_prefix: str) -> Path:
    # Only what differs from the defaults; HUB_CONFIG keeps the repository's
    # config.yaml (which others may be editing) out of the measurement.
    path = work / "config.yaml"
    path.write_text(
        "logging:\n"
        "  level: WARNING\n"
        "  format: json\n"
        "redis:\n"
        f'  stream: "{stream_prefix}:events"\n'
        f'  live_channel: "{stream_prefix}:live"\n'
        # The load generator is one client address whose visitors send far
        # faster than anyone types: the abuse limits stay on (their cost is part
        # of the figure) but far above what it sends.
        "webchat:\n"
        "  limits:\n"
        "    connections_per_minute: 1000000\n"
        "    new_visitors_per_hour: 1000000\n"
        "    messages_per_minute: 1000000\n",
        encoding="utf-8",
    )
    return path


def hub_env(work: Path, port: int, extra: dict[str, str]) -> dict[str, str]:
    env = clean_env()
    env.update(
        {
            "HUB_CONFIG": str(work / "config.yaml"),
            "HUB_DATA_DIR": str(work / "data"),
            "HUB_HOST": HOST,
            "HUB_PORT": str(port),
            "HUB_SECRET_KEY": secrets.token_urlsafe(32),
            "HUB_LOG_LEVEL": "WARNING",
            **extra,
        }
    )
    return env


async def prepare_database(crm_hub: str, env: dict[str, str], work: Path) -> None:
    await asyncio.to_thread(_procs.run_cli, [crm_hub, "migrate"], env=env, cwd=work)
    await asyncio.to_thread(
        _procs.run_cli,
        [crm_hub, "agent", "add", "--email", AGENT_EMAIL, "--name", "Bench", "--role", "admin", "--password-stdin"],
        env=env,
        cwd=work,
        stdin_data=AGENT_PASSWORD + "\n",
    )


async def start_embedded(procs: Procs, work: Path, crm_hub: str = DEFAULT_CRM_HUB) -> HubRun:
    port = _procs.free_port()
    write_config(work, f"bench-{secrets.token_hex(4)}")
    env = hub_env(work, port, {})
    await prepare_database(crm_hub, env, work)
    hub = procs.start("hub", [crm_hub, "serve"], env=env, cwd=work, log_path=work / "hub.log")
    await _procs.wait_ready(hub, f"http://{HOST}:{port}/readyz")
    return HubRun([hub], port, await login(port))


async def start_scale(
    procs: Procs, work: Path, database_url: str, stream_prefix: str, crm_hub: str = DEFAULT_CRM_HUB
) -> HubRun:
    port, worker_port = _procs.free_port(), _procs.free_port()
    write_config(work, stream_prefix)
    env = hub_env(work, port, {"HUB_DATABASE_URL": database_url, "HUB_REDIS_URL": REDIS_URL})
    await prepare_database(crm_hub, env, work)
    web = procs.start("web", [crm_hub, "serve", "--role", "web"], env=env, cwd=work, log_path=work / "web.log")
    await _procs.wait_ready(web, f"http://{HOST}:{port}/readyz")
    # Started after the web process is up, so that the two do not race to
    # create the configured inbox in an empty database.
    worker = procs.start(
        "worker",
        [crm_hub, "serve", "--role", "worker", "--port", str(worker_port)],
        env=env,
        cwd=work,
        log_path=work / "worker.log",
    )
    await _procs.wait_ready(worker, f"http://{HOST}:{worker_port}/readyz")
    return HubRun([web, worker], port, await login(port))


# --- services for the scale mode ---------------------------------------------------


async def scale_services() -> tuple[str | None, str]:
    """(None, versions) when PostgreSQL and Redis answer, else (why not, "")."""
    import asyncpg
    import redis.asyncio as aioredis

    if not _procs.port_open(HOST, 5432):
        return "PostgreSQL is not listening on 127.0.0.1:5432", ""
    if not _procs.port_open(HOST, 6379):
        return "Redis is not listening on 127.0.0.1:6379", ""
    try:
        conn = await asyncio.wait_for(asyncpg.connect(POSTGRES_ADMIN), 5)
        try:
            pg_version = str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()
    except Exception as exc:
        return f"PostgreSQL at {POSTGRES_ADMIN} refused the benchmark ({type(exc).__name__}: {exc})", ""
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        info = await client.info("server")
        redis_version = str(info.get("redis_version", "?"))
    except Exception as exc:
        return f"Redis at {REDIS_URL} did not answer ({type(exc).__name__}: {exc})", ""
    finally:
        await client.aclose()
    return None, f"PostgreSQL {pg_version}, Redis {redis_version}"


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    import asyncpg

    name = f"bench_{secrets.token_hex(5)}"
    conn = await asyncio.wait_for(asyncpg.connect(POSTGRES_ADMIN), 10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        conn = await asyncio.wait_for(asyncpg.connect(POSTGRES_ADMIN), 10)
        try:
            await asyncio.wait_for(conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'), 30)
        finally:
            await conn.close()


async def drop_redis_keys(prefix: str) -> int:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        return len(keys)
    finally:
        await client.aclose()


# --- measurements --------------------------------------------------------------------


async def measure_ceiling(procs: Procs, work: Path, args: argparse.Namespace) -> dict[str, RateResult]:
    port = _procs.free_port()
    bare = procs.start(
        "bare",
        [sys.executable, str(ROOT / "bench" / "bare.py"), "--port", str(port)],
        env=clean_env(),
        cwd=work,
        log_path=work / "bare.log",
    )
    try:
        await _procs.wait_ready(bare, f"http://{HOST}:{port}/", timeout=30)
        meter = CpuMeter([bare])
        ws = await _load.ws_echo_rate(port, args.clients, args.ceiling_seconds, meter, warmup=args.warmup_seconds)
        post = await _load.http_post_rate(port, args.clients, args.ceiling_seconds, meter, warmup=args.warmup_seconds)
    finally:
        procs.stop(bare)
    return {"websocket_echo": ws, "form_post": post}


def print_ceiling(c: dict[str, RateResult]) -> None:
    ws, post = c["websocket_echo"], c["form_post"]
    say(f"  websocket echo (frame in, frame out)   {num(ws.rate):>9} round trips/s   <- the ceiling used for ratios")
    say(
        f"      p50 {num(ws.latency['p50_ms'], 1)} ms, p99 {num(ws.latency['p99_ms'], 1)} ms; CPU: {cpu_text(ws.cpu)}; "
        f"server CPU {num(_cpu_per(ws), 1)} us per round trip"
    )
    say(f"  form POST -> empty 200 (reference)     {num(post.rate):>9} requests/s   (the issue quotes ~13,000)")
    errors = f", {post.errors} non-200" if post.errors else ""
    say(
        f"      p50 {num(post.latency['p50_ms'], 1)} ms, p99 {num(post.latency['p99_ms'], 1)} ms; "
        f"CPU: {cpu_text(post.cpu)}{errors}; server CPU {num(_cpu_per(post), 1)} us per request"
    )
    for r in (ws, post):
        _warn_cpu(r.cpu)


def _cpu_per(r: RateResult | PhaseResult) -> float:
    count = r.completed if isinstance(r, RateResult) else r.delivered
    return server_cpu_us(r.cpu, r.seconds, count)


def _warn_cpu(cpu: dict[str, float]) -> None:
    """Say when a figure is not the server's own: the load generator was the
    limit, or something else on the machine took CPU meanwhile."""
    if cpu.get("load generator", 0.0) > 0.9:
        say("      NOTE: the load generator used a whole core: the server may have had more to give")
    if cpu.get("others", 0.0) > 0.3:
        say(
            f"      NOTE: other work used {cpu['others'] * 100:.0f}% of a core meanwhile "
            "(another process, or kernel time): this figure is disturbed"
        )


@dataclass
class ModeResult:
    warmup: PhaseResult
    throughput: PhaseResult
    steady: PhaseResult
    profile: dict[str, Any] = field(default_factory=dict)


async def measure_hub(
    procs: Procs, run: HubRun, args: argparse.Namespace, label: str, others: tuple[str, ...] = ()
) -> ModeResult:
    load = HubLoad(run.port, run.token, args.clients)
    meter = CpuMeter(run.procs, others)
    await load.connect()
    try:
        warm = await load.closed_loop("warm-up", args.clients, meter, timeout=args.phase_timeout)
        say(
            f"  warm-up: {warm.delivered} first messages (one new contact and ticket per visitor) "
            f"in {num(warm.seconds, 2)} s"
        )
        await revive(load)
        thr = await load.closed_loop("throughput", args.messages, meter, timeout=args.phase_timeout)
        print_throughput(thr, args)
        await asyncio.sleep(1.0)  # let the relay finish deleting handled outbox rows
        await revive(load)
        steady = await load.open_loop("steady", args.rate, args.duration, meter, drain_timeout=30)
        print_steady(steady)
        result = ModeResult(warm, thr, steady)
        if args.profile:
            result.profile = await profile_hub(procs, load, run, args, label, meter)
        return result
    finally:
        await load.close()


async def revive(load: HubLoad) -> None:
    n = await load.revive()
    if n:
        say(f"  (reconnected {n} visitors whose websocket the server had closed; each is a new visitor)")


async def profile_hub(
    procs: Procs, load: HubLoad, run: HubRun, args: argparse.Namespace, label: str, meter: CpuMeter
) -> dict[str, Any]:
    """One more closed-loop run and one more steady run, each under py-spy
    (which costs the servers some CPU: these runs are not the measurements)."""
    py_spy = _profile.find_py_spy()
    if py_spy is None:
        say("  profile: py-spy is not installed (.venv/bin/pip install py-spy); skipped")
        return {"skipped": "py-spy not installed"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: dict[str, Any] = {}
    for phase_name in ("throughput", "steady"):
        await revive(load)
        recs = [
            _profile.start(
                procs,
                py_spy,
                p,
                RESULTS / f"profile-{stamp}-{label}-{phase_name}-{p.name}.txt",
                rate=args.profile_rate,
                native=args.profile_native,
            )
            for p in run.procs
        ]
        await asyncio.sleep(1.0)  # py-spy attaches
        try:
            if phase_name == "throughput":
                phase = await load.closed_loop("profiled", args.messages, meter, timeout=args.phase_timeout)
            else:
                phase = await load.open_loop("profiled-steady", args.rate, args.duration, meter, drain_timeout=30)
        finally:
            for rec in recs:
                _profile.stop(procs, rec)
        say(
            f"  profiled {phase_name} run (py-spy, {args.profile_rate} samples/s): {num(phase.rate)} messages/s, "
            f"p50 {num(phase.latency['p50_ms'], 1)} ms, p99 {num(phase.latency['p99_ms'], 1)} ms; "
            f"CPU: {cpu_text(phase.cpu)}"
        )
        entry: dict[str, Any] = {"phase": phase.as_json()}
        for rec in recs:
            summary = _profile.summarize(rec)
            entry[rec.target.name] = {"file": str(rec.output), "summary": summary}
            say(f"  --- {rec.target.name} (pid {rec.target.pid}) during the {phase_name} run: {rec.output.name}")
            say("\n".join("    " + line for line in summary.splitlines()))
        out[phase_name] = entry
    return out


def print_throughput(r: PhaseResult, args: argparse.Namespace) -> None:
    say(
        f"  throughput: {r.planned:,} messages from {args.clients} visitors "
        "(each: send, wait for the ack, send the next)"
    )
    say(
        f"      {num(r.rate)} messages/s end to end ({r.delivered:,} delivered to the agent in {num(r.seconds, 2)} s)"
        + ("" if r.complete else "  INCOMPLETE")
    )
    say(
        f"      inbound -> agent event: p50 {num(r.latency['p50_ms'], 1)} ms, p99 {num(r.latency['p99_ms'], 1)} ms, "
        f"max {num(r.latency['max_ms'], 1)} ms; inbound -> ack: p50 {num(r.ack_latency['p50_ms'], 1)} ms, "
        f"p99 {num(r.ack_latency['p99_ms'], 1)} ms"
    )
    say(f"      CPU (share of one core): {cpu_text(r.cpu)}; hub CPU {num(_cpu_per(r), 1)} us per message")
    _warn_cpu(r.cpu)
    _print_errors(r)


def _print_errors(r: PhaseResult) -> None:
    say(f"      the database held ~{r.extra['stored_before']:,} messages when this run started")
    if r.extra["repeated_agent_events"]:
        say(f"      the agent got {r.extra['repeated_agent_events']:,} live events twice (redeliveries)")
    if r.extra["resent_after_error"]:
        say(f"      {r.extra['resent_after_error']:,} messages sent again after an error frame (as the widget does)")
    if r.errors:
        say(f"      {len(r.errors)} problem(s), e.g.: " + "; ".join(r.errors[:3]))


def print_steady(r: PhaseResult) -> None:
    say(
        f"  steady: {r.extra['target_rate_per_s']:,.0f} messages/s "
        f"for {r.planned / r.extra['target_rate_per_s']:.0f} s "
        f"(open loop, round robin over the visitors): offered {num(r.extra['offered_rate_per_s'])}/s, "
        f"send lag p99 {num(r.extra['send_lag']['p99_ms'], 1)} ms, max {num(r.extra['send_lag']['max_ms'], 1)} ms"
    )
    say(
        f"      inbound -> agent event: p50 {num(r.latency['p50_ms'], 1)} ms, p90 {num(r.latency['p90_ms'], 1)} ms, "
        f"p99 {num(r.latency['p99_ms'], 1)} ms, max {num(r.latency['max_ms'], 1)} ms "
        f"({r.delivered:,}/{r.planned:,} delivered)" + ("" if r.complete else "  INCOMPLETE")
    )
    say(f"      CPU (share of one core): {cpu_text(r.cpu)}")
    _warn_cpu(r.cpu)
    _print_errors(r)


@dataclass
class Target:
    mode: str
    what: str
    figure: str
    ok: bool | None


def targets_for(mode: str, m: ModeResult, ceiling: dict[str, RateResult]) -> list[Target]:
    thr, steady = m.throughput, m.steady
    ratios = _ratios(m, ceiling)
    ratio = ratios.get("ratio_to_bare_websocket_echo", math.nan)
    post_ratio = ratios.get("ratio_to_bare_form_post", math.nan)
    p99 = steady.latency["p99_ms"]
    return [
        Target(
            mode,
            f"end to end >= {TARGET_RATE:,.0f} messages/s",
            f"{num(thr.rate)}/s",
            thr.complete and thr.rate >= TARGET_RATE,
        ),
        Target(
            mode,
            f"ratio to the bare websocket echo >= {TARGET_RATIO}",
            f"{ratio:.3f}",
            None if math.isnan(ratio) else thr.complete and ratio >= TARGET_RATIO,
        ),
        Target(
            mode,
            f"(reference) ratio to the bare form POST >= {TARGET_RATIO}",
            f"{post_ratio:.3f}",
            None if math.isnan(post_ratio) else thr.complete and post_ratio >= TARGET_RATIO,
        ),
        Target(
            mode,
            f"p99 inbound -> agent event <= {TARGET_P99_MS:.0f} ms at {steady.extra['target_rate_per_s']:,.0f}/s",
            f"{num(p99, 1)} ms",
            steady.complete and not math.isnan(p99) and p99 <= TARGET_P99_MS,
        ),
    ]


# --- the run ----------------------------------------------------------------------------


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="crm-hub-bench-"))
    try:
        yield path
    finally:
        if keep:
            say(f"(kept the working directory with the server logs: {path})")
        else:
            shutil.rmtree(path, ignore_errors=True)


async def run(args: argparse.Namespace, procs: Procs, results: dict[str, Any]) -> None:
    say(f"crm-hub ingest benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    facts = results["machine"]
    say(
        f"machine: {facts['cpu_count']} CPUs ({facts['cpu_affinity']} usable), {facts['cpu_model']}; "
        f"load average {' '.join(f'{x:.2f}' for x in facts['load_average_at_start'])}"
    )
    say(
        f"software: Python {facts['python']} ({facts['python_implementation']}), aiohttp {facts['aiohttp']}, "
        f"SQLAlchemy {facts['sqlalchemy']}; load generator: one process, {facts['load_generator_loop']} loop"
    )
    code = results["code"]
    dirty = code["uncommitted_changes"]
    say(
        f"code: commit {code['commit']}"
        + (f" with uncommitted changes to {', '.join(dirty)}" if dirty else " (no uncommitted changes)")
    )
    if args.crm_hub != DEFAULT_CRM_HUB:
        say(f"hub measured: {args.crm_hub} (not this checkout's crm-hub; the commit above is this checkout's)")
    say(
        f"settings: {args.messages:,} messages, {args.clients} concurrent visitors, steady {args.rate:,.0f}/s "
        f"for {args.duration:g} s, ceilings {args.ceiling_seconds:g} s each"
    )
    say("CPU figures are shares of one core; 'others' is whatever else ran on the machine meanwhile.")
    parts = set(args.only or ("ceiling", "embedded", "scale"))
    targets: list[Target] = []
    ceiling: dict[str, RateResult] = {}
    with workdir(args.keep) as work:
        if "ceiling" in parts:
            say()
            say(f"== 1. Ceiling: bare aiohttp (bench/bare.py), same load generator, {args.clients} connections ==")
            ceiling = await measure_ceiling(procs, work, args)
            results["ceiling"] = {k: v.as_json() for k, v in ceiling.items()}
            print_ceiling(ceiling)

        if "embedded" in parts:
            say()
            say("== 2-3. Embedded: SQLite + in-process stream, one `crm-hub serve` process ==")
            emb_dir = work / "embedded"
            emb_dir.mkdir()
            hub = await start_embedded(procs, emb_dir, args.crm_hub)
            try:
                emb = await measure_hub(procs, hub, args, "embedded")
            finally:
                for p in reversed(hub.procs):
                    procs.stop(p)
            print_ratios(emb, ceiling)
            results["embedded"] = _mode_json(emb, ceiling)
            targets += targets_for("embedded", emb, ceiling)

        if "scale" in parts:
            say()
            say("== 4. Scale: PostgreSQL + Redis, one `--role web` and one `--role worker` process ==")
            results["scale"] = await run_scale(procs, work, args, ceiling, targets)

        say()
        say("== Targets (from the issue; informational, never an exit status) ==")
        for t in targets:
            say(f"  {verdict(t.ok):4}  {t.mode:9} {t.what:55} {t.figure}")
        results["targets"] = [t.__dict__ for t in targets]
        results["machine"]["load_average_at_end"] = list(os.getloadavg())


async def run_scale(
    procs: Procs, work: Path, args: argparse.Namespace, ceiling: dict[str, RateResult], targets: list[Target]
) -> dict[str, Any]:
    if not args.scale:
        say("  skipped (--no-scale)")
        return {"skipped": "--no-scale"}
    why_not, versions = await scale_services()
    if why_not is not None:
        say(f"  SKIPPED: {why_not}. Start PostgreSQL (user postgres, trust auth) and Redis on 127.0.0.1 to run it.")
        return {"skipped": why_not}
    say(f"  services: {versions} (their CPU is counted as postgres+redis-server)")
    scale_dir = work / "scale"
    scale_dir.mkdir()
    prefix = f"bench-{secrets.token_hex(4)}"
    async with postgres_database() as database_url:
        try:
            hub = await start_scale(procs, scale_dir, database_url, prefix, args.crm_hub)
            try:
                sc = await measure_hub(procs, hub, args, "scale", ("postgres", "redis-server"))
            finally:
                for p in reversed(hub.procs):
                    procs.stop(p)
        finally:
            await drop_redis_keys(prefix)
    print_ratios(sc, ceiling)
    targets += targets_for("scale", sc, ceiling)
    return {"services": versions, **_mode_json(sc, ceiling)}


def _ratios(m: ModeResult, ceiling: dict[str, RateResult]) -> dict[str, float]:
    return {
        f"ratio_to_bare_{name}": m.throughput.rate / c.rate if c.rate > 0 else math.nan for name, c in ceiling.items()
    }


def print_ratios(m: ModeResult, ceiling: dict[str, RateResult]) -> None:
    r = _ratios(m, ceiling)
    if r:
        say(
            f"  ratio of end-to-end messages/s to the bare ceiling: {r['ratio_to_bare_websocket_echo']:.3f} of the "
            f"websocket echo (the fair one); {r['ratio_to_bare_form_post']:.3f} of the form POST"
        )
        # The same comparison by CPU cost, which other work on the machine
        # disturbs far less than rates: bare CPU per request / hub CPU per message.
        hub_cost = _cpu_per(m.throughput)
        costs = ", ".join(
            f"{_cpu_per(c) / hub_cost:.3f} of the {name.replace('_', ' ')}" for name, c in ceiling.items()
        )
        say(f"  by CPU cost (bare server CPU per request / hub CPU per message): {costs}")


def _mode_json(m: ModeResult, ceiling: dict[str, RateResult]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "warmup": m.warmup.as_json(),
        "throughput": m.throughput.as_json(),
        **_ratios(m, ceiling),
        "steady": m.steady.as_json(),
    }
    if m.profile:
        out["profile"] = m.profile
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Ingest benchmark of the hub's web chat path (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--messages", type=int, default=None, help="messages in the throughput run [20000; --quick 2000]")
    p.add_argument("--clients", type=int, default=None, help="concurrent visitor websockets [200; --quick 50]")
    p.add_argument("--rate", type=float, default=500.0, help="messages/s of the steady-rate latency run")
    p.add_argument("--duration", type=float, default=None, help="seconds of the steady-rate run [10; --quick 3]")
    p.add_argument(
        "--ceiling-seconds", type=float, default=None, help="seconds of each bare ceiling run [4; --quick 1.5]"
    )
    p.add_argument("--warmup-seconds", type=float, default=0.5, help="unmeasured warm-up of each bare ceiling run")
    p.add_argument("--phase-timeout", type=float, default=120.0, help="give up on a hub run after this many seconds")
    p.add_argument("--scale", dest="scale", action="store_true", default=True, help="also measure PostgreSQL + Redis")
    p.add_argument("--no-scale", dest="scale", action="store_false", help="skip the PostgreSQL + Redis measurement")
    p.add_argument("--quick", action="store_true", help="a small smoke run")
    p.add_argument(
        "--only",
        choices=("ceiling", "embedded", "scale"),
        action="append",
        default=None,
        help="run only these parts (repeatable); ratios need the ceiling",
    )
    p.add_argument("--profile", action="store_true", help="afterwards, one more throughput run under py-spy")
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument(
        "--profile-native", action="store_true", help="py-spy --native: C frames too (SQLite, the JSON encoder)"
    )
    p.add_argument(
        "--crm-hub",
        default=DEFAULT_CRM_HUB,
        help="the crm-hub command to measure (e.g. another checkout's, to compare two versions)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory with the server logs")
    p.add_argument("--output", type=Path, default=None, help="JSON results file [bench/results/ingest-<time>.json]")
    args = p.parse_args(argv)
    # The servers run in a temporary directory: a relative path would not resolve there.
    found = shutil.which(args.crm_hub)
    if found is None:
        p.error(f"--crm-hub {args.crm_hub}: no such command")
    args.crm_hub = str(Path(found).absolute())
    quick = args.quick
    for name, full, small in (
        ("messages", 20_000, 2_000),
        ("clients", 200, 50),
        ("duration", 10.0, 3.0),
        ("ceiling_seconds", 4.0, 1.5),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.messages < 1 or args.clients < 1 or args.rate <= 0 or args.duration <= 0:
        p.error("--messages, --clients, --rate and --duration must be positive")
    return args


def _new_loop() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None, "asyncio (uvloop not installed)"
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory, "uvloop"


def _json_safe(value: Any) -> Any:
    """NaN (a figure that could not be measured) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _on_sigterm(_signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    loop_factory, loop_name = _new_loop()
    started = time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, Any] = {
        "started": started,
        "machine": machine_facts(loop_name),
        "code": code_facts(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets_of_the_issue": {
            "embedded_messages_per_s": TARGET_RATE,
            "ratio_to_bare": TARGET_RATIO,
            "steady_p99_ms": TARGET_P99_MS,
            "scale": "at least the same",
        },
    }
    procs = Procs()
    status = 0
    t0 = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run(args, procs, results))
    except KeyboardInterrupt:
        say("\ninterrupted; stopping the servers")
        results["interrupted"] = True
        status = 130
    except Exception as exc:
        say(f"\nbenchmark failed: {type(exc).__name__}: {exc}")
        results["failed"] = f"{type(exc).__name__}: {exc}"
        status = 1
    finally:
        procs.stop_all()
    results["wall_seconds"] = time.monotonic() - t0
    output = args.output or RESULTS / f"ingest-{started}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(_json_safe(results), indent=2, default=str, allow_nan=False) + "\n")
    say(
        f"\nresults: {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output} "
        f"({results['wall_seconds']:.0f} s in all)"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
