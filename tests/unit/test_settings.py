import pytest

from rateguard.errors import SettingsError
from rateguard.settings import Settings


def test_defaults_when_nothing_is_set():
    s = Settings.from_env({})
    assert s.KAFKA_TOPIC == "api-events"
    assert s.CLICKHOUSE_DATABASE == "rateguard"
    assert s.LOG_LEVEL == "info" and s.RATEGUARD_ENV == "production"
    assert s.PROXY_PORT == 3001 and s.METRICS_PORT == 9090
    assert s.REDIS_URL is None
    assert s.PROXY_BUSY_POLL_US == 0  # off unless asked for


def test_values_are_parsed():
    s = Settings.from_env({"KAFKA_BROKERS": "a:9092, b:9093", "REDIS_URL": "redis://r:6379/1",
                           "LOG_LEVEL": "DEBUG", "PROXY_PORT": "8000",
                           "PROXY_BUSY_POLL_US": "300"})
    assert s.KAFKA_BROKERS == ("a:9092", "b:9093") and s.PROXY_BUSY_POLL_US == 300
    assert s.LOG_LEVEL == "debug" and s.PROXY_PORT == 8000


@pytest.mark.parametrize("name,value,fragment", [
    ("REDIS_URL", "http://x", "REDIS_URL: scheme must be one of"),
    ("KAFKA_BROKERS", "nohostport", "KAFKA_BROKERS: 'nohostport' is not host:port"),
    ("PROXY_PORT", "eighty", "PROXY_PORT: is malformed"),
    ("PROXY_PORT", "70000", "PROXY_PORT: must be a port number"),
    ("LOG_LEVEL", "loud", "LOG_LEVEL: must be one of"),
    ("CLICKHOUSE_URL", "tcp://x", "CLICKHOUSE_URL: scheme must be one of"),
    ("CLICKHOUSE_DATABASE", "drop table;", "CLICKHOUSE_DATABASE: must contain only"),
    ("PROXY_BUSY_POLL_US", "-1", "PROXY_BUSY_POLL_US: must be 0 (off) to 10000"),
    ("PROXY_BUSY_POLL_US", "50000", "PROXY_BUSY_POLL_US: must be 0 (off) to 10000"),
])
def test_malformed_value_names_the_variable(name, value, fragment):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    assert str(info.value).startswith(fragment)
    assert "\n" not in str(info.value)


def test_secrets_are_not_echoed_in_errors():
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"DATABASE_URL": "mysql://user:hunter2@db/x"})
    assert "hunter2" not in str(info.value)


def test_short_jwt_secret_refused_in_production_only():
    with pytest.raises(SettingsError, match="JWT_SECRET: must be at least 32"):
        Settings.from_env({"JWT_SECRET": "short"})
    assert Settings.from_env({"JWT_SECRET": "short", "RATEGUARD_ENV": "development"})


def test_require_names_the_missing_variable():
    with pytest.raises(SettingsError, match="^REDIS_URL: not set"):
        Settings.from_env({}).require("REDIS_URL")


def test_cluster_is_selected_by_scheme_or_flag():
    assert Settings.from_env({"REDIS_URL": "redis+cluster://h:7000"}).redis_cluster
    assert Settings.from_env({"REDIS_URL": "redis://h", "REDIS_CLUSTER": "true"}).redis_cluster
    assert not Settings.from_env({"REDIS_URL": "redis://h"}).redis_cluster
