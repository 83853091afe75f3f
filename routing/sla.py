"""SLA arithmetic: when each target of a policy is due (in business or calendar
time), when to warn, and which warnings and breaches are due now. Pure; the
hub stores the deadlines on the ticket and a periodic sweeper in every worker
process fires what is due, idempotently (each deadline fires each level once,
keyed by the deadline itself, so a restart or two sweepers never fire twice).

Targets: ``first_response`` (from the start of a cycle to the first public
reply of an agent; a reopened ticket starts a new cycle), ``next_response``
(from a customer's unanswered message to the next reply), ``resolution``
(from the start of a cycle to resolved).

A snoozed ticket's clocks are paused: the instant the pause began is kept with
the deadlines (``paused_at``), and when the ticket wakes every deadline still
pending at that instant moves later by the time it slept (:func:`resume`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from routing.hours import BusinessCalendar, CalendarError
from routing.settings import SlaPolicy

Target = Literal["first_response", "next_response", "resolution"]
Level = Literal["warning", "breach"]
TARGETS: tuple[Target, ...] = ("first_response", "next_response", "resolution")
LEVELS: tuple[Level, ...] = ("warning", "breach")
# Kept next to the targets in the ticket's deadline document, so a pause needs
# no column of its own and survives restarts like the deadlines do.
PAUSED_AT = "paused_at"


@dataclass(frozen=True, slots=True)
class Deadline:
    target: Target
    due_at: datetime
    warn_at: datetime | None = None

    def key(self, level: Level) -> str:
        """Names one firing of this deadline (stable across restarts)."""
        return f"{self.target}:{level}:{self.due_at.isoformat()}"

    def to_json(self) -> dict[str, Any]:
        return {"due": self.due_at.isoformat(), "warn": self.warn_at.isoformat() if self.warn_at else None}

    @classmethod
    def from_json(cls, target: Target, raw: Mapping[str, Any]) -> Deadline:
        warn = raw.get("warn")
        return cls(
            target=target,
            due_at=datetime.fromisoformat(raw["due"]),
            warn_at=datetime.fromisoformat(warn) if warn else None,
        )


def minutes_of(policy: SlaPolicy, target: Target) -> float | None:
    return {
        "first_response": policy.first_response_minutes,
        "next_response": policy.next_response_minutes,
        "resolution": policy.resolution_minutes,
    }[target]


def counting_calendar(policy: SlaPolicy | None, calendar: BusinessCalendar | None) -> BusinessCalendar | None:
    """The calendar ``policy`` counts its time in; None: calendar time."""
    return calendar if policy is not None and policy.business_hours and calendar is not None else None


def deadline(policy: SlaPolicy, target: Target, start: datetime, calendar: BusinessCalendar | None) -> Deadline | None:
    """The deadline of ``target`` for a clock started at ``start``; None when the
    policy has no such target. Raises :class:`CalendarError` when ``calendar``
    does not open often enough to count it."""
    minutes = minutes_of(policy, target)
    if minutes is None:
        return None
    use = counting_calendar(policy, calendar)

    def after(m: float) -> datetime:
        span = timedelta(minutes=m)
        return use.add(start, span) if use is not None else start + span

    due = after(minutes)
    warn = None
    if policy.warn_before_minutes > 0:
        warn = after(max(minutes - policy.warn_before_minutes, 0))
    return Deadline(target=target, due_at=due, warn_at=warn)


def plan(
    policy: SlaPolicy, targets: Iterable[Target], start: datetime, calendar: BusinessCalendar | None
) -> dict[Target, Deadline]:
    out: dict[Target, Deadline] = {}
    for t in targets:
        d = deadline(policy, t, start, calendar)
        if d is not None:
            out[t] = d
    return out


def due_now(deadlines: Mapping[Target, Deadline], fired: Iterable[str], now: datetime) -> list[tuple[Deadline, Level]]:
    """Warnings and breaches due at ``now`` and not fired yet, in time order. A
    breach makes its own late warning moot (it is marked fired, not sent)."""
    done = set(fired)
    out: list[tuple[datetime, Deadline, Level]] = []
    for d in deadlines.values():
        breach = d.due_at <= now and d.key("breach") not in done
        if breach:
            out.append((d.due_at, d, "breach"))
        elif d.warn_at is not None and d.warn_at <= now and d.key("warning") not in done:
            out.append((d.warn_at, d, "warning"))
    out.sort(key=lambda item: item[0])
    return [(d, level) for _, d, level in out]


def fired_keys(due: Iterable[tuple[Deadline, Level]]) -> set[str]:
    """Keys to record once ``due`` has been handled (a breach covers its warning)."""
    keys: set[str] = set()
    for d, level in due:
        keys.add(d.key(level))
        if level == "breach":
            keys.add(d.key("warning"))
    return keys


def next_check(deadlines: Mapping[Target, Deadline], fired: Iterable[str]) -> datetime | None:
    """The next instant at which something may fire; None when nothing will."""
    done = set(fired)
    times: list[datetime] = []
    for d in deadlines.values():
        if d.warn_at is not None and d.key("warning") not in done and d.key("breach") not in done:
            times.append(d.warn_at)
        if d.key("breach") not in done:
            times.append(d.due_at)
    return min(times) if times else None


def prune(fired: Iterable[str], deadlines: Mapping[Target, Deadline]) -> list[str]:
    """Fired keys that still belong to a current deadline (the rest is history,
    kept in the timeline, not on the ticket)."""
    live = {d.key(level) for d in deadlines.values() for level in LEVELS}
    return sorted(k for k in fired if k in live)


def paused_at(raw: Mapping[str, Any] | None) -> datetime | None:
    """When the clocks of a stored deadline document were paused; None: running."""
    value = (raw or {}).get(PAUSED_AT)
    return datetime.fromisoformat(value) if value else None


def resume(
    deadlines: Mapping[Target, Deadline],
    fired: Iterable[str],
    paused: datetime,
    resumed: datetime,
    calendar: BusinessCalendar | None,
) -> tuple[dict[Target, Deadline], set[str]]:
    """The deadlines and fired keys after a pause from ``paused`` to ``resumed``.

    A deadline already due when the pause began stays as it was (breached is
    breached). The others keep the time they had left: in calendar time they
    move later by the length of the pause; in business time (``calendar``, see
    :func:`counting_calendar`) the business time left at ``paused`` is counted
    again from ``resumed``, so a pause over a weekend does not eat the Monday.
    A level that had fired for a moved deadline stays fired under its new key
    (a warning sent before the pause is not sent twice). A deadline whose time
    left the calendar cannot count from ``resumed`` is dropped."""
    keys = set(fired)
    if resumed <= paused:
        # Clocks of two processes may disagree a little: nothing slept.
        return dict(deadlines), keys

    def shift(at: datetime) -> datetime:
        if calendar is None:
            return at + (resumed - paused)
        return calendar.add(resumed, calendar.between(paused, at))

    out: dict[Target, Deadline] = {}
    for target, d in deadlines.items():
        if d.due_at <= paused:
            out[target] = d
            continue
        try:
            moved = Deadline(
                target=target, due_at=shift(d.due_at), warn_at=shift(d.warn_at) if d.warn_at is not None else None
            )
        except CalendarError:
            # The calendar does not open often enough after ``resumed`` to count
            # what was left (holidays ahead): no deadline, rather than a wake
            # that fails, and is retried, for ever.
            continue
        out[target] = moved
        keys |= {moved.key(level) for level in LEVELS if d.key(level) in keys}
    return out, keys
