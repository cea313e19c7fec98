"""Shared argument parsing for the examples: ``--url`` (default: the embedded local database)."""

from __future__ import annotations

import argparse


def parse_url(description: str) -> str | None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", help="postgresql://... (default: AGENT_RUNTIME_URL or the embedded database)")
    return parser.parse_args().url
