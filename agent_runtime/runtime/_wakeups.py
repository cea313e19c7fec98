"""Messages carried by broadcast wake-ups, and presence changes, believed only when the database
vouches for them.

Any database login can send a notification on any channel (plain ``NOTIFY`` cannot be revoked),
and a Realtime topic may carry what a client put there. So a wake-up that carries messages is
believed only if its HMAC (``h``, computed in the trigger with a secret only the schema's owner
can read) verifies with the key this runtime got from ``wakeup_key()``. A runtime that cannot get
the key (an agent with its own JWT) ignores carried messages and fetches; so does everyone for a
wake-up that is malformed or does not verify. At worst a forged wake-up costs a fetch. A presence
change is passed on only if it verifies and is newer than the last one believed for its agent
(any login can LISTEN, and replay what it heard); without the key, as before, every one is."""

from __future__ import annotations

import hashlib
import hmac
import logging

import msgspec

from ..errors import AgentRuntimeError, ConnectionLost
from ..models import RawMessage
from ..transports.wire import PRESENCE, MessageWakeUp, PresenceChange, channel_topic
from ._db import Database, messages_from_json

log = logging.getLogger(__name__)


class CarriedMessages:
    """Verifies and decodes the messages broadcast wake-ups carry, and verifies presence changes."""

    def __init__(self) -> None:
        self._key: bytes | None = None
        self._known = False  # whether the key was asked for (and given or refused)
        self._presence_at: dict[str, int] = {}  # agent id -> 'at' of the last change believed

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
        if not self._verifies(f"{topic}\n{channel}\n{first}\n{carried}", mac):
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

    def presence_believed(self, event: PresenceChange) -> bool:
        """Whether a presence change may be passed on. With the key: only if it is on the presence
        topic, its HMAC verifies, and it is not older than the last change believed for that agent
        (a replayed old one is not; the same one again is the truth still). Without it (an agent
        with its own JWT, or before the key is loaded): always, as unsigned hints were."""
        if self._key is None:
            return True
        if event.topic != PRESENCE or event.at is None or event.mac is None:
            log.warning("ignoring an unsigned presence change of %r (forged?)", event.agent_id)
            return False
        if not self._verifies(f"{PRESENCE}\n{event.agent_id}\n{event.kind}\n{event.status}\n{event.at}", event.mac):
            log.warning("ignoring a presence change of %r that does not verify (forged?)", event.agent_id)
            return False
        last = self._presence_at.get(event.agent_id)
        if last is not None and event.at < last:
            log.warning("ignoring a presence change of %r older than the last one (replayed?)", event.agent_id)
            return False
        self._presence_at[event.agent_id] = event.at
        return True

    def _verifies(self, signed: str, mac: str) -> bool:
        """Whether ``mac`` is the HMAC-SHA256 of ``signed`` with the wake-up key (known)."""
        assert self._key is not None
        return hmac.compare_digest(hmac.new(self._key, signed.encode(), hashlib.sha256).hexdigest(), mac)
