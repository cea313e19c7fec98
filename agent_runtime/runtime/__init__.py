"""The runtime an agent embeds: the :class:`~agent_runtime.AgentRuntime` facade (:mod:`.agent`),
the operator's :class:`~agent_runtime.Network` (:mod:`.network`), connection set-up
(:mod:`.config`, :mod:`.connect`) and the private parts they are made of (subscriptions and
delivery, locks, presence, metrics, wake-ups, the one module naming SQL functions: ``_db``).
Users import the public names from :mod:`agent_runtime`."""
