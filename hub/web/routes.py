"""Importing this module registers every route of the hub in ``registry``."""

from hub.web import api, attachments, chat, events, ops, routing
from hub.web.registry import ROUTES as registry

__all__ = ["api", "attachments", "chat", "events", "ops", "registry", "routing"]
