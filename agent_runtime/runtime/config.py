"""Where to connect: resolved from arguments, then the environment, then the embedded default.

- ``postgresql://`` / ``postgres://``: the Postgres transport.
- ``https://<ref>.supabase.co`` or ``http://127.0.0.1:54321``: the Supabase transport (needs a key).
- nothing: the embedded per-user local Postgres.

Environment: ``AGENT_RUNTIME_URL`` (or ``DATABASE_URL``), ``SUPABASE_URL`` with
``SUPABASE_SERVICE_ROLE_KEY`` or ``SUPABASE_KEY`` (or ``AGENT_RUNTIME_KEY``), and for an agent
acting with its own JWT ``AGENT_RUNTIME_ACCESS_TOKEN`` (not ``SUPABASE_ACCESS_TOKEN``: that is the
Supabase CLI's personal access token).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigurationError
from ..transports.tokens import token_claims

__all__ = ["ConnectionSettings", "TransportKind", "resolve"]

TransportKind = Literal["embedded", "postgres", "supabase"]


@dataclass(frozen=True)
class ConnectionSettings:
    kind: TransportKind
    url: str | None = None
    key: str | None = None
    # An agent's own JWT, sent as the bearer token (REST) and given to the Realtime socket, while
    # ``key`` stays the project key the API gateway checks (``apikey``).
    access_token: str | None = field(default=None, repr=False)

    @property
    def claimed_agent_id(self) -> str | None:
        """The ``agent_id`` claim of the token acting (the access token, else the key), if any."""
        claimed = token_claims(self.access_token or self.key).get("agent_id")
        return None if claimed is None else str(claimed)

    def describe(self) -> str:
        return "embedded local Postgres" if self.kind == "embedded" else f"{self.kind} at {_redact(self.url)}"


def _redact(url: str | None) -> str:
    if not url or "@" not in url or "://" not in url:
        return url or ""
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def resolve(url: str | None = None, key: str | None = None, access_token: str | None = None) -> ConnectionSettings:
    env = os.environ
    url = url or env.get("AGENT_RUNTIME_URL") or env.get("DATABASE_URL") or env.get("SUPABASE_URL")
    key = key or env.get("AGENT_RUNTIME_KEY") or env.get("SUPABASE_SERVICE_ROLE_KEY") or env.get("SUPABASE_KEY")
    access_token = access_token or env.get("AGENT_RUNTIME_ACCESS_TOKEN")
    if not url or url == "embedded":
        return ConnectionSettings("embedded")
    if url.startswith(("postgresql://", "postgres://")):
        return ConnectionSettings("postgres", url)
    if url.startswith(("https://", "http://")):
        if not key:
            raise ConfigurationError(
                f"a Supabase URL ({url}) needs a key",
                hint="set SUPABASE_SERVICE_ROLE_KEY, or SUPABASE_KEY (the anon key) with an agent's JWT in "
                     "AGENT_RUNTIME_ACCESS_TOKEN",
            )
        return ConnectionSettings("supabase", url.rstrip("/"), key, access_token)
    raise ConfigurationError(
        f"unsupported URL {url!r}",
        hint="use postgresql://..., https://<ref>.supabase.co, or nothing for the embedded database",
    )
