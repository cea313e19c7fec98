"""One exception hierarchy for the runtime, and the one place SQLSTATEs are mapped to it.

Both transports carry the SQLSTATE of a failed call (asyncpg on the exception, PostgREST in the
error JSON's ``code``), so :func:`error_from_sqlstate` serves both.
"""

from __future__ import annotations

__all__ = [
    "AgentRuntimeError",
    "AgentUnavailable",
    "ChannelKindMismatch",
    "ConfigurationError",
    "Conflict",
    "ConnectionLost",
    "InvalidInput",
    "InvalidName",
    "InvalidPayload",
    "LockError",
    "LockLost",
    "LockNotHeld",
    "LockTimeout",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RemoteError",
    "RequestTimeout",
    "StaleFencingToken",
    "UnknownAgent",
    "UnknownChannel",
    "UnknownMessage",
    "error_from_sqlstate",
]


class AgentRuntimeError(Exception):
    """Base of every error the runtime raises."""

    retryable: bool = False

    def __init__(self, message: str, *, sqlstate: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class ConfigurationError(AgentRuntimeError):
    """The runtime cannot be set up as configured (bad URL, missing key, no Postgres found)."""


class ConnectionLost(AgentRuntimeError):
    """The database or Realtime connection failed; the operation may be retried."""

    retryable = True


class InvalidInput(AgentRuntimeError):
    """A value was refused: out of range, malformed, or of the wrong type. Nothing changed."""


class InvalidName(InvalidInput):
    """An agent id, channel name or lock key does not have the allowed form."""


class PayloadTooLarge(InvalidInput):
    """A message payload is larger than its channel allows."""


class UnsupportedPayload(InvalidInput):
    """A payload (or header, or metadata) to send has no JSON form under the payload rules:
    NaN or infinity, a NUL character in a string, or a type with no JSON mapping. Nothing was sent."""


class InvalidPayload(InvalidInput):
    """A received payload could not be decoded into the subscription's type."""


class PermissionDenied(AgentRuntimeError):
    """The caller may not act as that agent, or consume that inbox."""


class NotFound(AgentRuntimeError):
    """Something named does not exist."""


class NotMigrated(NotFound):
    """The database does not have the runtime's schema (a function or table of it is missing)."""


class MigrationError(AgentRuntimeError):
    """The migrations cannot be applied: an applied migration's file changed, or the database is in a
    state the migrator does not recognise. Nothing was changed."""


class UnknownAgent(NotFound):
    """No agent with that id is registered."""


class UnknownChannel(NotFound):
    """No channel with that name exists (or this agent is not subscribed to it)."""


class UnknownMessage(NotFound):
    """No message with that id exists (it may have expired)."""


class ChannelKindMismatch(AgentRuntimeError):
    """The channel exists with another kind, or the operation does not fit its kind."""


class Conflict(AgentRuntimeError):
    """A concurrent operation won; retrying may succeed."""

    retryable = True


class LockError(AgentRuntimeError):
    """Base of lock errors."""


class LockNotHeld(LockError):
    """The lease is not (or no longer) held by this holder: expired, released or taken over."""


class LockLost(LockNotHeld):
    """A held lease could not be renewed in time; the protected work must stop."""


class LockTimeout(LockError, TimeoutError):
    """The lock could not be acquired within the wait time."""


class StaleFencingToken(LockError):
    """A fencing token is not the current holder's: the write it guards is refused."""


class RequestTimeout(AgentRuntimeError, TimeoutError):
    """No reply arrived before the request's deadline."""


class RemoteError(AgentRuntimeError):
    """The responder could not answer: its handler raised, its reply could not be encoded or sent,
    or the request was refused (a ``reply_to`` other than the requester's own inbox). The message
    carries its error; ``remote_type`` names the responder's exception class."""

    def __init__(self, message: str, *, remote_type: str | None = None, sqlstate: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, sqlstate=sqlstate, hint=hint)
        self.remote_type = remote_type


class AgentUnavailable(AgentRuntimeError):
    """The agent asked is offline, or does not answer requests (no request handler)."""


# The SQL layer's own codes (see the header of the schema migration), then standard ones.
_SQLSTATE_ERRORS: dict[str, type[AgentRuntimeError]] = {
    "AR400": InvalidInput,
    "AR401": InvalidName,
    "AR403": PermissionDenied,
    "AR404": UnknownAgent,
    "AR405": UnknownChannel,
    "AR406": UnknownMessage,
    "AR408": Conflict,
    "AR409": LockNotHeld,
    "AR412": ChannelKindMismatch,
    "AR413": PayloadTooLarge,
    "AR422": StaleFencingToken,
    "22P02": InvalidInput,  # invalid_text_representation (malformed JSON, uuid...)
    "22023": InvalidInput,  # invalid_parameter_value
    "22003": InvalidInput,  # numeric_value_out_of_range
    "22001": InvalidInput,  # string_data_right_truncation
    "23514": InvalidInput,  # check_violation
    "23502": InvalidInput,  # not_null_violation
    "42501": PermissionDenied,  # insufficient_privilege
    "42883": NotMigrated,  # undefined_function: the schema is not migrated
    "42P01": NotMigrated,  # undefined_table
    "28000": ConfigurationError,  # invalid_authorization_specification: no such role
    "28P01": ConfigurationError,  # invalid_password
    "3D000": ConfigurationError,  # invalid_catalog_name: no such database
    "40001": Conflict,  # serialization_failure
    "40P01": Conflict,  # deadlock_detected
}

# Classes of SQLSTATE that mean the connection, not the request, failed.
_RETRYABLE_CLASSES = ("08", "57P", "53")
# Classes that mean the request's values were refused, for the codes not mapped above: data
# exceptions (a NUL character in text, a number out of range...) and program limits (JSON nested
# too deep for the server).
_INPUT_CLASSES = ("22", "54")


# Hints that name what a user of the Python API or the CLI can do, in place of the SQL's own
# (which names SQL functions users never call).
_HINTS: dict[str, str] = {
    "AR405": "create it with rt.channel(name, kind) before publishing, or publish with the CLI's --create KIND",
    "28000": "check the user in the URL (postgresql://USER@host/db); create it with createuser or CREATE ROLE",
    "28P01": "check the user and password in the URL (postgresql://USER:PASSWORD@host/db)",
    "3D000": "check the database name in the URL, or create it (createdb NAME); agent-runtime migrate then builds "
             "the schema",
}


def error_from_sqlstate(sqlstate: str | None, message: str, hint: str | None = None) -> AgentRuntimeError:
    """Translate a database error into the runtime's hierarchy."""
    code = sqlstate or ""
    hint = _HINTS.get(code, hint)
    cls = _SQLSTATE_ERRORS.get(code)
    if cls is None:
        if code.startswith(_RETRYABLE_CLASSES):
            cls = ConnectionLost
        elif code.startswith(_INPUT_CLASSES):
            cls = InvalidInput
        else:
            cls = AgentRuntimeError
    if cls is NotMigrated:
        return NotMigrated(f"not migrated: run agent-runtime migrate --url ... ({message})", sqlstate=sqlstate,
                           hint=hint or "this database does not have the agent_runtime schema")
    return cls(message, sqlstate=sqlstate, hint=hint)
