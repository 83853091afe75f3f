"""When a campaign message may go: quiet hours in the recipient's time zone,
and the pacer that keeps a sender at its rate (counted in segments, as
Twilio counts them) across every worker process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezones
from sqlalchemy import select

from hub.core import utcnow
from storage.db import Database
from storage.ingest import dialect_insert
from storage.models import SmsPacing

# --- time zones and quiet hours ---------------------------------------------------


@lru_cache(maxsize=4096)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def valid_zone(name: object) -> bool:
    return isinstance(name, str) and bool(name) and _zone(name) is not None


def zones_for(phone: str, attribute: object, default: str) -> list[str]:
    """The time zones whose night counts for this recipient: the contact's own
    ``timezone`` attribute when it names a zone; else every zone of the
    number's region and prefix (libphonenumber's timezone data: a US number
    may be any of six, so all of them must be awake); else ``default``."""
    if valid_zone(attribute):
        return [str(attribute)]
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return [default]
    zones = [z for z in phone_timezones.time_zones_for_number(number) if valid_zone(z)]
    return sorted(set(zones)) or [default]


def _parse_hhmm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def _quiet_end(now: datetime, zone: ZoneInfo, start: time, end: time) -> datetime | None:
    """If ``now`` is within the quiet window in ``zone``, when the window ends (UTC)."""
    local = now.astimezone(zone)
    t = local.time()
    if start < end:
        quiet = start <= t < end
        end_day = local.date()
    else:  # crosses midnight (21:00-09:00)
        quiet = t >= start or t < end
        end_day = local.date() + timedelta(days=1) if t >= start else local.date()
    if not quiet:
        return None
    # Wall-clock end in that zone (fold=0 across a DST change), then back to UTC.
    return datetime.combine(end_day, end, tzinfo=zone).astimezone(UTC)


def quiet_until(now: datetime, zones: Sequence[str], start: str, end: str) -> datetime | None:
    """None when a message may go now in every one of ``zones``; otherwise the
    first moment (UTC) at which none of them is within quiet hours."""
    t_start, t_end = _parse_hhmm(start), _parse_hhmm(end)
    at = now
    moved = False
    # Zones' windows can chain (when one ends another is still quiet); a handful
    # of steps settles any real combination.
    for _ in range(16):
        latest: datetime | None = None
        for name in zones:
            zone = _zone(name)
            if zone is None:
                continue
            ends = _quiet_end(at, zone, t_start, t_end)
            if ends is not None and (latest is None or ends > latest):
                latest = ends
        if latest is None:
            return at if moved else None
        at, moved = latest, True
    return at


# --- pacing --------------------------------------------------------------------------

# The slowest a campaign may go, in segments per second: one every 100 seconds,
# 36 an hour. Even so the longest message (1,600 characters of UCS-2, 24
# segments) waits 40 minutes for its turn; slower, a send would wait for hours,
# which is a schedule, not a rate, and absurd rates (1e-300) overflow the
# pacer's arithmetic. Checked where a rate comes in (the API, the CLI,
# do_create_campaign) and again by the runner, which pauses a campaign that
# has one (a sender's messages_per_second, a campaign created before the check).
MIN_RATE_PER_SECOND = 0.01


class Pacer:
    """A token bucket for one sender, shared through the database: the row
    ``sms_pacing(sender)`` holds the moment the sender's next segment may go.
    A worker reserves a slice of time from it (one short transaction per slice,
    ``SELECT ... FOR UPDATE``) and spends the slice locally, one message's
    segments / rate at a time, so several workers together never exceed the
    rate and none of them asks the database per message."""

    def __init__(
        self,
        db: Database,
        sender: str,
        rate: float,
        *,
        slice_seconds: float = 0.25,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not rate >= MIN_RATE_PER_SECOND:  # NaN too
            raise ValueError(f"rate must be at least {MIN_RATE_PER_SECOND:g} segments per second (got {rate:g})")
        self.db = db
        self.sender = sender
        self.rate = rate
        self.slice_seconds = slice_seconds
        # Wall-clock seconds: the reservations in the database are shared with
        # other processes. Tests pass a clock of their own.
        self._clock = clock or (lambda: utcnow().timestamp())
        self._next = 0.0  # this worker's next free slot
        self._end = 0.0  # end of the slice reserved so far
        self._lock = asyncio.Lock()

    async def book(self, segments: int) -> float:
        """Reserve the slot for a message of ``segments``; returns the seconds
        to wait before sending it (0: now)."""
        need = max(segments, 1) / self.rate
        async with self._lock:
            now = self._clock()
            if self._next < now:
                self._next = min(now, self._end)
            if self._next + need > self._end + 1e-9:
                self._next = await self._reserve(max(need, self.slice_seconds))
                self._end = self._next + max(need, self.slice_seconds)
            at = self._next
            self._next += need
            return max(0.0, at - self._clock())

    async def _reserve(self, seconds: float) -> float:
        """Reserve ``seconds`` of the sender's time; returns when they start."""
        async with self.db.write() as session:
            row = await session.scalar(select(SmsPacing).where(SmsPacing.sender == self.sender).with_for_update())
            now = datetime.fromtimestamp(self._clock(), UTC)
            if row is None:
                await session.execute(
                    dialect_insert(session, SmsPacing)
                    .values(sender=self.sender, next_at=now)
                    .on_conflict_do_nothing(index_elements=["sender"])
                )
                row = await session.scalar(
                    select(SmsPacing)
                    .where(SmsPacing.sender == self.sender)
                    .with_for_update()
                    .execution_options(populate_existing=True)
                )
                assert row is not None
            start = max(row.next_at, now)
            row.next_at = start + timedelta(seconds=seconds)
        return start.timestamp()
