"""`make chaos`: the service under crashes, failing destinations and hostile input, against a reference model.

On the embedded broker (or KAFKA_BOOTSTRAP_SERVERS, under topics of its own): two workers and two
dispatchers (`dispatch --kind all`) as real subprocesses with RocksDB state; campaigns with entries of
all five kinds (conditional and not) whose rules change mid-run; conversions with status updates and
exact re-deliveries, and about 5 % hostile records (oversized, control bytes, non-UTF-8, not JSON, deep
nesting, huge numbers, unknown campaign, key other than the id, personal data where it does not
belong). A process is SIGKILLed every 10-20 s and restarted; one restarts on an emptied state directory
and one on a stale copy; one is SIGTERMed during a rebalance. The S2S sink and the fake ad platforms
answer 30 % 5xx, 5 % 429 with Retry-After, up to 50 ms late, and all fail during one outage. What must
fire comes from a reference model of the matching rules written here (model.py), not the service's
code. At the end every topic and log is scanned for personal data and secrets, a table is printed and
`chaos-report.json` written; the exit status is 1 when a target fails.
"""
