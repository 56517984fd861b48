"""The stream processor: conversions joined with campaign rules, matched postbacks out.

Layers, each importing only the ones below it (checked by `make lint`):
- `worker.py`: the application, matching batches in a consumer group (service/group_member.py runs
  the fetch loop, rebalances, restores and commits);
- `fired_state_store.py`, `metrics.py`: its adapters (the fired-state changelog store, Prometheus);
- `core/`: pure matching (conversion parsing, rules, offer sources, matching, URL templates, PII
  hashing, postback ids, messages, invalid records and the worker's refusals, and `batch.py`, which
  turns a batch of records into the messages to produce).
"""
