"""RateGuard: a self-hosted API gateway for API keys, rate limits and usage analytics."""

__version__ = "0.1.0"
