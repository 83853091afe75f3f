"""Business-hours arithmetic across timezones, holidays and DST."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.hours import BusinessCalendar, CalendarError, parse_holidays

TEHRAN = ZoneInfo("Asia/Tehran")
NEW_YORK = ZoneInfo("America/New_York")
IRAN_WEEK = {d: ["08:00-16:00"] for d in ("sat", "sun", "mon", "tue", "wed")}


def local(zone: ZoneInfo, year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone)


def iran(**kw: object) -> BusinessCalendar:
    return BusinessCalendar(timezone="Asia/Tehran", week=IRAN_WEEK, **kw)  # type: ignore[arg-type]


def test_iran_week_is_saturday_to_wednesday() -> None:
    cal = iran()
    # 2025-06-07 is a Saturday; Thursday 5 and Friday 6 are the weekend.
    assert cal.is_open(local(TEHRAN, 2025, 6, 7, 9, 0))
    assert cal.is_open(local(TEHRAN, 2025, 6, 4, 15, 59))  # Wednesday
    assert not cal.is_open(local(TEHRAN, 2025, 6, 5, 10, 0))  # Thursday
    assert not cal.is_open(local(TEHRAN, 2025, 6, 6, 10, 0))  # Friday
    assert not cal.is_open(local(TEHRAN, 2025, 6, 7, 16, 0))  # closing time is closed
    assert not cal.is_open(local(TEHRAN, 2025, 6, 7, 7, 59))


def test_adding_across_the_weekend_in_another_timezone() -> None:
    cal = iran()
    # Wednesday 15:00 Tehran + 2 business hours = Saturday 09:00 Tehran.
    start = local(TEHRAN, 2025, 6, 4, 15, 0).astimezone(UTC)
    due = cal.add(start, timedelta(hours=2))
    assert due == local(TEHRAN, 2025, 6, 7, 9, 0)
    assert due.tzinfo is UTC
    assert cal.between(start, due) == timedelta(hours=2)
    # Starting while closed counts from the next opening.
    assert cal.add(local(TEHRAN, 2025, 6, 5, 23, 0), timedelta(minutes=30)) == local(TEHRAN, 2025, 6, 7, 8, 30)


def test_holidays_are_closed_all_day() -> None:
    cal = iran(holidays=parse_holidays(["2025-06-07..2025-06-08"]))
    assert not cal.is_open(local(TEHRAN, 2025, 6, 7, 10, 0))
    assert cal.next_open(local(TEHRAN, 2025, 6, 4, 17, 0)) == local(TEHRAN, 2025, 6, 9, 8, 0)
    assert cal.add(local(TEHRAN, 2025, 6, 4, 15, 0), timedelta(hours=2)) == local(TEHRAN, 2025, 6, 9, 9, 0)


def test_country_holidays_include_nowruz() -> None:
    cal = iran(country="IR")
    assert cal.is_holiday(date(2025, 3, 21))
    assert not cal.is_open(local(TEHRAN, 2025, 3, 22, 10, 0))  # a Saturday, but Nowruz
    with pytest.raises(CalendarError, match="country"):
        BusinessCalendar(week=IRAN_WEEK, country="XX")


def test_dst_spring_forward_day_is_shorter() -> None:
    cal = BusinessCalendar(timezone="America/New_York", always_open=True)
    day_start = local(NEW_YORK, 2025, 3, 9, 0, 0)
    next_day = local(NEW_YORK, 2025, 3, 10, 0, 0)
    assert cal.between(day_start, next_day) == timedelta(hours=23)
    # 24 business hours from midnight ends at 01:00 the next day local time.
    assert cal.add(day_start, timedelta(hours=24)) == local(NEW_YORK, 2025, 3, 10, 1, 0)


def test_dst_window_spanning_the_change() -> None:
    cal = BusinessCalendar(timezone="America/New_York", week={"sun": ["00:00-08:00"]})
    # 2025-11-02: clocks fall back at 02:00, so 00:00-08:00 lasts nine hours.
    start = local(NEW_YORK, 2025, 11, 2, 0, 0)
    assert cal.between(start, local(NEW_YORK, 2025, 11, 2, 8, 0)) == timedelta(hours=9)
    assert cal.add(start, timedelta(hours=9)) == local(NEW_YORK, 2025, 11, 2, 8, 0)
    # A weekday-hours calendar over the change keeps nine-to-five days of 8 hours.
    office = BusinessCalendar(timezone="America/New_York", week={d: ["09:00-17:00"] for d in ("fri", "mon")})
    friday_4pm = local(NEW_YORK, 2025, 10, 31, 16, 0)
    assert office.add(friday_4pm, timedelta(hours=2)) == local(NEW_YORK, 2025, 11, 3, 10, 0)


def test_windows_split_by_lunch_and_until_midnight() -> None:
    cal = BusinessCalendar(timezone="UTC", week={"mon": ["09:00-12:00", "13:00-24:00"]})
    monday = datetime(2025, 6, 2, 11, 0, tzinfo=UTC)
    assert cal.add(monday, timedelta(hours=2)) == datetime(2025, 6, 2, 14, 0, tzinfo=UTC)
    assert cal.add(monday, timedelta(hours=12)) == datetime(2025, 6, 3, 0, 0, tzinfo=UTC)
    assert cal.add(monday, timedelta(hours=13)) == datetime(2025, 6, 9, 10, 0, tzinfo=UTC)
    assert not cal.is_open(datetime(2025, 6, 2, 12, 30, tzinfo=UTC))
    assert cal.is_open(datetime(2025, 6, 2, 23, 59, tzinfo=UTC))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"week": {"mon": ["9-5"]}}, "HH:MM"),
        ({"week": {"mon": ["17:00-09:00"]}}, "two windows"),
        ({"week": {"mon": ["09:00-12:00", "11:00-13:00"]}}, "overlap"),
        ({"week": {"funday": ["09:00-12:00"]}}, "week day"),
        ({"week": {}}, "no opening hours"),
        ({"week": {"mon": ["09:00-25:00"]}}, "does not exist"),
        ({"timezone": "Mars/Olympus", "always_open": True}, "timezone"),
    ],
)
def test_bad_calendars_say_what_is_wrong(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(CalendarError, match=needle):
        BusinessCalendar(**kwargs)  # type: ignore[arg-type]


def test_a_calendar_that_never_opens_again_refuses_to_count() -> None:
    cal = BusinessCalendar(week={"mon": ["09:00-10:00"]}, holidays=parse_holidays(["2025-01-01..2025-12-31"]))
    with pytest.raises(CalendarError):
        cal.add(datetime(2025, 1, 1, tzinfo=UTC), timedelta(days=400))
    with pytest.raises(ValueError, match="timezone-aware"):
        cal.is_open(datetime(2025, 1, 1))


@settings(max_examples=60, deadline=None)
@given(
    st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)),
    st.integers(min_value=0, max_value=60 * 80),
    st.sampled_from(["Asia/Tehran", "America/New_York", "Europe/London", "Australia/Lord_Howe"]),
)
def test_add_and_between_agree(start: datetime, minutes: int, zone: str) -> None:
    cal = BusinessCalendar(
        timezone=zone, week={d: ["08:00-12:00", "13:00-17:30"] for d in ("sat", "sun", "mon", "wed")}
    )
    due = cal.add(start, timedelta(minutes=minutes))
    assert due >= start
    assert cal.between(start, due) == timedelta(minutes=minutes)
    if minutes:
        assert cal.is_open(due - timedelta(microseconds=1))
