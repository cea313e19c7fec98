"""The public face: ``agent_runtime.__all__`` is exactly what the package exports, every
implementation module is private or declares ``__all__``, and importing the package is light."""

from __future__ import annotations
import __future__

import importlib
import pkgutil
import subprocess
import sys
import types

import agent_runtime


def test_all_is_exactly_what_is_exported() -> None:
    """Every public name in the package namespace is listed in __all__, and every listed name exists."""
    exported = {name for name, value in vars(agent_runtime).items()
                if not name.startswith("_") and not isinstance(value, types.ModuleType | __future__._Feature)}
    assert exported == set(agent_runtime.__all__)
    assert list(agent_runtime.__all__) == sorted(agent_runtime.__all__)


def test_public_names_are_defined_in_the_package() -> None:
    """Nothing in __all__ is a third-party object passed through."""
    for name in agent_runtime.__all__:
        value = getattr(agent_runtime, name)
        if isinstance(value, type | types.FunctionType):  # (not the Literal aliases)
            assert value.__module__.startswith("agent_runtime"), (name, value.__module__)


def test_every_public_module_declares_all() -> None:
    """A module without a leading underscore is part of the API and says what of it is."""
    missing = []
    for info in pkgutil.walk_packages(agent_runtime.__path__, "agent_runtime."):
        leaf = info.name.rsplit(".", 1)[-1]
        if info.ispkg or leaf.startswith("_") or ".testing." in info.name or ".transports.supabase" in info.name:
            continue
        module = importlib.import_module(info.name)
        if not hasattr(module, "__all__"):
            missing.append(info.name)
        else:
            for name in module.__all__:
                assert hasattr(module, name), (info.name, name)
    assert missing == []


def test_importing_the_package_loads_no_cli_or_supabase_dependencies() -> None:
    """`import agent_runtime` stays light: no rich, no Supabase clients, no aiohttp."""
    code = ("import sys, agent_runtime; heavy = {'rich', 'supabase', 'realtime', 'aiohttp', 'httpx', 'jwt'}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_runtime_and_network_share_one_implementation_of_each_view() -> None:
    """agents, channels, locks, read_metrics (since), dead_letters, topology (window): one name, one body."""
    for name in ("agents", "channels", "locks", "read_metrics", "dead_letters", "topology"):
        assert getattr(agent_runtime.AgentRuntime, name) is getattr(agent_runtime.Network, name), name
    # Beyond the shared views, Network has only the operator's own calls (trusted connections).
    own = {n for n in vars(agent_runtime.Network) if not n.startswith("_")}
    assert own == {"db", "replay_dead_letters", "cleanup", "peek"}


def test_timeouts_are_timeout_errors() -> None:
    """`except TimeoutError` catches the runtime's timeouts too."""
    assert issubclass(agent_runtime.RequestTimeout, TimeoutError)
    assert issubclass(agent_runtime.LockTimeout, TimeoutError)
