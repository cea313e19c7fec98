"""The faces for people: the ``agent-runtime`` command line (:mod:`.commands`) and its demo
(:mod:`.demo`), written against the public API."""

from __future__ import annotations

from .commands import build_parser, main

__all__ = ["build_parser", "main"]
