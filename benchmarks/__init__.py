"""Benchmarks of agent_runtime against the raw-Postgres floor: ``python -m benchmarks [--quick]
[--json FILE]``. Every figure is measured beside a raw-asyncpg baseline on the same database in
the same run (see README.md, "Benchmarks")."""
