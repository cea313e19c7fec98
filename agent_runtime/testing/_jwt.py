"""HS256 tokens for the stand-in: signing the project keys and agent tokens, and verifying what
clients send, with the error wording PostgREST and Realtime use."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt

ALGORITHMS = ["HS256", "HS384", "HS512"]

# Agent ids are text; Supabase's auth.uid() is a uuid. Each agent gets a stable uuid for `sub`.
_AGENT_NAMESPACE = uuid.UUID("0b7c9a52-4c1e-4d5f-9a0e-6e2f3c8d1a47")


def agent_sub(agent_id: str) -> str:
    """The `sub` claim (a uuid) that agent tokens carry for ``agent_id``."""
    return str(uuid.uuid5(_AGENT_NAMESPACE, agent_id))


def sign(secret: str, claims: dict[str, Any]) -> str:
    """An HS256 JWT with these claims."""
    return jwt.encode(claims, secret, algorithm="HS256")


def project_key(secret: str, role: str) -> str:
    """A long-lived project API key (like Supabase's anon / service_role keys)."""
    now = int(time.time())
    return sign(secret, {"iss": "supabase-standin", "role": role, "iat": now, "exp": now + 10 * 365 * 86400})


class TokenError(Exception):
    """A token that does not verify. ``kind``: malformed, signature, expired or claims."""

    def __init__(self, kind: str, message: str, *, expired_for: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.expired_for = expired_for


def decode(token: str, secret: str, *, require_role_exp: bool = False) -> dict[str, Any]:
    """Verify an HS256/384/512 token and return its claims.

    ``exp`` is checked when present (required with ``require_role_exp``, as Realtime requires
    ``role`` and ``exp``). Raises :class:`TokenError`.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("malformed", f"Expected 3 parts in JWT; got {len(parts)}")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=ALGORITHMS,
            options={"verify_exp": False, "verify_aud": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.InvalidSignatureError as exc:
        raise TokenError("signature", "JWT cryptographic operation failed") from exc
    except jwt.PyJWTError as exc:
        raise TokenError("malformed", f"JWT could not be decoded: {exc}") from exc
    if not isinstance(claims, dict):
        raise TokenError("malformed", "JWT claims are not a JSON object")
    exp = claims.get("exp")
    if require_role_exp and (not isinstance(claims.get("role"), str) or not isinstance(exp, int | float)):
        raise TokenError("claims", "Fields `role` and `exp` are required in JWT")
    if exp is not None:
        if not isinstance(exp, int | float):
            raise TokenError("malformed", "JWT claim exp is not a number")
        now = time.time()
        if exp <= now:
            raise TokenError("expired", "JWT expired", expired_for=int(now - exp))
    return claims
