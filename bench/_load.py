"""The load generator: bare ceilings and the hub's web chat path, driven by the
lean clients of :mod:`bench._wire` from this (single) benchmark process."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench._procs import CLK_TCK, Proc, cpu_seconds
from bench._wire import HttpConnection, WsConnection, http_request

HOST = "127.0.0.1"
perf = time.perf_counter
T = TypeVar("T")


# --- statistics ---------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (NaN when empty)."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "count": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1] if ms else math.nan,
    }


def _other_cpu(names: Sequence[str]) -> float:
    """CPU seconds of every process whose command is one of ``names`` (the
    PostgreSQL backends and Redis, which the hub's processes make work)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm in names:
            total += cpu_seconds(int(entry.name))
    return total


def _machine_busy() -> float:
    """CPU seconds all CPUs spent not idle since boot (/proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(x) for x in fields]
    # user nice system idle iowait irq softirq steal (guest is inside user)
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
    return busy / CLK_TCK


class CpuMeter:
    """CPU used during a phase, as a fraction of one core, by the load
    generator (this process), each server process and optionally the
    database/stream servers."""

    def __init__(self, procs: Sequence[Proc], others: Sequence[str] = ()) -> None:
        self.procs = list(procs)
        self.others = list(others)
        self._t0 = 0.0
        self._self0 = 0.0
        self._procs0: dict[str, float] = {}
        self._others0 = 0.0
        self._machine0 = 0.0

    def start(self) -> None:
        self._t0 = perf()
        self._self0 = time.process_time()
        self._procs0 = {p.name: p.cpu() for p in self.procs}
        self._others0 = _other_cpu(self.others) if self.others else 0.0
        self._machine0 = _machine_busy()

    def stop(self) -> dict[str, float]:
        wall = max(perf() - self._t0, 1e-9)
        out = {"load generator": (time.process_time() - self._self0) / wall}
        for p in self.procs:
            out[p.name] = (p.cpu() - self._procs0.get(p.name, 0.0)) / wall
        if self.others:
            out["+".join(self.others)] = (_other_cpu(self.others) - self._others0) / wall
        machine = (_machine_busy() - self._machine0) / wall
        # Kernel work (loopback TCP) not charged to a process lands here too.
        out["others"] = max(0.0, machine - sum(out.values()))
        return out


# --- ceilings -----------------------------------------------------------------


@dataclass
class RateResult:
    what: str
    completed: int
    seconds: float
    rate: float
    errors: int
    latency: dict[str, float]
    cpu: dict[str, float]

    def as_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "completed": self.completed,
            "seconds": self.seconds,
            "rate_per_s": self.rate,
            "errors": self.errors,
            "round_trip": self.latency,
            "cpu_cores": self.cpu,
        }


class _Driver:
    """Drives one connection from its receive callback: the next request is
    sent by the callback that got the previous answer, with no task and no
    future per round trip, so the client spends as little as possible and the
    ceiling is the server's, not the load generator's."""

    def __init__(self) -> None:
        self.send: Callable[[], None] = lambda: None
        self.until = 0.0
        self.count = 0
        self.errors = 0
        self.record: list[float] | None = None
        self.sent_at = 0.0
        self.finished: asyncio.Future[None] | None = None

    def run(self, until: float, record: list[float] | None) -> asyncio.Future[None]:
        self.until, self.record, self.count, self.errors = until, record, 0, 0
        self.finished = asyncio.get_running_loop().create_future()
        self._next(perf())
        return self.finished

    def _next(self, now: float) -> None:
        if now >= self.until:
            if self.finished is not None and not self.finished.done():
                self.finished.set_result(None)
            return
        self.sent_at = now
        self.send()

    def answered(self, ok: bool = True) -> None:
        now = perf()
        self.count += 1
        if not ok:
            self.errors += 1
        if self.record is not None:
            self.record.append(now - self.sent_at)
        self._next(now)

    def on_text(self, _data: bytes) -> None:
        self.answered()

    def on_status(self, status: int) -> None:
        self.answered(status == 200)


async def _drive(what: str, drivers: Sequence[_Driver], seconds: float, warmup: float, meter: CpuMeter) -> RateResult:
    await asyncio.wait_for(asyncio.gather(*(d.run(perf() + warmup, None) for d in drivers)), warmup + 30)
    rtts: list[float] = []
    meter.start()
    t0 = perf()
    await asyncio.wait_for(asyncio.gather(*(d.run(t0 + seconds, rtts) for d in drivers)), seconds + 30)
    elapsed = perf() - t0
    cpu = meter.stop()
    total = sum(d.count for d in drivers)
    errors = sum(d.errors for d in drivers)
    return RateResult(what, total, elapsed, total / elapsed, errors, latency_summary(rtts), cpu)


# A visitor's message frame, as the hub receives it.
ECHO_FRAME = json.dumps({"type": "message", "text": "Hello, I need help with my order", "client_id": "c-0001"})


async def ws_echo_rate(port: int, clients: int, seconds: float, meter: CpuMeter, *, warmup: float) -> RateResult:
    """Round trips per second through the bare websocket echo: each of
    ``clients`` connections sends a frame shaped like a visitor's message and
    waits for it to come back, over and over."""
    drivers = [_Driver() for _ in range(clients)]
    conns = await _gather_bounded([functools.partial(WsConnection.open, HOST, port, "/ws", d.on_text) for d in drivers])
    frame = ECHO_FRAME.encode()
    for d, ws in zip(drivers, conns, strict=True):
        d.send = functools.partial(ws.send, frame)
    try:
        return await _drive("websocket echo", drivers, seconds, warmup, meter)
    finally:
        await asyncio.gather(*(c.aclose() for c in conns), return_exceptions=True)


async def http_post_rate(port: int, clients: int, seconds: float, meter: CpuMeter, *, warmup: float) -> RateResult:
    """Form POSTs per second to the bare empty handler, ``clients`` keep-alive
    connections each sending its next request when the previous one is answered."""
    body = b"name=Ada+Lovelace&email=ada%40example.com&message=Hello+there"
    raw = http_request(
        "POST", HOST, port, "/", body, {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "bench"}
    )
    drivers = [_Driver() for _ in range(clients)]
    conns = await _gather_bounded([functools.partial(HttpConnection.open, HOST, port) for _ in range(clients)])
    for d, conn in zip(drivers, conns, strict=True):
        conn.on_response = d.on_status
        d.send = functools.partial(conn.send, raw)
    try:
        return await _drive("form POST", drivers, seconds, warmup, meter)
    finally:
        for c in conns:
            c.close()


async def _gather_bounded(
    factories: Sequence[Callable[[], Awaitable[T]]], limit: int = 50, timeout: float = 60.0
) -> list[T]:
    """Run the factories' coroutines, at most ``limit`` at a time (connection storms
    are not what is measured)."""
    sem = asyncio.Semaphore(limit)

    async def one(factory: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            return await factory()

    return await asyncio.wait_for(asyncio.gather(*(one(f) for f in factories)), timeout)


# --- the hub's web chat path ----------------------------------------------------


@dataclass
class Track:
    """When each message (keyed by its unique body text) was sent, acknowledged
    and seen by the agent; shared by every phase of one hub."""

    sent: dict[str, float] = field(default_factory=dict)
    acked: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    repeated_events: int = 0
    resends: int = 0
    pending: set[str] = field(default_factory=set)
    sending: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def begin(self) -> None:
        self.pending = set()
        self.sending = True
        self.done = asyncio.Event()

    def expect(self, body: str, at: float) -> None:
        self.pending.add(body)
        self.sent[body] = at

    def finish_sending(self) -> None:
        self.sending = False
        if not self.pending:
            self.done.set()

    def on_event(self, body: str, now: float) -> None:
        if body in self.seen:
            self.repeated_events += 1
            return
        self.seen[body] = now
        if body in self.pending:
            self.pending.discard(body)
            if not self.pending and not self.sending:
                self.done.set()


class Visitor:
    """One web chat visitor (one websocket, one contact, one ticket). Like the
    widget, it keeps each message until the server acknowledges it, and sends
    the unacknowledged ones again (same client_id) when the server reports an
    error."""

    max_resends = 3

    def __init__(self, index: int, track: Track) -> None:
        self.index = index
        self.track = track
        self.ws: WsConnection | None = None
        self.session: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiter: asyncio.Future[None] | None = None
        self.waiting_for = ""
        self.outstanding: dict[str, int] = {}  # body -> resends so far

    def on_text(self, data: bytes) -> None:
        now = perf()
        frame = json.loads(data)
        kind = frame.get("type")
        if kind == "message":
            text = frame.get("text")
            if isinstance(text, str):
                self.track.acked.setdefault(text, now)
                if isinstance(frame.get("id"), int):
                    self.track.ids[text] = frame["id"]
                self.outstanding.pop(text, None)
                if text == self.waiting_for:
                    self._wake(None)
        elif kind == "session":
            if not self.session.done():
                self.session.set_result(frame)
        elif kind == "error":
            self.track.errors.append(f"visitor {self.index}: {frame.get('code')}: {frame.get('message')}")
            self._resend()

    def _resend(self) -> None:
        for body, tries in list(self.outstanding.items()):
            if tries >= self.max_resends:
                del self.outstanding[body]
                if body == self.waiting_for:
                    self._wake(ConnectionError(f"no acknowledgement after {tries} resends"))
                continue
            self.outstanding[body] = tries + 1
            self.track.resends += 1
            self._send(body)

    def _wake(self, error: BaseException | None) -> None:
        waiter, self.waiter = self.waiter, None
        self.waiting_for = ""
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def on_close(self, reason: str) -> None:
        self._wake(ConnectionError(reason))

    def send_and_wait(self, body: str) -> asyncio.Future[None]:
        """Send ``body``; the future resolves when it is acknowledged."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiter = fut
        self.waiting_for = body
        self.send(body)
        return fut

    def send(self, body: str) -> None:
        self.outstanding[body] = 0
        self._send(body)

    def _send(self, body: str) -> None:
        assert self.ws is not None
        self.ws.send(json.dumps({"type": "message", "text": body, "client_id": body}).encode())


class AgentFeed:
    """The agent's events websocket; every ``message.received`` is timed."""

    def __init__(self, track: Track) -> None:
        self.track = track
        self.ws: WsConnection | None = None
        self.hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.frames = 0

    def on_text(self, data: bytes) -> None:
        now = perf()
        self.frames += 1
        frame = json.loads(data)
        kind = frame.get("type")
        if kind == "message.received":
            self.track.on_event(frame["message"]["body"], now)
        elif kind == "hello" and not self.hello.done():
            self.hello.set_result(frame)


@dataclass
class PhaseResult:
    name: str
    planned: int
    sent: int
    acked: int
    delivered: int
    complete: bool
    seconds: float
    rate: float
    latency: dict[str, float]
    ack_latency: dict[str, float]
    cpu: dict[str, float]
    errors: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "planned": self.planned,
            "sent": self.sent,
            "acked": self.acked,
            "delivered_to_agent": self.delivered,
            "complete": self.complete,
            "seconds": self.seconds,
            "messages_per_s": self.rate,
            "inbound_to_agent_event": self.latency,
            "inbound_to_ack": self.ack_latency,
            "cpu_cores": self.cpu,
            "errors": self.errors[:20],
            "error_count": len(self.errors),
            **self.extra,
        }


class HubLoad:
    """An agent and ``clients`` visitors connected to one hub (the web process)."""

    def __init__(self, port: int, token: str, clients: int) -> None:
        self.port = port
        self.token = token
        self.clients = clients
        self.track = Track()
        self.agent: AgentFeed | None = None
        self.visitors: list[Visitor] = []
        self._phase_no = 0
        self.stored = 0  # messages sent to this hub so far (its database size, roughly)

    async def connect(self) -> None:
        agent = AgentFeed(self.track)
        agent.ws = await asyncio.wait_for(
            WsConnection.open(
                HOST, self.port, "/api/v1/events", agent.on_text, {"Authorization": f"Bearer {self.token}"}
            ),
            10,
        )
        await asyncio.wait_for(agent.hello, 10)
        self.agent = agent
        self.visitors = []
        await self.revive()

    async def revive(self) -> int:
        """Replace the visitors whose websocket the server closed (as a widget
        would reconnect; each replacement is a new visitor). Returns how many."""
        if not self.visitors:
            self.visitors = [Visitor(i, self.track) for i in range(self.clients)]
        dead = [i for i, v in enumerate(self.visitors) if v.ws is None or v.ws.closed.done()]
        fresh = [Visitor(i, self.track) for i in dead]

        async def open_one(v: Visitor) -> None:
            v.ws = await WsConnection.open(HOST, self.port, "/chat/ws", v.on_text)
            v.ws.on_close = v.on_close
            await v.session

        await _gather_bounded([functools.partial(open_one, v) for v in fresh], limit=25)
        for i, v in zip(dead, fresh, strict=True):
            self.visitors[i] = v
        return len(dead)

    async def close(self) -> None:
        conns = [v.ws for v in self.visitors if v.ws is not None]
        if self.agent is not None and self.agent.ws is not None:
            conns.append(self.agent.ws)
        await asyncio.gather(*(c.aclose() for c in conns), return_exceptions=True)

    def _tag(self, name: str) -> str:
        self._phase_no += 1
        return f"bench-{self._phase_no}-{name}"

    def _connection_problems(self) -> list[str]:
        problems = []
        if self.agent is not None and self.agent.ws is not None and self.agent.ws.closed.done():
            problems.append(f"agent websocket closed: {self.agent.ws.close_reason}")
        closed = [v for v in self.visitors if v.ws is not None and v.ws.closed.done()]
        if closed:
            assert closed[0].ws is not None
            problems.append(f"{len(closed)} visitor websockets closed, e.g. {closed[0].ws.close_reason}")
        return problems

    def _result(
        self,
        name: str,
        planned: int,
        bodies: Sequence[str],
        complete: bool,
        cpu: dict[str, float],
        errors0: int,
        repeated0: int,
        resends0: int,
    ) -> PhaseResult:
        t = self.track
        sent = [b for b in bodies if b in t.sent]
        delivered = [b for b in sent if b in t.seen]
        acked = [b for b in sent if b in t.acked]
        if delivered:
            first = min(t.sent[b] for b in sent)
            last = max(t.seen[b] for b in delivered)
            seconds = last - first
        else:
            seconds = math.nan
        rate = len(delivered) / seconds if delivered and seconds > 0 else 0.0
        errors = t.errors[errors0:] + self._connection_problems()
        stored_before = self.stored
        self.stored += len(sent)
        return PhaseResult(
            name=name,
            planned=planned,
            sent=len(sent),
            acked=len(acked),
            delivered=len(delivered),
            complete=complete and len(delivered) == planned,
            seconds=seconds,
            rate=rate,
            latency=latency_summary([t.seen[b] - t.sent[b] for b in delivered]),
            ack_latency=latency_summary([t.acked[b] - t.sent[b] for b in acked]),
            cpu=cpu,
            errors=errors,
            extra={
                "stored_before": stored_before,
                "repeated_agent_events": t.repeated_events - repeated0,
                "resent_after_error": t.resends - resends0,
            },
        )

    async def closed_loop(
        self, name: str, messages: int, meter: CpuMeter, timeout: float, drain_timeout: float = 30.0
    ) -> PhaseResult:
        """Every visitor sends its share of ``messages`` one after the other:
        send, wait for the acknowledgement, send the next."""
        tag = self._tag(name)
        t = self.track
        t.begin()
        errors0, repeated0, resends0 = len(t.errors), t.repeated_events, t.resends
        c = len(self.visitors)
        shares = [messages // c + (1 if i < messages % c else 0) for i in range(c)]
        bodies = [f"{tag}:{v.index}:{k}" for v, share in zip(self.visitors, shares, strict=True) for k in range(share)]

        async def visitor_loop(v: Visitor, share: int) -> None:
            for k in range(share):
                body = f"{tag}:{v.index}:{k}"
                t.expect(body, perf())
                try:
                    await v.send_and_wait(body)
                except ConnectionError as exc:
                    t.pending.discard(body)
                    t.errors.append(f"visitor {v.index}: {exc}")
                    return

        complete = True
        meter.start()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(visitor_loop(v, s) for v, s in zip(self.visitors, shares, strict=True)))
            t.finish_sending()
            async with asyncio.timeout(drain_timeout):
                await t.done.wait()
        except TimeoutError:
            complete = False
            t.errors.append(f"{name}: gave up with {len(t.pending)} sent messages not seen by the agent")
        finally:
            t.sending = False
        cpu = meter.stop()
        return self._result(name, messages, bodies, complete, cpu, errors0, repeated0, resends0)

    async def open_loop(
        self, name: str, rate: float, duration: float, meter: CpuMeter, drain_timeout: float
    ) -> PhaseResult:
        """Messages at fixed times (``rate`` per second for ``duration``),
        round-robin over the visitors, whether or not earlier ones were
        acknowledged. Latency counts from the scheduled time, so a late send
        (the generator falling behind) is charged, not hidden."""
        tag = self._tag(name)
        t = self.track
        t.begin()
        errors0, repeated0, resends0 = len(t.errors), t.repeated_events, t.resends
        n = max(1, round(rate * duration))
        c = len(self.visitors)
        bodies = [f"{tag}:{i % c}:{i}" for i in range(n)]
        lags: list[float] = []
        complete = True
        meter.start()
        start = perf() + 0.01
        i = 0
        try:
            while i < n:
                now = perf()
                while i < n and start + i / rate <= now:
                    scheduled = start + i / rate
                    t.expect(bodies[i], scheduled)
                    try:
                        self.visitors[i % c].send(bodies[i])
                    except ConnectionError as exc:
                        t.pending.discard(bodies[i])
                        t.errors.append(f"visitor {i % c}: {exc}")
                    lags.append(now - scheduled)
                    i += 1
                if i < n:
                    await asyncio.sleep(max(0.0, start + i / rate - perf()))
            send_seconds = perf() - start
            t.finish_sending()
            async with asyncio.timeout(drain_timeout):
                await t.done.wait()
        except TimeoutError:
            complete = False
            t.errors.append(
                f"{name}: {len(t.pending)} messages not seen by the agent {drain_timeout:.0f} s after the last send"
            )
            send_seconds = perf() - start
        finally:
            t.sending = False
        cpu = meter.stop()
        result = self._result(name, n, bodies, complete, cpu, errors0, repeated0, resends0)
        result.extra |= {
            "target_rate_per_s": rate,
            "offered_rate_per_s": n / send_seconds if send_seconds > 0 else math.nan,
            "send_lag": latency_summary(lags),
        }
        return result


def server_cpu_us(cpu: Mapping[str, float], seconds: float, items: int) -> float:
    """CPU time the servers spent per item, in microseconds: their share of a
    core (every process but the load generator and the rest of the machine)
    times the run's length, over what they handled. Unlike a rate, it hardly
    changes when other work competes for the cores."""
    busy = sum(share for name, share in cpu.items() if name not in ("load generator", "others"))
    return busy * seconds / items * 1e6 if items else math.nan


def cpu_text(cpu: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {share * 100:.0f}%" for name, share in cpu.items())
