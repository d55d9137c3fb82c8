"""Kafka -> ClickHouse. consumer.py batches events and commits offsets only after
ClickHouse accepted them; clickhouse.py holds the connection, schema and queries;
worker.py runs it as a sidecar worker."""
