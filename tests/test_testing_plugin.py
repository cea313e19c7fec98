"""The pytest plugin users load to test their own agents on fresh databases."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


TESTS = """
        import asyncpg
        from agent_runtime import AgentRuntime

        pytest_plugins = ["agent_runtime.testing.pytest_plugin"]

        async def _count(url):
            conn = await asyncpg.connect(url)
            try:
                return await conn.fetchval("select count(*) from distributed_agents")
            finally:
                await conn.close()

        async def test_one(agent_runtime_db_url):
            assert await _count(agent_runtime_db_url) == 0
            async with AgentRuntime("mine", url=agent_runtime_db_url, janitor=False) as rt:
                assert [a.id for a in await rt.agents()] == [rt.agent_id]

        async def test_two(agent_runtime_db_url):
            assert await _count(agent_runtime_db_url) == 0
        """


def test_plugin_gives_each_test_a_fresh_database(pytester: pytest.Pytester) -> None:
    """Two tests each get a migrated database of their own: what one writes, the other never sees
    (with pytest-asyncio in auto mode)."""
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = session\n"
                     "asyncio_default_test_loop_scope = session\n")
    pytester.makepyfile(TESTS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize("plugins", [["-p", "no:asyncio"], []], ids=["no-async-plugin", "pytest-asyncio-strict"])
def test_plugin_works_by_itself(pytester: pytest.Pytester, plugins: list[str]) -> None:
    """Without pytest-asyncio (or with it in its default strict mode) the plugin runs the async tests
    itself: no 'async def functions are not natively supported'."""
    pytester.makepyfile(TESTS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", *plugins)
    result.assert_outcomes(passed=2)
    assert "not natively supported" not in result.stdout.str()
