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
