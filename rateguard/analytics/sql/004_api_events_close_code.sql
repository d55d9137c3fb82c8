-- WebSocket close codes (events/schema.py close_code), for tables made before the column:
-- rows stored earlier read 0, as plain requests do.
ALTER TABLE $db.api_events ADD COLUMN IF NOT EXISTS close_code UInt16 DEFAULT 0
