"""Outbound connections: which destinations the server may reach (egress.py)."""
