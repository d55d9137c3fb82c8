"""Alerts: rules over the traffic in ClickHouse, state in PostgreSQL, notifications."""
