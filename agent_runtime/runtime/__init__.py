"""The runtime an agent embeds: the :class:`~agent_runtime.AgentRuntime` facade and its lifecycle
(:mod:`.agent`), the operator's :class:`~agent_runtime.Network` (:mod:`.network`), connection
set-up (:mod:`.config`, :mod:`.connect`) and the private parts the facade is made of (dispatch,
subscriptions and delivery, requests and the inbox, handlers, channels, publishing, services,
locks, presence, metrics, wake-ups, the one module naming SQL functions: ``_db``), each given one
:class:`~._context.RuntimeContext` rather than the runtime. Users import the public names from
:mod:`agent_runtime`."""
