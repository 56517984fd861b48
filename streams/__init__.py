"""The stream processor: conversions joined with campaign rules, matched postbacks out.

Pure modules (no Kafka, no Faust): conversion, rules, offer_sources, matching, url_template, pii,
postback_ids, decimals, messages, invalid_records, batch. I/O shells: compacted_view, fired_state,
app.
"""
