"""What a token says about itself: a JWT's claims, read without verifying them (the servers do)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

__all__ = ["token_claims"]


def token_claims(token: str | None) -> dict[str, Any]:
    """A JWT's claims, read without verifying it (the servers verify it); ``{}`` for anything
    that is not a JWT (an ``sb_...`` key, say)."""
    parts = (token or "").split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}
