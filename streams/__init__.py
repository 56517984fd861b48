"""The stream processor: conversions joined with campaign rules, matched postbacks out.

Pure modules (no I/O): conversion, rules, offer_sources, matching, url_template, pii, postback_ids,
decimals, messages, invalid_records, batch, fired_record. I/O shells: compacted_view (the rules and
offer-source views), fired_store (fired-state and its changelog), worker (the consumer-group loop).
"""
