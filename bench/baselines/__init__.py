"""Baselines measured in the same run as the proxy: nginx and a plain aiohttp proxy."""
