-- Per-minute rollup, filled by the materialized view below on every insert.
CREATE TABLE IF NOT EXISTS $db.api_events_minute
(
    minute       DateTime('UTC'),
    workspace_id LowCardinality(String),
    api_id       LowCardinality(String),
    status_class UInt8,
    decision     LowCardinality(String),
    requests     SimpleAggregateFunction(sum, UInt64),
    bytes_in     SimpleAggregateFunction(sum, UInt64),
    bytes_out    SimpleAggregateFunction(sum, UInt64),
    latency      AggregateFunction(quantiles(0.5, 0.95, 0.99), Float32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(minute)
ORDER BY (workspace_id, api_id, minute, status_class, decision)
TTL minute + INTERVAL 400 DAY
