"""Transports: thin pipes to the database (see :mod:`.base` for the seam)."""

from __future__ import annotations

from .base import RECONNECTED, Event, EventSink, Transport

__all__ = ["RECONNECTED", "Event", "EventSink", "Transport"]
