"""Request events: schema.py is the proxy <-> analytics contract; publisher.py moves
events from the proxy's bounded queue to Kafka in batches."""
