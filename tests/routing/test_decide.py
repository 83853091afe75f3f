from __future__ import annotations

import pytest

from hub.core import TicketStatus
from routing import Decision, TicketSnapshot, decide


def snap(**kw: object) -> TicketSnapshot:
    base: dict[str, object] = {
        "id": 1,
        "status": TicketStatus.OPEN,
        "channel": "webchat",
        "inbox": "webchat",
        "assignee_id": None,
        "team_id": None,
        "ticket_created": True,
        "bot_enabled": False,
        "bot_silenced": False,
    }
    base.update(kw)
    return TicketSnapshot(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({}, None),
        ({"bot_enabled": True}, TicketStatus.PENDING),
        ({"bot_enabled": True, "bot_silenced": True}, None),
        ({"bot_enabled": True, "ticket_created": False}, None),
        ({"bot_enabled": True, "assignee_id": 7}, None),
        ({"bot_enabled": True, "status": TicketStatus.SNOOZED}, None),
    ],
)
def test_decide(changes: dict[str, object], status: TicketStatus | None) -> None:
    decision = decide(snap(**changes))
    assert isinstance(decision, Decision)
    assert decision.status == status
    assert decision.reason
