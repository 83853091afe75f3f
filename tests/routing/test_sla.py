from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from routing import sla
from routing.hours import BusinessCalendar
from routing.settings import SlaPolicy

TEHRAN = ZoneInfo("Asia/Tehran")
OFFICE = BusinessCalendar(
    timezone="Asia/Tehran", week={d: ["08:00-16:00"] for d in ("sat", "sun", "mon", "tue", "wed")}
)


def test_business_hours_policy_counts_only_open_time() -> None:
    policy = SlaPolicy(
        first_response_minutes=120, resolution_minutes=8 * 60, business_hours=True, warn_before_minutes=30
    )
    start = datetime(2025, 6, 4, 15, 0, tzinfo=TEHRAN)  # Wednesday, an hour before the weekend
    plan = sla.plan(policy, sla.TARGETS, start, OFFICE)
    assert set(plan) == {"first_response", "resolution"}
    assert plan["first_response"].due_at == datetime(2025, 6, 7, 9, 0, tzinfo=TEHRAN)
    assert plan["first_response"].warn_at == datetime(2025, 6, 7, 8, 30, tzinfo=TEHRAN)
    assert plan["resolution"].due_at == datetime(2025, 6, 7, 15, 0, tzinfo=TEHRAN)


def test_calendar_time_policy_ignores_the_calendar() -> None:
    policy = SlaPolicy(first_response_minutes=120)
    start = datetime(2025, 6, 4, 15, 0, tzinfo=TEHRAN)
    d = sla.deadline(policy, "first_response", start, OFFICE)
    assert d is not None and d.due_at == start + timedelta(hours=2) and d.warn_at is None
    assert sla.deadline(policy, "resolution", start, OFFICE) is None


def test_each_level_fires_once_and_a_breach_covers_its_warning() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    policy = SlaPolicy(first_response_minutes=60, next_response_minutes=30, warn_before_minutes=10)
    plan = sla.plan(policy, ["first_response"], start, None)
    fired: set[str] = set()
    assert sla.next_check(plan, fired) == start + timedelta(minutes=50)
    assert sla.due_now(plan, fired, start + timedelta(minutes=49)) == []
    due = sla.due_now(plan, fired, start + timedelta(minutes=55))
    assert [(d.target, level) for d, level in due] == [("first_response", "warning")]
    fired |= sla.fired_keys(due)
    assert sla.due_now(plan, fired, start + timedelta(minutes=59)) == []
    assert sla.next_check(plan, fired) == start + timedelta(minutes=60)
    due = sla.due_now(plan, fired, start + timedelta(minutes=61))
    assert [(d.target, level) for d, level in due] == [("first_response", "breach")]
    fired |= sla.fired_keys(due)
    assert sla.next_check(plan, fired) is None
    # A sweeper that was down during the warning sends only the breach.
    late = sla.due_now(plan, set(), start + timedelta(hours=5))
    assert [level for _, level in late] == ["breach"]
    assert sla.next_check(plan, sla.fired_keys(late)) is None


def test_deadlines_round_trip_and_prune() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    policy = SlaPolicy(first_response_minutes=60, warn_before_minutes=10)
    d = sla.plan(policy, ["first_response"], start, None)["first_response"]
    assert sla.Deadline.from_json("first_response", d.to_json()) == d
    assert sla.prune([d.key("warning"), "resolution:breach:old"], {"first_response": d}) == [d.key("warning")]


def test_a_pause_moves_pending_deadlines_by_its_length() -> None:
    start = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)
    policy = SlaPolicy(first_response_minutes=120, resolution_minutes=600, warn_before_minutes=30)
    plan = sla.plan(policy, sla.TARGETS, start, None)
    paused, resumed = start + timedelta(hours=1), start + timedelta(hours=3)
    moved, fired = sla.resume(plan, [], paused, resumed, None)
    for target in ("first_response", "resolution"):
        assert moved[target].due_at == plan[target].due_at + timedelta(hours=2)
        assert moved[target].warn_at == plan[target].warn_at + timedelta(hours=2)  # type: ignore[operator]
    assert fired == set()
    # Nothing slept when the resuming clock is behind the pausing one.
    assert sla.resume(plan, [], paused, paused - timedelta(seconds=1), None)[0] == plan


def test_a_deadline_breached_before_the_pause_stays_and_a_sent_warning_is_not_sent_again() -> None:
    start = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)
    policy = SlaPolicy(first_response_minutes=10, resolution_minutes=120, warn_before_minutes=100)
    plan = sla.plan(policy, sla.TARGETS, start, None)
    # At 09:30 the first response is breached and the resolution warned of.
    fired = sla.fired_keys(sla.due_now(plan, [], start + timedelta(minutes=30)))
    paused, resumed = start + timedelta(minutes=40), start + timedelta(hours=5, minutes=40)
    moved, fired_after = sla.resume(plan, fired, paused, resumed, None)
    assert moved["first_response"] == plan["first_response"]
    assert moved["resolution"].due_at == plan["resolution"].due_at + timedelta(hours=5)
    assert moved["resolution"].key("warning") in fired_after
    kept = sla.prune(fired_after, moved)
    assert sla.due_now(moved, kept, resumed) == []
    assert sla.next_check(moved, kept) == moved["resolution"].due_at


def test_a_pause_in_business_time_keeps_the_business_time_left() -> None:
    policy = SlaPolicy(first_response_minutes=120, business_hours=True)
    start = datetime(2025, 6, 4, 13, 0, tzinfo=TEHRAN)  # Wednesday
    plan = sla.plan(policy, ["first_response"], start, OFFICE)
    assert plan["first_response"].due_at == datetime(2025, 6, 4, 15, 0, tzinfo=TEHRAN)
    paused = datetime(2025, 6, 4, 14, 0, tzinfo=TEHRAN)  # an hour left
    resumed = datetime(2025, 6, 7, 7, 0, tzinfo=TEHRAN)  # Saturday, before opening
    calendar = sla.counting_calendar(policy, OFFICE)
    moved, _ = sla.resume(plan, [], paused, resumed, calendar)
    assert moved["first_response"].due_at == datetime(2025, 6, 7, 9, 0, tzinfo=TEHRAN)
    assert sla.counting_calendar(SlaPolicy(first_response_minutes=1), OFFICE) is None


def test_the_pause_mark_round_trips_in_the_deadline_document() -> None:
    at = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)
    assert sla.paused_at({}) is None and sla.paused_at(None) is None
    assert sla.paused_at({"resolution": {"due": at.isoformat()}, sla.PAUSED_AT: at.isoformat()}) == at
