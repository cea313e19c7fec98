"""The payload rules: how a Python value becomes the JSON a message carries, and what is refused.

Applied to every payload, header and metadata value before it leaves the process, so that what
arrives is exactly what was checked (nothing is changed silently on the way):

- JSON types pass as they are: ``dict`` (keys become strings: ``{1: "a"}`` -> ``{"1": "a"}``),
  ``list``, ``str``, ``int`` (any size), ``float``, ``bool``, ``None``.
- ``tuple``, ``set`` and ``frozenset`` become lists (a set in no particular order).
- ``datetime`` becomes an ISO 8601 string: ``"2026-12-01T09:30:00Z"`` when it has a time zone,
  ``"2026-12-01T09:30:00"`` (no offset: ambiguous) when naive; ``date``, ``time`` likewise,
  ``timedelta`` as ISO 8601 (``"PT90S"``).
- ``bytes``, ``bytearray``, ``memoryview`` become base64 strings; ``Decimal`` a string (exact:
  ``"1.10"``); ``UUID`` its canonical string; an ``Enum`` its value.
- msgspec Structs, dataclasses and attrs classes become objects of their fields.

Received payloads are plain JSON: a subscription with ``type=`` (a msgspec Struct whose fields
say ``datetime``, ``bytes``, ``UUID``, ``set[...]``...) turns those strings and lists back.

Refused with :class:`~agent_runtime.errors.UnsupportedPayload` (nothing is sent): NaN and
infinities (JSON has no form for them; an encoder would write ``null``), a NUL character
(``\\x00``) in a string or key (PostgreSQL's JSON cannot store it), lone surrogates, nesting too
deep, and any other type (``complex``, arbitrary objects...).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from ..errors import UnsupportedPayload

_encoder = msgspec.json.Encoder()
_HINT = "see the payload rules in the README: JSON values, plus tuples, sets, datetimes, bytes, Decimal, UUID, " \
        "Enums, Structs and dataclasses"


def to_json_value(value: Any, what: str = "payload") -> Any:
    """``value`` as JSON-ready builtins under the payload rules; raises UnsupportedPayload."""
    try:
        result = msgspec.to_builtins(value, str_keys=True)
        encoded = _encoder.encode(result)
    except (TypeError, ValueError, RecursionError) as exc:  # ValueError: a lone surrogate in a string
        raise UnsupportedPayload(f"{what} is not JSON-serialisable: {exc}", hint=_HINT) from exc
    if b"\\u0000" in encoded:
        raise UnsupportedPayload(
            f"{what} has a NUL character (\\x00) in a string at {_path(result, _has_nul)}: PostgreSQL cannot "
            "store it in JSON", hint="remove it; send binary data as bytes (they travel as base64)")
    if b"null" in encoded:  # NaN and infinities were written as null: look for them only then
        where = _path(result, _non_finite)
        if where is not None:
            raise UnsupportedPayload(f"{what} has NaN or infinity at {where}: JSON has no form for them",
                                     hint="send None or a string instead")
    return result


def _has_nul(item: Any) -> bool:
    return isinstance(item, str) and "\x00" in item


def _non_finite(item: Any) -> bool:
    return isinstance(item, float) and not math.isfinite(item)


def _path(value: Any, bad: Any) -> str | None:
    """Where in ``value`` the first item ``bad`` accepts (a key or a value) is, as ``$.a[2]``."""
    stack: list[tuple[Any, str]] = [(value, "$")]
    while stack:
        item, where = stack.pop()
        if bad(item):
            return where
        if isinstance(item, dict):
            for key, child in item.items():
                if bad(key):
                    return f"{where} (a key)"
                stack.append((child, f"{where}.{key}"))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None
