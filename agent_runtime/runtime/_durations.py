"""Durations given by callers in seconds, checked before they become the milliseconds the SQL
functions take: what is not a finite number (or overflows in milliseconds) is refused with
InvalidInput, never a ValueError or OverflowError from deep inside."""

from __future__ import annotations

import math

from ..errors import InvalidInput


def seconds(value: float | None, what: str, *, allow_inf: bool = False, optional: bool = True) -> float | None:
    """``value`` checked: NaN, infinities (unless ``allow_inf``) and non-numbers (None too unless
    ``optional``) are refused."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or (
            math.isinf(value) and not allow_inf):
        raise InvalidInput(f"{what} must be a finite number of seconds (got {value!r})")
    return value


def to_ms(value: float | None, what: str) -> int | None:
    """Seconds (or None) as whole milliseconds (or None)."""
    checked = seconds(value, what)
    if checked is None:
        return None
    if not math.isfinite(checked * 1000):  # a float near the maximum overflows in milliseconds
        raise InvalidInput(f"{what} is out of range (got {value!r} seconds)")
    return int(checked * 1000)


def required_ms(value: float, what: str) -> int:
    """Like :func:`to_ms` for a duration that must be given."""
    ms = to_ms(seconds(value, what, optional=False), what)
    assert ms is not None
    return ms


def bounded(value: float, what: str, *, minimum: float, maximum: float) -> float:
    """A setting in seconds that must lie in ``[minimum, maximum]`` (a minimum keeps a timer from
    becoming a hot loop; a maximum keeps it within what the database accepts)."""
    checked = seconds(value, what, optional=False)
    assert checked is not None
    if not minimum <= checked <= maximum:
        raise InvalidInput(f"{what} must be between {minimum:g} and {maximum:g} seconds (got {value!r})")
    return float(checked)


def whole(value: int, what: str, *, minimum: int, maximum: int) -> int:
    """A count that must be an integer in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidInput(f"{what} must be a whole number between {minimum} and {maximum} (got {value!r})")
    return value
