-- One row per request that reached a proxy (events/schema.py is the contract).
-- kafka_partition/kafka_offset make ingestion exactly-once: on start the consumer
-- resumes after the highest offset already stored, whatever Kafka had committed.
CREATE TABLE IF NOT EXISTS $db.api_events
(
    id              String,
    ts              DateTime64(3, 'UTC'),
    workspace_id    LowCardinality(String),
    api_id          LowCardinality(String),
    key_id          String,
    method          LowCardinality(String),
    host            String,
    path            String,
    status          UInt16,
    latency_ms      Float32,
    upstream_ms     Float32,
    bytes_in        UInt64,
    bytes_out       UInt64,
    client_ip       String,
    user_agent      String,
    decision        LowCardinality(String),
    policy_id       LowCardinality(String),
    instance        LowCardinality(String),
    close_code      UInt16 DEFAULT 0,
    kafka_partition UInt32,
    kafka_offset    UInt64
)
ENGINE = MergeTree
PARTITION BY toDate(ts)
ORDER BY (workspace_id, api_id, ts)
TTL toDateTime(ts) + INTERVAL $ttl_days DAY
