"""Transports: thin pipes to the database (see :mod:`.base` for the seam, :mod:`.wire` for what
travels on it)."""

from __future__ import annotations

from .base import EventSink, Transport
from .wire import RECONNECTED, WakeUp

__all__ = ["RECONNECTED", "EventSink", "Transport", "WakeUp"]
