"""`rateguard web`: the control plane on port 3000.

app.py builds the aiohttp application and its lifecycle (PostgreSQL pool, ClickHouse,
the last-used job); auth.py issues and checks access tokens; api/ holds the management
REST API under /api/v1, declared once in a table (api/registry.py) from which both the
router and the OpenAPI 3.1 document (/api/v1/openapi.json) are built.
"""
