"""Importing this module registers every route of the hub in ``registry``."""

from hub.web import api, chat, events, ops
from hub.web.registry import ROUTES as registry

__all__ = ["api", "chat", "events", "ops", "registry"]
