"""Quiet hours in the recipient's zone(s), the zones of a number, and the
shared pacer's bookkeeping (no timing assertions: the slots it books are
checked, not how fast anything ran)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.campaigns.schedule import Pacer, quiet_until, zones_for
from storage.db import Database
from storage.migrate import upgrade_async


def test_zones_of_a_number() -> None:
    assert zones_for("+989121234567", None, "UTC") == ["Asia/Tehran"]
    assert zones_for("+14155550123", None, "UTC") == ["America/Los_Angeles"]
    assert zones_for("+14155550123", "Europe/Berlin", "UTC") == ["Europe/Berlin"]  # the contact's own
    assert zones_for("+14155550123", "Mars/Olympus", "UTC") == ["America/Los_Angeles"]  # not a zone: ignored
    assert zones_for("+80012345678", None, "Asia/Tehran") == ["Asia/Tehran"]  # no region: the default
    assert len(zones_for("+18005550100", None, "UTC")) > 1  # a toll-free number spans the continent


def test_quiet_hours_across_midnight() -> None:
    tehran = ["Asia/Tehran"]  # UTC+03:30, no DST
    # 22:30 in Tehran: quiet until 09:00 the next morning there (05:30 UTC).
    assert quiet_until(datetime(2026, 3, 1, 19, 0, tzinfo=UTC), tehran, "21:00", "09:00") == datetime(
        2026, 3, 2, 5, 30, tzinfo=UTC
    )
    # 03:30 in Tehran: quiet until 09:00 the same day.
    assert quiet_until(datetime(2026, 3, 1, 0, 0, tzinfo=UTC), tehran, "21:00", "09:00") == datetime(
        2026, 3, 1, 5, 30, tzinfo=UTC
    )
    # 12:30 in Tehran: fine.
    assert quiet_until(datetime(2026, 3, 1, 9, 0, tzinfo=UTC), tehran, "21:00", "09:00") is None
    # A window within one day.
    assert quiet_until(datetime(2026, 3, 1, 9, 0, tzinfo=UTC), tehran, "12:00", "14:00") == datetime(
        2026, 3, 1, 10, 30, tzinfo=UTC
    )


def test_every_zone_of_a_number_must_be_awake() -> None:
    zones = ["America/New_York", "America/Los_Angeles"]
    # 05:00 UTC: 00:00 in New York, 21:00 in Los Angeles: both asleep; New York wakes
    # at 09:00 (13:00 UTC), when Los Angeles is at 06:00 and still asleep until 16:00 UTC.
    assert quiet_until(datetime(2026, 1, 15, 5, 0, tzinfo=UTC), zones, "21:00", "09:00") == datetime(
        2026, 1, 15, 17, 0, tzinfo=UTC
    )


def test_dst_spring_forward_in_berlin() -> None:
    # 29 March 2026: Berlin moves from UTC+1 to UTC+2 at 02:00. 01:00 UTC is 03:00
    # local, quiet until 09:00 local = 07:00 UTC.
    assert quiet_until(datetime(2026, 3, 29, 1, 0, tzinfo=UTC), ["Europe/Berlin"], "21:00", "09:00") == datetime(
        2026, 3, 29, 7, 0, tzinfo=UTC
    )


async def test_pacer_books_slots_at_the_rate_across_two_workers(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"
    await upgrade_async(url)
    db = Database(url)

    # A clock that stands still: the slots are the pacer's arithmetic alone,
    # not how fast this machine runs the test.
    def clock() -> float:
        return 1_800_000_000.0

    try:
        a = Pacer(db, "+15550001111", 100.0, clock=clock)
        b = Pacer(db, "+15550001111", 100.0, clock=clock)
        # Two workers book 2-segment messages in turns: at 100 segments/s every
        # slot is at least 20 ms after the previous one, whoever booked it.
        slots = []
        for i in range(60):
            pacer = a if (i // 7) % 2 else b
            slots.append(clock() + await pacer.book(2))
        slots.sort()
        gaps = [later - earlier for earlier, later in itertools.pairwise(slots)]
        assert min(gaps) >= 0.02 - 1e-6
        # And no time is wasted: 60 messages of 2 segments take 1.2 s of the
        # sender's time (the last starts 1.18 s in), give or take the slices
        # each worker holds and leaves partly unused when it switches.
        assert slots[-1] - slots[0] < 1.18 + 8 * 0.25
    finally:
        await db.dispose()


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), 1e-300, 0.009])
async def test_the_pacer_refuses_a_rate_too_slow_to_pace(tmp_path: Path, rate: float) -> None:
    """1e-300 used to overflow on every booking: a campaign "running" for ever."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")
    try:
        with pytest.raises(ValueError, match=r"rate must be at least 0\.01 segments per second"):
            Pacer(db, "+15550001111", rate)
    finally:
        await db.dispose()
