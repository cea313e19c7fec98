"""Where to connect: resolved from arguments, then the environment, then the embedded default.

- ``postgresql://`` / ``postgres://``: the Postgres transport.
- ``https://<ref>.supabase.co`` or ``http://127.0.0.1:54321``: the Supabase transport (needs a key).
- nothing: the embedded per-user local Postgres.

Environment: ``AGENT_RUNTIME_URL`` (or ``DATABASE_URL``), ``SUPABASE_URL`` with
``SUPABASE_SERVICE_ROLE_KEY`` or ``SUPABASE_KEY`` (or ``AGENT_RUNTIME_KEY``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from .errors import ConfigurationError

TransportKind = Literal["embedded", "postgres", "supabase"]


@dataclass(frozen=True)
class ConnectionSettings:
    kind: TransportKind
    url: str | None = None
    key: str | None = None

    def describe(self) -> str:
        return "embedded local Postgres" if self.kind == "embedded" else f"{self.kind} at {_redact(self.url)}"


def _redact(url: str | None) -> str:
    if not url or "@" not in url or "://" not in url:
        return url or ""
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def resolve(url: str | None = None, key: str | None = None) -> ConnectionSettings:
    env = os.environ
    url = url or env.get("AGENT_RUNTIME_URL") or env.get("DATABASE_URL") or env.get("SUPABASE_URL")
    key = key or env.get("AGENT_RUNTIME_KEY") or env.get("SUPABASE_SERVICE_ROLE_KEY") or env.get("SUPABASE_KEY")
    if not url or url == "embedded":
        return ConnectionSettings("embedded")
    if url.startswith(("postgresql://", "postgres://")):
        return ConnectionSettings("postgres", url)
    if url.startswith(("https://", "http://")):
        if not key:
            raise ConfigurationError(
                f"a Supabase URL ({url}) needs a key",
                hint="set SUPABASE_KEY (an agent's JWT or the anon key) or SUPABASE_SERVICE_ROLE_KEY",
            )
        return ConnectionSettings("supabase", url.rstrip("/"), key)
    raise ConfigurationError(
        f"unsupported URL {url!r}",
        hint="use postgresql://..., https://<ref>.supabase.co, or nothing for the embedded database",
    )
