"""Who an agent says it is (id, name, kind, capabilities, version, metadata), checked by the
registry's rules when the runtime is made, so that a bad value is a typed error from the
constructor rather than from the database at start."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import InvalidInput, InvalidName
from ._payload import to_json_value

__all__ = ["CHANNEL_NAME", "check_agent_id", "check_agent_name", "check_kind", "check_version", "checked_capabilities",
           "checked_metadata", "default_agent_id"]

# The registry's rules (distributed_agents' checks and register_agent's).
_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.:/-]{0,127}")
_KIND = re.compile(r"[a-z][a-z0-9_-]{0,63}")
# The SQL's rule for channel names (channels, and the channel a metric is recorded for).
CHANNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")
_MAX_CAPABILITIES = 64
_MAX_VERSION = 64


def default_agent_id(name: str) -> str:
    """A fresh id made from the name (a new agent each time)."""
    base = "".join(c if c.isalnum() or c in "_.-" else "-" for c in name).strip("-_.") or "agent"
    return f"{base[:100]}-{uuid.uuid4().hex[:8]}"


def check_agent_id(agent_id: Any) -> str:
    if not isinstance(agent_id, str) or not _AGENT_ID.fullmatch(agent_id):
        raise InvalidName(f"invalid agent id {agent_id!r}",
                          hint="1-128 characters: letters, digits, _ . - (not starting with a symbol)")
    return agent_id


def check_agent_name(name: Any) -> str:
    if not isinstance(name, str) or not _AGENT_NAME.fullmatch(name):
        raise InvalidName(f"invalid agent name {name!r}",
                          hint="1-128 characters: letters, digits, spaces, _ . : / - (not starting with a symbol)")
    return name


def check_kind(kind: Any) -> str:
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise InvalidInput(f"invalid agent kind {kind!r}",
                           hint="1-64 characters: lowercase letters, digits, _ - (starting with a letter)")
    return kind


def checked_capabilities(capabilities: Any) -> list[str]:
    """Strings, from any iterable of them (a single string is refused, not split into letters)."""
    if isinstance(capabilities, str | bytes | Mapping) or not isinstance(capabilities, Iterable):
        raise InvalidInput(f"capabilities must be a list of strings (got {capabilities!r})")
    listed = list(capabilities)
    if not all(isinstance(c, str) for c in listed):
        raise InvalidInput(f"capabilities must be a list of strings (got {listed!r})")
    if len(listed) > _MAX_CAPABILITIES:
        raise InvalidInput(f"at most {_MAX_CAPABILITIES} capabilities (got {len(listed)})")
    return listed


def check_version(version: Any) -> str:
    if not isinstance(version, str) or len(version) > _MAX_VERSION:
        raise InvalidInput(f"version must be a string of at most {_MAX_VERSION} characters (got {version!r})")
    return version


def checked_metadata(metadata: Any) -> dict[str, Any]:
    """A JSON object (as the payload rules convert it)."""
    if metadata is None:
        return {}
    value = to_json_value(metadata, "metadata")
    if not isinstance(value, dict):
        raise InvalidInput(f"metadata must be a JSON object (got {type(metadata).__name__})")
    return value
