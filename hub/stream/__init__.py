"""The event stream: one interface, in-process (embedded) and Redis Streams (scale)."""

from hub.stream.base import Event, EventHandler, LiveBus, Stream

__all__ = ["Event", "EventHandler", "LiveBus", "Stream"]
