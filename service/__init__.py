"""What every process of the service is built on, below the worker, the dispatchers and the api:
settings, Kafka reads and writes, the consumer-group member both run in (group_member.py),
compacted-topic views, changelog stores, topic creation, the ops HTTP server (/metrics, /healthz,
/readyz), consumer health, logs."""
