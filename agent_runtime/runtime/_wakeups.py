"""Messages carried by broadcast wake-ups, believed only when the database vouches for them.

Any database login can send a notification on any channel (plain ``NOTIFY`` cannot be revoked),
and a Realtime topic may carry what a client put there. So a wake-up that carries messages is
believed only if its HMAC (``h``, computed in the trigger with a secret only the schema's owner
can read) verifies with the key this runtime got from ``wakeup_key()``. A runtime that cannot get
the key (an agent with its own JWT) ignores carried messages and fetches; so does everyone for a
wake-up that is malformed or does not verify. At worst a forged wake-up costs a fetch."""

from __future__ import annotations

import hashlib
import hmac
import logging

import msgspec

from ..errors import AgentRuntimeError, ConnectionLost
from ..models import RawMessage
from ..transports.wire import MessageWakeUp, channel_topic
from ._db import Database, messages_from_json

log = logging.getLogger(__name__)


class CarriedMessages:
    """Verifies and decodes the messages broadcast wake-ups carry."""

    def __init__(self) -> None:
        self._key: bytes | None = None
        self._known = False  # whether the key was asked for (and given or refused)

    @property
    def verifying(self) -> bool:
        """Whether carried messages can be believed (the key is known)."""
        return self._key is not None

    async def load_key(self, db: Database) -> None:
        """Ask once for the wake-up key; refused (not a trusted role) means: always fetch."""
        if self._known:
            return
        try:
            key = await db.wakeup_key()
        except ConnectionLost as exc:
            log.info("wake-up key not loaded yet (%s): fetching meanwhile", exc)
            return
        except AgentRuntimeError as exc:
            log.info("no wake-up key for this role (%s): carried messages are fetched instead", exc)
            self._known = True
            return
        try:
            self._key = bytes.fromhex(key) if isinstance(key, str) and key else None
        except ValueError:
            self._key = None
        self._known = True

    def messages(self, event: MessageWakeUp) -> list[RawMessage] | None:
        """The messages a broadcast wake-up (or an inbox's, with replies) carries (``first``: the
        first seq, ``messages``: the messages as fetch_messages returns them, as one JSON text;
        ``mac``: its HMAC), or None if
        it carries none, or they do not verify or do not hold together: on the channel's own
        topic, of that channel, seqs ``first``, ``first + 1``... A subscription takes them only if
        they continue where it stands (Subscription.offer); anything else is a plain wake-up."""
        channel, carried, first, mac = event.channel, event.messages, event.first, event.mac
        topic = channel_topic(channel)  # (an inbox's own name, a channel's "channel:<name>")
        if carried is None or self._key is None or event.topic != topic:
            return None
        if first is None or mac is None:
            log.warning("ignoring the messages of a malformed wake-up on %s", channel)
            return None
        signed = f"{topic}\n{channel}\n{first}\n{carried}".encode()
        expected = hmac.new(self._key, signed, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, mac):
            log.warning("ignoring the messages of a wake-up on %s that does not verify (forged?)", channel)
            return None
        try:
            messages = messages_from_json(msgspec.json.decode(carried))
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
            log.warning("ignoring the messages of a malformed wake-up on %s", channel)
            return None
        if not messages or any(m.seq != first + i or m.channel != channel for i, m in enumerate(messages)):
            return None
        return messages
