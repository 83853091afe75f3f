"""Importing this module registers every route of the hub in ``registry``."""

from hub.web import (
    api,
    attachments,
    campaigns,
    chat,
    contacts,
    events,
    faq,
    inbox,
    ops,
    routing,
    telegram,
    twilio,
    widget,
)
from hub.web.registry import ROUTES as registry

__all__ = [
    "api",
    "attachments",
    "campaigns",
    "chat",
    "contacts",
    "events",
    "faq",
    "inbox",
    "ops",
    "registry",
    "routing",
    "telegram",
    "twilio",
    "widget",
]
