"""The project's Prefect server: ``chatft server up|down|status|clean``.

A Prefect server on this machine with everything the project's deployments need (blocks,
result storage, the smoke-test notification, the work pool, a worker), on SQLite or on
PostgreSQL (the project's own or a team's), with an auth string when others reach it.
docs/server.md describes it; ``python -m server`` is the same command.
"""
