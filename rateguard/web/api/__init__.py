"""The management REST API under /api/v1: one module per area, all declared through
registry.op so that the router and openapi.py share one table."""
