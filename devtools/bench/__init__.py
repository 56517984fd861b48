"""`make bench`: the service measured against plain-client baselines in the same run (issue 13).

One module per section (matcher, dispatch_s2s, dispatch_batch, latency, memory, machine); `report` holds
the pure parts (percentiles, summaries, targets, the table); `__main__` runs them:

    python -m devtools.bench [--quick] [--only SECTION[,SECTION]] [--repeats N]
"""
