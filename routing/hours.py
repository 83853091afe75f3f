"""Business hours: per-team calendars with a timezone, weekly opening windows
and holidays, and arithmetic in business time.

Pure and framework-free. Windows are written in the calendar's local time and
turned into real instants with :mod:`zoneinfo`, so a day on which the clocks
change has the hours it really has (an "00:00-24:00" day in New York is 23 or
25 hours long twice a year), and durations are always real elapsed time
inside the open windows. The week is whatever days have windows: Iran's
Saturday to Wednesday is ``{sat: [...], sun: [...], ..., wed: [...]}``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import holidays as holiday_calendars

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# Either spelling, in any case: a looser reading (the first three letters)
# took "month" for Monday.
_DAY_KEYS = {**{d: i for i, d in enumerate(WEEKDAYS)}, **{d: i for i, d in enumerate(DAY_NAMES)}}
# Names the tz database has that are no place: they follow the host's own
# setting (localtime, posixrules) or are no zone at all (Factory), so a
# calendar would move with whatever machine the hub runs on.
_NOT_PLACES = frozenset({"localtime", "posixrules", "Factory"})

# How far ahead arithmetic looks for the next open window before deciding that
# a calendar never opens (every day closed, or a holiday list covering years).
_HORIZON_DAYS = 3 * 366


class CalendarError(ValueError):
    """A calendar specification that cannot be used; the message says why."""


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    # Reading the tz database's directory tree is slow; it does not change while the hub runs.
    return frozenset(available_timezones()) - _NOT_PLACES


def zone(timezone: str) -> ZoneInfo:
    """The IANA timezone named ``timezone``; refused unless it names a place."""
    if timezone not in _zone_names():
        raise CalendarError(f"timezone {timezone!r} is not an IANA timezone of a place, such as Asia/Tehran or UTC")
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CalendarError(f"timezone {timezone!r} is not a known IANA timezone") from exc


def weekday(key: str) -> int:
    """The day (0 = Monday) a week key names: ``mon`` ... ``sun`` or the full
    English name, in any case."""
    day = _DAY_KEYS.get(key.strip().lower())
    if day is None:
        raise CalendarError(f"week day {key!r} is not one of {', '.join(WEEKDAYS)} (or a full name such as monday)")
    return day


@dataclass(frozen=True, slots=True)
class Window:
    """One opening window of a day, local time; ``end`` may be 24:00."""

    start: time
    end_minutes: int  # minutes after local midnight, up to 1440

    @classmethod
    def parse(cls, text: str) -> Window:
        raw = text.strip()
        parts = raw.split("-")
        if len(parts) != 2:
            raise CalendarError(f"window {text!r} is not HH:MM-HH:MM")
        start, end = (_minutes(p, text) for p in parts)
        if start >= 1440:
            raise CalendarError(f"window {text!r} starts at or after 24:00")
        if end <= start:
            raise CalendarError(
                f"window {text!r} ends before it starts; write a night shift as two windows, "
                "one ending at 24:00 and one starting at 00:00 the next day"
            )
        return cls(time(start // 60, start % 60), end)

    def bounds(self, day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
        """The window on ``day`` as UTC instants."""
        begin = datetime.combine(day, self.start, tzinfo=zone)
        if self.end_minutes >= 1440:
            finish = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
        else:
            finish = datetime.combine(day, time(self.end_minutes // 60, self.end_minutes % 60), tzinfo=zone)
        return begin.astimezone(UTC), finish.astimezone(UTC)


def _minutes(part: str, whole: str) -> int:
    hh, sep, mm = part.strip().partition(":")
    if not sep or not hh.isdecimal() or not mm.isdecimal() or len(mm) != 2:
        raise CalendarError(f"window {whole!r} is not HH:MM-HH:MM")
    value = int(hh) * 60 + int(mm)
    if int(mm) >= 60 or value > 1440:
        raise CalendarError(f"window {whole!r} has a time that does not exist")
    return value


class BusinessCalendar:
    """When a team is open. ``week`` maps ``mon`` ... ``sun`` to windows such as
    ``"08:00-12:00"``; a day without windows is closed. ``holidays`` are local
    dates that are closed all day; ``country`` adds that country's public
    holidays (the ``holidays`` package: ``IR`` includes the lunar ones)."""

    def __init__(
        self,
        *,
        timezone: str = "UTC",
        week: Mapping[str, Iterable[str]] | None = None,
        holidays: Iterable[date] = (),
        country: str | None = None,
        subdivision: str | None = None,
        always_open: bool = False,
    ) -> None:
        self.zone = zone(timezone)
        self.timezone = timezone
        self.always_open = always_open
        windows: dict[int, tuple[Window, ...]] = {}
        keys: dict[int, str] = {}
        for key, specs in (week or {}).items():
            index = weekday(key)
            if index in keys:
                # One would silently replace the other's windows.
                raise CalendarError(
                    f"week days {keys[index]!r} and {key!r} are both {DAY_NAMES[index]}: give its windows once"
                )
            keys[index] = key
            day = WEEKDAYS[index]
            parsed = sorted((Window.parse(s) for s in specs), key=lambda w: (w.start, w.end_minutes))
            for a, b in itertools.pairwise(parsed):
                if b.start.hour * 60 + b.start.minute < a.end_minutes:
                    raise CalendarError(f"windows of {day} overlap")
            windows[index] = tuple(parsed)
        self.windows = windows
        if not always_open and not any(windows.values()):
            raise CalendarError("the calendar has no opening hours on any day (use always_open for 24/7)")
        self.holidays = frozenset(holidays)
        self.country: holiday_calendars.HolidayBase | None = None
        if country:
            try:
                self.country = holiday_calendars.country_holidays(country.upper(), subdiv=subdivision)
            except NotImplementedError as exc:
                raise CalendarError(f"the holidays package does not know country {country!r}") from exc

    @classmethod
    def twenty_four_seven(cls, timezone: str = "UTC") -> BusinessCalendar:
        return cls(timezone=timezone, always_open=True)

    def is_holiday(self, day: date) -> bool:
        return day in self.holidays or (self.country is not None and day in self.country)

    def _day_windows(self, day: date) -> Iterator[tuple[datetime, datetime]]:
        if self.is_holiday(day):
            return
        if self.always_open:
            yield Window(time(0), 1440).bounds(day, self.zone)
            return
        for w in self.windows.get(day.weekday(), ()):
            begin, end = w.bounds(day, self.zone)
            if end > begin:
                yield begin, end

    def open_intervals(self, start: datetime, end: datetime | None = None) -> Iterator[tuple[datetime, datetime]]:
        """Open intervals (UTC, clipped to ``[start, end)``) in order, from the
        local day before ``start`` (a window may end after midnight in UTC)."""
        start = _utc(start)
        end_utc = _utc(end) if end is not None else None
        day = start.astimezone(self.zone).date() - timedelta(days=1)
        last = day + timedelta(days=_HORIZON_DAYS)
        if end_utc is not None:
            last = min(last, end_utc.astimezone(self.zone).date() + timedelta(days=1))
        while day <= last:
            for begin, finish in self._day_windows(day):
                if finish <= start:
                    continue
                if end_utc is not None and begin >= end_utc:
                    return
                yield max(begin, start), finish if end_utc is None else min(finish, end_utc)
            day += timedelta(days=1)

    def is_open(self, at: datetime) -> bool:
        at = _utc(at)
        # Any interval clipped to [at, at + 1µs) contains ``at``.
        return any(True for _ in self.open_intervals(at, at + timedelta(microseconds=1)))

    def next_open(self, at: datetime) -> datetime | None:
        """``at`` itself when open, else when the calendar next opens (None: not
        within three years)."""
        for begin, _ in self.open_intervals(at):
            return begin
        return None

    def add(self, start: datetime, duration: timedelta) -> datetime:
        """The instant at which ``duration`` of business time has passed since
        ``start``. Counting starts at the next opening when ``start`` is closed."""
        if duration < timedelta(0):
            raise ValueError("duration must not be negative")
        remaining = duration
        start = _utc(start)
        if remaining == timedelta(0):
            nxt = self.next_open(start)
            return nxt if nxt is not None else start
        for begin, finish in self.open_intervals(start):
            span = finish - begin
            if span >= remaining:
                return begin + remaining
            remaining -= span
        raise CalendarError("the calendar does not open often enough to count that duration")

    def between(self, start: datetime, end: datetime) -> timedelta:
        """Business time from ``start`` to ``end`` (zero when ``end`` is earlier)."""
        total = timedelta(0)
        if _utc(end) <= _utc(start):
            return total
        for begin, finish in self.open_intervals(start, end):
            total += finish - begin
        return total


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware")
    return value.astimezone(UTC)


@lru_cache(maxsize=64)
def always_open(timezone: str = "UTC") -> BusinessCalendar:
    return BusinessCalendar.twenty_four_seven(timezone)


def parse_holidays(items: Iterable[str | date]) -> list[date]:
    """Dates and ``YYYY-MM-DD..YYYY-MM-DD`` ranges (inclusive) as dates."""
    out: list[date] = []
    for item in items:
        if isinstance(item, date):
            out.append(item)
            continue
        first, sep, last = item.partition("..")
        try:
            a = date.fromisoformat(first.strip())
            b = date.fromisoformat(last.strip()) if sep else a
        except ValueError as exc:
            raise CalendarError(f"holiday {item!r} is not YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD") from exc
        if b < a:
            raise CalendarError(f"holiday range {item!r} ends before it starts")
        if (b - a).days > 366:
            raise CalendarError(f"holiday range {item!r} is longer than a year")
        out.extend(a + timedelta(days=i) for i in range((b - a).days + 1))
    return sorted(set(out))
