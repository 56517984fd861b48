"""Pure stream-processing logic: records in, messages out. No I/O, no Kafka client, no clock reads."""
