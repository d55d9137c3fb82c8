CREATE MATERIALIZED VIEW IF NOT EXISTS $db.api_events_minute_mv TO $db.api_events_minute AS
SELECT
    toStartOfMinute(ts)                       AS minute,
    workspace_id,
    api_id,
    intDiv(status, 100)                       AS status_class,
    decision,
    count()                                   AS requests,
    sum(bytes_in)                             AS bytes_in,
    sum(bytes_out)                            AS bytes_out,
    quantilesState(0.5, 0.95, 0.99)(latency_ms) AS latency
FROM $db.api_events
GROUP BY minute, workspace_id, api_id, status_class, decision
